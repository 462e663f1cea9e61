"""`mepoly-il eval {run,summary}`: roll checkpoints out in ManiSkill; summarize peak success across seeds."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mepoly_il.cli import OneLineParser
from mepoly_il.errors import UserError

RUN_HELP = """\
Evaluate one checkpoint, or every *.ckpt under a run directory (ordered by training step; last.ckpt is skipped when
it duplicates a step checkpoint in the same folder). Writes eval_info.json per checkpoint to
<ckpt dir>/eval/<ckpt stem>/ (or <--out>/<ckpt stem>/): per-episode rows, aggregates, video paths and provenance.
Evaluation seeds are 1_000_000 + 10_000*SEED + i (i < episodes): identical for every method, and refused if any is a
demonstration seed of the checkpoint's dataset. Re-running skips checkpoints already evaluated with the same
settings (--num-envs included: it changes the episodes)."""

SUMMARY_HELP = """\
Per training run: peak / last / top-k mean of success_once over its evaluated checkpoints (from
eval_during_training.json written by the EvalCallback, else from eval_info.json files); per (method, task): mean and
sample std (ddof=1) across training seeds. Writes summary.md, summary.csv, summary.json and success_vs_step.png."""


def _run_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="mepoly-il eval run", description=RUN_HELP, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("path", metavar="CKPT_OR_DIR", help="a .ckpt from `mepoly-il fit`, or a run directory")
    p.add_argument(
        "--episodes",
        type=int,
        default=None,
        help="episodes per checkpoint (default: the task's eval_episodes in mepoly_il/tasks.py; 100 if unregistered)",
    )
    p.add_argument("--seed", type=int, default=0, help="evaluation seed block (default 0; same for all methods)")
    p.add_argument("--video", type=int, default=0, metavar="K", help="record mp4 videos of the first K episodes")
    p.add_argument("--out", default=None, help="write <out>/<ckpt stem>/eval_info.json instead of next to the ckpt")
    p.add_argument("--num-envs", type=int, default=1, help="parallel envs (CPU: processes; GPU: scenes)")
    p.add_argument(
        "--max-episode-steps",
        type=int,
        default=None,
        help="override the episode limit (default: the task's max_episode_steps in mepoly_il/tasks.py)",
    )
    p.add_argument(
        "--sim-backend",
        default="physx_cpu",
        choices=["auto", "physx_cpu", "physx_cuda"],
        help="auto = physx_cuda when CUDA is available (default physx_cpu, the cube demos' backend)",
    )
    p.add_argument(
        "--reconfiguration-freq",
        type=int,
        default=1,
        help="1 = rebuild the scene every reset (protocol, ~0.17 s/episode on CPU); 0 = faster",
    )
    p.add_argument("--device", default="cpu", help="torch device for the policy (cpu, cuda)")
    p.add_argument("--overwrite", action="store_true", help="re-evaluate even if eval_info.json exists")
    return p


def _summary_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="mepoly-il eval summary", description=SUMMARY_HELP)
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="training run directories (one per seed), or parents")
    p.add_argument("--out", default="eval_summary", help="output directory (default ./eval_summary)")
    p.add_argument(
        "--source",
        default="auto",
        choices=["auto", "training", "checkpoints"],
        help="auto: training-time evaluations when a run has them, else per-checkpoint eval_info.json",
    )
    p.add_argument("--top-k", type=int, default=3, help="k of the top-k mean (default 3)")
    p.add_argument("--overwrite", action="store_true", help="replace existing summary files")
    return p


def _unique_names(paths: list[Path], root: Path) -> list[str]:
    stems = [p.stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    # Same file name in several folders (e.g. two logger versions): name them by their path under the run dir.
    return [str(p.relative_to(root).with_suffix("")).replace("/", "__") for p in paths]


def check_device(device: str) -> None:
    """UserError unless ``device`` names a torch device that exists on this machine."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise UserError(f"--device {device!r}: not a torch device; use cpu or cuda (cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif dev.type != "cpu":
        raise UserError(f"--device {device}: only cpu and cuda are supported")


def _check_run_args(args: argparse.Namespace) -> None:
    """Every argument checked before any checkpoint is read or simulator started."""
    from mepoly_il.eval.rollout import eval_seeds

    if args.num_envs < 1:
        raise UserError(f"--num-envs must be >= 1, got {args.num_envs}")
    if args.video < 0:
        raise UserError(f"--video must be >= 0, got {args.video}")
    if args.max_episode_steps is not None and args.max_episode_steps < 1:
        raise UserError(
            f"--max-episode-steps must be >= 1 (omit it for the task's length), got {args.max_episode_steps}"
        )
    if args.reconfiguration_freq < 0:
        raise UserError(f"--reconfiguration-freq must be >= 0 (0 = never rebuild), got {args.reconfiguration_freq}")
    # --episodes and --seed range (without --episodes, checked per checkpoint once its task is known)
    eval_seeds(args.seed, args.episodes if args.episodes is not None else 1, args.num_envs)
    check_device(args.device)


def default_episodes(ckpt: dict) -> int:
    """Episodes per checkpoint when --episodes is not given: the ``eval_episodes`` of the checkpoint's task
    (:func:`mepoly_il.tasks.find_task` of its dataset's env id); the registry default for an unregistered task."""
    from mepoly_il.tasks import TaskSpec, find_task

    meta = ckpt.get("mepoly_il") if isinstance(ckpt, dict) else None
    dataset = meta.get("dataset") if isinstance(meta, dict) else None
    env_id = dataset.get("env_id") if isinstance(dataset, dict) else None
    task = find_task(env_id) if isinstance(env_id, str) else None
    return task.eval_episodes if task is not None else TaskSpec.__dataclass_fields__["eval_episodes"].default


def run(argv: list[str]) -> int:
    args = _run_parser().parse_args(argv)
    from mepoly_il.eval.rollout import eval_info_dir, eval_seeds, evaluate_checkpoint, format_modes, list_checkpoints
    from mepoly_il.utils import progress

    _check_run_args(args)
    ckpts = list_checkpoints(args.path)
    root = Path(args.path) if Path(args.path).is_dir() else Path(args.path).parent
    names = _unique_names([p for p, _ in ckpts], root)
    episodes = [args.episodes if args.episodes is not None else default_episodes(ckpt) for _, ckpt in ckpts]
    for n in sorted(set(episodes)):
        eval_seeds(args.seed, n, args.num_envs)
    results = []
    with progress(transient=not sys.stderr.isatty()) as bar:
        task = bar.add_task("eval", total=sum(episodes))
        for (path, ckpt), name, n_eps in zip(ckpts, names, episodes):
            done = sum(episodes[: len(results)])
            bar.update(task, description=f"eval {name}", completed=done)
            info, ran = evaluate_checkpoint(
                path,
                ckpt,
                eval_info_dir(path, args.out, name if args.out else None),
                episodes=n_eps,
                seed=args.seed,
                num_envs=args.num_envs,
                video=args.video,
                max_episode_steps=args.max_episode_steps,
                sim_backend=args.sim_backend,
                reconfiguration_freq=args.reconfiguration_freq,
                device=args.device,
                overwrite=args.overwrite,
                on_batch=lambda n, done=done: bar.update(task, completed=done + n),
            )
            results.append((path, info, ran))
        bar.update(task, completed=sum(episodes))
    print("| checkpoint | step | success_once | success_at_end | episodes | sec | |")
    print("|---|---|---|---|---|---|---|")
    for path, info, ran in results:
        agg, prov = info["aggregated"], info["provenance"]
        print(
            f"| {path} | {prov['global_step']} | {agg['success_once']:.3f} | {agg['success_at_end']:.3f} | "
            f"{agg['n_episodes']} | {agg.get('sec', 0):.1f} | {'' if ran else 'cached'} |"
        )
    for path, info, _ in results:
        if line := format_modes(info["aggregated"]):
            print(f"{path}: {line}")
    return 0


def summary(argv: list[str]) -> int:
    args = _summary_parser().parse_args(argv)
    from mepoly_il.eval.aggregate import collect_series, summarize, to_csv, to_markdown
    from mepoly_il.eval.report import plot_success_vs_step
    from mepoly_il.utils import atomic_path, check_output_path

    if args.top_k < 1:
        raise UserError(f"--top-k must be >= 1, got {args.top_k}")
    out = Path(args.out)
    names = ["summary.md", "summary.csv", "summary.json", "success_vs_step.png"]
    for name in names:
        check_output_path(out / name, args.overwrite)
    series = collect_series(args.run_dirs, source=args.source)
    result = summarize(series, k=args.top_k)
    result["series"] = [
        {
            "method": s.method,
            "env_id": s.env_id,
            "seed": s.seed_label,
            "source": s.source,
            "points": [p.__dict__ for p in s.points],
        }
        for s in series
    ]
    markdown = to_markdown(result)
    for name, text in (
        ("summary.md", markdown),
        ("summary.csv", to_csv(result)),
        ("summary.json", json.dumps(result, indent=2) + "\n"),
    ):
        with atomic_path(out / name, overwrite=True) as tmp:
            tmp.write_text(text)
    plot_success_vs_step(series, out / "success_vs_step.png")
    print(markdown, end="")
    print(f"wrote {', '.join(str(out / n) for n in names)}")
    return 0


def main(argv: list[str]) -> int:
    commands = {"run": run, "summary": summary}
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: mepoly-il eval {run,summary} [ARGS...]   (mepoly-il eval COMMAND --help)\n")
        print("  run      roll a checkpoint (or every checkpoint of a run) out in ManiSkill -> eval_info.json")
        print("  summary  peak / last / top-k success per seed, mean +- std across seeds -> md, csv, json, png")
        return 0
    if argv[0] not in commands:
        raise UserError(f"unknown eval command {argv[0]!r}; choose one of: {', '.join(commands)}")
    return commands[argv[0]](argv[1:])
