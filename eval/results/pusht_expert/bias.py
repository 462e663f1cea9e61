"""Initial-state bias of the kept PushT demos: kept vs all attempts of ``seeds_0_100.json`` (written by measure.py).

    python eval/results/pusht_expert/bias.py [eval/results/pusht_expert/seeds_0_100.json]

Prints, for the initial heading error: the share of attempts and of kept demos per 45-degree bin, the largest gap
between the two empirical distribution functions (kept vs all), and Kolmogorov-Smirnov tests of kept and of all
attempts against the uniform start distribution (heading error uniform on [0, 180] degrees).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from scipy import stats


def main(path: str) -> None:
    rows = json.loads(Path(path).read_text())["attempts"]
    err = np.degrees([abs(r["init_heading_err"]) for r in rows])
    kept = np.array([bool(r["success"]) for r in rows])
    print(f"{len(err)} attempts, {kept.sum()} kept")
    print("heading error bin | attempts | kept | share of attempts | share of kept")
    for lo in range(0, 180, 45):
        m = (err >= lo) & (err < lo + 45)
        n_kept = int((m & kept).sum())
        print(f"{lo:3d}-{lo + 45:3d} deg | {m.sum():3d} | {n_kept:3d} | {m.mean():.2f} | {n_kept / kept.sum():.2f}")
    grid = np.sort(err)
    cdf = lambda x: np.searchsorted(np.sort(x), grid, side="right") / len(x)  # noqa: E731
    print(f"largest CDF gap, kept vs all attempts: {np.abs(cdf(err) - cdf(err[kept])).max():.3f}")
    for name, x in (("all attempts", err), ("kept", err[kept])):
        ks = stats.kstest(x / 180.0, "uniform")
        print(f"KS vs uniform start, {name}: D = {ks.statistic:.3f}, p = {ks.pvalue:.3f}")
    print(f"mean heading error: all {err.mean():.1f} deg, kept {err[kept].mean():.1f} deg")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).with_name("seeds_0_100.json")))
