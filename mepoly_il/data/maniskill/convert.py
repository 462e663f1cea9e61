"""Demo conversion: ManiSkill h5 + json -> a mepoly-il zarr dataset in the policy's observation and control mode.

:func:`convert` replays every episode from its stored seed (and, only if the seed does not reproduce it, its first
env state) on the CPU simulator, converting ``pd_joint_pos`` actions to the target control mode (ManiSkill's
closed-loop scheme, see :meth:`ConvertWorker._joint_pos_to_ee`), records the flat ``state`` observation, drops
episodes that no longer succeed, and writes the zarr dataset. Files whose actions and observations are already in
the wanted modes are read without simulation. :func:`prepare` = generate + convert.
"""

from __future__ import annotations

import gc
import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mepoly_il.data.maniskill.generate import GenerateResult, demo_task, generate, reuse_raw
from mepoly_il.data.maniskill.pool import WorkerPool
from mepoly_il.data.maniskill.sim import REPLAY_MAX_STEPS, SIM_BACKEND, quiet_worker_setup, to_np
from mepoly_il.data.maniskill.source import SourceDemos, read_source, read_stored_obs, read_tasks
from mepoly_il.data.maniskill.timing import Timings
from mepoly_il.data.zarr_io import Episode, _is_zarr_group, write_dataset
from mepoly_il.envs.maniskill import import_maniskill
from mepoly_il.errors import UserError
from mepoly_il.tasks import DEFAULT_CONTROL_MODE, find_task
from mepoly_il.utils import check_output, clean_stale_tmp, progress, sha256_file

#: Control modes we can convert ``pd_joint_pos`` demos to (others: replay in the same mode only).
EE_MODES = ("pd_ee_delta_pos", "pd_ee_delta_pose")
JOINT_MODES = ("pd_joint_delta_pos", "pd_joint_target_delta_pos", "pd_joint_vel")
OBS_MODES = ("state",)


def _make_in_mode(gym, env_id: str, control_mode: str, source: str, **kwargs):
    """``gym.make`` in ``control_mode``; a mode the robot does not have (ManiSkill asserts it) is one UserError line
    naming the demo file whose json asked for it."""
    try:
        return gym.make(env_id, control_mode=control_mode, **kwargs)
    except AssertionError as err:
        if control_mode not in str(err):
            raise
        raise UserError(
            f"{source or env_id}: control mode {control_mode} is not one of {env_id}'s robot ({err}); use the .json "
            "written with this .h5 or pass a supported --control-mode"
        ) from None


class ConvertWorker:
    """Replays episodes from their first env state, converting actions and recording flat observations."""

    def __init__(
        self, env_id: str, env_kwargs: dict[str, Any], src_mode: str, target_mode: str, obs_mode: str, source: str = ""
    ) -> None:
        quiet_worker_setup()
        gym = import_maniskill()
        self.timings = Timings()
        kwargs = {k: v for k, v in env_kwargs.items() if k not in _ENV_KWARGS_OVERRIDDEN}
        common = dict(sim_backend=SIM_BACKEND, reward_mode="sparse", max_episode_steps=REPLAY_MAX_STEPS, **kwargs)
        self.env = _make_in_mode(gym, env_id, target_mode, source, obs_mode=obs_mode, **common)
        self.src_mode, self.target_mode = src_mode, target_mode
        self.ori_env = None
        if src_mode != target_mode and target_mode not in EE_MODES:
            # ManiSkill's joint-space conversions step a second env in the source mode.
            self.ori_env = _make_in_mode(gym, env_id, src_mode, source, obs_mode="none", **common)
        self.control_freq = int(self.env.unwrapped.control_freq)
        self._pin = None
        # Every reconfigure ends in a full gc.collect() inside ManiSkill (to free GPU memory); traversing the whole
        # heap (torch, sapien, ...) cost ~0.2-0.5 s per episode. Freezing what exists now keeps those collections to
        # the objects created since, i.e. the old scene.
        gc.collect()
        gc.freeze()

    # -- recording ------------------------------------------------------------------------------------------------
    def _obs(self, obs) -> np.ndarray:
        from mani_skill.utils import common

        arr = common.to_numpy(obs)
        return np.asarray(arr, dtype=np.float32).reshape(-1)

    def _step(self, action, tape: dict[str, list]) -> dict:
        from mani_skill.utils import common

        obs, _, _, _, info = self.env.step(action)
        tape["action"].append(np.asarray(common.to_numpy(action), dtype=np.float32).reshape(-1))
        tape["state"].append(self._obs(obs))
        return info

    # -- conversions ----------------------------------------------------------------------------------------------
    def _joint_pos_to_ee(self, ori_actions: np.ndarray, tape: dict[str, list]) -> dict:
        """pd_joint_pos -> pd_ee_delta_pos/pose, the same closed-loop scheme as ManiSkill's
        ``from_pd_joint_pos_to_ee`` (target EE pose = FK of the source controller's joint target; up to 4 clipped
        sub-steps per source step), without stepping a second simulator: a ``pd_joint_pos`` target is the action
        itself, and the finger joints do not move the TCP."""
        import sapien
        import torch
        from mani_skill.trajectory.utils.actions.conversion import delta_pose_to_pd_ee_delta

        base = self.env.unwrapped
        controller = base.agent.controller
        arm = controller.controllers["arm"]
        if arm.config.use_target or arm.config.frame not in (
            "root_translation",
            "root_translation:root_aligned_body_rotation",
        ):
            raise UserError(f"control mode {self.target_mode}: unsupported EE frame for conversion")
        robot = arm.articulation
        if self._pin is None:
            self._pin = robot.create_pinocchio_model()
        pos_only = arm.config.frame == "root_translation"
        arm_idx = arm.active_joint_indices.cpu().numpy()
        n_arm = len(arm_idx)
        # Plain sapien poses (float32 numpy) instead of batched torch Poses: same numbers, a tenth of the overhead.
        base_pose = robot.pose.sp
        ee_entity = arm.ee_link._objs[0]
        ee_index = arm.ee_link.index
        info: dict = {}
        for a in ori_actions:
            qpos = robot.get_qpos().cpu().numpy()[0].copy()
            qpos[arm_idx] = a[:n_arm]
            self._pin.compute_forward_kinematics(qpos)
            target = base_pose * self._pin.get_link_pose(ee_index)
            target_p = np.asarray(target.p, dtype=np.float32)
            grip = torch.as_tensor(a[n_arm:], dtype=torch.float32)
            for _ in range(4):
                ee = ee_entity.entity_pose
                delta_p = target_p - np.asarray(ee.p, dtype=np.float32)
                delta_q = [1, 0, 0, 0] if pos_only else (ee * target.inv()).q
                arm_action = delta_pose_to_pd_ee_delta(arm, sapien.Pose(delta_p, delta_q), pos_only=pos_only)
                clipped = False
                if np.abs(arm_action[:3]).max() > 1:
                    arm_action[:3] = np.clip(arm_action[:3], -1, 1)
                    clipped = True
                if not pos_only and np.linalg.norm(arm_action[3:]) > 1:
                    arm_action[3:] = arm_action[3:] / np.linalg.norm(arm_action[3:])
                    clipped = True
                action = controller.from_action_dict(
                    {"arm": torch.as_tensor(arm_action, dtype=torch.float32), "gripper": grip}
                )
                info = self._step(action, tape)
                if not clipped:
                    break
        return info

    def _reset(self, task: dict[str, Any], tape: dict[str, list]) -> tuple[dict[str, Any], bool]:
        """Reset to the episode's seed, recording the first observation -> (reset kwargs, whether the stored first
        state had to be set because the seed did not reproduce it)."""
        reset_kwargs = dict(task["reset_kwargs"])
        reset_kwargs["seed"] = task["seed"]
        # A fresh scene per episode, like evaluation with reconfiguration_freq=1: on a reused scene PhysX keeps
        # internal state across resets, so the same seed and actions can give (slightly) different states
        # depending on which episodes ran before in this worker.
        reset_kwargs["options"] = {**(reset_kwargs.get("options") or {}), "reconfigure": True}
        obs, _ = self.env.reset(**reset_kwargs)
        # Replay from the seed alone, as evaluation resets will. Teleporting to the stored first state (ManiSkill's
        # --use-first-env-state) gives the same poses but resets PhysX's contact caches, so the recorded
        # trajectory could then not be reproduced from the seed. Only when the seed does not reproduce the
        # stored first state do we fall back to setting it.
        state_set = not _same_state(self.env.unwrapped.get_state_dict(), task["state0"])
        if state_set:
            self.env.unwrapped.set_state_dict(task["state0"])
            obs = self.env.unwrapped.get_obs()
        tape["state"].append(self._obs(obs))
        return reset_kwargs, state_set

    def _replay(self, task: dict[str, Any], reset_kwargs: dict[str, Any], state_set: bool, tape: dict) -> dict:
        """Execute the episode's actions converted to the target mode; returns the last step's info."""
        actions = task["actions"]
        if self.src_mode == self.target_mode:
            info: dict = {}
            for a in actions:
                info = self._step(a, tape)
            return info
        if self.target_mode in EE_MODES:
            return self._joint_pos_to_ee(actions, tape)
        from mani_skill.trajectory.utils.actions import conversion

        self.ori_env.reset(**reset_kwargs)
        if state_set:
            self.ori_env.unwrapped.set_state_dict(task["state0"])
        return conversion.from_pd_joint_pos(self.target_mode, actions, self.ori_env, _TapeEnv(self, tape))

    def run(self, task: dict[str, Any]) -> dict[str, Any]:
        """task: index, seed, reset_kwargs, state0 (env state dict at t=0), actions (T, A) -> replayed episode:
        index, success, error, control_freq, state_set, and on success state (T+1, Ds) and action (T', Da)."""
        tape: dict[str, list] = {"state": [], "action": []}
        state_set = False
        try:
            with self.timings.phase("reset"):
                reset_kwargs, state_set = self._reset(task, tape)
            with self.timings.phase("replay"):
                info = self._replay(task, reset_kwargs, state_set, tape)
            success = bool(np.asarray(to_np(info.get("success", False))).reshape(-1)[0])
            error = None
        except UserError:
            raise
        except Exception as err:
            success, error = False, f"{type(err).__name__}: {err}"
        out = {
            "index": task["index"],
            "success": success,
            "error": error,
            "control_freq": self.control_freq,
            "state_set": state_set,
        }
        if success:
            out["state"] = np.stack(tape["state"])
            out["action"] = np.stack(tape["action"]) if tape["action"] else np.zeros((0, 1), np.float32)
        return out

    def close(self) -> None:
        self.env.close()
        if self.ori_env is not None:
            self.ori_env.close()
        gc.unfreeze()


_ENV_KWARGS_OVERRIDDEN = {
    "obs_mode",
    "control_mode",
    "sim_backend",
    "reward_mode",
    "render_mode",
    "num_envs",
    "max_episode_steps",
    "sensor_configs",
    "human_render_camera_configs",
    "viewer_camera_configs",
    "shader_dir",
}


def _same_state(current: dict, stored: dict, atol: float = 1e-5) -> bool:
    """Whether an env state dict (batched tensors) equals a stored one (unbatched arrays) on every shared leaf."""
    for key, val in stored.items():
        if key not in current:
            continue
        if isinstance(val, dict):
            if not _same_state(current[key], val, atol):
                return False
        elif not np.allclose(np.asarray(to_np(current[key])).reshape(-1), np.asarray(val).reshape(-1), atol=atol):
            return False
    return True


class _TapeEnv:
    """Minimal env facade for ManiSkill's joint-space converters: records every step into the tape."""

    def __init__(self, worker: ConvertWorker, tape: dict[str, list]) -> None:
        self._worker, self._tape = worker, tape
        self.unwrapped = worker.env.unwrapped

    def step(self, action):
        info = self._worker._step(action, self._tape)
        return None, None, None, None, info

    def render_human(self):  # pragma: no cover - only with vis
        pass


@dataclass
class ConvertResult:
    path: Path
    num_source: int
    num_kept: int
    failed: list[tuple[int, int]]  # (episode index, seed)
    seconds: float
    replayed: bool
    timings: dict[str, float] = field(default_factory=dict)


def default_control_mode(env_id: str) -> str:
    """The control mode datasets of ``env_id`` are converted to when none is asked: the registered task's, else
    :data:`mepoly_il.tasks.DEFAULT_CONTROL_MODE`."""
    task = find_task(env_id)
    return task.control_mode if task is not None else DEFAULT_CONTROL_MODE


def _replay_all(
    source: SourceDemos,
    tasks: list[dict[str, Any]],
    worker_kwargs: dict[str, Any],
    workers: int,
    timings: Timings,
    show_progress: bool,
) -> dict[int, dict]:
    """Replay ``tasks`` (from :func:`_read_tasks`) in ``workers`` simulators -> ConvertWorker results by index."""
    n_workers = max(1, min(workers, len(tasks)))
    by_index: dict[int, dict] = {}
    with (
        WorkerPool(ConvertWorker, [worker_kwargs] * n_workers) as pool,
        timings.phase("loop"),
        progress(disable=not show_progress) as bar,
    ):
        bar_task = bar.add_task(f"convert {source.env_id} -> {worker_kwargs['target_mode']}", total=len(tasks))
        pending = deque(tasks)
        in_flight = 0
        while pending or in_flight:
            while pending and in_flight < 2 * n_workers:
                t = pending.popleft()
                pool.submit(t["index"], t)
                in_flight += 1
            idx, res = pool.get()
            in_flight -= 1
            by_index[idx] = res
            bar.advance(bar_task)
    timings.update(pool.timings.seconds)
    return by_index


def convert(
    src: str | os.PathLike,
    out: str | os.PathLike,
    control_mode: str | None = None,
    obs_mode: str = "state",
    workers: int = 1,
    overwrite: bool = False,
    show_progress: bool = True,
) -> ConvertResult:
    """ManiSkill ``.h5`` (+ ``.json``) -> mepoly-il zarr dataset in ``control_mode`` / ``obs_mode``.

    ``control_mode=None`` takes the registered task's (:func:`default_control_mode`). Replays on the CPU simulator
    when the stored actions or observations are not already in the requested modes; episodes that no longer succeed
    are dropped and counted.
    """
    t0 = time.perf_counter()
    if obs_mode not in OBS_MODES:
        raise UserError(f"--obs-mode {obs_mode}: not supported; use one of {', '.join(OBS_MODES)}")
    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    source = read_source(src)  # structure only: cheap, and a wrong --src is the first thing to report
    out = _check_dataset_out(out, overwrite, inputs=(source.h5, source.json_path))
    task = find_task(source.env_id)
    if task is None:
        _check_maniskill_env(source)
    if control_mode is None:
        control_mode = default_control_mode(source.env_id)
    supported = (source.control_mode,) + ((*EE_MODES, *JOINT_MODES) if source.control_mode == "pd_joint_pos" else ())
    if control_mode not in supported:
        raise UserError(
            f"{source.h5}: demos are in control mode {source.control_mode} but --control-mode {control_mode} was "
            f"asked; this file can only give {', '.join(supported)} (only pd_joint_pos demos can be converted): pass "
            f"--control-mode {source.control_mode} or convert the pd_joint_pos demos instead"
        )
    failed: list[tuple[int, int]] = []
    control_freq = 20
    n_state_set = 0  # episodes whose seed did not reproduce the stored first env state
    timings = Timings()
    if source.control_mode == control_mode and source.obs_mode == obs_mode:
        episodes = read_stored_obs(source)
        replayed = False
    else:
        replayed = True
        with timings.phase("read_source"):
            tasks = read_tasks(source)
        worker_kwargs = {
            "env_id": source.env_id,
            "env_kwargs": source.meta["env_info"].get("env_kwargs", {}),
            "src_mode": source.control_mode,
            "target_mode": control_mode,
            "obs_mode": obs_mode,
            "source": str(source.json_path),
        }
        by_index = _replay_all(source, tasks, worker_kwargs, workers, timings, show_progress)
        episodes = []
        for t in tasks:
            res = by_index[t["index"]]
            control_freq = res.get("control_freq", control_freq)
            n_state_set += bool(res.get("state_set"))
            if res["success"]:
                episodes.append(Episode(state=res["state"][:-1], action=res["action"], seed=t["seed"]))
            else:
                failed.append((t["index"], t["seed"]))
    if not episodes:
        raise UserError(
            f"{source.h5}: none of {len(source.episodes)} episodes succeeded after replay in {control_mode}; "
            "check that the json matches the h5 and that the demos were recorded on physx_cpu"
        )
    if task is not None:
        max_steps = task.max_episode_steps
    else:  # an unregistered task: room for twice the registered limit and for the longest demo
        env_steps = source.meta["env_info"].get("max_episode_steps") or 0
        max_steps = max(2 * int(env_steps), max(len(e.action) for e in episodes))
    provenance = {
        "source": "maniskill",
        "env_id": source.env_id,
        "obs_mode": obs_mode,
        "control_mode": control_mode,
        "sim_backend": SIM_BACKEND if replayed else source.sim_backend,
        "control_freq": int(control_freq),
        "max_episode_steps": int(max_steps),
        "source_file": str(source.h5.resolve()),
        "source_sha256": sha256_file(source.h5),
        "source_control_mode": source.control_mode,
        "source_type": source.meta.get("source_type"),
        "num_source_episodes": len(source.episodes),
        "num_failed_conversions": len(failed),
        "failed_seeds": [s for _, s in failed],
        "num_initial_state_set": n_state_set,
    }
    with timings.phase("write_zarr"):
        write_dataset(out, episodes, provenance, overwrite=overwrite, source=str(source.h5))
    return ConvertResult(
        path=out,
        num_source=len(source.episodes),
        num_kept=len(episodes),
        failed=failed,
        seconds=time.perf_counter() - t0,
        replayed=replayed,
        timings=timings.seconds,
    )


def _check_dataset_out(out: str | os.PathLike, overwrite: bool, inputs=()) -> Path:
    """``--out`` of a zarr dataset, checked before any work: not an input, nor containing or inside one; an
    existing output only with ``overwrite`` and only if it is a zarr dataset."""
    return check_output(out, inputs, overwrite=overwrite, kind="dir", replaceable=(_is_zarr_group, "a zarr dataset"))


def _check_maniskill_env(source: SourceDemos) -> None:
    """An env id that is not a registered task must at least be a ManiSkill environment (checked here, not as a
    traceback inside a simulator worker)."""
    gym = import_maniskill()
    if source.env_id not in gym.registry:
        raise UserError(
            f"{source.json_path}: env_info.env_id {source.env_id!r} is not a ManiSkill environment; use the .json "
            "written with this .h5 or fix env_id there"
        )


def raw_dir_for(out: str | os.PathLike) -> Path:
    """Where ``prepare`` keeps the raw demos: ``NAME.zarr`` -> ``NAME.raw/`` next to it."""
    out = Path(out)
    stem = out.name[: -len(".zarr")] if out.name.endswith(".zarr") else out.name
    return out.parent / f"{stem}.raw"


def prepare(
    env_id: str,
    num_demos: int,
    out: str | os.PathLike,
    seed: int = 0,
    workers: int = 1,
    control_mode: str | None = None,
    obs_mode: str = "state",
    overwrite: bool = False,
    show_progress: bool = True,
) -> tuple[GenerateResult, ConvertResult]:
    """generate + convert; the raw ManiSkill files stay in ``NAME.raw/`` next to ``NAME.zarr``.

    ``control_mode=None`` takes the task's registered control mode. Resumable: a complete raw folder of the same
    request (see :func:`~mepoly_il.data.maniskill.generate.reuse_raw`) is reused instead of generated again, so a
    run killed during conversion continues from its demos; a run killed during generation starts generation again
    (the partial ``.tmp-*`` folder is removed). Both give the dataset of an uninterrupted run: the kept seeds and
    the replay depend only on the request. ``overwrite`` regenerates the raw demos too.
    """
    demo_task(env_id)  # before anything is written
    raw = raw_dir_for(out)
    out = _check_dataset_out(out, overwrite, inputs=(raw,))  # e.g. --out . would contain its own raw folder
    clean_stale_tmp(raw)  # a generate killed mid-way: its partial worker files are discarded
    gen = None if overwrite else reuse_raw(env_id, num_demos, raw, seed=seed)
    if gen is None:
        if (raw.exists() or raw.is_symlink()) and not overwrite:
            raise UserError(
                f"--out {out}: its raw-demo folder {raw} exists but is not a complete `generate` output of this "
                f"request ({env_id}, --num-demos {num_demos}, --seed {seed}); pass --overwrite to regenerate it or "
                "move it away"
            )
        gen = generate(
            env_id, num_demos, raw, seed=seed, workers=workers, overwrite=overwrite, show_progress=show_progress
        )
    conv = convert(
        gen.h5,
        out,
        control_mode=control_mode,
        obs_mode=obs_mode,
        workers=workers,
        overwrite=overwrite,
        show_progress=show_progress,
    )
    return gen, conv
