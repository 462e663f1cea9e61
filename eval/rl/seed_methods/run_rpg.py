"""RPG toy bandit as published (12k steps, batch 256, 3 seeds) and Gaussian REINFORCE beside it.

Usage: python eval/rl/seed_methods/run_rpg.py OUT.json [--steps N] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from mepoly_il.rl.rpg import (
    RPGBanditConfig,
    expected_reward,
    toy_reward,
    train_gaussian_reinforce_bandit,
    train_rpg_bandit,
)
from mepoly_il.utils import atomic_path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--steps", type=int, default=12_000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = RPGBanditConfig(steps=args.steps, log_every=1000)
    rows = []
    for seed in args.seeds:
        t = time.perf_counter()
        pol, h_rpg = train_rpg_bandit(cfg, seed)
        t_rpg = time.perf_counter() - t
        torch.manual_seed(1000 + seed)
        a = pol.sample(torch.zeros(1), 20_000)[:, 0]  # (n, 1) actions
        e_rpg = float(toy_reward(a).mean())
        share_global = float(((a > -0.724) & (a < -0.476)).float().mean())
        t = time.perf_counter()
        g, h_g = train_gaussian_reinforce_bandit(cfg, seed)
        t_g = time.perf_counter() - t
        with torch.no_grad():
            e_g = expected_reward(lambda n, g=g: torch.tanh(g["mu"] + g["log_std"].exp() * torch.randn(n)))
        row = {
            "seed": seed,
            "rpg_expected_reward": e_rpg,
            "rpg_share_on_global_peak": share_global,
            "gaussian_expected_reward": e_g,
            "gaussian_mean_action": float(torch.tanh(g["mu"]).item()),
            "rpg_curve": h_rpg,
            "gaussian_curve": h_g,
            "rpg_time_s": t_rpg,
            "gaussian_time_s": t_g,
        }
        print(seed, round(e_rpg, 3), round(share_global, 3), round(e_g, 3), round(t_rpg, 1), round(t_g, 1), flush=True)
        rows.append(row)
    out = {
        "config": cfg.__dict__,
        "runs": rows,
        "loadavg_start_end": os.getloadavg(),
        "machine": platform.platform(),
    }
    with atomic_path(args.out, overwrite=True) as p:
        p.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
