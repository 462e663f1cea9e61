"""Success across checkpoints and training seeds: the numbers behind Table 1.

Definitions (the paper's, and ManiSkill's ``best_eval_success_once`` logic):

* a *point* is one evaluation of one set of weights at a training step: mean ``success_once`` (and
  ``success_at_end``) over its episodes;
* a *series* is one training run (one method, one task, one training seed) = its points ordered by step;
* per series: ``peak`` = max over points, ``last`` = the point at the largest step, ``top3`` = mean of the 3 best
  points (all of them if fewer);
* per (method, task): mean and **sample** standard deviation (``ddof=1``) of the per-seed values; the std is
  reported as null for a single seed rather than a misleading 0.

Points come from two kinds of files found under the run directories:

* ``eval_during_training.json``, appended by :class:`mepoly_il.eval.callback.EvalCallback` (EMA weights every N
  steps, as in the paper);
* ``eval_info.json``, written per checkpoint by ``mepoly-il eval run``.

``source="auto"`` uses the training-time points of a series when it has any, else the checkpoint evaluations;
the two are never mixed within a series because their episode counts usually differ.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mepoly_il.errors import UserError

TRAINING_EVAL_NAME = "eval_during_training.json"
TRAINING_EVAL_FORMAT = "mepoly_il.eval_during_training/1"
EVAL_INFO_NAME = "eval_info.json"
SOURCES = ("auto", "training", "checkpoints")


@dataclass
class Point:
    """One evaluation: mean success over ``n_episodes`` episodes of the weights at ``step``."""

    step: int
    success_once: float
    success_at_end: float
    n_episodes: int
    file: str


@dataclass
class Series:
    """One training run's evaluation points (one method, task and training seed)."""

    method: str
    env_id: str
    seed_label: str
    train_seed: int | None
    source: str  # "training" | "checkpoints"
    points: list[Point] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, str]:
        return (self.method, self.env_id)


# -- reading ---------------------------------------------------------------------------------------------------------
def _load_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: unreadable JSON ({err}); delete it and re-run the evaluation") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object; delete it and re-run the evaluation")
    return data


def read_eval_info(path: str | os.PathLike) -> tuple[dict[str, Any], Point]:
    """(provenance, point) of one ``eval_info.json``."""
    path = Path(path)
    data = _load_json(path)
    try:
        prov, agg = data["provenance"], data["aggregated"]
        point = Point(
            step=int(prov["global_step"]),
            success_once=float(agg["success_once"]),
            success_at_end=float(agg["success_at_end"]),
            n_episodes=int(agg["n_episodes"]),
            file=str(path),
        )
        prov["method"], prov["env_id"]  # noqa: B018  (required keys)
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(
            f"{path}: not an eval_info.json written by `mepoly-il eval run` (missing {err}); re-run the evaluation"
        ) from None
    return prov, point


def read_training_eval(path: str | os.PathLike) -> tuple[dict[str, Any], list[Point]]:
    """(provenance, points) of one ``eval_during_training.json``."""
    path = Path(path)
    data = _load_json(path)
    if data.get("format") != TRAINING_EVAL_FORMAT:
        raise UserError(f"{path}: format {data.get('format')!r} is not {TRAINING_EVAL_FORMAT!r}; re-run training")
    try:
        prov = data["provenance"]
        prov["method"], prov["env_id"]  # noqa: B018
        points = [
            Point(
                step=int(r["global_step"]),
                success_once=float(r["success_once"]),
                success_at_end=float(r["success_at_end"]),
                n_episodes=int(r["n_episodes"]),
                file=str(path),
            )
            for r in data["rows"]
        ]
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(f"{path}: malformed eval_during_training.json (missing {err}); re-run training") from None
    return prov, points


def append_training_eval(path: str | os.PathLike, provenance: dict[str, Any], row: dict[str, Any]) -> Path:
    """Add one row to ``eval_during_training.json`` (rewritten atomically; a row at the same step replaces it)."""
    from mepoly_il.utils import write_json_atomic

    path = Path(path)
    rows: list[dict[str, Any]] = []
    if path.exists():
        try:
            old = json.loads(path.read_text()).get("rows", [])
            rows = [r for r in old if r.get("global_step") != row["global_step"]]
        except (OSError, ValueError, AttributeError):
            rows = []  # a damaged file from a killed run: start over rather than stop training
    rows.append(row)
    rows.sort(key=lambda r: r["global_step"])
    return write_json_atomic(path, {"format": TRAINING_EVAL_FORMAT, "provenance": provenance, "rows": rows})


def _merge(points: list[Point]) -> list[Point]:
    """Sort by step; when a step was evaluated twice (resumed run, last.ckpt copy) keep the later file's point."""
    by_step: dict[int, Point] = {}
    for p in points:
        by_step[p.step] = p
    return [by_step[s] for s in sorted(by_step)]


def collect_series(run_dirs: list[str | os.PathLike], source: str = "auto") -> list[Series]:
    """Find every evaluation file under ``run_dirs`` and group the points into per-run series."""
    if source not in SOURCES:
        raise UserError(f"--source {source!r}: choose one of {', '.join(SOURCES)}")
    found: dict[tuple[str, str, str], dict[str, Any]] = {}
    for run_dir in run_dirs:
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise UserError(f"{run_dir}: not a directory; pass run directories (the --trainer.default_root_dir)")
        files = sorted(p for p in run_dir.rglob("*.json") if p.name in (TRAINING_EVAL_NAME, EVAL_INFO_NAME))
        files = [p for p in files if ".tmp-" not in str(p)]
        if not files:
            raise UserError(
                f"{run_dir}: no {EVAL_INFO_NAME} or {TRAINING_EVAL_NAME} under it; run `mepoly-il eval run` on it "
                "or train with the EvalCallback"
            )
        for path in files:
            if path.name == TRAINING_EVAL_NAME:
                prov, points = read_training_eval(path)
                kind = "training"
            else:
                prov, point = read_eval_info(path)
                points, kind = [point], "checkpoints"
            train_seed = prov.get("train_seed")
            label = f"seed{train_seed}" if train_seed is not None else str(run_dir)
            # One run = (method, task, training seed): a resumed run's logs (version_0, version_1) and evaluations
            # written elsewhere with --out are gathered into it.
            entry = found.setdefault(
                (str(prov["method"]), str(prov["env_id"]), label),
                {
                    "train_seed": train_seed,
                    "training": [],
                    "checkpoints": [],
                    "dirs": {"training": set(), "checkpoints": set()},
                },
            )
            entry[kind].extend(points)
            entry["dirs"][kind].add(str(run_dir))
    series = []
    for (method, env_id, label), entry in sorted(found.items()):
        kind = source
        if source == "auto":
            kind = "training" if entry["training"] else "checkpoints"
        if not entry[kind]:
            continue
        if len(entry["dirs"][kind]) > 1:
            # Two different runs with the same method, task and seed (e.g. two configs) would be mixed here.
            print(
                f"warning: {method}/{env_id}/{label}: {kind} evaluations found under several run directories "
                f"({', '.join(sorted(entry['dirs'][kind]))}); they are treated as ONE run. Summarize different "
                "runs of the same seed separately.",
                file=sys.stderr,
            )
        files = sorted({p.file for p in entry[kind]})
        if kind == "training" and len(files) > 1:
            print(
                f"note: {method}/{env_id}/{label}: merging {len(files)} training logs (resumed run?): "
                f"{', '.join(files)}",
                file=sys.stderr,
            )
        series.append(Series(method, env_id, label, entry["train_seed"], kind, _merge(entry[kind])))
    if not series:
        raise UserError(f"no evaluation points of kind {source!r} under {', '.join(map(str, run_dirs))}")
    return series


# -- statistics ------------------------------------------------------------------------------------------------------
def series_stats(points: list[Point], k: int = 3) -> dict[str, Any]:
    """peak / last / top-k mean of success_once (and success_at_end) over one run's points (sorted by step)."""
    if not points:
        raise ValueError("series_stats needs at least one point")
    once = np.array([p.success_once for p in points], dtype=np.float64)
    end = np.array([p.success_at_end for p in points], dtype=np.float64)
    best = int(np.argmax(once))  # first occurrence: the earliest step reaching the peak
    topk = np.sort(once)[::-1][: max(1, k)]
    return {
        "peak": float(once[best]),
        "peak_step": points[best].step,
        "last": float(once[-1]),
        "last_step": points[-1].step,
        f"top{k}": float(topk.mean()),
        "peak_at_end": float(end.max()),
        "last_at_end": float(end[-1]),
        "n_points": len(points),
        "n_episodes": sorted({p.n_episodes for p in points}),
    }


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample std (ddof=1); std is None for fewer than two values."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return math.nan, None
    return float(arr.mean()), (float(arr.std(ddof=1)) if arr.size >= 2 else None)


STAT_KEYS = ("peak", "last", "top{k}", "peak_at_end", "last_at_end")


def summarize(series: list[Series], k: int = 3) -> dict[str, Any]:
    """Per (method, task): per-seed stats and mean/std across seeds. JSON-ready."""
    groups: dict[tuple[str, str], list[Series]] = {}
    for s in series:
        groups.setdefault(s.key, []).append(s)
    rows = []
    for (method, env_id), members in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        per_seed = []
        for s in sorted(members, key=lambda s: (s.train_seed is None, s.train_seed or 0, s.seed_label)):
            stats = series_stats(s.points, k)
            per_seed.append({"seed": s.seed_label, "train_seed": s.train_seed, "source": s.source, **stats})
        row: dict[str, Any] = {"method": method, "env_id": env_id, "n_seeds": len(per_seed)}
        for key in STAT_KEYS:
            key = key.format(k=k)
            mean, std = mean_std([p[key] for p in per_seed])
            row[f"{key}_mean"], row[f"{key}_std"] = mean, std
        row["per_seed"] = per_seed
        rows.append(row)
    return {
        "definition": (
            f"per training seed: peak / last / top-{k} mean over evaluated checkpoints of success_once; "
            "across seeds: mean and sample std (ddof=1, null for one seed)"
        ),
        "k": k,
        "groups": rows,
    }


def _pm(mean: float, std: float | None) -> str:
    return f"{mean:.3f}" if std is None else f"{mean:.3f} ± {std:.3f}"


def to_markdown(summary: dict[str, Any]) -> str:
    """Markdown table: one row per (task, method), success_once peak/last/top-k as mean ± std over seeds."""
    k = summary["k"]
    lines = [
        f"| task | method | seeds | peak success_once | last | top-{k} mean | peak success_at_end | evals/seed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for g in summary["groups"]:
        n_points = sorted({p["n_points"] for p in g["per_seed"]})
        eps = sorted({e for p in g["per_seed"] for e in p["n_episodes"]})
        lines.append(
            f"| {g['env_id']} | {g['method']} | {g['n_seeds']} | {_pm(g['peak_mean'], g['peak_std'])} | "
            f"{_pm(g['last_mean'], g['last_std'])} | {_pm(g[f'top{k}_mean'], g[f'top{k}_std'])} | "
            f"{_pm(g['peak_at_end_mean'], g['peak_at_end_std'])} | "
            f"{'/'.join(map(str, n_points))} x {'/'.join(map(str, eps))} ep |"
        )
    lines += ["", summary["definition"] + "."]
    return "\n".join(lines) + "\n"


def to_csv(summary: dict[str, Any]) -> str:
    """CSV: one line per (task, method, seed) plus one 'mean'/'std' line per (task, method)."""
    k = summary["k"]
    keys = [key.format(k=k) for key in STAT_KEYS]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["env_id", "method", "seed", *keys, "peak_step", "last_step", "n_points", "source"])
    fmt = lambda v: "" if v is None else (f"{v:.6g}" if isinstance(v, float) else v)
    for g in summary["groups"]:
        for p in g["per_seed"]:
            writer.writerow(
                [
                    g["env_id"],
                    g["method"],
                    p["seed"],
                    *[fmt(p[key]) for key in keys],
                    p["peak_step"],
                    p["last_step"],
                    p["n_points"],
                    p["source"],
                ]
            )
        for stat in ("mean", "std"):
            values = [fmt(g[f"{key}_{stat}"]) for key in keys]
            writer.writerow([g["env_id"], g["method"], stat, *values, "", "", "", ""])
    return buf.getvalue()


# -- modes -----------------------------------------------------------------------------------------------------------
def mode_rows(eval_infos: list[str | os.PathLike]) -> list[dict[str, Any]]:
    """One row per ``eval_info.json`` that has per-mode counts (tasks with a mode function, see
    :func:`mepoly_il.eval.rollout.mode_counts`): method, env_id, train_seed, success_once, n_episodes, modes."""
    rows = []
    for path in eval_infos:
        prov, point = read_eval_info(path)
        modes = _load_json(Path(path))["aggregated"].get("modes")
        if modes is None:
            continue
        rows.append(
            {
                "method": prov["method"],
                "env_id": prov["env_id"],
                "train_seed": prov.get("train_seed"),
                "success_once": point.success_once,
                "n_episodes": point.n_episodes,
                "modes": modes,
                "file": str(path),
            }
        )
    return rows


def modes_markdown(groups: dict[str, list[dict[str, Any]]]) -> str:
    """Markdown table of :func:`mode_rows` grouped by a label (e.g. the run folder): per seed the final
    success_once and, per mode, successes / episodes and the share of all successes."""
    labels = sorted({m for rows in groups.values() for r in rows for m in r["modes"]})
    head = "| runs | seed | success_once | episodes | " + " | ".join(f"{m}: succ/eps (share)" for m in labels) + " |"
    lines = [head, "|" + "---|" * (4 + len(labels))]
    for name, rows in groups.items():
        for r in sorted(rows, key=lambda r: (r["train_seed"] is None, r["train_seed"] or 0)):
            cells = []
            for m in labels:
                v = r["modes"].get(m, {"episodes": 0, "successes": 0, "success_share": None})
                share = "-" if v["success_share"] is None else f"{100 * v['success_share']:.0f}%"
                cells.append(f"{v['successes']}/{v['episodes']} ({share})")
            lines.append(
                f"| {name} | {r['train_seed']} | {r['success_once']:.2f} | {r['n_episodes']} | "
                + " | ".join(cells)
                + " |"
            )
    lines += [
        "",
        "share = the mode's fraction of all successful episodes of that evaluation; a rollout's mode is measured from "
        "its own trajectory (the task's mode function), not from any label.",
    ]
    return "\n".join(lines) + "\n"


def write_mode_table(runs: str | os.PathLike, methods: list[str], out: str | os.PathLike) -> Path:
    """``modes_markdown`` of every ``<runs>/<method>/**/final_eval/**/eval_info.json`` -> ``out`` (markdown) and
    the rows as JSON next to it (same stem)."""
    from mepoly_il.utils import atomic_path, write_json_atomic

    groups = {}
    for method in methods:
        files = sorted((Path(runs) / method).glob(f"**/final_eval/**/{EVAL_INFO_NAME}"))
        groups[method] = mode_rows(files)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = modes_markdown(groups)
    with atomic_path(out, overwrite=True) as tmp:
        tmp.write_text(text)
    write_json_atomic(out.with_suffix(".json"), groups)
    return out
