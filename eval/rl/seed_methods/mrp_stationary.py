"""The mixture paper's bimodal-bandit stationary-point study (§3.2, App. D), rebuilt with SciPy.

Objective over a 1-D action: ``J(pi) = E_pi[r(a)] + alpha H(pi)`` with ``r`` the normalised sum of two Gaussian
densities. For a Gaussian policy and for a 2-component Gaussian mixture (GM) we run L-BFGS-B (SciPy's default
for bounded problems) from many random starts, keep the runs that converged to an interior point (a stationary
point; runs that end on the log-std bound have none), and report per alpha the best stationary point's expected
reward and objective, how many stationary points were found, and the share of GM stationary points that are
bimodal (both weights >= 0.1, both stds < 1, one component mean within 0.5 of each reward mode).

The paper's text as stored here lost its numbers (reward means/stds, alpha grid, bounds, start ranges), so the
values below are ours: reward modes at -1 and +1 with std 0.3, log-std in [-3, 2], weights in [0.01, 0.99],
starts mean ~ U[-2, 2], log-std ~ U[-3, 1], weight ~ U[0.01, 0.99], 20 starts per policy class and alpha.
E_pi[r] is closed form (Gaussian convolution); the GM entropy is the trapezoid rule on the union of
per-component grids (:func:`mixture_entropy`). A run whose log-std or mean ends on its bound is not counted as a
stationary point.

Usage: python eval/rl/seed_methods/mrp_stationary.py OUT.json
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy.optimize import minimize
from scipy.stats import norm

MODES, R_STD = np.array([-1.0, 1.0]), 0.3
LOG_STD_BOUNDS = (-3.0, 2.0)
W_BOUNDS = (0.01, 0.99)
ALPHAS = [0.01, 0.03, 0.1, 0.2, 0.25, 0.3, 0.4, 0.5, 1.0]
STARTS = 20
LOCAL = np.linspace(-12.0, 12.0, 801)


def expected_reward(means, stds, weights) -> float:
    """E_pi[r] for a Gaussian mixture policy: sum_k w_k sum_j 0.5 N(m_k; mu_j, s_k^2 + sigma^2)."""
    tot = 0.0
    for m, s, w in zip(means, stds, weights, strict=True):
        tot += w * 0.5 * norm.pdf(m, MODES, np.sqrt(s**2 + R_STD**2)).sum()
    return float(tot)


def reward_max() -> float:
    x = np.linspace(-3, 3, 60001)
    return float((0.5 * norm.pdf(x[:, None], MODES, R_STD).sum(1)).max())


def mixture_entropy(means, stds, weights) -> float:
    """-int p log p by the trapezoid rule on the union of per-component grids ``m_k + s_k [-12, 12]`` (801 nodes
    each), so narrow and wide components are both resolved and nothing is truncated."""
    x = np.unique(np.concatenate([m + s * LOCAL for m, s in zip(means, stds, strict=True)]))
    dens = sum(w * norm.pdf(x, m, s) for m, s, w in zip(means, stds, weights, strict=True))
    return float(np.trapz(-dens * np.log(np.maximum(dens, 1e-300)), x))


def gaussian_objective(x, alpha):
    m, ls = x
    return expected_reward([m], [np.exp(ls)], [1.0]) + alpha * (0.5 * np.log(2 * np.pi * np.e) + ls)


def gm_objective(x, alpha):
    m1, m2, ls1, ls2, w = x
    means, stds, ws = [m1, m2], [np.exp(ls1), np.exp(ls2)], [w, 1 - w]
    return expected_reward(means, stds, ws) + alpha * mixture_entropy(means, stds, ws)


def stationary_points(kind: str, alpha: float, rng: np.random.Generator) -> list[dict]:
    pts = []
    for _ in range(STARTS):
        if kind == "gaussian":
            x0 = [rng.uniform(-2, 2), rng.uniform(-3, 1)]
            bounds = [(-5, 5), LOG_STD_BOUNDS]
            fn = gaussian_objective
        else:
            x0 = [
                rng.uniform(-2, 2),
                rng.uniform(-2, 2),
                rng.uniform(-3, 1),
                rng.uniform(-3, 1),
                rng.uniform(*W_BOUNDS),
            ]
            bounds = [(-5, 5), (-5, 5), LOG_STD_BOUNDS, LOG_STD_BOUNDS, W_BOUNDS]
            fn = gm_objective
        res = minimize(lambda x, fn=fn: -fn(x, alpha), x0, method="L-BFGS-B", bounds=bounds)
        x = res.x
        log_stds = x[1:2] if kind == "gaussian" else x[2:4]
        means_x = x[:1] if kind == "gaussian" else x[:2]
        on_bound = bool((log_stds >= LOG_STD_BOUNDS[1] - 1e-3).any() or (np.abs(means_x) >= 5.0 - 1e-3).any())
        if not res.success or on_bound:
            continue
        if kind == "gaussian":
            means, stds, ws = [x[0]], [np.exp(x[1])], [1.0]
        else:
            means, stds, ws = [x[0], x[1]], [np.exp(x[2]), np.exp(x[3])], [x[4], 1 - x[4]]
        # bimodal: both components carry weight and each sits on a different reward mode
        on_modes = sorted(means) if max(stds) < 1.0 else [0.0, 0.0]
        bimodal = kind == "gm" and min(ws) >= 0.1 and abs(on_modes[0] + 1) < 0.5 and abs(on_modes[1] - 1) < 0.5
        pts.append(
            {
                "objective": float(-res.fun),
                "expected_reward": expected_reward(means, stds, ws),
                "means": [float(m) for m in means],
                "stds": [float(s) for s in stds],
                "weights": [float(w) for w in ws],
                "bimodal": bool(bimodal),
            }
        )
    return pts


def main() -> None:
    out = Path(sys.argv[1])
    rng = np.random.default_rng(0)
    rows, t0 = [], time.perf_counter()
    for alpha in ALPHAS:
        row = {"alpha": alpha}
        for kind in ("gaussian", "gm"):
            pts = stationary_points(kind, alpha, rng)
            best = max(pts, key=lambda p: p["objective"]) if pts else None
            row[kind] = {
                "stationary_points": len(pts),
                "best": best,
                "bimodal_share": float(np.mean([p["bimodal"] for p in pts])) if pts else None,
            }
        rows.append(row)
        g, m = row["gaussian"], row["gm"]
        print(
            alpha,
            g["stationary_points"],
            None if g["best"] is None else round(g["best"]["expected_reward"], 3),
            m["stationary_points"],
            None if m["best"] is None else round(m["best"]["expected_reward"], 3),
            m["bimodal_share"],
            flush=True,
        )
    result = {"reward_max": reward_max(), "rows": rows, "seconds": time.perf_counter() - t0}
    out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
