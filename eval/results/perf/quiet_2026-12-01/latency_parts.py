"""Where one batch-1 action chunk of a trained MePoly checkpoint spends its time, per input history.

Usage: OMP_NUM_THREADS=1 python latency_parts.py STAGE2_CKPT DATASET.zarr KIND [KIND ...]
KIND: data | zeros | +3std | -3std (the input kinds of `mepoly-il bench latency`). For each of 32 histories: wall
ms per call (mean of 5 after one warm-up) and the ms inside the sampler's zoom (`_zoom_boxes`), refinement ladder
(`_ladder`) and conditional sampling (`_sample_sequential`), with the boxes found and the nodes per dim used.
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

import mepoly_il.poly.family as family
from mepoly_il.bench.latency import input_histories
from mepoly_il.policies import load_policy

PARTS = {"zoom": (family.PolynomialFamily, "_zoom_boxes"), "ladder": (family.PolynomialFamily, "_ladder"),
         "sampling": (family.PolynomialDistribution, "_sample_sequential")}  # fmt: skip


def main(ckpt: str, data: str, kinds: list[str], repeats: int = 5) -> None:
    torch.set_num_threads(1)
    policy = load_policy(Path(ckpt))
    policy.eval()
    histories = input_histories(Path(data), policy.obs_horizon, 32)
    spent: dict[str, float] = defaultdict(float)
    seen: dict[str, object] = {}

    def timed(name: str, fn):
        def wrapped(*args, **kwargs):
            t = time.perf_counter()
            try:
                out = fn(*args, **kwargs)
                if name == "zoom":
                    seen["boxes"] = int(out[0].numel())
                if name == "ladder":
                    seen["nodes"] = sorted(n for n, rows in out[0].items() if rows.numel())
                return out
            finally:
                spent[name] += time.perf_counter() - t

        return wrapped

    for name, (cls, attr) in PARTS.items():
        setattr(cls, attr, timed(name, getattr(cls, attr)))
    with torch.no_grad():
        for kind in kinds:
            for i, obs in enumerate(histories[kind].split(1)):
                policy.predict_action_chunk(obs)
                spent.clear()
                seen.clear()
                t = time.perf_counter()
                for _ in range(repeats):
                    policy.predict_action_chunk(obs)
                total = (time.perf_counter() - t) / repeats
                parts = " ".join(f"{k} {1e3 * v / repeats:.1f}" for k, v in spent.items())
                print(f"{kind} {i} {1e3 * total:.1f} ms: {parts} {seen}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
