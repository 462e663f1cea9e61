"""Plots for evaluation summaries (matplotlib, Agg backend, PNG written atomically)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mepoly_il.eval.aggregate import Series


def plot_success_vs_step(series: list[Series], path: str | os.PathLike, metric: str = "success_once") -> Path:
    """One panel per task; per method a thin line per training seed and a thick line for the mean over seeds.

    The mean is drawn only at steps every seed of that method was evaluated at (runs evaluated at different steps
    would otherwise average different things).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mepoly_il.utils import atomic_path

    tasks = sorted({s.env_id for s in series})
    methods = sorted({s.method for s in series})
    colors = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.4), squeeze=False, sharey=True)
    for ax, task in zip(axes[0], tasks):
        for method in methods:
            runs = [s for s in series if s.env_id == task and s.method == method]
            if not runs:
                continue
            for s in runs:
                steps = [p.step for p in s.points]
                vals = [getattr(p, metric) for p in s.points]
                ax.plot(steps, vals, color=colors[method], alpha=0.35, lw=1, marker=".", ms=3)
            common = sorted(set.intersection(*[{p.step for p in s.points} for s in runs]))
            if common:
                mean = [np.mean([getattr(p, metric) for s in runs for p in s.points if p.step == st]) for st in common]
                ax.plot(common, mean, color=colors[method], lw=2.2, label=f"{method} (n={len(runs)})")
        ax.set_title(task)
        ax.set_xlabel("training step")
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    axes[0][0].set_ylabel(metric)
    fig.tight_layout()
    with atomic_path(path, overwrite=True) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return Path(path)
