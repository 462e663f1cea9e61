"""RL metric functions on known distributions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mepoly_il.envs.bandit import BanditReward, BanditTask
from mepoly_il.eval.rl_metrics import (
    bandit_metrics,
    chamfer,
    knn_entropy,
    mmd2_unbiased,
    mode_stats,
    sliced_w2,
    smoothworld_metrics,
)


@pytest.fixture(scope="module")
def lemniscate():
    task = BanditTask("lemniscate", cloud_seed=0)
    return task, BanditReward(task)


def test_target_vs_itself_sits_at_the_noise_floor(lemniscate):
    task, rf = lemniscate
    m = bandit_metrics(task.sample_target(2048, 5), "lemniscate", rf.points, task.sample_target, 0.1)
    assert m["precision_0.05"] > 0.99 and m["coverage_0.1"] > 0.99
    assert m["reward_mean"] > 0.99
    assert m["mode_balance"] > 0.85
    for k in ("sliced_w2", "chamfer", "mmd2_h0.1"):
        assert m[k] < 3 * abs(m[f"{k}_floor"]) + 2e-3, k
    assert m["entropy_knn"] == pytest.approx(m["entropy_knn_target"], abs=0.1)


def test_uniform_vs_target_is_far_from_the_floor(lemniscate):
    task, rf = lemniscate
    u = np.random.default_rng(0).uniform(-1, 1, size=(2048, 2))
    m = bandit_metrics(u, "lemniscate", rf.points, task.sample_target, 0.1)
    assert 0.2 < m["precision_0.05"] < 0.45  # about 27% of the box lies within 0.05 of the curve
    assert m["reward_mean"] == pytest.approx(0.40, abs=0.03)  # uniform on the box scores 0.398 (numpy replication)
    assert m["sliced_w2"] > 5 * m["sliced_w2_floor"] and m["mmd2_h0.1"] > 50 * abs(m["mmd2_h0.1_floor"])
    assert m["entropy_knn"] == pytest.approx(math.log(4.0), abs=0.05)


def test_one_lobe_gives_zero_balance(lemniscate):
    task, rf = lemniscate
    x = task.sample_target(2048, 1)
    left = x[x[:, 0] < -0.2]
    m = bandit_metrics(left, "lemniscate", rf.points, task.sample_target, 0.1)
    assert m["mass_left_lobe"] > 0.99 and m["mode_balance"] < 0.01
    assert m["coverage_0.05"] < 0.5 and m["precision_0.05"] > 0.99


def test_distances_and_entropy_on_gaussians():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 0.1, (3000, 2)), rng.normal(0, 0.1, (3000, 2))
    shifted = b + np.array([0.3, 0.0])
    assert sliced_w2(a, b) < 0.02 < sliced_w2(a, shifted)
    assert sliced_w2(a, shifted) == pytest.approx(0.3 * math.sqrt(0.5), rel=0.1)  # |shift| * E|cos|^2 in 2-D
    mmd = mmd2_unbiased(a, b)
    assert all(abs(v) < 2e-3 for v in mmd.values())
    assert all(v > 0.05 for v in mmd2_unbiased(a, shifted).values())
    assert chamfer(a, b) < chamfer(a, shifted)
    exact = 1.0 + math.log(2 * math.pi * 0.01)  # 2-D isotropic Gaussian, std 0.1
    assert knn_entropy(a, box=None) == pytest.approx(exact, abs=0.05)


def test_mode_stats_and_smoothworld_metrics():
    assert mode_stats(np.array([0, 1] * 50), 2)["mode_entropy_norm"] == pytest.approx(1.0)
    one = mode_stats(np.array([0] * 95 + [1] * 5 + [-1] * 10), 2)
    assert one["num_modes_10pct"] == 1 and one["class_counts"] == [95, 5]
    res = {
        "outcome": np.array([0, 0, 0, 1, 2]),
        "length": np.array([42, 86, 43, 10, 256]),
        "cls": np.array([0, 0, 1, -1, -1]),
    }
    m = smoothworld_metrics(res, ("top", "bottom"), {"top": 42, "bottom": 43})
    assert m["success_rate"] == pytest.approx(0.6) and m["death_rate"] == pytest.approx(0.2)
    assert m["class_counts"] == [2, 1] and m["num_modes_10pct"] == 2
    assert m["steps_over_shortest"] == pytest.approx((1 + 86 / 42 + 1) / 3)
