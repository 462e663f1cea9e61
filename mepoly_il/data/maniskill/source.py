"""Reading ManiSkill trajectory files (``.h5`` + ``.json``): structure checks with one-line errors, then the
per-episode arrays that conversion replays or copies."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mepoly_il.data.maniskill.sim import SIM_BACKEND
from mepoly_il.data.zarr_io import Episode
from mepoly_il.errors import UserError

#: Simulation backends ManiSkill accepts (and ``cuda:N``); demos from any of them are replayed on physx_cpu.
_SIM_BACKENDS = ("physx_cpu", "physx_cuda", "cpu", "gpu", "auto")


@dataclass
class SourceDemos:
    """A validated ManiSkill trajectory file pair."""

    h5: Path
    json_path: Path
    meta: dict[str, Any]
    env_id: str
    control_mode: str
    obs_mode: str
    sim_backend: str
    episodes: list[dict[str, Any]]


def _fix_regen(path: Path) -> str:
    return f"regenerate it with `mepoly-il data generate` (or ManiSkill's motion planner) and convert {path.name} again"


def read_source(src: str | os.PathLike) -> SourceDemos:
    """Open and check a ManiSkill ``.h5`` + ``.json`` pair (structure only; arrays are read per episode)."""
    import h5py

    src = Path(src)
    if not src.exists():
        raise UserError(f"{src}: no such file; pass the .h5 written by `mepoly-il data generate`")
    if src.is_dir():
        found = sorted(p.name for p in src.glob("*.h5"))
        hint = f" (it holds {', '.join(found[:3])})" if found else ""
        raise UserError(f"{src}: is a directory{hint}; pass the .h5 file itself to --src")
    json_path = src.with_suffix(".json")
    if not json_path.exists():
        raise UserError(
            f"{src}: missing {json_path.name} next to it (ManiSkill writes a .json beside every .h5); "
            "copy it there or regenerate the demos"
        )
    try:
        meta = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        why = err.msg if isinstance(err, json.JSONDecodeError) else "not UTF-8"
        raise UserError(f"{json_path}: not valid JSON ({why}); {_fix_regen(src)}") from None
    try:
        env_info = meta["env_info"]
        env_id = env_info["env_id"]
        kwargs = env_info.get("env_kwargs", {})
        episodes = list(meta["episodes"])
    except (KeyError, TypeError):
        raise UserError(
            f"{json_path}: not a ManiSkill trajectory json (needs env_info and episodes); {_fix_regen(src)}"
        ) from None
    if not episodes:
        raise UserError(f"{json_path}: lists no episodes; {_fix_regen(src)}")
    control_mode = kwargs.get("control_mode") or "pd_joint_pos"
    obs_mode = kwargs.get("obs_mode") or "none"
    sim_backend = kwargs.get("sim_backend") or SIM_BACKEND
    if not isinstance(sim_backend, str) or not (sim_backend in _SIM_BACKENDS or sim_backend.startswith("cuda")):
        raise UserError(
            f"{json_path}: env_kwargs.sim_backend {sim_backend!r} is not a ManiSkill backend "
            f"({', '.join(_SIM_BACKENDS)}); use the .json written with this .h5 or {_fix_regen(src)}"
        )
    if not isinstance(control_mode, str):
        raise UserError(f"{json_path}: env_kwargs.control_mode {control_mode!r} is not a string; {_fix_regen(src)}")
    try:
        h5 = h5py.File(src, "r")
    except OSError as err:
        raise UserError(f"{src}: cannot read HDF5 (truncated or corrupt: {err}); {_fix_regen(src)}") from None
    with h5:
        for ep in episodes:
            traj = f"traj_{ep.get('episode_id')}"
            if ep.get("control_mode", control_mode) != control_mode:
                raise UserError(
                    f"{json_path}: episode {ep.get('episode_id')} has control mode {ep.get('control_mode')} but "
                    f"env_kwargs say {control_mode}; mixed files are not supported, split or regenerate them"
                )
            try:
                group = h5[traj]
                n_act = group["actions"].shape[0]
            except KeyError:
                raise UserError(
                    f"{src}: json lists {traj} but the h5 has no such episode (json and h5 do not match); "
                    f"use the .json written with this .h5 or {_fix_regen(src)}"
                ) from None
            except OSError as err:
                raise UserError(f"{src}: cannot read {traj} (truncated or corrupt: {err}); {_fix_regen(src)}") from None
            if "elapsed_steps" in ep and int(ep["elapsed_steps"]) != n_act:
                raise UserError(
                    f"{src}: {traj} has {n_act} actions but the json says {ep['elapsed_steps']} steps (json and h5 do "
                    f"not match); use the .json written with this .h5 or {_fix_regen(src)}"
                )
            if n_act == 0:
                raise UserError(f"{src}: {traj} has zero length; {_fix_regen(src)}")
    return SourceDemos(
        h5=src,
        json_path=json_path,
        meta=meta,
        env_id=env_id,
        control_mode=control_mode,
        obs_mode=obs_mode,
        sim_backend=sim_backend,
        episodes=episodes,
    )


def _first_state(group) -> dict:
    """Env state dict at t=0 from an ``env_states`` h5 group (nested dict of (T+1, ...) arrays)."""
    out = {}
    for key, item in group.items():
        out[key] = _first_state(item) if hasattr(item, "keys") else np.asarray(item[0])
    return out


def _episode_seed(ep: dict) -> int:
    seed = ep.get("episode_seed", ep.get("reset_kwargs", {}).get("seed"))
    if isinstance(seed, list):
        seed = seed[0]
    if seed is None:
        raise UserError(f"episode {ep.get('episode_id')}: no episode_seed in the json; cannot replay it")
    return int(seed)


def read_tasks(source: SourceDemos) -> list[dict[str, Any]]:
    import h5py

    tasks = []
    try:
        with h5py.File(source.h5, "r") as h5:
            for i, ep in enumerate(source.episodes):
                traj = f"traj_{ep['episode_id']}"
                group = h5[traj]
                actions = np.asarray(group["actions"][:], dtype=np.float32)
                if not np.isfinite(actions).all():
                    step = int(np.argwhere(~np.isfinite(actions))[0, 0])
                    raise UserError(f"{source.h5}: {traj} has NaN/inf actions at step {step}; {_fix_regen(source.h5)}")
                if "env_states" not in group:
                    raise UserError(f"{source.h5}: {traj} has no env_states to replay from; {_fix_regen(source.h5)}")
                reset_kwargs = {k: v for k, v in (ep.get("reset_kwargs") or {}).items() if k in ("options",)}
                if reset_kwargs.get("options") is None:
                    reset_kwargs.pop("options", None)
                tasks.append(
                    {
                        "index": i,
                        "seed": _episode_seed(ep),
                        "reset_kwargs": reset_kwargs,
                        "state0": _first_state(group["env_states"]),
                        "actions": actions,
                    }
                )
    except OSError as err:
        raise UserError(
            f"{source.h5}: cannot read HDF5 (truncated or corrupt: {err}); {_fix_regen(source.h5)}"
        ) from None
    return tasks


def read_stored_obs(source: SourceDemos) -> list[Episode]:
    """Episodes straight from an h5 that already has flat obs in the wanted modes (no simulation)."""
    import h5py

    eps = []
    with h5py.File(source.h5, "r") as h5:
        for ep in source.episodes:
            traj = f"traj_{ep['episode_id']}"
            group = h5[traj]
            if "obs" not in group or hasattr(group["obs"], "keys"):
                raise UserError(f"{source.h5}: {traj} has no flat obs array; replay it with --obs-mode state")
            obs = np.asarray(group["obs"][:], dtype=np.float32)
            actions = np.asarray(group["actions"][:], dtype=np.float32)
            if len(obs) != len(actions) + 1:
                raise UserError(
                    f"{source.h5}: {traj} has {len(obs)} observations for {len(actions)} actions (expected one more); "
                    f"{_fix_regen(source.h5)}"
                )
            eps.append(Episode(state=obs[:-1], action=actions, seed=_episode_seed(ep)))
    return eps
