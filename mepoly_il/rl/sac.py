"""Soft actor-critic for the heads of :mod:`mepoly_il.rl.heads` (and the SVGD actor of :mod:`mepoly_il.rl.s2ac`),
cleanrl style: one loop that reads top to bottom.

Per vectorised env step: act (uniform random for the first ``learning_starts`` env steps), store the transition
(the real last observation of finished episodes, ``terminated`` but not ``truncated`` cuts the bootstrap), then
``updates_per_step`` gradient steps: twin-Q regression to ``r + gamma (1 - term) V(s')`` with the soft value
``V`` under the target critics, every ``policy_frequency`` critic steps an actor step on the soft objective
``E_pi[Q] + alpha H(pi)`` and (when tuned) a temperature step towards ``target_entropy``, then Polyak averaging
of the target critics.

How each actor computes ``E_pi[Q] + alpha H`` (the ``estimator``):

==========  =========================  ========================================================================
estimator   head                       actor objective per state
==========  =========================  ========================================================================
rp          gaussian (K=1)             SAC: ``Q(a) - alpha log pi(a)`` at one reparameterised sample (SG-RP)
mrp         gmm                        mixture paper Eq. 10: ``sum_k w_k [Q(a_k) - alpha log pi(a_k)]``, one
                                       reparameterised sample per component (SGM-MRP)
lr          gmm, mepoly                score function with the state's mean as baseline (SGM-LR); mepoly adds
                                       its exact entropy instead of sampling ``log pi``
quadrature  mepoly                     ``sum_i pi_i Q(x_i) + alpha H_exact``: Q at the Gauss-Legendre tensor grid
                                       ``x_i`` (``quad_nodes^d`` nodes), ``pi_i`` the density times the weight,
                                       normalised on the grid (see :class:`QuadratureActor`)
==========  =========================  ========================================================================

The env contract is the PPO trainer's (``VecBandit``, ``VecSmoothWorld``, ``VecMultiGoal``): ``reset(seed) -> obs
(N, D)``, ``step(actions (N, d)) -> obs, reward, terminated, truncated, info`` with same-step autoreset,
``info["final_obs"]`` (when present) the last obs of finished episodes, ``info["episode_done"]`` and
``info["episode_return"]`` describing episodes that ended on this step.
"""

from __future__ import annotations

import copy
import csv
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn

from mepoly_il.errors import UserError
from mepoly_il.rl.estimators import lr_surrogate, mrp_surrogate
from mepoly_il.rl.heads import MePolyHead, PolicyHead, TanhMixtureHead, mlp, tanh_log_det

ESTIMATORS = ("rp", "mrp", "lr", "quadrature")
QFn = Callable[[Tensor, Tensor], Tensor]  # (obs (B, D), actions (..., B, d)) -> (..., B)


@dataclass
class SACConfig:
    """SAC settings (defaults: SAC v2 / cleanrl where they exist; the MRP paper uses the same for its SG-RP and
    SGM-MRP runs)."""

    total_steps: int = 20_000
    """env steps summed over all envs"""
    num_envs: int = 1
    """parallel envs; each vectorised step adds num_envs transitions"""
    buffer_size: int = 100_000
    """replay capacity (transitions)"""
    batch_size: int = 256
    """transitions per gradient step"""
    gamma: float = 0.99
    """discount"""
    tau: float = 0.005
    """Polyak rate of the target critics"""
    actor_lr: float = 3e-4
    """Adam learning rate of the actor"""
    critic_lr: float = 1e-3
    """Adam learning rate of the twin critics"""
    alpha: float = 0.2
    """temperature: fixed value, or the start value when autotune is on"""
    autotune: bool = True
    """tune alpha so the policy entropy tracks target_entropy"""
    alpha_lr: float = 3e-4
    """Adam learning rate of log alpha"""
    target_entropy: float | None = None
    """None: -act_dim (SAC's heuristic)"""
    learning_starts: int = 1_000
    """env steps of uniform random actions before the first update"""
    updates_per_step: int = 1
    """gradient steps per vectorised env step"""
    policy_frequency: int = 1
    """actor (and alpha) step every this many critic steps"""
    hidden: int = 256
    """critic hidden width (2 layers)"""
    estimator: str = "rp"
    """actor gradient estimator: rp | mrp | lr | quadrature (module table)"""
    lr_samples: int = 8
    """samples per state of the lr estimator (the baseline is their mean)"""
    quad_nodes: int | None = None
    """Gauss-Legendre nodes per action dim (quadrature); None: the family's own"""
    log_every: int = 1_000
    """env steps between history rows"""

    def __post_init__(self) -> None:
        for name in ("total_steps", "num_envs", "buffer_size", "batch_size", "updates_per_step"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise UserError(f"sac config: {name}={v!r} must be an integer >= 1")
        for name in ("policy_frequency", "lr_samples", "log_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise UserError(f"sac config: {name}={v!r} must be an integer >= 1")
        if self.learning_starts < 0:
            raise UserError(f"sac config: learning_starts={self.learning_starts} must be >= 0")
        if self.batch_size > self.buffer_size:
            raise UserError(f"sac config: batch_size={self.batch_size} exceeds buffer_size={self.buffer_size}")
        if not 0.0 <= self.gamma <= 1.0:
            raise UserError(f"sac config: gamma={self.gamma} must lie in [0, 1]")
        if not 0.0 < self.tau <= 1.0:
            raise UserError(f"sac config: tau={self.tau} must lie in (0, 1]")
        if not self.alpha > 0.0:
            raise UserError(f"sac config: alpha={self.alpha} must be > 0 (set autotune=false to keep it fixed)")
        for name in ("actor_lr", "critic_lr", "alpha_lr"):
            if not getattr(self, name) > 0.0:
                raise UserError(f"sac config: {name}={getattr(self, name)} must be > 0")
        if self.estimator not in ESTIMATORS:
            raise UserError(f"sac config: estimator={self.estimator!r} is unknown; choose one of {ESTIMATORS}")
        if self.quad_nodes is not None and (not isinstance(self.quad_nodes, int) or self.quad_nodes < 2):
            raise UserError(f"sac config: quad_nodes={self.quad_nodes!r} must be an integer >= 2 or null")


class TwinQ(nn.Module):
    """Two independent ``(obs, action) -> Q`` MLPs."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 256):
        super().__init__()
        self.q1 = mlp(obs_dim + act_dim, 1, hidden)
        self.q2 = mlp(obs_dim + act_dim, 1, hidden)

    def forward(self, obs: Tensor, act: Tensor) -> tuple[Tensor, Tensor]:
        """obs (B, D) broadcast against act (..., B, d) -> two (..., B)."""
        x = torch.cat([obs.expand(*act.shape[:-1], obs.shape[-1]), act], -1)
        return self.q1(x).squeeze(-1), self.q2(x).squeeze(-1)

    def min_q(self, obs: Tensor, act: Tensor) -> Tensor:
        return torch.minimum(*self(obs, act))


# ------------------------------------------------------------------------------------------------ actors
class HeadActor(nn.Module):
    """A policy head plus its actor-gradient estimator; the interface the trainer calls.

    ``act(obs) -> (B, d)`` (no grad), ``objective(obs, q, alpha) -> (J (B,), entropy (B,))`` with ``J``
    differentiable and ``entropy`` the detached estimate used to tune alpha, ``soft_value(obs, q, alpha) -> (B,)``
    (no grad): ``E_pi[Q] + alpha H`` for the critic target.
    """

    def __init__(self, head: PolicyHead, estimator: str, lr_samples: int = 8):
        super().__init__()
        self.head, self.estimator, self.lr_samples = head, estimator, int(lr_samples)
        mixture = isinstance(head, TanhMixtureHead)
        ok = {
            "rp": mixture and head.k == 1,
            "mrp": mixture,
            "lr": mixture or isinstance(head, MePolyHead),
        }.get(estimator, False)
        if not ok:
            raise UserError(
                f"sac: estimator {estimator!r} does not fit the {head.name!r} head; use rp with gaussian, mrp or lr "
                f"with gmm, quadrature or lr with mepoly"
            )

    @torch.no_grad()
    def act(self, obs: Tensor) -> Tensor:
        return self.head.act(obs)[0]

    def objective(self, obs: Tensor, q: QFn, alpha: Tensor) -> tuple[Tensor, Tensor]:
        if self.estimator in ("rp", "mrp"):
            return self._marginalised_reparam(obs, q, alpha)
        return self._likelihood_ratio(obs, q, alpha)

    def _marginalised_reparam(self, obs: Tensor, q: QFn, alpha: Tensor) -> tuple[Tensor, Tensor]:
        # K=1 (rp) is SAC's reparameterised Gaussian; K>1 sums over the components exactly (MRP)
        head: TanhMixtureHead = self.head
        logw, mu, std = head.params(obs)
        logp_k = []

        def f(u: Tensor) -> Tensor:  # (1, B, K, d) -> (1, B, K)
            u_kb = rearrange(u, "n b k d -> n k b d")
            lp = head._log_prob_u(u_kb, logw, mu, std) - tanh_log_det(u_kb)  # (1, K, B)
            qv = q(obs, torch.tanh(u_kb))
            logp_k.append(lp.detach())
            return rearrange(qv - alpha * lp, "n k b -> n b k")

        j = mrp_surrogate(f, logw, mu, std, n=1)
        entropy = -(logw.exp().detach() * rearrange(logp_k[0], "1 k b -> b k")).sum(-1)
        return j, entropy

    def _likelihood_ratio(self, obs: Tensor, q: QFn, alpha: Tensor) -> tuple[Tensor, Tensor]:
        n, b = self.lr_samples, obs.shape[0]
        a = self.head.sample(obs, n)  # (n, B, d), no grad
        obs_n = repeat(obs, "b d -> (n b) d", n=n)
        logp = self.head.log_prob(obs_n, rearrange(a, "n b d -> (n b) d")).reshape(n, b)
        with torch.no_grad():
            qv = q(obs, a)
        # value: the sample estimate of E[Q] + alpha H; gradient: the score-function estimator
        if self.head.exact_entropy:  # mepoly: only E[Q] needs the score function
            entropy = self.head.entropy(obs)
            sur = lr_surrogate(qv, logp)
            return sur - sur.detach() + qv.mean(0) + alpha * entropy, entropy.detach()
        f = qv - alpha * logp.detach()
        sur = lr_surrogate(f, logp)
        return sur - sur.detach() + f.mean(0), -logp.detach().mean(0)

    @torch.no_grad()
    def soft_value(self, obs: Tensor, q: QFn, alpha: Tensor) -> Tensor:
        a, rec = self.head.act(obs)
        return q(obs, a) - alpha * rec["logp"]


class QuadratureActor(nn.Module):
    """MePoly with the actor objective computed by quadrature instead of sampling.

    On the tensor grid of Gauss-Legendre nodes ``x_i`` with log weights ``log w_i`` the policy's mass at node i
    is ``pi_i = softmax_i(log w_i + <lam(s), T(x_i)>)``, the same rule the family uses for ``log Z``, so
    ``E_pi[Q(s, .)] = sum_i pi_i Q(s, x_i)`` up to quadrature error, and the entropy is the family's exact
    value. The objective ``sum_i pi_i Q(s, x_i) + alpha H(s)`` is deterministic: no sampling variance, no
    reparameterisation (which the polynomial density lacks) and no score-function noise. Its gradient
    reaches ``lam`` through ``pi_i`` (``d pi_i / d lam = pi_i (T(x_i) - E_pi T)``, the exact policy gradient of
    a quadrature-discretised exponential family).

    Cost: Q at ``quad_nodes^d`` nodes per state per actor (and critic-target) step; with the family's default
    24 nodes that is 24 (d=1), 576 (d=2), 13824 (d=3) critic evaluations per state, so d <= 2 is cheap and
    d = 3 needs small batches or fewer nodes. Under-resolution shows up as a peaked density whose mass
    falls between nodes; the family refines its own grid for ``log Z`` but this grid is fixed, so keep the
    natural parameters clipped (``lambda_clip``) or raise ``quad_nodes`` for sharp policies.
    """

    def __init__(self, head: MePolyHead, quad_nodes: int | None = None):
        super().__init__()
        if not isinstance(head, MePolyHead):
            raise UserError(f"sac: estimator 'quadrature' needs the mepoly head, got {head.name!r}")
        self.head = head
        n = int(quad_nodes or head.family.nodes)
        x1, w1 = np.polynomial.legendre.leggauss(n)
        grids = np.meshgrid(*([x1] * head.act_dim), indexing="ij")
        nodes = np.stack([g.ravel() for g in grids], -1)  # (M, d)
        logw = sum(np.log(w1)[idx.ravel()] for idx in np.meshgrid(*([np.arange(n)] * head.act_dim), indexing="ij"))
        self.register_buffer("nodes", torch.as_tensor(nodes, dtype=torch.float32))
        self.register_buffer("log_w", torch.as_tensor(logw, dtype=torch.float32))
        with torch.no_grad():
            self.register_buffer("feats", head.family.features(self.nodes.double()).float())  # (M, F)

    @torch.no_grad()
    def act(self, obs: Tensor) -> Tensor:
        return self.head.act(obs)[0]

    def node_probs(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """-> (pi_i (B, M) summing to 1, clipped natural params (B, F))."""
        lam = self.head.family.clip_params(self.head.natural_params(obs))
        return torch.softmax(self.log_w + lam @ self.feats.T, -1), lam

    def _q_at_nodes(self, obs: Tensor, q: QFn) -> Tensor:
        x = repeat(self.nodes, "m d -> m b d", b=obs.shape[0])
        return rearrange(q(obs, x), "m b -> b m")

    def objective(self, obs: Tensor, q: QFn, alpha: Tensor) -> tuple[Tensor, Tensor]:
        pi, lam = self.node_probs(obs)
        entropy = self.head.entropy(obs)  # the family's exact value (it applies the clip itself)
        return (pi * self._q_at_nodes(obs, q)).sum(-1) + alpha * entropy, entropy.detach()

    @torch.no_grad()
    def soft_value(self, obs: Tensor, q: QFn, alpha: Tensor) -> Tensor:
        pi, _ = self.node_probs(obs)
        return (pi * self._q_at_nodes(obs, q)).sum(-1) + alpha * self.head.entropy(obs)


def make_actor(head: PolicyHead, cfg: SACConfig) -> nn.Module:
    """The actor for ``cfg.estimator`` around ``head`` (UserError when they do not fit)."""
    if cfg.estimator == "quadrature":
        return QuadratureActor(head, cfg.quad_nodes)
    return HeadActor(head, cfg.estimator, cfg.lr_samples)


# ------------------------------------------------------------------------------------------------ trainer
class ReplayBuffer:
    """Ring buffer of ``(obs, action, reward, next_obs, terminated)`` tensors."""

    def __init__(self, capacity: int, obs_dim: int, act_dim: int):
        self.obs = torch.zeros(capacity, obs_dim)
        self.act = torch.zeros(capacity, act_dim)
        self.rew = torch.zeros(capacity)
        self.next_obs = torch.zeros(capacity, obs_dim)
        self.term = torch.zeros(capacity)
        self.capacity, self.ptr, self.size = capacity, 0, 0

    def add(self, obs: Tensor, act: Tensor, rew: Tensor, next_obs: Tensor, term: Tensor) -> None:
        idx = (self.ptr + torch.arange(obs.shape[0])) % self.capacity
        self.obs[idx], self.act[idx], self.rew[idx], self.next_obs[idx], self.term[idx] = obs, act, rew, next_obs, term
        self.ptr = int((self.ptr + obs.shape[0]) % self.capacity)
        self.size = min(self.size + obs.shape[0], self.capacity)

    def sample(self, n: int) -> tuple[Tensor, ...]:
        idx = torch.randint(0, self.size, (n,))
        return self.obs[idx], self.act[idx], self.rew[idx], self.next_obs[idx], self.term[idx]


def train_sac(
    actor: nn.Module,
    critic: TwinQ,
    envs,
    cfg: SACConfig,
    seed: int,
    log_dir: Path | None = None,
    on_log: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Train ``actor`` (a :class:`HeadActor`, :class:`QuadratureActor` or S2AC actor) and ``critic`` in place;
    return one stats dict per ``cfg.log_every`` env steps (also written to ``log_dir/progress.csv``)."""
    if getattr(actor, "fixed_alpha", False) and (cfg.autotune or actor.alpha != cfg.alpha):
        raise UserError(
            f"sac: the actor samples at the fixed temperature {actor.alpha}; set autotune=false and alpha={actor.alpha}"
        )
    torch.manual_seed(seed)
    np.random.seed(seed)
    rng = np.random.default_rng(seed)
    critic_target = copy.deepcopy(critic).requires_grad_(False)
    actor_params = [p for p in actor.parameters() if p.requires_grad]
    actor_opt = torch.optim.Adam(actor_params, lr=cfg.actor_lr) if actor_params else None
    critic_opt = torch.optim.Adam(critic.parameters(), lr=cfg.critic_lr)
    log_alpha = torch.tensor(math.log(cfg.alpha), requires_grad=cfg.autotune)
    alpha_opt = torch.optim.Adam([log_alpha], lr=cfg.alpha_lr) if cfg.autotune else None
    target_entropy = -float(envs.act_dim) if cfg.target_entropy is None else cfg.target_entropy
    buffer = ReplayBuffer(cfg.buffer_size, envs.obs_dim, envs.act_dim)

    csv_file, csv_writer = None, None
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        csv_file = open(log_dir / "progress.csv", "w", newline="")  # noqa: SIM115 (closed in finally)
    history: list[dict] = []
    stats: dict[str, list[float]] = {"critic_loss": [], "actor_objective": [], "entropy": [], "alpha": []}
    ep_returns: list[np.ndarray] = []
    obs = torch.as_tensor(envs.reset(seed=seed), dtype=torch.float32)
    n_envs, global_step, updates, next_log, t0 = envs.num_envs, 0, 0, cfg.log_every, time.perf_counter()
    try:
        while global_step < cfg.total_steps:
            # ---- act and store
            # ---------------------------------------------------------------------------------
            if global_step < cfg.learning_starts:
                action = torch.as_tensor(rng.uniform(-1.0, 1.0, (n_envs, envs.act_dim)), dtype=torch.float32)
            else:
                action = actor.act(obs)
            next_obs, reward, term, trunc, info = envs.step(action.numpy())
            real_next = np.array(next_obs, dtype=np.float32, copy=True)
            done = np.asarray(term) | np.asarray(trunc)
            if "final_obs" in info and done.any():
                real_next[done] = info["final_obs"][done]  # bootstrap truncated episodes from their last obs
            buffer.add(
                obs,
                action,
                torch.as_tensor(reward, dtype=torch.float32),
                torch.as_tensor(real_next),
                torch.as_tensor(np.asarray(term), dtype=torch.float32),
            )
            obs = torch.as_tensor(next_obs, dtype=torch.float32)
            ep_returns.append(np.asarray(info["episode_return"])[np.asarray(info["episode_done"])])
            global_step += n_envs

            # ---- update
            # ---------------------------------------------------------------------------------------
            if global_step >= cfg.learning_starts and buffer.size >= cfg.batch_size:
                for _ in range(cfg.updates_per_step):
                    b_obs, b_act, b_rew, b_next, b_term = buffer.sample(cfg.batch_size)
                    alpha = log_alpha.detach().exp()
                    with torch.no_grad():
                        v_next = actor.soft_value(b_next, critic_target.min_q, alpha)
                        y = b_rew + cfg.gamma * (1.0 - b_term) * v_next
                    q1, q2 = critic(b_obs, b_act)
                    critic_loss = F.mse_loss(q1, y) + F.mse_loss(q2, y)
                    critic_opt.zero_grad(set_to_none=True)
                    critic_loss.backward()
                    critic_opt.step()
                    stats["critic_loss"].append(critic_loss.item())
                    updates += 1

                    if updates % cfg.policy_frequency == 0:
                        j, entropy = actor.objective(b_obs, critic.min_q, alpha)
                        if actor_opt is not None:
                            actor_opt.zero_grad(set_to_none=True)
                            (-j.mean()).backward()
                            actor_opt.step()
                        if alpha_opt is not None:
                            alpha_loss = log_alpha * (entropy.mean() - target_entropy)
                            alpha_opt.zero_grad(set_to_none=True)
                            alpha_loss.backward()
                            alpha_opt.step()
                        stats["actor_objective"].append(float(j.detach().mean()))
                        stats["entropy"].append(float(entropy.mean()))
                        stats["alpha"].append(float(alpha))

                    with torch.no_grad():
                        for p, pt in zip(critic.parameters(), critic_target.parameters(), strict=True):
                            pt.lerp_(p, cfg.tau)

            # ---- log
            # ------------------------------------------------------------------------------------------
            if global_step >= next_log or global_step >= cfg.total_steps:
                next_log += cfg.log_every
                rets = np.concatenate(ep_returns) if ep_returns else np.zeros(0)
                row = {
                    "env_steps": global_step,
                    "updates": updates,
                    "episodes": int(len(rets)),
                    "episode_return": float(rets.mean()) if len(rets) else float("nan"),
                    **{k: float(np.mean(v)) if v else float("nan") for k, v in stats.items()},
                    "time_s": time.perf_counter() - t0,
                }
                history.append(row)
                ep_returns.clear()
                for v in stats.values():
                    v.clear()
                if on_log is not None:
                    on_log(row)
                if csv_file is not None:
                    if csv_writer is None:
                        csv_writer = csv.DictWriter(csv_file, fieldnames=list(row))
                        csv_writer.writeheader()
                    csv_writer.writerow(row)
                    csv_file.flush()
    finally:
        if csv_file is not None:
            csv_file.close()
    return history


def optimise_known_q(
    actor: nn.Module,
    q: QFn,
    obs_dim: int,
    steps: int,
    alpha: float,
    batch_size: int = 32,
    lr: float = 3e-3,
    seed: int = 0,
    log_every: int = 50,
) -> list[dict]:
    """Bandit with the true reward as critic (the mixture paper's synthetic bandits, §5.1): ascend the actor's
    objective ``E_pi[q] + alpha H`` at a constant zero state; no replay, no critic, fixed alpha.

    Returns rows ``{"step", "objective", "entropy"}`` averaged over ``log_every`` steps.
    """
    torch.manual_seed(seed)
    opt = torch.optim.Adam([p for p in actor.parameters() if p.requires_grad], lr=lr)
    obs = torch.zeros(batch_size, obs_dim)
    a = torch.tensor(float(alpha))
    history, js, hs = [], [], []
    for step in range(1, steps + 1):
        j, h = actor.objective(obs, q, a)
        opt.zero_grad(set_to_none=True)
        (-j.mean()).backward()
        opt.step()
        js.append(j.mean().item())
        hs.append(h.mean().item())
        if step % log_every == 0 or step == steps:
            history.append({"step": step, "objective": float(np.mean(js)), "entropy": float(np.mean(hs))})
            js.clear()
            hs.clear()
    return history


def config_dict(cfg: SACConfig) -> dict:
    return asdict(cfg)
