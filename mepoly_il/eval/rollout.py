"""Roll any :class:`~mepoly_il.policies.base.BasePolicy` out in ManiSkill and write ``eval_info.json``.

Protocol (ManiSkill IL baselines, made reproducible):

* episodes run exactly ``max_episode_steps`` with terminations ignored; per episode ``success_once`` = success at
  any step, ``success_at_end`` = success at the last step, computed here from the per-step ``info["success"]``;
* evaluation seeds are explicit: block ``S`` is ``1_000_000 + 10_000 * S + i`` for episode ``i``, the same for every
  method, and refused if any of them is a demonstration seed of the checkpoint's dataset;
* ``N`` envs step in lock-step; a batch of ``N`` episodes is started with ``reset(seed=[...])``, and the policy's
  queues are cleared (``policy.reset()``) at every batch start;
* the policy's own sampling noise is seeded from the first evaluation seed inside a forked torch RNG, so two runs
  of the same checkpoint give the same numbers and a training run's RNG stream is not disturbed.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mepoly_il.errors import UserError
from mepoly_il.eval.aggregate import EVAL_INFO_NAME
from mepoly_il.policies.base import BasePolicy

EVAL_SEED_BASE = 1_000_000
EVAL_SEED_STRIDE = 10_000
EVAL_INFO_FORMAT = 1
#: ManiSkill seeds numpy's RandomState with each reset seed, which accepts 0 .. 2**32 - 1.
MAX_ENV_SEED = 2**32 - 1


# -- seeds -----------------------------------------------------------------------------------------------------------
def eval_seeds(seed: int, episodes: int, num_envs: int = 1) -> list[int]:
    """Seeds of ``episodes`` consecutive episodes in evaluation block ``seed`` (far above demo seeds 0..~1e3).

    ``num_envs`` only widens the range check: a partial last batch runs its spare envs on the following seeds.
    """
    if episodes < 1:
        raise UserError(f"--episodes must be >= 1, got {episodes}")
    if seed < 0:
        raise UserError(f"--seed must be >= 0, got {seed}")
    if episodes > EVAL_SEED_STRIDE:
        raise UserError(f"--episodes {episodes} exceeds the {EVAL_SEED_STRIDE} seeds of one evaluation block")
    start = EVAL_SEED_BASE + EVAL_SEED_STRIDE * int(seed)
    last = start + int(episodes) - 1 + max(int(num_envs), 1) - 1
    if last > MAX_ENV_SEED:
        top = (MAX_ENV_SEED - EVAL_SEED_BASE - int(episodes) - max(int(num_envs), 1) + 2) // EVAL_SEED_STRIDE
        raise UserError(
            f"--seed {seed}: episode seeds would reach {last}, beyond ManiSkill's limit {MAX_ENV_SEED}; "
            f"use a seed block <= {top}"
        )
    return list(range(start, start + int(episodes)))


def check_seed_overlap(seeds: list[int], demo_seeds: list[int] | None, source: str) -> None:
    """UserError if any evaluation seed is a demonstration seed (the policy has seen that initial state)."""
    if demo_seeds is None:
        raise UserError(
            f"{source}: the dataset provenance has no 'episode_seeds', so evaluation seeds cannot be checked "
            "against the demonstrations; re-train from a dataset made by `mepoly-il data`"
        )
    overlap = sorted(set(int(s) for s in seeds) & set(int(s) for s in demo_seeds))
    if overlap:
        shown = ", ".join(map(str, overlap[:5])) + (", ..." if len(overlap) > 5 else "")
        raise UserError(
            f"{source}: {len(overlap)} evaluation seed(s) are demonstration seeds of the training data ({shown}); "
            "pick another --seed block so evaluation episodes are unseen"
        )


# -- env spec from a policy ------------------------------------------------------------------------------------------
def dataset_meta(policy: BasePolicy) -> dict[str, Any]:
    """The checkpoint's dataset provenance (``policy.meta["dataset"]``); UserError when it is missing."""
    meta = policy.meta.get("dataset") if isinstance(policy.meta, dict) else None
    where = policy.meta.get("checkpoint", "policy") if isinstance(policy.meta, dict) else "policy"
    if not isinstance(meta, dict) or not meta.get("env_id") or not meta.get("control_mode"):
        raise UserError(
            f"{where}: no dataset provenance (env_id, control_mode) in the checkpoint; "
            "only checkpoints written by `mepoly-il fit` can be evaluated"
        )
    return meta


def env_spec_for(
    meta: dict[str, Any],
    max_episode_steps: int | None = None,
    sim_backend: str = "physx_cpu",
    reconfiguration_freq: int = 1,
    render: bool = False,
    render_size: int = 128,
):
    """:class:`EvalEnvSpec` for a dataset provenance dict; episode length: override > per-task table > dataset."""
    from mepoly_il.envs.maniskill import EvalEnvSpec, default_max_episode_steps, resolve_sim_backend

    env_id = str(meta["env_id"])
    steps = max_episode_steps or default_max_episode_steps(env_id) or meta.get("max_episode_steps")
    if not steps:
        raise UserError(f"no max_episode_steps known for {env_id!r}; pass --max-episode-steps")
    obs_mode = str(meta.get("obs_mode") or "state")
    return EvalEnvSpec(
        env_id=env_id,
        control_mode=str(meta["control_mode"]),
        max_episode_steps=int(steps),
        obs_mode=obs_mode,
        sim_backend=resolve_sim_backend(sim_backend),
        reconfiguration_freq=int(reconfiguration_freq),
        render=render,
        render_size=int(render_size),
    )


# -- rollout ---------------------------------------------------------------------------------------------------------
def rollout_mode_fn(env_id: str) -> Callable[[np.ndarray], str] | None:
    """The registered task's mode-label function (:attr:`mepoly_il.tasks.TaskSpec.mode_fn`), or None."""
    from mepoly_il.tasks import find_task, load_mode_fn

    task = find_task(env_id)
    return load_mode_fn(task) if task is not None else None


@dataclass
class RolloutResult:
    """Per-episode rows in seed order, videos frames of the first episodes, and wall-clock split."""

    rows: list[dict[str, Any]]
    frames: dict[int, list[np.ndarray]] = field(default_factory=dict)
    sec: float = 0.0
    policy_sec: float = 0.0
    env_sec: float = 0.0
    env_steps: int = 0


@contextlib.contextmanager
def _policy_eval_mode(policy: BasePolicy, seed: int) -> Iterator[None]:
    was_training = policy.training
    devices = [policy.device.index or 0] if policy.device.type == "cuda" else []
    policy.eval()
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            yield
    finally:
        policy.train(was_training)
        policy.reset()


def run_episodes(
    policy: BasePolicy,
    env,
    seeds: list[int],
    video_episodes: int = 0,
    on_batch: Callable[[int], None] | None = None,
) -> RolloutResult:
    """Run ``len(seeds)`` episodes of ``env.spec.max_episode_steps`` steps, ``env.num_envs`` at a time.

    ``env`` is an :class:`~mepoly_il.envs.maniskill.EvalVecEnv`. The last batch may be partial: its spare envs run
    on the following seeds and are discarded. ``on_batch(n_done)`` is called after every batch (progress bars).
    For a task with a mode function every row also gets ``mode``: the label of the episode's own observations
    (reset and every step, (max_episode_steps + 1, Ds)).
    """
    if policy.obs_dim != env.obs_dim or policy.act_dim != env.act_dim:
        where = policy.meta.get("checkpoint", "policy")
        raise UserError(
            f"{where}: policy dims obs={policy.obs_dim} act={policy.act_dim} do not match {env.spec.env_id} "
            f"({env.spec.control_mode}) obs={env.obs_dim} act={env.act_dim}; the dataset and env disagree"
        )
    n_env, horizon = env.num_envs, env.spec.max_episode_steps
    mode_fn = rollout_mode_fn(env.spec.env_id)
    result = RolloutResult(rows=[])
    t_start = time.perf_counter()
    with _policy_eval_mode(policy, seeds[0]):
        for first in range(0, len(seeds), n_env):
            batch = list(seeds[first : first + n_env])
            n_real = len(batch)
            batch += [batch[-1] + 1 + i for i in range(n_env - n_real)]
            record = [i for i in range(n_real) if first + i < video_episodes]
            t0 = time.perf_counter()
            obs = env.reset(batch)
            result.env_sec += time.perf_counter() - t0
            trajectory = [obs.cpu().numpy()] if mode_fn is not None else None
            policy.reset()
            if record:
                for i, frame in enumerate(env.render()):
                    if i in record:
                        result.frames[first + i] = [frame]
            success = np.zeros((n_env, horizon), dtype=bool)
            returns = np.zeros(n_env, dtype=np.float64)
            truncated = np.zeros(n_env, dtype=bool)
            for t in range(horizon):
                if truncated.any():
                    raise RuntimeError(f"{env.spec.env_id}: env truncated at step {t} < max_episode_steps={horizon}")
                t0 = time.perf_counter()
                action = policy.select_action(obs)  # (N, Da)
                t1 = time.perf_counter()
                out = env.step(action)
                result.env_sec += time.perf_counter() - t1
                result.policy_sec += t1 - t0
                obs, success[:, t], truncated = out.obs, out.success, out.truncated
                returns += out.reward
                if trajectory is not None:
                    trajectory.append(obs.cpu().numpy())
                if record:
                    for i, frame in enumerate(env.render()):
                        if i in record:
                            result.frames[first + i].append(frame)
            # The TimeLimit must end the episode exactly here, otherwise our lengths are not the protocol's.
            if not truncated.all():
                raise RuntimeError(f"{env.spec.env_id}: envs not truncated after max_episode_steps={horizon}")
            result.env_steps += n_env * horizon
            for i in range(n_real):
                hits = np.flatnonzero(success[i])
                result.rows.append(
                    {
                        "episode": first + i,
                        "seed": int(batch[i]),
                        "success_once": bool(hits.size > 0),
                        "success_at_end": bool(success[i, -1]),
                        "first_success_step": int(hits[0]) + 1 if hits.size else None,
                        "episode_len": int(horizon),
                        "return": float(returns[i]),
                        **({"mode": str(mode_fn(np.stack(trajectory)[:, i]))} if trajectory is not None else {}),
                    }
                )
            if on_batch is not None:
                on_batch(len(result.rows))
    result.sec = time.perf_counter() - t_start
    return result


def aggregate_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean success_once / success_at_end / return over episodes; with mode labels also :func:`mode_counts`."""
    n = len(rows)
    mean = lambda key: float(np.mean([float(r[key]) for r in rows])) if n else math.nan
    out = {
        "success_once": mean("success_once"),
        "success_at_end": mean("success_at_end"),
        "return": mean("return"),
        "n_episodes": n,
    }
    if rows and all("mode" in r for r in rows):
        out["modes"] = mode_counts(rows)
    return out


def mode_counts(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per mode label (sorted): ``episodes``, ``successes`` (success_once) and ``success_share``, the fraction of
    all successful episodes that followed this mode (null when no episode succeeded)."""
    total = sum(bool(r["success_once"]) for r in rows)
    out = {}
    for mode in sorted({str(r["mode"]) for r in rows}):
        mine = [r for r in rows if str(r["mode"]) == mode]
        wins = sum(bool(r["success_once"]) for r in mine)
        out[mode] = {"episodes": len(mine), "successes": wins, "success_share": wins / total if total else None}
    return out


def format_modes(aggregated: dict[str, Any]) -> str | None:
    """One line for the per-mode counts of an ``aggregated`` dict, e.g. ``modes: left 40/41 (51% of successes),
    ...``; None when the evaluation has no mode labels."""
    modes = aggregated.get("modes")
    if not modes:
        return None
    share = lambda v: "-" if v["success_share"] is None else f"{100 * v['success_share']:.0f}%"  # noqa: E731
    parts = [f"{m} {v['successes']}/{v['episodes']} ({share(v)} of successes)" for m, v in modes.items()]
    return "modes (successes/episodes): " + ", ".join(parts)


def write_video(path: str | os.PathLike, frames: list[np.ndarray], fps: int = 20) -> Path:
    """Write (H, W, 3) uint8 frames as an mp4 (atomic)."""
    import imageio.v2 as imageio

    from mepoly_il.utils import atomic_path

    with atomic_path(path, overwrite=True) as tmp:
        imageio.mimwrite(tmp, [np.ascontiguousarray(f) for f in frames], fps=fps, macro_block_size=1)
    return Path(path)


def evaluate_policy(
    policy: BasePolicy,
    spec,
    seeds: list[int],
    num_envs: int = 1,
    video_dir: str | os.PathLike | None = None,
    video_episodes: int = 0,
    env=None,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Evaluate ``policy`` on ``seeds``; returns ``{"per_episode", "aggregated", "video_paths"}``.

    Pass an open ``env`` to reuse it (the training callback does); otherwise one is built from ``spec`` and closed.
    """
    from mepoly_il.envs.maniskill import make_eval_env

    video_episodes = int(video_episodes) if video_dir is not None else 0
    if video_episodes and not spec.render:
        raise ValueError("video requested but the env spec has render=False")
    own_env = env is None
    if own_env:
        env = make_eval_env(spec, num_envs=min(num_envs, len(seeds)))
    try:
        result = run_episodes(policy, env, seeds, video_episodes=video_episodes, on_batch=on_batch)
    finally:
        if own_env:
            env.close()
    video_paths = []
    for ep in sorted(result.frames):
        path = Path(video_dir) / f"episode_{ep:04d}_seed{seeds[ep]}.mp4"
        video_paths.append(str(write_video(path, result.frames[ep])))
    aggregated = aggregate_rows(result.rows)
    aggregated.update(
        sec=round(result.sec, 3),
        policy_sec=round(result.policy_sec, 3),
        env_sec=round(result.env_sec, 3),
        env_steps=result.env_steps,
        env_steps_per_sec=round(result.env_steps / max(result.sec, 1e-9), 1),
    )
    return {"per_episode": result.rows, "aggregated": aggregated, "video_paths": video_paths}


# -- checkpoints -----------------------------------------------------------------------------------------------------
@functools.cache
def code_version() -> dict[str, Any]:
    """``{"mepoly_il": __version__, "git_commit": sha or None, "git_dirty": bool or None}``."""
    from mepoly_il import __version__

    out: dict[str, Any] = {"mepoly_il": __version__, "git_commit": None, "git_dirty": None}
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        out.update(git_commit=sha or None, git_dirty=bool(dirty))
    except (OSError, subprocess.SubprocessError):
        pass  # not a git checkout (installed wheel): the package version is all there is
    return out


def find_train_seed(ckpt_path: str | os.PathLike, max_up: int = 3) -> int | None:
    """``seed_everything`` of the LightningCLI ``config.yaml`` saved nearest to a checkpoint, if any.

    LightningCLI saves the config in the logger's version folder (``<root>/<name>/version_N/config.yaml``) while
    checkpoints may sit in ``<root>/checkpoints``, so each ancestor is searched together with its version folders.
    """
    import yaml

    for parent in list(Path(ckpt_path).resolve().parents)[:max_up]:
        candidates = [parent / "config.yaml", *parent.glob("*/config.yaml"), *parent.glob("*/version_*/config.yaml")]
        candidates = [c for c in candidates if c.is_file()]
        if not candidates:
            continue
        newest = max(candidates, key=lambda c: c.stat().st_mtime)
        try:
            seed = (yaml.safe_load(newest.read_text()) or {}).get("seed_everything")
        except (yaml.YAMLError, AttributeError):
            return None
        return int(seed) if isinstance(seed, int) and not isinstance(seed, bool) else None
    return None


def list_checkpoints(path: str | os.PathLike) -> list[tuple[Path, dict[str, Any]]]:
    """The checkpoint at ``path``, or every ``*.ckpt`` under a directory, as (path, ckpt dict) ordered by step.

    ``last.ckpt`` is skipped when another checkpoint in the same folder has the same ``global_step`` (it is then a
    copy of that one); otherwise it is kept, since it is the only record of the final weights.
    """
    from mepoly_il.policies import read_checkpoint

    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.ckpt") if p.is_file() and ".tmp-" not in str(p))
        if not files:
            raise UserError(f"{path}: no *.ckpt files under this directory; pass a checkpoint or a run directory")
    elif path.exists():
        files = [path]
    else:
        raise UserError(f"{path}: no such checkpoint or directory; pass a .ckpt written by `mepoly-il fit`")
    loaded = [(p, read_checkpoint(p)) for p in files]
    if path.is_dir():
        # A directory may mix acting checkpoints with MePoly stage-1 ones (VAE only, "policy": None): skip those.
        acting = [(p, c) for p, c in loaded if c["mepoly_il"].get("policy") is not None]
        if not acting:
            raise UserError(f"{path}: no checkpoint here can act (stage-1 VAE only); evaluate stage-2 or DP runs")
        if len(acting) < len(loaded):
            print(f"note: skipping {len(loaded) - len(acting)} stage-1 checkpoint(s) under {path}", file=sys.stderr)
        loaded = acting
    steps = {(p.parent, int(c.get("global_step", -1))) for p, c in loaded if p.name != "last.ckpt"}
    kept = [
        (p, c) for p, c in loaded if p.name != "last.ckpt" or (p.parent, int(c.get("global_step", -1))) not in steps
    ]
    return sorted(kept, key=lambda pc: (int(pc[1].get("global_step", -1)), str(pc[0])))


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if isinstance(obj, (np.generic,)):
        return obj.item()
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return obj.item()
    return repr(obj)


def checkpoint_provenance(path: Path, ckpt: dict[str, Any]) -> dict[str, Any]:
    """Identity of a checkpoint: path, sha256, global_step, policy kind, hyper_parameters, dataset, train seed."""
    from mepoly_il.utils import sha256_file

    info = ckpt.get("mepoly_il", {})
    return {
        "checkpoint": str(path),
        "checkpoint_sha256": sha256_file(path),
        "global_step": int(ckpt.get("global_step", -1)),
        "epoch": ckpt.get("epoch"),
        "policy": info.get("policy"),
        # DP keeps Lightning's hyper_parameters; MePoly moves them under mepoly_il.hparams.
        "config": _jsonable(ckpt.get("hyper_parameters") or info.get("hparams") or {}),
        "dataset": _jsonable({k: v for k, v in info.get("dataset", {}).items() if k != "episode_seeds"}),
        "n_demo_seeds": len(info.get("dataset", {}).get("episode_seeds", []) or []),
        "train_seed": info["train_seed"] if isinstance(info.get("train_seed"), int) else find_train_seed(path),
    }


def eval_info_dir(ckpt_path: Path, out: str | os.PathLike | None, name: str | None = None) -> Path:
    """Where a checkpoint's ``eval_info.json`` and videos go: ``<out>/<name>/`` or ``<ckpt dir>/eval/<stem>/``."""
    name = name or ckpt_path.stem
    return Path(out) / name if out is not None else ckpt_path.parent / "eval" / name


def _read_cached(info_path: Path) -> dict[str, Any]:
    """A previous ``eval_info.json``; a one-line UserError when it is damaged (it is never silently replaced)."""
    import json

    try:
        old = json.loads(info_path.read_text())
        old["provenance"]["checkpoint_sha256"], old["aggregated"]["success_once"]  # noqa: B018  (required keys)
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(
            f"{info_path}: corrupt eval_info.json (unreadable or incomplete); delete it to re-evaluate"
        ) from None
    return old


def cache_matches(old: dict[str, Any], checkpoint_sha256: str, settings: dict[str, Any]) -> bool:
    """Whether a previous ``eval_info.json`` answers an evaluation with these checkpoint bytes and settings.

    Every setting counts except ``video_episodes``; ``num_envs`` does because batches share the policy's noise
    stream and the last batch is padded, so the same seeds give different episodes with another ``num_envs``.
    """
    prov = old["provenance"]
    return prov["checkpoint_sha256"] == checkpoint_sha256 and all(
        prov.get(k) == v for k, v in settings.items() if k != "video_episodes"
    )


def evaluate_checkpoint(
    ckpt_path: Path,
    ckpt: dict[str, Any] | None,
    out_dir: Path,
    episodes: int,
    seed: int = 0,
    num_envs: int = 1,
    video: int = 0,
    max_episode_steps: int | None = None,
    sim_backend: str = "physx_cpu",
    reconfiguration_freq: int = 1,
    device: str = "cpu",
    overwrite: bool = False,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[dict[str, Any], bool]:
    """Evaluate one checkpoint and write ``out_dir/eval_info.json``; returns (eval_info, ran).

    An existing ``eval_info.json`` for the same checkpoint bytes and settings is returned as is (``ran=False``), so
    re-running on a growing run directory only evaluates new checkpoints; different settings need ``overwrite``.
    """
    from mepoly_il.policies import load_policy, read_checkpoint
    from mepoly_il.utils import write_json_atomic

    seeds = eval_seeds(seed, episodes, num_envs)
    info_path = out_dir / EVAL_INFO_NAME
    old = _read_cached(info_path) if info_path.exists() and not overwrite else None
    ckpt = ckpt if ckpt is not None else read_checkpoint(ckpt_path)
    policy = load_policy(ckpt_path, device=device)
    meta = dataset_meta(policy)
    check_seed_overlap(seeds, meta.get("episode_seeds"), str(ckpt_path))
    spec = env_spec_for(meta, max_episode_steps, sim_backend, reconfiguration_freq, render=video > 0)
    prov = checkpoint_provenance(ckpt_path, ckpt)
    settings = {
        "eval_seed_block": int(seed),
        "seeds": seeds,
        **{k: v for k, v in spec.to_dict().items() if k not in ("render", "render_size")},
        "num_envs": int(num_envs),
        "video_episodes": int(video),
    }
    if old is not None:
        if cache_matches(old, prov["checkpoint_sha256"], settings):
            return old, False
        raise UserError(
            f"{info_path}: exists with a different checkpoint or settings; pass --overwrite or choose another --out"
        )
    dataset_backend = meta.get("sim_backend")
    if dataset_backend in ("physx_cpu", "physx_cuda") and dataset_backend != spec.sim_backend:
        # ManiSkill's IL docs: small simulator differences change outcomes (notably PushT); say so, do not refuse.
        print(
            f"note: {ckpt_path}: demos were recorded on {dataset_backend}, evaluating on {spec.sim_backend}",
            file=sys.stderr,
        )
    result = evaluate_policy(
        policy,
        spec,
        seeds,
        num_envs=num_envs,
        video_dir=out_dir / "videos" if video > 0 else None,
        video_episodes=video,
        on_batch=on_batch,
    )
    # Relative paths keep the eval folder movable.
    result["video_paths"] = [os.path.relpath(p, out_dir) for p in result["video_paths"]]
    eval_info = {
        "format_version": EVAL_INFO_FORMAT,
        **result,
        "provenance": {
            **prov,
            "method": prov["policy"],
            "env_id": spec.env_id,
            **settings,
            "dataset_sim_backend": dataset_backend,
            "code_version": code_version(),
            "created_unix": time.time(),
        },
    }
    write_json_atomic(info_path, eval_info)
    return eval_info, True
