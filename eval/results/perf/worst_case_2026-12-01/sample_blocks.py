"""One conditional-inverse-CDF draw of a trained prior, with the sampler's column blocks against one block.

Usage: OMP_NUM_THREADS=1 python sample_blocks.py STAGE2_CKPT DATASET.zarr [KIND INDEX]
Takes the batch-1 prior of history INDEX of KIND (default: -3std 13, the input kinds of `mepoly-il bench latency`)
and times `_sample_sequential` on the 36-, 54- and 81-node grids, alternating `_FINE_BLOCK` between one block for
all columns (the sampler before Round 5) and the default, 40 calls each in one process; prints median ms.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

import mepoly_il.poly.family as family
from mepoly_il.bench.latency import input_histories
from mepoly_il.policies import load_policy


def main(ckpt: str, data: str, kind: str = "-3std", index: int = 13, calls: int = 40) -> None:
    torch.set_num_threads(1)
    policy = load_policy(Path(ckpt))
    policy.eval()
    obs = input_histories(Path(data), policy.obs_horizon, 32)[kind][index : index + 1]
    with torch.no_grad():
        dist = policy.prior_dist(policy.obs_normalizer.normalize(obs)).base
        lam = dist.natural_params.reshape(1, -1)
        blocks = {"one block": 2**62, "default": family._FINE_BLOCK}
        times = {(b, n): [] for b in blocks for n in (36, 54, 81)}
        for _ in range(calls):
            for b, size in blocks.items():
                family._FINE_BLOCK = size
                for n in (36, 54, 81):
                    t0 = time.perf_counter()
                    dist._sample_sequential(lam, 1, n)
                    times[(b, n)].append(time.perf_counter() - t0)
    for b in blocks:
        print(b, {n: round(1e3 * statistics.median(times[(b, n)]), 2) for n in (36, 54, 81)})


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], *sys.argv[3:4], *[int(a) for a in sys.argv[4:5]])
