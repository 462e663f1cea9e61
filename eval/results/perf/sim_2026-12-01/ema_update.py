"""Milliseconds per EMA update: Lightning's per-tensor ``avg_fn`` against this package's foreach ``multi_avg_fn``.

Usage: OMP_NUM_THREADS=1 python ema_update.py
The CPU-scale stage-1 and DP models of PushCube-v1 (random weights), parameters and buffers averaged as the configs'
callback does (``use_buffers=True``), decay 0.995; medians over 6 alternating rounds of 20 updates. Also checks that
both give the same averages bit for bit.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
import yaml
from torch.optim.swa_utils import AveragedModel, get_ema_avg_fn

from mepoly_il.policies.diffusion.lightning import DiffusionModule
from mepoly_il.policies.ema import ema_multi_avg_fn
from mepoly_il.policies.mepoly.lightning import Stage1Module
from mepoly_il.tasks import get_task

CONFIGS = Path(__file__).resolve().parents[4] / "configs"


def build(kind: str, cls):
    task = get_task("PushCube-v1")
    model = yaml.safe_load((CONFIGS / kind / "cpu.yaml").read_text())["model"]
    shape = {"obs_dim": task.obs_dim, "act_dim": task.act_dim, **task.horizons()}
    model["policy"] = {**(model.get("policy") or {}), **shape}
    return cls(**model)


def main() -> None:
    torch.set_num_threads(1)
    for name, module in (("stage1", build("stage1", Stage1Module)), ("dp", build("dp", DiffusionModule))):
        tensors = len(list(module.parameters())) + len(list(module.buffers()))
        averages = {
            "lightning": AveragedModel(module, use_buffers=True, avg_fn=get_ema_avg_fn(0.995)),
            "foreach": AveragedModel(module, use_buffers=True, multi_avg_fn=ema_multi_avg_fn(0.995)),
        }
        ms: dict[str, list[float]] = {k: [] for k in averages}
        for _ in range(6):
            with torch.no_grad():
                for p in module.parameters():
                    p.add_(torch.randn_like(p), alpha=1e-3)
            for key, avg in averages.items():
                t = time.perf_counter()
                for _ in range(20):
                    avg.update_parameters(module)
                ms[key].append((time.perf_counter() - t) / 20 * 1e3)
        same = all(
            torch.equal(a, b)
            for a, b in zip(averages["lightning"].state_dict().values(), averages["foreach"].state_dict().values())
        )
        print(
            f"{name}: {tensors} tensors, Lightning's {statistics.median(ms['lightning']):.2f} ms, "
            f"foreach {statistics.median(ms['foreach']):.2f} ms per update, identical averages: {same}"
        )


if __name__ == "__main__":
    main()
