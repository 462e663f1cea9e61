"""Success against training wall time for the runs of ``eval/multimodal_cpu.sh`` and ``eval/table1_cpu.sh``.

For every ``<runs>/<method>/<task>/seed<k>`` it prints one row per training-time evaluation: the step, the
20-episode ``success_once`` and the wall seconds from the start of training to the end of that evaluation, plus the
run's own training wall time (its last logged event). A MePoly row adds its stage-1 run's wall time (stage 2 cannot
start before stage 1 ends): ``<runs>/stage1_<method>/...`` (multimodal script) or ``<runs>/stage1/...`` for the
method ``mepoly`` (Table 1 script). Times are read from the TensorBoard files Lightning writes: a file's name holds
its creation time (the run's start, after set-up), each event its own wall time. Usage::

    python eval/results/multimodal/timeline.py runs_mm [runs_mm_long ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def run_span(root: Path) -> tuple[float, float, list[tuple[int, float, float]]]:
    """(start, end, [(step, success_once, wall time)]) of the one TensorBoard file under ``root``'s logs."""
    files = sorted(root.glob("lightning_logs/version_*/events.out.tfevents.*"))
    if len(files) != 1:
        raise SystemExit(f"{root}: expected one TensorBoard file, found {len(files)}")
    start = float(files[0].name.split(".")[3])
    acc = EventAccumulator(str(files[0]), size_guidance={"scalars": 0})
    acc.Reload()
    tags = acc.Tags()["scalars"]
    end = max(e.wall_time for tag in tags for e in acc.Scalars(tag))
    evals = (
        [(e.step, e.value, e.wall_time) for e in acc.Scalars("eval/success_once")]
        if "eval/success_once" in tags
        else []
    )
    return start, end, evals


def main(runs_dirs: list[str]) -> None:
    print("| runs | task | method | seed | stage 1 s | run s | step | success_once (20 ep) | wall s to this point |")
    print("|---|---|---|---|---|---|---|---|---|")
    for runs in map(Path, runs_dirs):
        for root in sorted(runs.glob("*/*/seed*")):
            task, method = root.parent.name, root.parents[1].name
            if method.startswith("stage1"):
                continue
            offset = 0.0
            stage1 = runs / ("stage1" if method == "mepoly" else f"stage1_{method}") / task / root.name
            if stage1.exists():
                s0, s1, _ = run_span(stage1)
                offset = s1 - s0
            start, end, evals = run_span(root)
            s1_txt = f"{offset:.0f}" if stage1.exists() else "-"
            head = f"| {runs} | {task} | {method} | {root.name[4:]} | {s1_txt} | {end - start:.0f}"
            for step, value, wall in evals:
                print(f"{head} | {step} | {value:.2f} | {offset + wall - start:.0f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
