"""Per-feature statistics in LeRobot's ``stats.json`` schema (min, max, mean, std, count, q01, q10, q50, q90, q99).

They are computed once over every frame of a dataset, stored in the zarr root attributes, and turned into the
normalizer bounds that both the DataModule and the policy use (:func:`mepoly_il.data.normalize.minmax_bounds`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Keys every stored stats block must have (datasets written before the q10/q50/q90 quantiles have only these).
STAT_KEYS = ("min", "max", "mean", "std", "count", "q01", "q99")
#: The quantiles LeRobot writes (its QUANTILES / QUANTILE10 normalisations read them).
QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}


def compute_stats(x: np.ndarray) -> dict[str, list[float] | list[int]]:
    """Stats of ``x`` (N, D) over the first axis, with every :data:`QUANTILES`: lists of length D; ``count`` = [N]."""
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"compute_stats needs a non-empty (N, D) array, got shape {x.shape}")
    x64 = x.astype(np.float64)
    qs = np.quantile(x64, list(QUANTILES.values()), axis=0)
    return {
        "min": x64.min(axis=0).tolist(),
        "max": x64.max(axis=0).tolist(),
        "mean": x64.mean(axis=0).tolist(),
        "std": x64.std(axis=0).tolist(),
        "count": [int(x.shape[0])],
        **{name: q.tolist() for name, q in zip(QUANTILES, qs)},
    }


def check_stats(stats: Any, dim: int) -> str | None:
    """Return a short description of what is wrong with one feature's stats, or None if they are usable."""
    if not isinstance(stats, dict):
        return "stats are not a mapping"
    missing = [k for k in STAT_KEYS if k not in stats]
    if missing:
        return f"stats lack {', '.join(missing)}"
    for key in STAT_KEYS:
        if key == "count":
            continue
        arr = np.asarray(stats[key], dtype=np.float64)
        if arr.shape != (dim,):
            return f"stats[{key!r}] has shape {arr.shape}, expected ({dim},)"
        if not np.isfinite(arr).all():
            return f"stats[{key!r}] is not finite"
    if (np.asarray(stats["max"]) < np.asarray(stats["min"])).any():
        return "stats max < min"
    return None
