"""The density-fit demo job (paper Fig. 3 re-measurement) and its metric helpers."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from mepoly_il.envs.targets import TARGETS, lemniscate, two_moons
from mepoly_il.eval.density_fit import bin_masses_model, histogram_masses, run_density_fit, tv_distance
from mepoly_il.poly import PolynomialFamily


def test_targets_shapes_and_extents():
    rng = np.random.default_rng(6)
    lem = lemniscate(4096, rng)
    assert lem.shape == (4096, 2) and np.abs(lem).max() <= 1.0
    assert 0.85 < np.abs(lem[:, 0]).max() < 1.0 and np.abs(lem[:, 1]).max() < 0.5  # a = 0.9 figure-eight
    moons = two_moons(4097, rng, noise=0.0)
    assert moons.shape == (4097, 2)
    upper, lower = moons[:2048], moons[2048:]
    np.testing.assert_allclose(np.hypot(upper[:, 0] + 0.25, upper[:, 1]), 0.55, atol=1e-12)
    np.testing.assert_allclose(np.hypot(lower[:, 0] - 0.25, lower[:, 1]), 0.55, atol=1e-12)
    assert (upper[:, 1] >= 0).all() and (lower[:, 1] <= 0).all()
    with pytest.raises(ValueError):
        TARGETS["lemniscate"](-1, rng)


def test_tv_and_bin_masses():
    p = np.array([0.5, 0.5, 0.0])
    assert tv_distance(p, p) == 0.0
    assert tv_distance(p, np.array([0.0, 0.0, 1.0])) == 1.0
    fam = PolynomialFamily(2, 3)
    mass = bin_masses_model(fam(torch.zeros(fam.num_features, dtype=torch.float64)), bins=10)
    np.testing.assert_allclose(mass, np.full((10, 10), 0.01), atol=1e-12)
    pts = np.random.default_rng(0).uniform(-1, 1, size=(200_000, 2))
    assert tv_distance(histogram_masses(pts, 10), mass) < 0.02


def test_run_density_fit_quick(tmp_path):
    res = run_density_fit(tmp_path, orders=(2, 8), bases=("legendre", "monomial"), targets=("two_moons",), quick=True)
    for name in ("density_fit.png", "density_fit.csv", "density_fit.md"):
        assert (tmp_path / name).stat().st_size > 0
    with open(tmp_path / "density_fit.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    by = {(r["basis"], int(r["order"])): r for r in rows}
    for r in rows:
        assert 0.0 < float(r["tv"]) < 1.0
        assert int(r["quad_warnings"]) == 0
    # nested polynomial spaces + convex NLL: order 8 must fit better than order 2
    assert float(by[("legendre", 8)]["final_nll"]) < float(by[("legendre", 2)]["final_nll"]) - 0.1
    assert float(by[("legendre", 8)]["tv"]) < float(by[("legendre", 2)]["tv"])
    assert res["noise_floor"]["two_moons"] < 0.2
    assert any("Higher order" in v for v in res["verdicts"])
    assert not list(tmp_path.glob(".tmp-*"))  # atomic writes leave nothing behind
