"""Multimodality metrics for the RL experiments, computed per run (per seed), never pooled across seeds.

Bandit (policy samples vs the target cloud; the paper shows samples, §5.2 Figs. 3-4, and the mean reward alone is
also maximised by a policy collapsed onto one point of the curve): mean reward, precision (on-manifold rate) and
coverage (target points with a sample nearby) at rho in {0.05, 0.1}, per-mode mass (lemniscate lobe / moon, by
the nearest target point, among on-manifold samples), sliced Wasserstein-2, unbiased MMD^2 at three bandwidths,
symmetric Chamfer distance (each with a noise floor: a fresh target sample against another fresh target sample
of the same size), and a Kozachenko-Leonenko k-NN entropy estimate that applies to every head.

Smooth World (episodes from the fixed eval start, paper §5.1): success / death / timeout rates, the route class of
each success, class histogram, normalised mode entropy H(class) / log C, number of classes with >= 10% share,
and steps to goal relative to the BFS minimum of the class reached.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.spatial import cKDTree
from scipy.special import digamma

RHOS = (0.05, 0.1)
MMD_BANDWIDTHS = (0.05, 0.1, 0.2)
#: Seeds of the two fresh target samples (reference and noise floor) = offset + run seed: the run's own cloud is
#: drawn with the run seed, so for seeds below 10,000 neither reference repeats it.
REFERENCE_SEED_OFFSETS = (10_000, 20_000)


def sliced_w2(x: np.ndarray, y: np.ndarray, num_projections: int = 256, seed: int = 0) -> float:
    """Sliced Wasserstein-2 between equal-size samples x, y (M, d): sqrt(mean over directions of W2^2)."""
    if len(x) != len(y):
        raise ValueError(f"sliced_w2 needs equal sizes, got {len(x)} and {len(y)}")
    rng = np.random.default_rng(seed)
    theta = rng.normal(size=(num_projections, x.shape[1]))
    theta /= np.linalg.norm(theta, axis=1, keepdims=True)
    px, py = np.sort(x @ theta.T, axis=0), np.sort(y @ theta.T, axis=0)
    return float(np.sqrt(np.mean((px - py) ** 2)))


def mmd2_unbiased(
    x: np.ndarray, y: np.ndarray, bandwidths=MMD_BANDWIDTHS, max_n: int | None = 2048
) -> dict[float, float]:
    """Unbiased MMD^2 with Gaussian kernels exp(-|a-b|^2 / (2 h^2)) for each bandwidth h: x (M, d), y (N, d).

    Only the first ``max_n`` rows of each side are used (the kernel matrices cost O(M N) exps; 2048 keeps one
    call near a second on one CPU core); ``None`` uses all.
    """
    if max_n is not None:
        x, y = x[:max_n], y[:max_n]
    xt, yt = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32)
    m, n = len(x), len(y)

    def sqdist(a, b):
        return ((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T).clamp_min(0.0)

    dxx, dyy, dxy = sqdist(xt, xt), sqdist(yt, yt), sqdist(xt, yt)
    dxx.fill_diagonal_(0.0)
    dyy.fill_diagonal_(0.0)
    out = {}
    for h in bandwidths:
        g = -1.0 / (2 * h * h)
        # the diagonal of k(x, x) is exactly 1 (zero distance), dropped for the unbiased estimate
        sxx = (torch.exp(dxx * g).sum(dtype=torch.float64) - m) / (m * (m - 1))
        syy = (torch.exp(dyy * g).sum(dtype=torch.float64) - n) / (n * (n - 1))
        sxy = torch.exp(dxy * g).sum(dtype=torch.float64) / (m * n)
        out[h] = float(sxx + syy - 2 * sxy)
    return out


def chamfer(x: np.ndarray, y: np.ndarray) -> float:
    """Symmetric Chamfer distance: mean of the mean nearest-neighbour distances x->y and y->x."""
    dx, _ = cKDTree(y).query(x, k=1)
    dy, _ = cKDTree(x).query(y, k=1)
    return float(0.5 * (dx.mean() + dy.mean()))


def knn_entropy(
    x: np.ndarray,
    k: int = 5,
    dither: float = 1e-4,
    seed: int = 0,
    box: tuple[float, float] | None = (-1.0, 1.0),
) -> float:
    """Kozachenko-Leonenko entropy estimate (nats) of samples x (M, d).

    H = psi(M) - psi(k) + log V_d + d * mean(log eps_i), eps_i the distance to the k-th neighbour. A tiny
    uniform dither (reflected back into ``box``) separates exact duplicates (clipped actions pile up on the
    box edges).
    """
    x = np.asarray(x, dtype=np.float64)
    m, d = x.shape
    if dither > 0:
        x = x + np.random.default_rng(seed).uniform(-dither, dither, size=x.shape)
        if box is not None:
            lo, hi = box
            x = np.where(x > hi, 2 * hi - x, x)
            x = np.where(x < lo, 2 * lo - x, x)
    eps, _ = cKDTree(x).query(x, k=k + 1)
    eps = np.maximum(eps[:, -1], 1e-12)
    log_vd = (d / 2) * math.log(math.pi) - math.lgamma(d / 2 + 1)
    return float(digamma(m) - digamma(k) + log_vd + d * np.mean(np.log(eps)))


def mode_labels(target: str, points: np.ndarray) -> tuple[np.ndarray, tuple[str, ...]]:
    """Mode label of every target point: lemniscate lobe by the sign of x, two moons by generation order
    (first half = upper moon, :func:`mepoly_il.envs.targets.two_moons`)."""
    if target == "lemniscate":
        return (points[:, 0] >= 0).astype(np.int64), ("left_lobe", "right_lobe")
    if target == "two_moons":
        lab = np.zeros(len(points), dtype=np.int64)
        lab[len(points) // 2 :] = 1
        return lab, ("upper_moon", "lower_moon")
    raise ValueError(f"no mode labels for target {target!r}")


def _distribution_distances(x: np.ndarray, y: np.ndarray, seed: int) -> dict:
    mmd = mmd2_unbiased(x, y)
    out = {"sliced_w2": sliced_w2(x, y, seed=seed), "chamfer": chamfer(x, y)}
    out.update({f"mmd2_h{h}": v for h, v in mmd.items()})
    return out


def bandit_metrics(
    samples: np.ndarray, target: str, points: np.ndarray, sample_target, sigma: float, seed: int = 0
) -> dict:
    """All bandit metrics of policy ``samples`` (M, 2) (clipped to the box here).

    ``points`` (P, 2) is the run's reward cloud; ``sample_target(n, seed) -> (n, 2)`` draws fresh target
    points for the distribution distances and their noise floors (fresh target vs fresh target, same size M).
    """
    x = np.clip(np.asarray(samples, dtype=np.float64), -1.0, 1.0)
    m = len(x)
    tree = cKDTree(points)
    d, nn = tree.query(x, k=1)
    out: dict = {
        "num_samples": int(m),
        "reward_mean": float(np.mean(np.exp(-(d**2) / (2 * sigma**2)))),
        "dist_median": float(np.median(d)),
        "dist_q90": float(np.quantile(d, 0.9)),
    }
    sample_tree = cKDTree(x)
    for rho in RHOS:
        out[f"precision_{rho}"] = float((d < rho).mean())
        dt, _ = sample_tree.query(points, k=1)
        out[f"coverage_{rho}"] = float((dt < rho).mean())
    labels, names = mode_labels(target, points)
    on = d < max(RHOS)
    lab = labels[nn[on]]
    for i, name in enumerate(names):
        out[f"mass_{name}"] = float((lab == i).mean()) if on.any() else 0.0
    shares = [out[f"mass_{n}"] for n in names]
    out["mode_balance"] = float(min(shares) / max(shares)) if max(shares) > 0 else 0.0
    ref = sample_target(m, REFERENCE_SEED_OFFSETS[0] + seed)
    ref2 = sample_target(m, REFERENCE_SEED_OFFSETS[1] + seed)
    for k, v in _distribution_distances(x, ref, seed).items():
        out[k] = v
    for k, v in _distribution_distances(ref2, ref, seed).items():
        out[f"{k}_floor"] = v
    out["entropy_knn"] = knn_entropy(x, seed=seed)
    out["entropy_knn_target"] = knn_entropy(ref, seed=seed)
    out["entropy_uniform_box"] = math.log(4.0)
    return out


def mode_stats(classes: np.ndarray, num_classes: int, min_share: float = 0.1) -> dict:
    """Histogram, normalised entropy H / log C and #classes with share >= min_share of class indices.

    Negative indices (no class: failed episodes) are ignored."""
    classes = np.asarray(classes)
    classes = classes[classes >= 0]
    counts = np.bincount(classes, minlength=num_classes)[:num_classes]
    total = counts.sum()
    if total == 0:
        return {"class_counts": counts.tolist(), "mode_entropy_norm": 0.0, "num_modes_10pct": 0}
    p = counts / total
    nz = p[p > 0]
    h = float(-(nz * np.log(nz)).sum()) + 0.0  # + 0.0 turns the -0.0 of a single class into 0.0
    return {
        "class_counts": counts.tolist(),
        "mode_entropy_norm": h / math.log(num_classes) if num_classes > 1 else 0.0,
        "num_modes_10pct": int((p >= min_share).sum()),
    }


def smoothworld_metrics(result: dict, classes: tuple[str, ...], shortest: dict[str, int] | None) -> dict:
    """Metrics of :func:`mepoly_il.envs.smoothworld.rollout_episodes` output from one start."""
    oc, ln, cls = result["outcome"], result["length"], result["cls"]
    n = len(oc)
    out = {
        "episodes": int(n),
        "success_rate": float((oc == 0).mean()),
        "death_rate": float((oc == 1).mean()),
        "timeout_rate": float((oc == 2).mean()),
    }
    out.update(mode_stats(cls, len(classes)))
    out["class_names"] = list(classes)
    succ = oc == 0
    out["steps_to_goal_mean"] = float(ln[succ].mean()) if succ.any() else float("nan")
    if shortest and succ.any():
        ratios = [ln[i] / shortest[classes[cls[i]]] for i in np.nonzero(succ)[0] if classes[cls[i]] in shortest]
        out["steps_over_shortest"] = float(np.mean(ratios)) if ratios else float("nan")
        out["shortest_steps"] = dict(shortest)
    return out
