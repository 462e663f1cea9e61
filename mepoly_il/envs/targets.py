"""2-D target point clouds of the MePoly bandit experiment (paper §5.2: the lemniscate and the two moons), with
the shapes and noise of the authors' public code (github.com/UMich-CURLY/MePoly, bandit/utils/bandit.py).

Both generators return ``(n, 2)`` float64 arrays in ``[-1, 1]^2``: the noise-free curve, plus isotropic
``N(0, noise^2)`` noise, clipped to the box (the authors clip too, so a few points sit exactly on the edge).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

LEMNISCATE_A = 0.9
MOON_RADIUS = 0.55
MOON_CENTRES = ((-0.25, 0.0), (0.25, 0.0))


def _check(n: int, noise: float) -> None:
    if int(n) != n or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    if not noise >= 0:
        raise ValueError(f"noise must be >= 0, got {noise!r}")


def lemniscate(n: int, rng: np.random.Generator, noise: float = 0.03) -> np.ndarray:
    """Lemniscate of Bernoulli (a=0.9), uniform in the curve parameter t ~ U[0, 2pi) -> (n, 2)."""
    _check(n, noise)
    t = rng.uniform(0.0, 2.0 * np.pi, size=int(n))
    s = np.sin(t)
    denom = 1.0 + s**2
    pts = np.stack([LEMNISCATE_A * np.cos(t) / denom, LEMNISCATE_A * s * np.cos(t) / denom], axis=1)
    pts = pts + rng.normal(0.0, noise, size=pts.shape)
    return np.clip(pts, -1.0, 1.0)


def two_moons(n: int, rng: np.random.Generator, noise: float = 0.03) -> np.ndarray:
    """Two interleaved half circles (radius 0.55), n//2 + rest points, uniform angle on [0, pi] -> (n, 2).

    Moon 1 is the upper arc centred at (-0.25, 0); moon 2 the lower arc centred at (+0.25, 0).
    With odd n moon 2 gets the extra point.
    """
    _check(n, noise)
    n1 = int(n) // 2
    n2 = int(n) - n1
    a1 = rng.uniform(0.0, np.pi, size=n1)
    a2 = rng.uniform(0.0, np.pi, size=n2)
    (cx1, cy1), (cx2, cy2) = MOON_CENTRES
    m1 = np.stack([cx1 + MOON_RADIUS * np.cos(a1), cy1 + MOON_RADIUS * np.sin(a1)], axis=1)
    m2 = np.stack([cx2 + MOON_RADIUS * np.cos(a2), cy2 - MOON_RADIUS * np.sin(a2)], axis=1)
    pts = np.concatenate([m1, m2], axis=0)
    pts = pts + rng.normal(0.0, noise, size=pts.shape)
    return np.clip(pts, -1.0, 1.0)


TARGETS: dict[str, Callable[..., np.ndarray]] = {"lemniscate": lemniscate, "two_moons": two_moons}
