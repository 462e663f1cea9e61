"""ManiSkill3 demonstrations: motion-planning generation and replay into the policy's obs/control mode.

This is the only data module that imports ``mani_skill`` / ``sapien`` (lazily, inside the workers), so the rest of
the data package imports fast and works without a simulator.

* :func:`generate` runs ManiSkill's panda motion-planning solutions (``pd_joint_pos`` actions) in worker processes,
  keeps successes only and writes ManiSkill's own ``.h5`` + ``.json`` (recorded by ``RecordEpisode``, merged here).
  Seeds are handed out in increasing order and exactly the first ``num_demos`` successful seeds are kept, so the
  result does not depend on the number of workers.
* :func:`convert` replays every episode from its stored seed and first env state on the CPU simulator, converting
  ``pd_joint_pos`` to the target control mode (ManiSkill's closed-loop scheme, see :func:`_joint_pos_to_ee`),
  records the flat ``state`` observation, drops episodes that no longer succeed, and writes the zarr dataset.
* :func:`prepare` = generate + convert, raw files kept next to the output.
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import multiprocessing as mp
import os
import queue
import shutil
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mepoly_il.data.zarr_io import Episode, write_dataset
from mepoly_il.errors import UserError
from mepoly_il.utils import atomic_path, check_output_path, progress, sha256_file

#: Tasks with ManiSkill panda motion-planning solutions that we support (PushT comes in a later issue).
SOLVERS = {
    "PushCube-v1": "solvePushCube",
    "PickCube-v1": "solvePickCube",
    "StackCube-v1": "solveStackCube",
}
#: Episode limits for imitation learning (about 2x the mean demo length; ManiSkill's RL defaults are 50).
IL_MAX_EPISODE_STEPS = {"PushCube-v1": 100, "PickCube-v1": 100, "StackCube-v1": 200, "PushT-v1": 150}
#: Control modes we can convert ``pd_joint_pos`` demos to (others: replay in the same mode only).
EE_MODES = ("pd_ee_delta_pos", "pd_ee_delta_pose")
JOINT_MODES = ("pd_joint_delta_pos", "pd_joint_target_delta_pos", "pd_joint_vel")
OBS_MODES = ("state",)
RAW_STEM = "trajectory.none.pd_joint_pos.physx_cpu"
SIM_BACKEND = "physx_cpu"
# Replays must never be cut by the registered (RL) time limit; demos can be longer than it.
_REPLAY_MAX_STEPS = 100_000


def _check_env_id(env_id: str) -> None:
    if env_id not in SOLVERS:
        raise UserError(
            f"--env-id {env_id}: no motion-planning demo generator for this task; supported: {', '.join(SOLVERS)} "
            "(PushT-v1 needs the official RL demos and comes in a later version)"
        )


def _quiet_worker_setup() -> None:
    """One simulator per core: keep torch/BLAS single-threaded."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)


def _import_maniskill():
    try:
        import gymnasium as gym
        import mani_skill.envs  # noqa: F401  (registers the tasks)
    except ImportError as err:  # pragma: no cover - depends on the install
        raise UserError(
            f"ManiSkill is not importable ({err}); install it with `pip install mani-skill==3.0.1`"
        ) from err
    import logging

    # ManiSkill sets up its logger on import; its start-up warnings (no CUDA renderer, not a git install) are noise
    # for state-only CPU simulation.
    for name in ("mani_skill", "mani_skill "):  # 3.0.1 names its logger with a trailing space
        logging.getLogger(name).setLevel(logging.ERROR)
    return gym


# ------------------------------------------------------------------------------------------------------------------
# workers (each lives in its own process when workers > 1)
# ------------------------------------------------------------------------------------------------------------------
class GenerateWorker:
    """Motion-planning demos recorded by ManiSkill's ``RecordEpisode`` into ``<h5_dir>/<name>.h5/.json``."""

    def __init__(self, env_id: str, h5_dir: str, name: str) -> None:
        _quiet_worker_setup()
        gym = _import_maniskill()
        from mani_skill.examples.motionplanning.panda import solutions
        from mani_skill.utils.wrappers.record import RecordEpisode

        self.solve = getattr(solutions, SOLVERS[env_id])
        env = gym.make(
            env_id, obs_mode="none", control_mode="pd_joint_pos", sim_backend=SIM_BACKEND, reward_mode="sparse"
        )
        self.env = RecordEpisode(
            env,
            output_dir=h5_dir,
            trajectory_name=name,
            save_video=False,
            source_type="motionplanning",
            source_desc="official motion planning solution from ManiSkill contributors (via mepoly-il data generate)",
            record_reward=False,
            save_on_reset=False,
        )
        gc.collect()
        gc.freeze()  # keeps the full collection in env.close() cheap (see ConvertWorker)

    def run(self, seed: int) -> dict[str, Any]:
        error = None
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            # mplib prints "screw plan failed" on stdout; a failed plan is just a skipped seed.
            with contextlib.redirect_stdout(io.StringIO()):
                res = self.solve(self.env, seed=seed, debug=False, vis=False)
        except Exception as err:  # the solvers raise on unreachable poses
            res, error = -1, f"{type(err).__name__}: {err}"
        success = res != -1 and bool(res[-1]["success"].item())
        length = int(res[-1]["elapsed_steps"].item()) if res != -1 else 0
        t1 = time.perf_counter()
        self.env.flush_trajectory(save=success)
        traj = f"traj_{self.env._episode_id}" if success else None
        t2, c2 = time.perf_counter(), time.process_time()
        return {
            "seed": seed,
            "success": success,
            "traj": traj,
            "length": length,
            "error": error,
            "time": {"plan_and_step": t1 - t0, "record": t2 - t1, "cpu": c2 - c0},
        }

    def close(self) -> None:
        self.env.close()
        gc.unfreeze()


class ConvertWorker:
    """Replays episodes from their first env state, converting actions and recording flat observations."""

    def __init__(self, env_id: str, env_kwargs: dict[str, Any], src_mode: str, target_mode: str, obs_mode: str) -> None:
        _quiet_worker_setup()
        gym = _import_maniskill()
        kwargs = {k: v for k, v in env_kwargs.items() if k not in _ENV_KWARGS_OVERRIDDEN}
        common = dict(sim_backend=SIM_BACKEND, reward_mode="sparse", max_episode_steps=_REPLAY_MAX_STEPS, **kwargs)
        self.env = gym.make(env_id, obs_mode=obs_mode, control_mode=target_mode, **common)
        self.src_mode, self.target_mode = src_mode, target_mode
        self.ori_env = None
        if src_mode != target_mode and target_mode not in EE_MODES:
            # ManiSkill's joint-space conversions step a second env in the source mode.
            self.ori_env = gym.make(env_id, obs_mode="none", control_mode=src_mode, **common)
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

    def run(self, task: dict[str, Any]) -> dict[str, Any]:
        """task: index, seed, reset_kwargs, state0 (env state dict at t=0), actions (T, A) -> replayed episode."""
        tape: dict[str, list] = {"state": [], "action": []}
        t0, c0 = time.perf_counter(), time.process_time()
        t_reset = t0
        try:
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
                tape["state_set"] = True
                self.env.unwrapped.set_state_dict(task["state0"])
                obs = self.env.unwrapped.get_obs()
            tape["state"].append(self._obs(obs))
            t_reset = time.perf_counter()
            actions = task["actions"]
            if self.src_mode == self.target_mode:
                info = {}
                for a in actions:
                    info = self._step(a, tape)
            elif self.target_mode in EE_MODES:
                info = self._joint_pos_to_ee(actions, tape)
            else:
                from mani_skill.trajectory.utils.actions import conversion

                self.ori_env.reset(**reset_kwargs)
                if state_set:
                    self.ori_env.unwrapped.set_state_dict(task["state0"])
                env = _TapeEnv(self, tape)
                info = conversion.from_pd_joint_pos(self.target_mode, actions, self.ori_env, env)
            success = bool(np.asarray(_to_np(info.get("success", False))).reshape(-1)[0])
            error = None
        except UserError:
            raise
        except Exception as err:
            success, error = False, f"{type(err).__name__}: {err}"
        out = {"index": task["index"], "success": success, "error": error, "control_freq": self.control_freq}
        out["state_set"] = bool(tape.get("state_set", False))
        out["time"] = {
            "reset": t_reset - t0,
            "replay": time.perf_counter() - t_reset,
            "cpu": time.process_time() - c0,
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
        elif not np.allclose(np.asarray(_to_np(current[key])).reshape(-1), np.asarray(val).reshape(-1), atol=atol):
            return False
    return True


def _to_np(x):
    return x.cpu().numpy() if hasattr(x, "cpu") else x


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


# ------------------------------------------------------------------------------------------------------------------
# a tiny process pool: persistent simulators, unordered results
# ------------------------------------------------------------------------------------------------------------------
_WORKER_CLASSES = {"generate": GenerateWorker, "convert": ConvertWorker}


def _worker_main(kind: str, kwargs: dict, tasks, results) -> None:
    try:
        worker = _WORKER_CLASSES[kind](**kwargs)
    except BaseException:
        results.put(("error", None, traceback.format_exc()))
        return
    results.put(("ready", None, time.process_time()))
    try:
        while True:
            item = tasks.get()
            if item is None:
                break
            task_id, task = item
            try:
                results.put(("result", task_id, worker.run(task)))
            except BaseException as err:
                results.put(("error", task_id, f"{type(err).__name__}: {err}\n{traceback.format_exc()}"))
                return
    finally:
        worker.close()
        results.put(("closed", None, None))


class _Pool:
    """``n`` simulator workers. With ``n == 1`` the worker runs in this process (no spawn cost)."""

    def __init__(self, kind: str, kwargs_per_worker: list[dict]) -> None:
        self.n = len(kwargs_per_worker)
        self._local = None
        #: CPU seconds the workers spent starting (imports, building the simulator), summed over workers
        self.init_cpu = 0.0
        self._done: deque = deque()
        if self.n == 1:
            c0 = time.process_time()
            self._local = _WORKER_CLASSES[kind](**kwargs_per_worker[0])
            self.init_cpu = time.process_time() - c0
            return
        # spawn: ManiSkill/sapien and zarr's asyncio thread are not fork-safe.
        ctx = mp.get_context("spawn")
        self._tasks, self._results = ctx.Queue(), ctx.Queue()
        self._procs = [
            ctx.Process(target=_worker_main, args=(kind, kw, self._tasks, self._results), daemon=True)
            for kw in kwargs_per_worker
        ]
        for p in self._procs:
            p.start()
        # Wait until every simulator is built, so start-up failures surface here and timings separate start-up.
        ready = 0
        while ready < self.n:
            kind, _, payload = self._next_message()
            if kind == "ready":
                ready += 1
                self.init_cpu += float(payload)

    def _next_message(self) -> tuple[str, Any, Any]:
        while True:
            try:
                kind, task_id, payload = self._results.get(timeout=5.0)
            except queue.Empty:
                if not any(p.is_alive() for p in self._procs):
                    raise RuntimeError("all simulator workers died") from None
                continue
            if kind == "error":
                self.terminate()
                raise RuntimeError(f"simulator worker failed:\n{payload}")
            return kind, task_id, payload

    def submit(self, task_id: int, task: Any) -> None:
        if self._local is not None:
            self._done.append((task_id, self._local.run(task)))
        else:
            self._tasks.put((task_id, task))

    def get(self) -> tuple[int, dict]:
        if self._local is not None:
            return self._done.popleft()
        while True:
            kind, task_id, payload = self._next_message()
            if kind == "result":
                return task_id, payload

    def close(self) -> None:
        if self._local is not None:
            self._local.close()
            return
        for _ in self._procs:
            self._tasks.put(None)
        closed = 0
        deadline = time.monotonic() + 120
        while closed < len(self._procs) and time.monotonic() < deadline:
            try:
                kind, _, payload = self._results.get(timeout=1.0)
            except queue.Empty:
                if not any(p.is_alive() for p in self._procs):
                    break
                continue
            if kind == "closed":
                closed += 1
        # Everything is flushed once a worker reported "closed"; interpreter shutdown of a torch process can take
        # seconds under load, so do not wait for it.
        for p in self._procs:
            p.join(timeout=1.0)
            if p.is_alive():
                p.terminate()

    def terminate(self) -> None:
        if self._local is not None:
            # Release the simulator (and the gc freeze) even on errors; the outputs are discarded by atomic_path.
            with contextlib.suppress(Exception):
                self._local.close()
            return
        for p in self._procs:
            if p.is_alive():
                p.terminate()


# ------------------------------------------------------------------------------------------------------------------
# generate
# ------------------------------------------------------------------------------------------------------------------
@dataclass
class GenerateResult:
    h5: Path
    json: Path
    seeds: list[int]
    failed_seeds: list[int]
    seconds: float
    lengths: list[int] = field(default_factory=list)
    #: wall seconds of the phases seen from the main process, and summed worker seconds per step kind
    timings: dict[str, float] = field(default_factory=dict)


def _sum_times(results) -> dict[str, float]:
    total: dict[str, float] = {}
    for r in results:
        for k, v in (r.get("time") or {}).items():
            total[f"workers_{k}"] = total.get(f"workers_{k}", 0.0) + float(v)
    return total


def raw_paths(directory: Path) -> tuple[Path, Path]:
    """(h5, json) of the raw demos inside a ``generate`` output directory."""
    return directory / f"{RAW_STEM}.h5", directory / f"{RAW_STEM}.json"


def generate(
    env_id: str,
    num_demos: int,
    out: str | os.PathLike,
    seed: int = 0,
    workers: int = 1,
    overwrite: bool = False,
    show_progress: bool = True,
    max_tries_factor: float = 3.0,
) -> GenerateResult:
    """Motion-planning demos into ``out/`` as ManiSkill h5 + json (``pd_joint_pos``, obs none, physx_cpu).

    Keeps the first ``num_demos`` successful seeds from ``seed`` upwards (independent of ``workers``).
    """
    _check_env_id(env_id)
    if num_demos < 1:
        raise UserError(f"--num-demos must be >= 1, got {num_demos}")
    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    out = check_output_path(out, overwrite)
    t0 = time.perf_counter()
    max_tries = int(max_tries_factor * num_demos) + 10
    with atomic_path(out, overwrite=overwrite) as tmp:
        work = tmp / ".work"
        work.mkdir(parents=True)
        n_workers = min(workers, num_demos)
        t_start = time.perf_counter()
        pool = _Pool("generate", [{"env_id": env_id, "h5_dir": str(work), "name": f"w{w}"} for w in range(n_workers)])
        results: dict[int, dict] = {}
        try:
            next_seed, in_flight, n_ok = seed, 0, 0
            bar_ctx = progress(disable=not show_progress)
            t_ready = time.perf_counter()
            with bar_ctx as bar:
                task = bar.add_task(f"generate {env_id}", total=num_demos)
                while True:
                    # Never more in flight than could still be needed: the kept set is then exactly the first
                    # num_demos successful seeds, whatever the number of workers.
                    while in_flight < 2 * n_workers and n_ok + in_flight < num_demos:
                        if next_seed - seed >= max_tries:
                            break
                        pool.submit(next_seed, next_seed)
                        next_seed += 1
                        in_flight += 1
                    if in_flight == 0:
                        break
                    s, res = pool.get()
                    in_flight -= 1
                    results[s] = res
                    if res["success"]:
                        n_ok += 1
                        bar.advance(task)
            t_done = time.perf_counter()
            pool.close()
        except BaseException:
            pool.terminate()
            raise
        t_closed = time.perf_counter()
        ok = sorted(s for s, r in results.items() if r["success"])
        failed = sorted(s for s, r in results.items() if not r["success"])
        if len(ok) < num_demos:
            raise UserError(
                f"{env_id}: only {len(ok)} of {len(results)} motion plans succeeded (seeds {seed}..{next_seed - 1}); "
                "the solver is failing, check the ManiSkill install or use another --seed"
            )
        h5_path, json_path = raw_paths(tmp)
        lengths = _merge_worker_files(work, ok, results, h5_path, json_path)
        shutil.rmtree(work)
        timings = {
            # with 1 worker the simulator starts in this process (no spawn); otherwise spawn is asynchronous and its
            # import/make time shows up inside "loop"
            "start_workers": t_ready - t_start,
            "workers_init_cpu": pool.init_cpu,
            "loop": t_done - t_ready,
            "close_workers": t_closed - t_done,
            "merge": time.perf_counter() - t_closed,
            **_sum_times(results.values()),
        }
    return GenerateResult(
        h5=raw_paths(out)[0],
        json=raw_paths(out)[1],
        seeds=ok,
        failed_seeds=failed,
        seconds=time.perf_counter() - t0,
        lengths=lengths,
        timings=timings,
    )


def _merge_worker_files(work: Path, seeds: list[int], results: dict[int, dict], h5_out: Path, json_out: Path):
    """Copy the kept episodes, ordered by seed, from the per-worker files into one ManiSkill h5 + json."""
    import h5py

    worker_json = {p.stem: json.loads(p.read_text()) for p in sorted(work.glob("*.json"))}
    by_key: dict[tuple[str, str], tuple[Path, dict]] = {}
    for stem, data in worker_json.items():
        for ep in data["episodes"]:
            by_key[(stem, f"traj_{ep['episode_id']}")] = (work / f"{stem}.h5", ep)
    # Which worker recorded which seed is only known through the episode seed in its json.
    seed_to_key = {}
    for (stem, traj), (_, ep) in by_key.items():
        seed_to_key[int(ep["episode_seed"])] = (stem, traj)
    first = next(iter(worker_json.values()))
    merged = {k: v for k, v in first.items() if k != "episodes"}
    merged["episodes"] = []
    lengths = []
    handles: dict[Path, Any] = {}
    try:
        with h5py.File(h5_out, "w") as dst:
            for i, s in enumerate(seeds):
                stem, traj = seed_to_key[s]
                src_path, ep = by_key[(stem, traj)]
                if src_path not in handles:
                    handles[src_path] = h5py.File(src_path, "r")
                handles[src_path].copy(handles[src_path][traj], dst, name=f"traj_{i}")
                ep = dict(ep)
                ep["episode_id"] = i
                merged["episodes"].append(ep)
                lengths.append(int(ep["elapsed_steps"]))
    finally:
        for h in handles.values():
            h.close()
    json_out.write_text(json.dumps(merged, indent=2))
    return lengths


# ------------------------------------------------------------------------------------------------------------------
# convert
# ------------------------------------------------------------------------------------------------------------------
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


def _read_tasks(source: SourceDemos) -> list[dict[str, Any]]:
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


def _read_stored_obs(source: SourceDemos) -> list[Episode]:
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


@dataclass
class ConvertResult:
    path: Path
    num_source: int
    num_kept: int
    failed: list[tuple[int, int]]  # (episode index, seed)
    seconds: float
    replayed: bool
    timings: dict[str, float] = field(default_factory=dict)


def convert(
    src: str | os.PathLike,
    out: str | os.PathLike,
    control_mode: str = "pd_ee_delta_pos",
    obs_mode: str = "state",
    workers: int = 1,
    overwrite: bool = False,
    show_progress: bool = True,
) -> ConvertResult:
    """ManiSkill ``.h5`` (+ ``.json``) -> mepoly-il zarr dataset in ``control_mode`` / ``obs_mode``.

    Replays on the CPU simulator when the stored actions or observations are not already in the requested modes;
    episodes that no longer succeed are dropped and counted.
    """
    t0 = time.perf_counter()
    if obs_mode not in OBS_MODES:
        raise UserError(f"--obs-mode {obs_mode}: not supported; use one of {', '.join(OBS_MODES)}")
    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    out = Path(out)
    check_output_path(out, overwrite)
    source = read_source(src)
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
    timings: dict[str, float] = {}
    if source.control_mode == control_mode and source.obs_mode == obs_mode:
        episodes = _read_stored_obs(source)
        replayed = False
    else:
        replayed = True
        t_read = time.perf_counter()
        tasks = _read_tasks(source)
        timings["read_source"] = time.perf_counter() - t_read
        n_workers = max(1, min(workers, len(tasks)))
        kw = {
            "env_id": source.env_id,
            "env_kwargs": source.meta["env_info"].get("env_kwargs", {}),
            "src_mode": source.control_mode,
            "target_mode": control_mode,
            "obs_mode": obs_mode,
        }
        t_start = time.perf_counter()
        pool = _Pool("convert", [kw] * n_workers)
        timings["start_workers"] = time.perf_counter() - t_start
        timings["workers_init_cpu"] = pool.init_cpu
        by_index: dict[int, dict] = {}
        try:
            with progress(disable=not show_progress) as bar:
                bar_task = bar.add_task(f"convert {source.env_id} -> {control_mode}", total=len(tasks))
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
            timings["loop"] = time.perf_counter() - t_start - timings["start_workers"]
            t_close = time.perf_counter()
            pool.close()
            timings["close_workers"] = time.perf_counter() - t_close
            timings.update(_sum_times(by_index.values()))
        except BaseException:
            pool.terminate()
            raise
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
    lengths = [len(e.action) for e in episodes]
    env_steps = source.meta["env_info"].get("max_episode_steps") or 0
    provenance = {
        "source": "maniskill",
        "env_id": source.env_id,
        "obs_mode": obs_mode,
        "control_mode": control_mode,
        "sim_backend": SIM_BACKEND if replayed else source.sim_backend,
        "control_freq": int(control_freq),
        "max_episode_steps": int(IL_MAX_EPISODE_STEPS.get(source.env_id, max(2 * int(env_steps), max(lengths)))),
        "source_file": str(source.h5.resolve()),
        "source_sha256": sha256_file(source.h5),
        "source_control_mode": source.control_mode,
        "source_type": source.meta.get("source_type"),
        "num_source_episodes": len(source.episodes),
        "num_failed_conversions": len(failed),
        "failed_seeds": [s for _, s in failed],
        "num_initial_state_set": n_state_set,
    }
    t_write = time.perf_counter()
    write_dataset(out, episodes, provenance, overwrite=overwrite, source=str(source.h5))
    timings["write_zarr"] = time.perf_counter() - t_write
    return ConvertResult(
        path=out,
        num_source=len(source.episodes),
        num_kept=len(episodes),
        failed=failed,
        seconds=time.perf_counter() - t0,
        replayed=replayed,
        timings=timings,
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
    control_mode: str = "pd_ee_delta_pos",
    obs_mode: str = "state",
    overwrite: bool = False,
    show_progress: bool = True,
) -> tuple[GenerateResult, ConvertResult]:
    """generate + convert; the raw ManiSkill files stay in ``NAME.raw/`` next to ``NAME.zarr``."""
    _check_env_id(env_id)
    out = Path(out)
    check_output_path(out, overwrite)
    raw = raw_dir_for(out)
    gen = generate(env_id, num_demos, raw, seed=seed, workers=workers, overwrite=overwrite, show_progress=show_progress)
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


# ------------------------------------------------------------------------------------------------------------------
# open-loop replay (used by the faithfulness test and `inspect --replay`)
# ------------------------------------------------------------------------------------------------------------------
def replay_open_loop(
    env_id: str, control_mode: str, seed: int, actions: np.ndarray, obs_mode: str = "state"
) -> tuple[np.ndarray, bool]:
    """Reset ``env_id`` with ``seed`` and execute ``actions`` (L, Da) blindly.

    Returns the visited states (L+1, Ds) (first = reset observation) and whether the episode succeeded at the end.
    """
    _quiet_worker_setup()
    gym = _import_maniskill()
    env = gym.make(
        env_id,
        obs_mode=obs_mode,
        control_mode=control_mode,
        sim_backend=SIM_BACKEND,
        reward_mode="sparse",
        max_episode_steps=_REPLAY_MAX_STEPS,
    )
    try:
        obs, _ = env.reset(seed=int(seed))
        states = [np.asarray(_to_np(obs), dtype=np.float32).reshape(-1)]
        info: dict = {}
        for a in actions:
            obs, _, _, _, info = env.step(np.asarray(a, dtype=np.float32))
            states.append(np.asarray(_to_np(obs), dtype=np.float32).reshape(-1))
        success = bool(np.asarray(_to_np(info.get("success", False))).reshape(-1)[0])
    finally:
        env.close()
    return np.stack(states), success
