"""Where the time of a demo-pipeline run goes: named seconds, summed, kept apart from the data code.

``generate`` and ``convert`` time their phases with :meth:`Timings.phase`; each worker times its own steps the same
way and :class:`~mepoly_il.data.maniskill.pool.WorkerPool` sums them over workers under a ``workers_`` prefix,
together with the workers' CPU seconds. The results carry one ``timings`` dict (read by ``mepoly-il bench data``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping


class Timings:
    """Seconds per name; adding to a name sums."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + float(seconds)

    def update(self, other: Mapping[str, float], prefix: str = "") -> None:
        """Add every entry of ``other`` (its names prefixed by ``prefix``)."""
        for name, seconds in other.items():
            self.add(prefix + name, seconds)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Add the wall seconds of the ``with`` block to ``name`` (also when it raises)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - t0)

    def drain(self) -> dict[str, float]:
        """The entries so far, and start afresh."""
        out, self.seconds = self.seconds, {}
        return out
