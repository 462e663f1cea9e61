"""Measure the scripted PushT expert: attempt success, demo length, time, strategy mix, initial-state bias.

Run: PYTHONPATH=. python eval/results/pusht_expert/measure.py --seeds 0:100 --out eval/results/pusht_expert/seeds_0_100.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter

os.environ.setdefault("OMP_NUM_THREADS", "1")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="0:100", help="start:stop env seeds")
    ap.add_argument("--out", default=None)
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--opt", action="append", default=[], help="expert option name=value (float)")
    args = ap.parse_args()
    import gymnasium as gym
    import mani_skill.envs  # noqa: F401
    import numpy as np
    import torch

    from mepoly_il.data import maniskill_pusht as mp

    torch.set_num_threads(1)
    opts = {}
    for kv in args.opt:
        k, v = kv.split("=")
        opts[k] = int(v) if k in ("max_steps", "n_dirs", "n_offsets") else float(v)
    a, b = (int(x) for x in args.seeds.split(":"))
    env = gym.make(
        mp.ENV_ID,
        obs_mode="none",
        control_mode=mp.CONTROL_MODE,
        sim_backend="physx_cpu",
        reward_mode="sparse",
        max_episode_steps=mp.MAX_STEPS,
    )
    rows = []
    t_all = time.perf_counter()
    for seed in range(a, b):
        env.reset(seed=seed)
        d0, th0 = mp.pose_error(env)
        rec: dict = {}
        t0 = time.perf_counter()
        res = mp.solve_pusht(env, seed=seed, record=rec, **opts)
        dt = time.perf_counter() - t0
        d1, th1 = mp.pose_error(env)
        ok = bool(res[-1]["success"].item())
        row = {"seed": seed, "success": ok, "init_dist": d0, "init_heading_err": th0, "final_dist": d1,
               "final_heading_err": th1, "seconds": dt, **mp.strategy_summary(rec)}
        rows.append(row)
        if args.verbose:
            print(json.dumps(row), flush=True)
    wall = time.perf_counter() - t_all
    ok = [r for r in rows if r["success"]]
    th_all = np.array([r["init_heading_err"] for r in rows])
    th_ok = np.array([r["init_heading_err"] for r in ok]) if ok else np.zeros(0)
    summary = {
        "seeds": args.seeds,
        "options": opts,
        "attempts": len(rows),
        "successes": len(ok),
        "success_rate": len(ok) / len(rows),
        "demo_length_mean": float(np.mean([r["steps"] for r in ok])) if ok else None,
        "demo_length_min_max": [min(r["steps"] for r in ok), max(r["steps"] for r in ok)] if ok else None,
        "seconds_per_attempt": float(np.mean([r["seconds"] for r in rows])),
        "seconds_per_demo": wall / max(1, len(ok)),
        "init_heading_err_deg_all": np.percentile(np.degrees(th_all), [10, 25, 50, 75, 90]).round(1).tolist(),
        "init_heading_err_deg_kept": (
            np.percentile(np.degrees(th_ok), [10, 25, 50, 75, 90]).round(1).tolist() if ok else None
        ),
        "init_dist_mean_all_kept": [float(np.mean([r["init_dist"] for r in rows])),
                                    float(np.mean([r["init_dist"] for r in ok])) if ok else None],
        "first_face_kept": dict(Counter(r["first_face"] for r in ok)),
        "first_side_kept": dict(Counter(r["first_side"] for r in ok)),
        "first_turn_kept": dict(Counter(r["first_turn"] for r in ok)),
        "pushes_mean_kept": float(np.mean([r["pushes"] for r in ok])) if ok else None,
        "lifts_mean_kept": float(np.mean([r["lifts"] for r in ok])) if ok else None,
        "loadavg": open("/proc/loadavg").read().split()[:3],
    }
    print(json.dumps(summary, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"summary": summary, "attempts": rows}, f, indent=1)
    env.close()


if __name__ == "__main__":
    main()
