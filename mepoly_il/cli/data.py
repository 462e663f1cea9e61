"""`mepoly-il data ...`: ManiSkill demos -> zarr datasets.

    mepoly-il data generate --env-id PushCube-v1 --num-demos 100 --out datasets/PushCube-v1/raw
    mepoly-il data convert --src datasets/PushCube-v1/raw/trajectory.none.pd_joint_pos.physx_cpu.h5 \\
        --out datasets/PushCube-v1/pushcube_100.zarr
    mepoly-il data prepare --env-id PushCube-v1 --num-demos 100 --out datasets/PushCube-v1/pushcube_100.zarr
    mepoly-il data inspect datasets/PushCube-v1/pushcube_100.zarr --plot pushcube_100.png
    mepoly-il data export-lerobot datasets/PushCube-v1/pushcube_100.zarr --out datasets/lerobot/pushcube_100
"""

from __future__ import annotations

import argparse
import sys

from mepoly_il.cli import OneLineParser
from mepoly_il.errors import UserError

PROG = "mepoly-il data"


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=PROG,
        description="ManiSkill demonstrations -> zarr datasets for imitation learning.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run `mepoly-il data COMMAND --help` for the options of one command.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add_common(p, workers=True):
        if workers:
            p.add_argument("--workers", type=int, default=1, help="simulator processes (default 1)")
        p.add_argument("--overwrite", action="store_true", help="replace an existing output")
        p.add_argument("--quiet", action="store_true", help="no progress bar")

    from mepoly_il.tasks import task_ids

    with_demos = ", ".join(task_ids(with_demos=True))
    mode_help = "target control mode (default: the task's, from mepoly_il/tasks.py)"

    g = sub.add_parser(
        "generate",
        help="demos from the task's demo source (ManiSkill h5 + json, successes only)",
        description="Run the task's demo source (ManiSkill's panda motion-planning solutions for the cube tasks); keep "
        "the first N successful seeds from --seed.",
    )
    g.add_argument("--env-id", required=True, help=f"a registered task with a demo source: {with_demos}")
    g.add_argument("--num-demos", type=int, required=True)
    g.add_argument("--out", required=True, help="output directory for the .h5 and .json")
    g.add_argument("--seed", type=int, default=0, help="first episode seed tried (default 0)")
    add_common(g)

    c = sub.add_parser(
        "convert",
        help="replay ManiSkill demos into the policy's obs/control mode and write a zarr dataset",
        description="Replay each episode from its seed and first env state on the CPU simulator (when the stored "
        "modes differ from the requested ones), drop episodes that no longer succeed, and write a zarr dataset.",
    )
    c.add_argument("--src", required=True, help="ManiSkill trajectory .h5 (the .json must sit next to it)")
    c.add_argument("--out", required=True, help="output dataset, e.g. datasets/PushCube-v1/pushcube_100.zarr")
    c.add_argument("--control-mode", default=None, help=mode_help)
    c.add_argument("--obs-mode", default="state", help="target observation mode (default state)")
    add_common(c)

    p = sub.add_parser(
        "prepare",
        help="generate + convert in one step (raw files kept in NAME.raw/ next to NAME.zarr)",
    )
    p.add_argument("--env-id", required=True, help=f"a registered task with a demo source: {with_demos}")
    p.add_argument("--num-demos", type=int, required=True)
    p.add_argument("--out", required=True, help="output dataset, e.g. datasets/PushCube-v1/pushcube_100.zarr")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--control-mode", default=None, help=mode_help)
    p.add_argument("--obs-mode", default="state")
    add_common(p)

    i = sub.add_parser("inspect", help="episodes, lengths, dims, control mode and stats of a dataset")
    i.add_argument("path", help="a mepoly-il .zarr dataset")
    i.add_argument("--plot", help="write a PNG with action/state histograms and episode lengths")
    i.add_argument("--json", action="store_true", help="print the summary as JSON")

    e = sub.add_parser("export-lerobot", help="write a LeRobot v3.0 dataset (parquet + meta/) from a state dataset")
    e.add_argument("path", help="a mepoly-il .zarr dataset")
    e.add_argument("--out", required=True, help="output directory")
    e.add_argument("--task", default=None, help="task description (default: the env id)")
    e.add_argument("--robot-type", default="panda")
    add_common(e, workers=False)
    return parser


def main(argv: list[str]) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if args.command in ("generate", "prepare") and args.seed < 0:
        raise UserError(f"--seed {args.seed}: episode seeds start at 0; pass --seed 0 or more")
    if args.command == "generate":
        from mepoly_il.data.maniskill import generate

        res = generate(
            args.env_id,
            args.num_demos,
            args.out,
            seed=args.seed,
            workers=args.workers,
            overwrite=args.overwrite,
            show_progress=not args.quiet,
        )
        tried = len(res.seeds) + len(res.failed_seeds)
        print(
            f"generated {len(res.seeds)} {args.env_id} demos ({tried} seeds tried, {len(res.failed_seeds)} plans "
            f"failed) in {res.seconds:.1f} s -> {res.h5}"
        )
        return 0
    if args.command == "convert":
        from mepoly_il.data.maniskill import convert

        res = convert(
            args.src,
            args.out,
            control_mode=args.control_mode,
            obs_mode=args.obs_mode,
            workers=args.workers,
            overwrite=args.overwrite,
            show_progress=not args.quiet,
        )
        _report_convert(res)
        return 0
    if args.command == "prepare":
        from mepoly_il.data.maniskill import prepare

        gen, conv = prepare(
            args.env_id,
            args.num_demos,
            args.out,
            seed=args.seed,
            workers=args.workers,
            control_mode=args.control_mode,
            obs_mode=args.obs_mode,
            overwrite=args.overwrite,
            show_progress=not args.quiet,
        )
        if gen.reused:
            print(f"reused {len(gen.seeds)} demos of an earlier run (raw: {gen.h5})")
        else:
            print(f"generated {len(gen.seeds)} demos in {gen.seconds:.1f} s (raw: {gen.h5})")
        _report_convert(conv)
        return 0
    if args.command == "inspect":
        import json

        from mepoly_il.data.inspect import PNG_FILE, format_summary, plot_dataset, summarize
        from mepoly_il.utils import check_output

        if args.plot:  # an earlier PNG is replaced; the dataset, a directory or any other file never is
            check_output(args.plot, [args.path], overwrite=True, option="--plot", kind="file", replaceable=PNG_FILE)
        summary = summarize(args.path)
        print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
        if args.plot:
            out = plot_dataset(args.path, args.plot)
            print(f"plot -> {out}")
        return 0
    if args.command == "export-lerobot":
        from mepoly_il.data.lerobot_export import export_lerobot

        out = export_lerobot(args.path, args.out, task=args.task, robot_type=args.robot_type, overwrite=args.overwrite)
        print(f"LeRobot v3.0 dataset -> {out}")
        return 0
    parser.error(f"unknown command {args.command}")  # pragma: no cover
    return 2


def _report_convert(res) -> None:
    failed = ""
    if res.failed:
        seeds = ", ".join(str(s) for _, s in res.failed[:10])
        failed = f"; dropped {len(res.failed)} that failed after conversion (seeds {seeds})"
    how = "replayed" if res.replayed else "read (no replay needed)"
    print(
        f"{how} {res.num_source} episodes, kept {res.num_kept}{failed} in {res.seconds:.1f} s -> {res.path}",
        file=sys.stdout,
    )
