"""The demo pipeline's worker pool and timing bookkeeping with a plain-Python worker (no simulator)."""

from __future__ import annotations

import time

import pytest

from mepoly_il.data.maniskill.pool import WorkerPool
from mepoly_il.data.maniskill.timing import Timings
from mepoly_il.errors import UserError


class SquareWorker:
    """Squares numbers; times its "work" step like the simulator workers do; refuses negatives as a user mistake."""

    def __init__(self, offset: int) -> None:
        self.offset = offset
        self.timings = Timings()
        self.closed = False

    def run(self, x: int) -> int:
        if x < 0:
            raise UserError(f"task {x}: negative")
        with self.timings.phase("work"):
            time.sleep(0.01)
        return x * x + self.offset

    def close(self) -> None:
        self.closed = True


def test_timings_sum_prefix_and_drain():
    t = Timings()
    t.add("a", 1.0)
    t.add("a", 0.5)
    t.update({"a": 1.0, "b": 2.0}, prefix="w_")
    with pytest.raises(ValueError), t.phase("failed"):
        raise ValueError
    assert t.seconds["a"] == 1.5 and t.seconds["w_a"] == 1.0 and t.seconds["w_b"] == 2.0
    assert t.seconds["failed"] >= 0.0  # timed even though the block raised
    assert t.drain()["a"] == 1.5 and t.seconds == {}


def test_pool_returns_results_and_sums_worker_timings():
    with WorkerPool(SquareWorker, [{"offset": 1}]) as pool:
        for i in range(3):
            pool.submit(i, i)
        got = dict(pool.get() for _ in range(3))
        worker = pool._local
        assert not worker.closed
    assert worker.closed  # closed when the block ends
    assert got == {0: 1, 1: 2, 2: 5}
    assert worker.timings.seconds == {}  # drained into the pool after every run
    seconds = pool.timings.seconds
    assert set(seconds) == {"start_workers", "workers_init_cpu", "workers_work", "workers_cpu", "close_workers"}
    assert seconds["workers_work"] >= 0.03  # three sleeps of 10 ms


def test_pool_passes_user_errors_through_and_releases_the_worker():
    with pytest.raises(UserError, match="task -1: negative"), WorkerPool(SquareWorker, [{"offset": 0}]) as pool:
        pool.submit(0, -1)
    assert pool._local.closed
    assert "close_workers" not in pool.timings.seconds  # terminated, not closed


@pytest.mark.slow
def test_spawned_workers_give_the_same_results_and_one_line_errors():
    """Two worker processes (spawn): results and summed timings as in-process; a worker's UserError comes back as a
    UserError, not as a traceback, and the workers are stopped."""
    with pytest.raises(UserError, match="task -2: negative"), WorkerPool(SquareWorker, [{"offset": 1}] * 2) as pool:
        for i in range(4):
            pool.submit(i, i)
        got = dict(pool.get() for _ in range(4))
        pool.submit(4, -2)
        pool.get()
    assert got == {0: 1, 1: 2, 2: 5, 3: 10}
    assert pool.timings.seconds["workers_work"] >= 0.04
    assert not any(p.is_alive() for p in pool._procs)
