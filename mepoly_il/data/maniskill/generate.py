"""Demo generation: run a task's demo source in simulator workers, keep successes, write ManiSkill's h5 + json.

The demo source comes from the task registry (:attr:`mepoly_il.tasks.TaskSpec.demo_source`): one of ManiSkill's
panda motion-planning solutions, or any function with their calling convention. ManiSkill's ``RecordEpisode``
records each worker's episodes; :func:`generate` merges them. Seeds are handed out in increasing order and exactly
the first ``num_demos`` successful seeds are kept, so the result does not depend on the number of workers.
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mepoly_il.data.maniskill.pool import WorkerPool
from mepoly_il.data.maniskill.sim import SIM_BACKEND, quiet_worker_setup
from mepoly_il.data.maniskill.timing import Timings
from mepoly_il.envs.maniskill import import_maniskill
from mepoly_il.errors import UserError
from mepoly_il.tasks import MOTION_PLANNER, TaskSpec, find_task, get_task, import_callable, task_ids
from mepoly_il.utils import atomic_path, check_output, progress, sha256_file


def demo_task(env_id: str) -> TaskSpec:
    """The registered task of ``env_id`` if it has a demo source; one :class:`UserError` line otherwise."""
    task = find_task(env_id)
    with_demos = ", ".join(task_ids(with_demos=True)) or "none"
    if task is None:
        raise UserError(
            f"--env-id {env_id}: not a registered task; tasks with demo sources: {with_demos} "
            "(add one with mepoly_il.tasks.register_task)"
        )
    if not task.demo_source:
        raise UserError(
            f"--env-id {env_id}: this task has no demo source (demo_source=None in mepoly_il/tasks.py); tasks with "
            f"demo sources: {with_demos}; demos recorded elsewhere can be converted with `mepoly-il data convert`"
        )
    return task


def load_solver(demo_source: str) -> Callable:
    """``"motion_planner:<name>"`` or ``"package.module:function"`` -> the solver function."""
    if demo_source.partition(":")[0] != MOTION_PLANNER:
        return import_callable(demo_source, "demo_source")
    import_maniskill()
    from mani_skill.examples.motionplanning.panda import solutions

    return import_callable(demo_source, "demo_source", module=solutions)


class GenerateWorker:
    """Demos of one source recorded by ManiSkill's ``RecordEpisode`` into ``<h5_dir>/<name>.h5/.json``."""

    def __init__(self, env_id: str, demo_source: str, control_mode: str, h5_dir: str, name: str) -> None:
        quiet_worker_setup()
        gym = import_maniskill()
        from mani_skill.utils.wrappers.record import RecordEpisode

        self.solve = load_solver(demo_source)
        self.timings = Timings()
        planner = demo_source.startswith(MOTION_PLANNER + ":")
        # ManiSkill's motion planners run under the registered limit, as they always have; a scripted expert gets the
        # task's evaluation limit (PushT is registered with 100 steps, its protocol allows 150).
        limit = {} if planner else {"max_episode_steps": get_task(env_id).max_episode_steps}
        env = gym.make(
            env_id, obs_mode="none", control_mode=control_mode, sim_backend=SIM_BACKEND, reward_mode="sparse", **limit
        )
        self.env = RecordEpisode(
            env,
            output_dir=h5_dir,
            trajectory_name=name,
            save_video=False,
            source_type="motionplanning" if planner else "scripted",
            source_desc=("official motion planning solution from ManiSkill contributors" if planner else demo_source)
            + " (via mepoly-il data generate)",
            record_reward=False,
            save_on_reset=False,
        )
        # RecordEpisode names its json by replacing every ".h5" in the h5 path, so a folder such as "raw.h5data" (or
        # a temporary folder whose random name starts with "h5") would send it to a folder that does not exist.
        if not hasattr(self.env, "_json_path"):
            raise RuntimeError("mani_skill RecordEpisode no longer has _json_path; update GenerateWorker")
        self.env._json_path = str(Path(h5_dir) / f"{name}.json")
        gc.collect()
        gc.freeze()  # keeps the full collection in env.close() cheap (see ConvertWorker)

    def run(self, seed: int) -> dict[str, Any]:
        error = None
        with self.timings.phase("plan_and_step"):
            try:
                # mplib prints "screw plan failed" on stdout; a failed plan is just a skipped seed.
                with contextlib.redirect_stdout(io.StringIO()):
                    res = self.solve(self.env, seed=seed, debug=False, vis=False)
            except UserError:
                raise
            except Exception as err:  # the solvers raise on unreachable poses
                res, error = -1, f"{type(err).__name__}: {err}"
        success = res != -1 and bool(res[-1]["success"].item())
        length = int(res[-1]["elapsed_steps"].item()) if res != -1 else 0
        with self.timings.phase("record"):
            self.env.flush_trajectory(save=success)
        traj = f"traj_{self.env._episode_id}" if success else None
        return {"seed": seed, "success": success, "traj": traj, "length": length, "error": error}

    def close(self) -> None:
        self.env.close()
        gc.unfreeze()


@dataclass
class GenerateResult:
    h5: Path
    json: Path
    seeds: list[int]
    failed_seeds: list[int]
    seconds: float
    lengths: list[int] = field(default_factory=list)
    #: True when :func:`reuse_raw` found these demos complete from an earlier run (nothing was generated)
    reused: bool = False
    #: wall seconds of the phases seen from the main process, and summed worker seconds per step kind
    #: (see :mod:`mepoly_il.data.maniskill.timing`)
    timings: dict[str, float] = field(default_factory=dict)


def raw_paths(directory: Path, control_mode: str = "pd_joint_pos") -> tuple[Path, Path]:
    """(h5, json) of the raw demos inside a ``generate`` output directory (ManiSkill's file naming)."""
    stem = f"trajectory.none.{control_mode}.{SIM_BACKEND}"
    return Path(directory) / f"{stem}.h5", Path(directory) / f"{stem}.json"


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
    """Demos of the task's demo source into ``out/`` as ManiSkill h5 + json (its ``demo_control_mode``, obs none,
    physx_cpu).

    Keeps the first ``num_demos`` successful seeds from ``seed`` upwards (independent of ``workers``).
    """
    task = demo_task(env_id)
    if num_demos < 1:
        raise UserError(f"--num-demos must be >= 1, got {num_demos}")
    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    if not task.demo_source.startswith(MOTION_PLANNER + ":"):
        load_solver(task.demo_source)  # a wrong module or name fails here with one line, before any simulator starts
    out = check_output(out, overwrite=overwrite, kind="dir", replaceable=(_is_raw_dir, "a `data generate` output"))
    t0 = time.perf_counter()
    timings = Timings()
    max_tries = int(max_tries_factor * num_demos) + 10
    with atomic_path(out, overwrite=overwrite) as tmp:
        work = tmp / ".work"
        work.mkdir(parents=True)
        n_workers = min(workers, num_demos)
        kwargs = {"env_id": env_id, "demo_source": task.demo_source, "control_mode": task.demo_control_mode}
        workers_kwargs = [{**kwargs, "h5_dir": str(work), "name": f"w{w}"} for w in range(n_workers)]
        results: dict[int, dict] = {}
        next_seed, in_flight, n_ok = seed, 0, 0
        with (
            WorkerPool(GenerateWorker, workers_kwargs) as pool,
            timings.phase("loop"),
            progress(disable=not show_progress) as bar,
        ):
            bar_task = bar.add_task(f"generate {env_id}", total=num_demos)
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
                    bar.advance(bar_task)
        timings.update(pool.timings.seconds)
        ok = sorted(s for s, r in results.items() if r["success"])
        failed = sorted(s for s, r in results.items() if not r["success"])
        if len(ok) < num_demos:
            raise UserError(
                f"{env_id}: only {len(ok)} of {len(results)} demo attempts succeeded (seeds {seed}..{next_seed - 1}); "
                "the demo source is failing, check the ManiSkill install or use another --seed"
            )
        h5_path, json_path = raw_paths(tmp, task.demo_control_mode)
        with timings.phase("merge"):
            lengths = _merge_worker_files(work, ok, h5_path, json_path)
            shutil.rmtree(work)
        # Written last inside the temporary folder: a raw folder at ``out`` is always complete, and the manifest
        # says for which request, so that ``prepare`` can reuse it after a kill during conversion.
        manifest = {
            **_request(task, num_demos, seed),
            "seeds": ok,
            "failed_seeds": failed,
            "lengths": lengths,
            "h5": h5_path.name,
            "h5_sha256": sha256_file(h5_path),
            "json_sha256": sha256_file(json_path),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    h5_final, json_final = raw_paths(out, task.demo_control_mode)
    return GenerateResult(
        h5=h5_final,
        json=json_final,
        seeds=ok,
        failed_seeds=failed,
        seconds=time.perf_counter() - t0,
        lengths=lengths,
        timings=timings.seconds,
    )


#: The completion marker of a ``generate`` output folder: the request and the kept seeds, written after the demos.
MANIFEST = "generate.json"


def _request(task: TaskSpec, num_demos: int, seed: int) -> dict[str, Any]:
    """What decides the demos a ``generate`` run keeps (the number of workers does not)."""
    return {
        "env_id": task.env_id,
        "demo_source": task.demo_source,
        "control_mode": task.demo_control_mode,
        "sim_backend": SIM_BACKEND,
        "num_demos": int(num_demos),
        "seed": int(seed),
    }


def _is_raw_dir(path: Path) -> bool:
    """Whether ``path`` looks like a ``generate`` output (only those are replaced with --overwrite)."""
    return (path / MANIFEST).is_file() or any(path.glob("trajectory.*.h5"))


def reuse_raw(env_id: str, num_demos: int, out: str | os.PathLike, seed: int = 0) -> GenerateResult | None:
    """The demos in ``out/`` if an earlier :func:`generate` with the same request completed there, else None.

    Reusable means: the manifest (:data:`MANIFEST`) exists, names the same task, demo source, control mode, backend,
    number of demos and first seed, and the h5 + json still have the checksums it recorded.
    """
    task = demo_task(env_id)
    out = Path(out)
    try:
        manifest = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or any(manifest.get(k) != v for k, v in _request(task, num_demos, seed).items()):
        return None
    h5, js = raw_paths(out, task.demo_control_mode)
    try:
        if sha256_file(h5) != manifest["h5_sha256"] or sha256_file(js) != manifest["json_sha256"]:
            return None
    except (OSError, KeyError):
        return None
    return GenerateResult(
        h5=h5,
        json=js,
        seeds=list(manifest["seeds"]),
        failed_seeds=list(manifest["failed_seeds"]),
        seconds=0.0,
        lengths=list(manifest["lengths"]),
        reused=True,
    )


def _merge_worker_files(work: Path, seeds: list[int], h5_out: Path, json_out: Path) -> list[int]:
    """Copy the kept episodes, ordered by seed, from the per-worker files into one ManiSkill h5 + json; returns
    their lengths."""
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
