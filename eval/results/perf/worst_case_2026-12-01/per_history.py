"""Batch-1 latency of a trained MePoly checkpoint per observation history: the slowest histories of each kind.

Usage: OMP_NUM_THREADS=1 python per_history.py STAGE2_CKPT DATASET.zarr KIND [KIND ...]
KIND: data | zeros | +3std | -3std (the input kinds of `mepoly-il bench latency`). Every history of the chosen kinds
is called once per sweep, five sweeps; a history's latency is the median of its five calls. Prints each kind's median
and its six slowest histories (index, ms), i.e. which inputs make the worst case.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

from mepoly_il.bench.latency import input_histories
from mepoly_il.policies import load_policy


def main(ckpt: str, data: str, kinds: list[str], sweeps: int = 5, count: int = 32) -> None:
    torch.set_num_threads(1)
    policy = load_policy(Path(ckpt))
    policy.eval()
    histories = input_histories(Path(data), policy.obs_horizon, count)
    times: dict[tuple[str, int], list[float]] = {(k, i): [] for k in kinds for i in range(count)}
    with torch.no_grad():
        for _ in range(sweeps):
            for kind, i in times:
                t0 = time.perf_counter()
                policy.predict_action_chunk(histories[kind][i : i + 1])
                times[(kind, i)].append(time.perf_counter() - t0)
    med = {key: 1e3 * statistics.median(v) for key, v in times.items()}
    for kind in kinds:
        ranked = sorted(((v, i) for (k, i), v in med.items() if k == kind), reverse=True)
        top = ", ".join(f"{i}: {v:.1f}" for v, i in ranked[:6])
        print(f"{kind}: median {statistics.median(v for v, _ in ranked):.1f} ms; slowest (history: ms) {top}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
