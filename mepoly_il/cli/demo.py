"""`mepoly-il demo [il|poly]`: the main job behind `make demo`.

``il`` (default): prepare PushCube demos -> stage 1 -> stage 2 (CPU configs) -> evaluate on held-out seeds -> print
the success rate and where the report and a video are. Each step is the same `mepoly-il` command a user would type,
run as a subprocess, so the demo exercises exactly the public interface.

``poly``: fit 2-D polynomial densities to the lemniscate and two moons (orders 2-14, Legendre vs monomial) and write
a PNG grid plus a total-variation table (re-measures the paper's Fig. 3 claim).
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from mepoly_il.cli import OneLineParser
from mepoly_il.errors import UserError


def _run(cmd: list[str], timings: dict[str, float], name: str) -> None:
    print(f"\n=== [{name}] $ {shlex.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd)
    timings[name] = time.perf_counter() - t0
    if proc.returncode != 0:
        raise UserError(f"demo step '{name}' failed (exit {proc.returncode}); its output is above")


def _last_ckpt(root: Path) -> Path:
    found = sorted(root.rglob("last.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise UserError(f"{root}: training left no last.ckpt")
    return found[-1]


def run_il(out: Path, env_id: str, num_demos: int, episodes: int, seed: int, video: int, workers: int) -> int:
    exe = [sys.executable, "-m", "mepoly_il"]
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    data = out / f"{env_id}.zarr"
    if not data.exists():
        _run(
            [
                *exe,
                "data",
                "prepare",
                "--env-id",
                env_id,
                "--num-demos",
                str(num_demos),
                "--out",
                str(data),
                "--seed",
                "0",
                "--workers",
                str(workers),
            ],
            timings,
            "data",
        )
    else:
        print(f"=== [data] reusing {data}")
    s1_root, s2_root = out / "stage1", out / "stage2"
    _run(
        [
            *exe,
            "fit",
            "stage1",
            "--config",
            "configs/stage1/cpu.yaml",
            "--data.path",
            str(data),
            "--trainer.default_root_dir",
            str(s1_root),
            "--seed_everything",
            str(seed),
            "--overwrite",  # a rerun of the demo retrains from scratch
        ],
        timings,
        "stage1",
    )
    s1_ckpt = _last_ckpt(s1_root)
    _run(
        [
            *exe,
            "fit",
            "stage2",
            "--config",
            "configs/stage2/cpu.yaml",
            "--data.path",
            str(data),
            "--model.stage1_ckpt",
            str(s1_ckpt),
            "--trainer.default_root_dir",
            str(s2_root),
            "--seed_everything",
            str(seed),
            "--overwrite",
        ],
        timings,
        "stage2",
    )
    s2_ckpt = _last_ckpt(s2_root)
    eval_dir = out / "eval"
    _run(
        [
            *exe,
            "eval",
            "run",
            str(s2_ckpt),
            "--episodes",
            str(episodes),
            "--seed",
            str(seed),
            "--video",
            str(video),
            "--out",
            str(eval_dir),
            "--num-envs",
            str(workers),
        ],
        timings,
        "eval",
    )
    infos = sorted(eval_dir.rglob("eval_info.json"), key=lambda p: p.stat().st_mtime)
    if not infos:
        raise UserError(f"{eval_dir}: evaluation wrote no eval_info.json")
    info = json.loads(infos[-1].read_text())
    agg = info["aggregated"]
    summary = {
        "env_id": env_id,
        "num_demos": num_demos,
        "episodes": agg.get("n_episodes", episodes),
        "success_once": agg["success_once"],
        "success_at_end": agg.get("success_at_end"),
        "checkpoint": str(s2_ckpt),
        "eval_info": str(infos[-1]),
        "videos": [str(infos[-1].parent / v) for v in info.get("video_paths", [])],
        "seconds": {k: round(v, 1) for k, v in timings.items()},
        "seconds_total": round(sum(timings.values()), 1),
    }
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("\n=== MePoly demo finished")
    print(f"success_once   {summary['success_once']:.3f} over {summary['episodes']} held-out episodes ({env_id})")
    if summary["success_at_end"] is not None:
        print(f"success_at_end {summary['success_at_end']:.3f}")
    print(f"time per step  {summary['seconds']}  (total {summary['seconds_total']} s)")
    print(f"report         {infos[-1]}")
    for v in summary["videos"]:
        print(f"video          {v}")
    print(f"summary        {out / 'demo_summary.json'}")
    return 0


def run_poly(out: Path, quick: bool) -> int:
    from mepoly_il.eval.density_fit import run_density_fit

    run_density_fit(out, quick=quick)
    return 0


def main(argv: list[str]) -> int:
    parser = OneLineParser(prog="mepoly-il demo", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="job")
    il = sub.add_parser("il", help="PushCube: demos -> stage 1 -> stage 2 -> evaluation (default)")
    il.add_argument("--out", type=Path, default=Path("demo_out/il"), help="output folder")
    il.add_argument("--env-id", default="PushCube-v1")
    il.add_argument("--num-demos", type=int, default=100, help="motion-planning demos to generate")
    il.add_argument("--episodes", type=int, default=100, help="held-out evaluation episodes")
    il.add_argument("--seed", type=int, default=0, help="training seed (evaluation seeds derive from it)")
    il.add_argument("--video", type=int, default=1, help="episodes to record as mp4")
    il.add_argument("--workers", type=int, default=2, help="processes for demo generation and evaluation")
    poly = sub.add_parser("poly", help="2-D density fits: order and basis ablation (paper Fig. 3)")
    poly.add_argument("--out", type=Path, default=Path("demo_out/poly"), help="output folder")
    poly.add_argument("--quick", action="store_true", help="tiny budget (seconds), for smoke tests")
    args = parser.parse_args(argv or ["il"])
    if args.job == "poly":
        return run_poly(args.out, args.quick)
    return run_il(args.out, args.env_id, args.num_demos, args.episodes, args.seed, args.video, args.workers)
