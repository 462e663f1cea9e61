"""A tiny process pool for simulator workers: persistent simulators, unordered results.

The pool is handed the worker class, ``worker_cls(**kwargs)`` with ``run(task) -> result`` and ``close()``, and
imports no worker itself (``spawn`` pickles the class by reference). A worker may keep a
:class:`~mepoly_il.data.maniskill.timing.Timings` as ``self.timings``; after every ``run`` the pool collects it, and
:attr:`WorkerPool.timings` holds the sums over all workers (``workers_<name>``), their CPU seconds in ``run``
(``workers_cpu``) and in start-up (``workers_init_cpu``), and the wall seconds this process waited for the
workers to start (``start_workers``) and to close (``close_workers``). Used as a context manager, the pool closes
its workers when the block ends, or terminates them when it raises.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing as mp
import os
import queue
import signal
import sys
import time
import traceback
from collections import deque
from typing import Any

from mepoly_il.data.maniskill.timing import Timings
from mepoly_il.errors import UserError


def _run_timed(worker, task: Any) -> tuple[Any, dict[str, float]]:
    """``worker.run(task)`` and the seconds it spent: its own ``timings`` plus the CPU seconds of the call."""
    c0 = time.process_time()
    result = worker.run(task)
    times = worker.timings.drain() if isinstance(getattr(worker, "timings", None), Timings) else {}
    times["cpu"] = times.get("cpu", 0.0) + time.process_time() - c0
    return result, times


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Linux: have the kernel kill this worker when its parent dies, so that a ``kill -9`` of the main process does
    not leave simulators waiting forever on the task queue."""
    parent = mp.parent_process()
    if not sys.platform.startswith("linux") or parent is None:
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL))
    if os.getppid() != parent.pid:  # the parent died before prctl took effect
        os._exit(1)


def _worker_main(worker_cls: type, kwargs: dict, tasks, results) -> None:
    _die_with_parent()
    try:
        worker = worker_cls(**kwargs)
    except UserError as err:
        results.put(("user_error", None, str(err)))
        return
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
                results.put(("result", task_id, _run_timed(worker, task)))
            except UserError as err:
                results.put(("user_error", task_id, str(err)))
                return
            except BaseException as err:
                results.put(("error", task_id, f"{type(err).__name__}: {err}\n{traceback.format_exc()}"))
                return
    finally:
        worker.close()
        results.put(("closed", None, None))


class WorkerPool:
    """``n = len(kwargs_per_worker)`` workers of ``worker_cls``. With ``n == 1`` the worker runs in this process
    (no spawn cost). Results come back in completion order: ``submit(task_id, task)``, then ``get() -> (task_id,
    result)``."""

    def __init__(self, worker_cls: type, kwargs_per_worker: list[dict]) -> None:
        self.n = len(kwargs_per_worker)
        self.timings = Timings()
        self._local = None
        self._done: deque = deque()
        with self.timings.phase("start_workers"):
            self._start(worker_cls, kwargs_per_worker)

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.close()
        else:
            self.terminate()

    def _start(self, worker_cls: type, kwargs_per_worker: list[dict]) -> None:
        if self.n == 1:
            c0 = time.process_time()
            self._local = worker_cls(**kwargs_per_worker[0])
            self.timings.add("workers_init_cpu", time.process_time() - c0)
            return
        # spawn: ManiSkill/sapien and zarr's asyncio thread are not fork-safe.
        ctx = mp.get_context("spawn")
        self._tasks, self._results = ctx.Queue(), ctx.Queue()
        self._procs = [
            ctx.Process(target=_worker_main, args=(worker_cls, kw, self._tasks, self._results), daemon=True)
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
                self.timings.add("workers_init_cpu", float(payload))

    def _next_message(self) -> tuple[str, Any, Any]:
        while True:
            try:
                kind, task_id, payload = self._results.get(timeout=5.0)
            except queue.Empty:
                if not any(p.is_alive() for p in self._procs):
                    raise RuntimeError("all simulator workers died") from None
                continue
            if kind == "user_error":
                self.terminate()
                raise UserError(payload)
            if kind == "error":
                self.terminate()
                raise RuntimeError(f"simulator worker failed:\n{payload}")
            return kind, task_id, payload

    def submit(self, task_id: int, task: Any) -> None:
        if self._local is not None:
            self._done.append((task_id, self._collect(_run_timed(self._local, task))))
        else:
            self._tasks.put((task_id, task))

    def _collect(self, result_and_times: tuple[Any, dict[str, float]]) -> Any:
        result, times = result_and_times
        self.timings.update(times, prefix="workers_")
        return result

    def get(self) -> tuple[int, Any]:
        if self._local is not None:
            return self._done.popleft()
        while True:
            kind, task_id, payload = self._next_message()
            if kind == "result":
                return task_id, self._collect(payload)

    def close(self) -> None:
        with self.timings.phase("close_workers"):
            self._close()

    def _close(self) -> None:
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
        for p in self._procs:
            p.join(timeout=5.0)
