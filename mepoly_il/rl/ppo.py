"""PPO for every head in :mod:`mepoly_il.rl.heads`, cleanrl style: one loop that reads top to bottom.

Per iteration: roll ``num_steps`` steps in ``num_envs`` vectorised envs; compute GAE (truncated episodes are
bootstrapped with V(final obs), terminated ones are not); then ``update_epochs`` passes of shuffled
minibatches with the clipped surrogate, the entropy bonus (the head's exact entropy where it has one, its
estimate otherwise, none for FPO), and the value loss. The KL early stop uses the mean k3 KL estimate over
*all* minibatches of the epoch (the authors' code used the last, often tiny, remainder minibatch).

The env contract (``VecBandit``, ``VecSmoothWorld``): ``reset(seed) -> obs (N, D)``, ``step(actions (N, d)) ->
obs, reward, terminated, truncated, info`` with same-step autoreset, ``info["final_obs"]`` for the last obs of
finished episodes, and ``info["episode_done"]``, ``info["episode_return"]`` (and, for Smooth World,
``info["episode_outcome"]``, ``info["episode_length"]``) describing episodes that ended on this step.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from torch import nn

from mepoly_il.errors import UserError
from mepoly_il.rl.config import check_flag
from mepoly_il.rl.heads import PolicyHead, mlp


@dataclass
class PPOConfig:
    """PPO settings.

    Defaults are the authors' Smooth World values where they exist; the per-env budgets of the published runs
    are :data:`mepoly_il.rl.config.RL_PRESETS`.
    """

    num_envs: int = 16
    """parallel envs per rollout"""
    num_steps: int = 128
    """steps per env per rollout; the batch is num_envs * num_steps"""
    iterations: int = 100
    """rollout + update cycles"""
    lr: float = 3e-4
    """Adam learning rate (actor and critic)"""
    weight_decay: float = 0.0
    """Adam weight decay (the authors' bandit MePoly used 1e-5)"""
    anneal_lr: bool = False
    """decay the learning rate linearly to 0 over the run"""
    gamma: float = 0.99
    """discount"""
    gae_lambda: float = 0.98
    """GAE lambda"""
    num_minibatches: int = 4
    """minibatches per epoch; must divide num_envs * num_steps"""
    update_epochs: int = 10
    """passes over each batch per iteration"""
    clip_coef: float = 0.2
    """PPO ratio clip"""
    ent_coef: float = 0.0
    """entropy bonus weight (heads without an entropy ignore it)"""
    vf_coef: float = 0.5
    """value loss weight"""
    max_grad_norm: float = 0.5
    """global gradient-norm clip"""
    target_kl: float | None = 0.02
    """stop an update after an epoch whose mean approx KL exceeds this (null: never)"""
    norm_adv: bool = True
    """normalise advantages over the whole batch"""

    @property
    def batch_size(self) -> int:
        return self.num_envs * self.num_steps

    def __post_init__(self) -> None:
        for name in ("num_envs", "num_steps", "iterations", "num_minibatches", "update_epochs"):
            check_flag(name, getattr(self, name), getattr(self, name) >= 1, "must be >= 1")
        for name in ("lr", "clip_coef", "max_grad_norm"):
            check_flag(name, getattr(self, name), getattr(self, name) > 0, "must be > 0")
        for name in ("weight_decay", "ent_coef", "vf_coef"):
            check_flag(name, getattr(self, name), getattr(self, name) >= 0, "must be >= 0")
        for name in ("gamma", "gae_lambda"):
            check_flag(name, getattr(self, name), 0 <= getattr(self, name) <= 1, "must lie in [0, 1]")
        if self.target_kl is not None:
            check_flag("target_kl", self.target_kl, self.target_kl > 0, "must be > 0 (or null to disable the stop)")
        if self.batch_size % self.num_minibatches:
            raise UserError(
                f"--num-minibatches {self.num_minibatches}: the batch num_envs*num_steps = {self.num_envs}*"
                f"{self.num_steps} = {self.batch_size} is not divisible by it; choose a divisor of {self.batch_size}"
            )


class ActorCritic(nn.Module):
    """A policy head plus a separate 64-64 critic (the authors' layout)."""

    def __init__(self, head: PolicyHead, obs_dim: int, hidden: int = 64):
        super().__init__()
        self.head = head
        self.critic = mlp(obs_dim, 1, hidden)

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        """(B, D) -> (B,)."""
        return self.critic(obs).squeeze(-1)


def gae(rewards, values, dones, next_value, gamma: float, lam: float):
    """Generalised advantage estimation over a (T, N) rollout.

    ``dones[t]`` marks that the episode ended at step t (terminated or truncated; truncated rewards already
    carry the bootstrap gamma * V(final obs)), so no value flows across it. ``next_value`` (N,) is V(obs after
    the last step). Returns (advantages (T, N), returns (T, N)).
    """
    T = rewards.shape[0]
    adv = torch.zeros_like(rewards)
    last = torch.zeros_like(next_value)
    for t in reversed(range(T)):
        nv = next_value if t == T - 1 else values[t + 1]
        nonterminal = 1.0 - dones[t]
        delta = rewards[t] + gamma * nv * nonterminal - values[t]
        last = delta + gamma * lam * nonterminal * last
        adv[t] = last
    return adv, adv + values


def train_ppo(
    agent: ActorCritic,
    envs,
    cfg: PPOConfig,
    seed: int,
    log_dir: Path | None = None,
    on_iteration: Callable[[int, dict], None] | None = None,
    progress_desc: str | None = None,
) -> list[dict]:
    """Train ``agent`` in ``envs`` in place; return one stats dict per iteration (also written to
    ``log_dir/progress.csv`` and TensorBoard when ``log_dir`` is given)."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    opt = torch.optim.Adam(agent.parameters(), lr=cfg.lr, eps=1e-5, weight_decay=cfg.weight_decay)
    N, T = cfg.num_envs, cfg.num_steps
    writer, csv_file, csv_writer = None, None, None
    if log_dir is not None:
        from torch.utils.tensorboard import SummaryWriter

        log_dir.mkdir(parents=True, exist_ok=True)
        writer = SummaryWriter(str(log_dir / "tb"))
        csv_file = open(log_dir / "progress.csv", "w", newline="")  # noqa: SIM115 (closed in finally)
    history: list[dict] = []
    obs = torch.as_tensor(envs.reset(seed=seed))
    global_step = 0
    prog = None
    if progress_desc is not None:
        from mepoly_il.utils import progress

        prog = progress()
        prog.start()
        task = prog.add_task(progress_desc, total=cfg.iterations)
    try:
        for it in range(cfg.iterations):
            t0 = time.perf_counter()
            if cfg.anneal_lr:
                opt.param_groups[0]["lr"] = cfg.lr * (1.0 - it / cfg.iterations)
            # ---- rollout
            # -------------------------------------------------------------------------------------
            obs_buf = torch.zeros((T, N, envs.obs_dim))
            rew_buf, done_buf, val_buf = torch.zeros((T, N)), torch.zeros((T, N)), torch.zeros((T, N))
            records: list[dict[str, torch.Tensor]] = []
            ep_returns, ep_outcomes, ep_lengths = [], [], []
            for t in range(T):
                obs_buf[t] = obs
                with torch.no_grad():
                    action, rec = agent.head.act(obs)
                    val_buf[t] = agent.value(obs)
                records.append(rec)
                next_obs, reward, term, trunc, info = envs.step(action.numpy())
                reward = torch.as_tensor(reward, dtype=torch.float32)
                if trunc.any():
                    # time-limit truncation is not a terminal state: bootstrap with V(last obs)
                    with torch.no_grad():
                        v_final = agent.value(torch.as_tensor(info["final_obs"][trunc]))
                    reward[torch.as_tensor(trunc)] += cfg.gamma * v_final
                rew_buf[t] = reward
                done_buf[t] = torch.as_tensor(term | trunc, dtype=torch.float32)
                obs = torch.as_tensor(next_obs)
                done = info["episode_done"]
                ep_returns.append(info["episode_return"][done])
                if "episode_outcome" in info:
                    ep_outcomes.append(info["episode_outcome"][done])
                    ep_lengths.append(info["episode_length"][done])
            global_step += N * T
            t_rollout = time.perf_counter() - t0
            with torch.no_grad():
                next_value = agent.value(obs)
            adv, ret = gae(rew_buf, val_buf, done_buf, next_value, cfg.gamma, cfg.gae_lambda)

            # ---- flatten the batch
            # -----------------------------------------------------------------------------
            b_obs = rearrange(obs_buf, "t n d -> (t n) d")
            b_adv, b_ret = adv.reshape(-1), ret.reshape(-1)
            b_rec = {k: rearrange(torch.stack([r[k] for r in records]), "t n ... -> (t n) ...") for k in records[0]}
            if cfg.norm_adv:
                b_adv = (b_adv - b_adv.mean()) / (b_adv.std() + 1e-8)

            # ---- update
            # ---------------------------------------------------------------------------------------
            t1 = time.perf_counter()
            mb = cfg.batch_size // cfg.num_minibatches
            stats = {"pg_loss": [], "v_loss": [], "entropy": [], "approx_kl": [], "clipfrac": []}
            epochs_done = 0
            for _epoch in range(cfg.update_epochs):
                perm = torch.randperm(cfg.batch_size)
                epoch_kl = []
                for start in range(0, cfg.batch_size, mb):
                    idx = perm[start : start + mb]
                    log_ratio, entropy = agent.head.evaluate(b_obs[idx], {k: v[idx] for k, v in b_rec.items()})
                    ratio = log_ratio.exp()
                    with torch.no_grad():
                        approx_kl = ((ratio - 1.0) - log_ratio).mean()  # k3 estimator
                        clipfrac = ((ratio - 1.0).abs() > cfg.clip_coef).float().mean()
                    a = b_adv[idx]
                    pg_loss = torch.max(-a * ratio, -a * ratio.clamp(1 - cfg.clip_coef, 1 + cfg.clip_coef)).mean()
                    v_loss = 0.5 * ((agent.value(b_obs[idx]) - b_ret[idx]) ** 2).mean()
                    ent = entropy.mean() if entropy is not None else torch.zeros(())
                    loss = pg_loss + cfg.vf_coef * v_loss - (cfg.ent_coef * ent if entropy is not None else 0.0)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    nn.utils.clip_grad_norm_(agent.parameters(), cfg.max_grad_norm)
                    opt.step()
                    epoch_kl.append(approx_kl.item())
                    for k, v in (
                        ("pg_loss", pg_loss),
                        ("v_loss", v_loss),
                        ("entropy", ent),
                        ("approx_kl", approx_kl),
                        ("clipfrac", clipfrac),
                    ):
                        stats[k].append(float(v.detach()) if torch.is_tensor(v) else float(v))
                epochs_done += 1
                if cfg.target_kl is not None and float(np.mean(epoch_kl)) > cfg.target_kl:
                    break
            t_update = time.perf_counter() - t1

            rets = np.concatenate(ep_returns) if ep_returns else np.zeros(0)
            row = {
                "iteration": it + 1,
                "env_steps": global_step,
                "episodes": int(len(rets)),
                "episode_return": float(rets.mean()) if len(rets) else float("nan"),
                **{k: float(np.mean(v)) for k, v in stats.items()},
                "epochs_done": epochs_done,
                "lr": opt.param_groups[0]["lr"],
                "time_rollout_s": t_rollout,
                "time_update_s": t_update,
                "time_iteration_s": time.perf_counter() - t0,
            }
            if ep_outcomes:
                oc = np.concatenate(ep_outcomes)
                ln = np.concatenate(ep_lengths)
                for code, name in enumerate(("success", "death", "timeout")):
                    row[f"{name}_rate"] = float((oc == code).mean()) if len(oc) else float("nan")
                row["episode_length"] = float(ln.mean()) if len(ln) else float("nan")
            if on_iteration is not None:
                on_iteration(it + 1, row)
            history.append(row)
            if writer is not None:
                for k, v in row.items():
                    if k != "iteration":
                        writer.add_scalar(f"train/{k}", v, global_step)
            if csv_file is not None:
                if csv_writer is None:
                    csv_writer = csv.DictWriter(csv_file, fieldnames=list(row), extrasaction="ignore")
                    csv_writer.writeheader()
                csv_writer.writerow(row)
                csv_file.flush()
            if prog is not None:
                prog.update(task, advance=1)
    finally:
        if prog is not None:
            prog.stop()
        if writer is not None:
            writer.close()
        if csv_file is not None:
            csv_file.close()
    return history


def config_dict(cfg: PPOConfig) -> dict:
    return asdict(cfg)
