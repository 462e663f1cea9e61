"""`mepoly-il bench eval`: env steps/s of a rollout with a policy vs raw simulator stepping.

Same envs, same run, same episode structure (explicit seeded resets, ``max_episode_steps`` steps per episode):

* ``raw``: random actions straight into the vector env (the ceiling);
* ``raw (<policy>'s actions replayed)``: the actions a policy row produced, stepped again without the policy. Same
  seeds, same physics (contacts cost more than free motion, so random actions are not the same workload): the
  rollout / replay ratio isolates what the policy and the evaluator loop cost;
* one row per policy: the real evaluator (:func:`mepoly_il.eval.rollout.run_episodes`) driving
  - ``linear``: a one-layer BasePolicy (random weights), so the row measures the rollout machinery itself
    (queues, normalizers, tensor <-> numpy, bookkeeping): the goal is >= 80 % of raw;
  - ``mepoly``: a MePoly policy with random weights at its default (paper) size;
  - ``dp``: ManiSkill's DP UNet (random weights) with the chosen sampler (default DDIM-10; DDPM-100 is the baseline's).
  Network rows show what a real evaluation costs; their ratio is dominated by the network, not the loop.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from mepoly_il.errors import UserError
from mepoly_il.policies.base import BasePolicy


class LinearPolicy(BasePolicy):
    """(B, To, Ds) -> (B, T, Da) through one linear layer: the cheapest real network a policy can have."""

    def __init__(self, obs_dim: int, act_dim: int, obs_horizon: int = 2, act_horizon: int = 8, pred_horizon: int = 16):
        super().__init__(obs_dim, act_dim, obs_horizon, act_horizon, pred_horizon)
        self.net = nn.Linear(obs_horizon * obs_dim, pred_horizon * act_dim)

    def generate(self, obs_norm: torch.Tensor) -> torch.Tensor:
        from einops import rearrange

        out = self.net(rearrange(obs_norm, "b t d -> b (t d)"))
        return torch.tanh(rearrange(out, "b (t d) -> b t d", t=self.pred_horizon))


def build_policy(kind: str, obs_dim: int, act_dim: int, dp_inference: str, dp_steps: int) -> BasePolicy:
    """A policy of ``kind`` with random weights and identity normalizers (To 2, Ta 8, T 16)."""
    horizons = (2, 8, 16)
    if kind == "linear":
        return LinearPolicy(obs_dim, act_dim, *horizons)
    if kind == "mepoly":
        from mepoly_il.policies.mepoly.policy import MePolyPolicy

        return MePolyPolicy(obs_dim, act_dim, *horizons)
    if kind == "dp":
        from mepoly_il.policies.diffusion.policy import DiffusionPolicy

        return DiffusionPolicy(obs_dim, act_dim, *horizons, inference=dp_inference, num_inference_steps=dp_steps)
    raise UserError(f"unknown --policies entry {kind!r}; choose from linear, mepoly, dp")


def raw_steps_per_sec(env, seeds: list[int], rng: np.random.Generator) -> dict[str, Any]:
    """Random actions, same resets and episode length as the evaluator; returns steps, sec, steps/s."""
    n, horizon = env.num_envs, env.spec.max_episode_steps
    steps, t0 = 0, time.perf_counter()
    for first in range(0, len(seeds), n):
        batch = list(seeds[first : first + n]) + [seeds[-1] + 1 + i for i in range(n - len(seeds[first : first + n]))]
        env.reset(batch)
        for _ in range(horizon):
            env.step(torch.as_tensor(rng.uniform(-1, 1, size=(n, env.act_dim)), dtype=torch.float32))
        steps += n * horizon
    sec = time.perf_counter() - t0
    return {"steps": steps, "sec": round(sec, 3), "steps_per_sec": round(steps / sec, 1)}


class _Recorder:
    """Passes through to an EvalVecEnv and keeps the actions of every step, to replay them raw afterwards."""

    def __init__(self, env) -> None:
        self.env, self.actions = env, []
        self.spec, self.num_envs, self.obs_dim, self.act_dim = env.spec, env.num_envs, env.obs_dim, env.act_dim

    def reset(self, seeds):
        return self.env.reset(seeds)

    def step(self, actions):
        self.actions.append(actions.detach().cpu().clone())
        return self.env.step(actions)


def replay_steps_per_sec(env, seeds: list[int], actions: list[torch.Tensor]) -> dict[str, Any]:
    """Step the recorded actions with the same seeded resets: the same physics as the rollout, without the policy."""
    n, horizon = env.num_envs, env.spec.max_episode_steps
    t0, k = time.perf_counter(), 0
    for first in range(0, len(seeds), n):
        batch = list(seeds[first : first + n]) + [seeds[-1] + 1 + i for i in range(n - len(seeds[first : first + n]))]
        env.reset(batch)
        for _ in range(horizon):
            env.step(actions[k])
            k += 1
    sec = time.perf_counter() - t0
    return {"steps": k * n, "sec": round(sec, 3), "steps_per_sec": round(k * n / sec, 1)}


def ee_controller_speed(env_id: str, control_mode: str, steps: int, repeats: int) -> dict[str, Any]:
    """One CPU env, one seed, the same random actions stepped with this package's fast end-effector path and with
    ManiSkill's own ``set_action`` (:mod:`mepoly_il.envs.maniskill_fast_ee`), alternating over ``repeats`` rounds:
    steps/s of each (best round), the speed-up, and whether every observation matched bit for bit."""
    from mepoly_il.envs import maniskill_fast_ee as fast_ee
    from mepoly_il.envs.maniskill import import_maniskill

    gym = import_maniskill()
    if not fast_ee.install():
        return {"skipped": "fast path switched off (MEPOLY_STOCK_EE_CONTROL) or not available for this ManiSkill"}
    env = gym.make(env_id, obs_mode="state", control_mode=control_mode, sim_backend="physx_cpu", reward_mode="sparse")
    try:
        env.reset(seed=0)
        arm = env.unwrapped.agent.controller.controllers.get("arm")
        applies = arm is not None and fast_ee.applies(arm)
        actions = np.random.default_rng(0).uniform(-1, 1, size=(steps, *env.action_space.shape)).astype(np.float32)
        best: dict[str, float] = {}
        observations: dict[str, np.ndarray] = {}
        for _ in range(repeats):
            for name, fast in (("fast", True), ("maniskill", False)):
                if fast:
                    fast_ee.install()
                else:
                    fast_ee.uninstall()
                # a fresh scene each round: PhysX keeps contact state across plain resets
                env.reset(seed=0, options={"reconfigure": True})
                obs = []
                t0 = time.perf_counter()
                for action in actions:
                    obs.append(env.step(action)[0])
                sec = time.perf_counter() - t0
                best[name] = max(best.get(name, 0.0), steps / sec)
                observations[name] = torch.stack(obs).numpy()
    finally:
        fast_ee.install()
        env.close()
    return {
        "env_id": env_id,
        "control_mode": control_mode,
        "fast_path_applies": applies,
        "steps": steps,
        "fast_steps_per_sec": round(best["fast"], 1),
        "maniskill_steps_per_sec": round(best["maniskill"], 1),
        "speedup": round(best["fast"] / best["maniskill"], 3),
        "identical_observations": bool(np.array_equal(observations["fast"], observations["maniskill"])),
    }


def benchmark(
    *,
    env_id: str = "PushCube-v1",
    control_mode: str = "pd_ee_delta_pos",
    num_envs: int = 1,
    episodes: int = 4,
    max_episode_steps: int | None = None,
    reconfiguration_freq: int = 1,
    policies: str = "linear,mepoly,dp",
    dp_inference: Literal["ddim", "ddpm"] = "ddim",
    dp_steps: int = 10,
    sim_backend: Literal["auto", "physx_cpu", "physx_cuda"] = "physx_cpu",
    device: str = "cpu",
    threads: int | None = None,
    repeats: int = 3,
    quick: bool = False,
    out: str = "bench_eval.json",
    command: str = "mepoly-il bench eval",
) -> int:
    """Measure raw, replayed and policy-driven env steps/s in the same envs, print the table and write the JSON.

    Args:
        env_id: ManiSkill task
        control_mode: controller of the env
        num_envs: parallel envs (CPU: processes)
        episodes: episodes per row
        max_episode_steps: steps per episode (default: the task's protocol length)
        reconfiguration_freq: 1 = protocol; 0 isolates stepping cost
        policies: comma-separated: linear, mepoly, dp
        dp_inference: DP sampler of the dp row: ddim or ddpm
        dp_steps: denoising steps of the dp row (DDPM: 100)
        sim_backend: auto, physx_cpu or physx_cuda
        device: policy device
        threads: torch intra-op threads (default: torch's choice)
        repeats: interleaved rounds; the best round of each row is kept
        quick: smoke test: 1 episode of 16 steps, linear policy only
        out: JSON output path
        command: the command line recorded in the JSON
    """
    from mepoly_il.envs.maniskill import make_eval_env
    from mepoly_il.eval.rollout import env_spec_for, eval_seeds, run_episodes
    from mepoly_il.utils import write_json_atomic

    if threads:
        torch.set_num_threads(threads)
    if quick:
        episodes, max_episode_steps, policies = 1, max_episode_steps or 16, "linear"
        repeats = 1
    kinds = [k.strip() for k in policies.split(",") if k.strip()]
    meta = {"env_id": env_id, "control_mode": control_mode, "obs_mode": "state"}
    spec = env_spec_for(meta, max_episode_steps, sim_backend, reconfiguration_freq)
    seeds = eval_seeds(0, episodes)
    t_make = time.perf_counter()
    with make_eval_env(spec, num_envs=min(num_envs, episodes)) as env:
        make_sec = time.perf_counter() - t_make
        built = {k: build_policy(k, env.obs_dim, env.act_dim, dp_inference, dp_steps) for k in kinds}
        rng = np.random.default_rng(0)
        raw_steps_per_sec(env, seeds[:1], rng)  # warm-up: first resets and steps are slower
        # Rows are interleaved over `repeats` rounds and the best round is kept: the machine may be shared, and
        # the least-disturbed round is the closest to the true cost (as timeit takes the minimum).
        rounds: dict[str, list[dict[str, Any]]] = {"raw": []}
        for _ in range(repeats):
            rounds["raw"].append(raw_steps_per_sec(env, seeds, rng))
            for kind, policy in built.items():
                policy.to(device)
                recorder = _Recorder(env)
                result = run_episodes(policy, recorder, seeds)
                rounds.setdefault(kind, []).append(
                    {
                        "steps": result.env_steps,
                        "sec": round(result.sec, 3),
                        "steps_per_sec": round(result.env_steps / result.sec, 1),
                        "policy_sec": round(result.policy_sec, 3),
                        "env_sec": round(result.env_sec, 3),
                    }
                )
                rounds.setdefault(f"{kind}/replay", []).append(replay_steps_per_sec(env, seeds, recorder.actions))
    ee_controller = (
        ee_controller_speed(spec.env_id, spec.control_mode, spec.max_episode_steps, repeats)
        if spec.sim_backend == "physx_cpu"
        else {"skipped": "GPU simulator"}
    )
    best = {k: max(v, key=lambda r: r["steps_per_sec"]) for k, v in rounds.items()}
    raw_sps = best["raw"]["steps_per_sec"]
    rows: list[dict[str, Any]] = [{"name": "raw (random actions)", **best["raw"], "ratio": 1.0}]
    for kind, policy in built.items():
        label = kind if kind != "dp" else f"dp ({dp_inference}-{dp_steps})"
        n_params = sum(p.numel() for p in policy.parameters())
        replay = best[f"{kind}/replay"]
        rows.append(
            {
                "name": f"raw ({label}'s actions replayed)",
                **replay,
                "ratio": round(replay["steps_per_sec"] / raw_sps, 3),
            }
        )
        rows.append(
            {
                "name": label,
                "params": n_params,
                **best[kind],
                "ratio": round(best[kind]["steps_per_sec"] / raw_sps, 3),
                "ratio_vs_replay": round(best[kind]["steps_per_sec"] / replay["steps_per_sec"], 3),
            }
        )
    result = {
        "bench": "eval",
        "env_id": spec.env_id,
        "control_mode": spec.control_mode,
        "sim_backend": spec.sim_backend,
        "num_envs": min(num_envs, episodes),
        "episodes": episodes,
        "max_episode_steps": spec.max_episode_steps,
        "reconfiguration_freq": spec.reconfiguration_freq,
        "env_make_sec": round(make_sec, 2),
        "torch_threads": torch.get_num_threads(),
        "repeats": repeats,
        "rows": rows,
        "rounds": rounds,
        "ee_controller": ee_controller,
        "goal": "rollout >= 0.8 x raw steps/s (linear policy: the evaluator's own overhead)",
        "command": command,
    }
    print(
        f"bench eval: {spec.env_id} {spec.sim_backend} num_envs={result['num_envs']} episodes={episodes} "
        f"x {spec.max_episode_steps} steps, reconfiguration_freq={spec.reconfiguration_freq}"
    )
    print("| rollout | params | env steps/s | vs raw random | vs same actions replayed | policy s | env s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        vs_replay = f"{r['ratio_vs_replay']:.2f}" if "ratio_vs_replay" in r else "-"
        print(
            f"| {r['name']} | {r.get('params', '-')} | {r['steps_per_sec']} | {r['ratio']:.2f} | {vs_replay} | "
            f"{r.get('policy_sec', '-')} | {r.get('env_sec', r['sec'])} |"
        )
    ee = result["ee_controller"]
    if "skipped" not in ee:
        print(
            f"one CPU env, {ee['control_mode']}: {ee['fast_steps_per_sec']} steps/s with the fast EE path vs "
            f"{ee['maniskill_steps_per_sec']} with ManiSkill's own ({ee['speedup']:.2f}x), identical observations: "
            f"{ee['identical_observations']}"
            + ("" if ee["fast_path_applies"] else " (the fast path does not apply to this controller)")
        )
    spread = [r["steps_per_sec"] for r in rounds["raw"]]
    print(f"best of {repeats} interleaved rounds; raw steps/s per round: {spread} (machine noise)")
    write_json_atomic(out, result)
    print(f"wrote {out}", file=sys.stderr)
    return 0
