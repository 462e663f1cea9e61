"""Measure the scripted PushT expert: attempt success, demo length, time, strategy mix, initial-state bias.

The exact command behind README.md (one simulator process):

    PYTHONPATH=. OMP_NUM_THREADS=1 python eval/results/pusht_expert/measure.py --seeds 0:100 --verbose \
        --out eval/results/pusht_expert/seeds_0_100.json

Runs over seed ranges can be split across processes and joined with ``--merge A.json B.json --out C.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")


def summarize(rows: list[dict], wall: float, opts: dict) -> dict:
    import numpy as np

    ok = [r for r in rows if r["success"]]
    th_all = np.degrees([r["init_heading_err"] for r in rows])
    th_ok = np.degrees([r["init_heading_err"] for r in ok]) if ok else np.zeros(0)
    pct = [10, 25, 50, 75, 90]
    return {
        "seeds": f"{min(r['seed'] for r in rows)}..{max(r['seed'] for r in rows)}",
        "options": opts,
        "attempts": len(rows),
        "successes": len(ok),
        "success_rate": len(ok) / len(rows),
        "demo_length_mean": float(np.mean([r["steps"] for r in ok])) if ok else None,
        "demo_length_min_max": [min(r["steps"] for r in ok), max(r["steps"] for r in ok)] if ok else None,
        "demo_length_pct10_25_50_75_90": np.percentile([r["steps"] for r in ok], pct).tolist() if ok else None,
        "successes_within_steps_50_75_100_125_150": [sum(r["steps"] <= n for r in ok) for n in (50, 75, 100, 125, 150)],
        "seconds_per_attempt": float(np.mean([r["seconds"] for r in rows])),
        "cpu_seconds_per_demo": float(sum(r["seconds"] for r in rows) / max(1, len(ok))),
        "wall_seconds": wall,
        "init_heading_err_deg_all_pct10_25_50_75_90": np.percentile(th_all, pct).round(1).tolist(),
        "init_heading_err_deg_kept_pct10_25_50_75_90": np.percentile(th_ok, pct).round(1).tolist() if ok else None,
        "success_rate_by_init_heading_err_deg": {
            f"{lo}-{lo + 45}": [
                int(sum(r["success"] for r in rows if lo <= np.degrees(r["init_heading_err"]) < lo + 45)),
                int(sum(1 for r in rows if lo <= np.degrees(r["init_heading_err"]) < lo + 45)),
            ]
            for lo in (0, 45, 90, 135)
        },
        "init_dist_mean_all": float(np.mean([r["init_dist"] for r in rows])),
        "init_dist_mean_kept": float(np.mean([r["init_dist"] for r in ok])) if ok else None,
        "first_face_kept": dict(Counter(r["first_face"] for r in ok)),
        "first_side_kept": dict(Counter(r["first_side"] for r in ok)),
        "first_turn_kept": dict(Counter(r["first_turn"] for r in ok)),
        "pusht_mode_kept": dict(Counter(r["mode"] for r in ok)),
        "pusht_mode_all": dict(Counter(r["mode"] for r in rows)),
        "pushes_mean_kept": float(np.mean([r["pushes"] for r in ok])) if ok else None,
        "lifts_mean_kept": float(np.mean([r["lifts"] for r in ok])) if ok else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="0:100", help="start:stop env seeds")
    ap.add_argument("--out", default=None)
    ap.add_argument("--merge", nargs="+", default=None, help="merge the JSONs of earlier runs instead of running")
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--opt", action="append", default=[], help="expert option name=value")
    args = ap.parse_args()
    if args.merge:
        parts = [json.loads(Path(p).read_text()) for p in args.merge]
        rows = [r for p in parts for r in p["attempts"]]
        summary = summarize(rows, max(p["summary"]["wall_seconds"] for p in parts), parts[0]["summary"]["options"])
        summary["loadavg_at_end"] = [p["summary"]["loadavg_at_end"] for p in parts]
        _write(args.out, summary, rows)
        return

    import gc

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

    class KeepObs(gym.Wrapper):
        """Keeps the episode's state observations (for ``pusht_mode``)."""

        def reset(self, **kw):
            obs, info = self.env.reset(**kw)
            self.obs = [obs[0].numpy()]
            return obs, info

        def step(self, action):
            res = self.env.step(action)
            self.obs.append(res[0][0].numpy())
            return res

    env = gym.make(
        mp.ENV_ID,
        obs_mode="state",
        control_mode=mp.CONTROL_MODE,
        sim_backend="physx_cpu",
        reward_mode="sparse",
        max_episode_steps=mp.MAX_STEPS,
    )
    env = KeepObs(env)
    gc.collect()
    gc.freeze()  # as the demo workers do: keeps the full collection of every scene rebuild cheap
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
        row = {
            "seed": seed,
            "success": bool(res[-1]["success"].item()),
            "init_dist": d0,
            "init_heading_err": th0,
            "final_dist": d1,
            "final_heading_err": th1,
            "seconds": dt,
            "mode": mp.pusht_mode(np.stack(env.obs)),
            **mp.strategy_summary(rec),
        }
        rows.append(row)
        if args.verbose:
            print(json.dumps(row), flush=True)
    summary = summarize(rows, time.perf_counter() - t_all, opts)
    summary["loadavg_at_end"] = Path("/proc/loadavg").read_text().split()[:3]
    env.close()
    _write(args.out, summary, rows)


def _write(out, summary, rows) -> None:
    print(json.dumps(summary, indent=1))
    if out:
        from mepoly_il.utils import atomic_path

        with atomic_path(out, overwrite=True) as tmp:
            tmp.write_text(json.dumps({"summary": summary, "attempts": rows}, indent=1))


if __name__ == "__main__":
    main()
