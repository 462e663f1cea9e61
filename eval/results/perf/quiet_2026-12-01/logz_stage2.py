"""CPU time of the stage-2 prior's log Z + entropy (forward, backward) on batches of dataset windows.

Usage: OMP_NUM_THREADS=1 python logz_stage2.py STAGE2_CKPT DATASET.zarr
Six batches of 128 windows, the second of two passes timed; prints ms per batch and the nodes per dim used.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path

import torch

from mepoly_il.bench.latency import input_histories
from mepoly_il.policies import load_policy


def main(ckpt: str, data: str, batches: int = 6, rows: int = 128) -> None:
    torch.set_num_threads(1)
    pol = load_policy(Path(ckpt))
    pol.eval()
    obs = input_histories(Path(data), pol.obs_horizon, rows * batches, seed=1)["data"]
    with torch.no_grad():
        params = pol.prior_net(pol.obs_normalizer.normalize(obs).flatten(1)).float()
    fwd = bwd = 0.0
    nodes: Counter = Counter()
    for rep in range(2):
        for b in range(batches):
            p = params[b * rows : (b + 1) * rows].clone().requires_grad_(True)
            t0 = time.process_time()
            dist = pol.prior(p).base
            loss = dist.log_partition.sum() + dist.entropy().sum()
            t1 = time.process_time()
            loss.backward()
            t2 = time.process_time()
            if rep:
                fwd, bwd = fwd + t1 - t0, bwd + t2 - t1
                nodes.update(dist.quadrature_nodes.tolist())
    print(f"per batch of {rows}: forward {1e3 * fwd / batches:.1f} ms, backward {1e3 * bwd / batches:.1f} ms; "
          f"rows per node count {dict(sorted(nodes.items()))}")  # fmt: skip


if __name__ == "__main__":
    main(*sys.argv[1:3])
