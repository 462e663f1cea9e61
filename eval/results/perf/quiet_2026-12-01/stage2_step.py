"""CPU time of one MePoly stage-2 training step (losses + backward) and one validation batch, from a checkpoint.

Usage: OMP_NUM_THREADS=1 python stage2_step.py STAGE2_CKPT STAGE1_CKPT DATASET.zarr
Twelve fixed training batches of 128 windows, the second of two passes timed; prints ms per step, of which the
prior's log Z + entropy forward (``PolynomialFamily._grid_stats``), then ms per validation batch.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch

import mepoly_il.poly.family as family
from mepoly_il.data.datamodule import DemoDataModule
from mepoly_il.policies.mepoly.lightning import Stage2Module


def main(stage2: str, stage1: str, data: str, batches: int = 12, rows: int = 128) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = Stage2Module.load_from_checkpoint(stage2, map_location="cpu", weights_only=False, stage1_ckpt=stage1)
    model.train()
    dm = DemoDataModule(data, batch_size=rows, seed=0)
    dm.setup()
    rng = np.random.default_rng(0)
    fixed = [dm.train_set.get_batch(rng.choice(len(dm.train_set), rows, replace=False)) for _ in range(batches)]
    in_stats = [0.0]
    grid_stats = family.PolynomialFamily._grid_stats

    def timed_stats(self, *args):
        t = time.process_time()
        try:
            return grid_stats(self, *args)
        finally:
            in_stats[0] += time.process_time() - t

    family.PolynomialFamily._grid_stats = timed_stats
    total = 0.0
    for rep in range(2):
        in_stats[0] = 0.0
        for batch in fixed:
            t = time.process_time()
            model._losses(batch)["loss"].backward()
            total += (time.process_time() - t) if rep else 0.0
            model.zero_grad()
    print(f"step (losses + backward) {1e3 * total / batches:.1f} ms, of which log Z + entropy forward "
          f"{1e3 * in_stats[0] / batches:.1f} ms")  # fmt: skip
    model.eval()
    model.log_dict = lambda *a, **k: None
    with torch.no_grad():
        model.validation_step(fixed[0], 0)
        t = time.process_time()
        for i, batch in enumerate(fixed[:4]):
            model.validation_step(batch, i)
    print(f"validation batch {1e3 * (time.process_time() - t) / 4:.1f} ms")


if __name__ == "__main__":
    main(*sys.argv[1:4])
