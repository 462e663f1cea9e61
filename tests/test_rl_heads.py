"""Contract tests of the PPO policy heads (mepoly_il/rl/heads.py)."""

from __future__ import annotations

import math

import pytest
import torch

from mepoly_il.rl.heads import HEADS, make_head


def _grid(d: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Quadrature points on [-1, 1]^d and their weights: midpoint rule in w with a = sin(pi w / 2), which
    packs nodes near the edges where tanh-squashed heads pile up mass."""
    w = torch.linspace(-1 + 1 / n, 1 - 1 / n, n, dtype=torch.float64)
    a = torch.sin(torch.pi * w / 2)
    jac = (2.0 / n) * (torch.pi / 2) * torch.cos(torch.pi * w / 2)
    if d == 1:
        return a[:, None].float(), jac
    x, y = torch.meshgrid(a, a, indexing="ij")
    jx, jy = torch.meshgrid(jac, jac, indexing="ij")
    return torch.stack([x.flatten(), y.flatten()], -1).float(), (jx * jy).flatten()


def _head(name: str, d: int, obs_dim: int = 2):
    kw = {"order": 6} if name == "mepoly" else {}
    return make_head(name, obs_dim, d, **kw)


@pytest.mark.parametrize("name", ["gaussian", "gmm", "mepoly"])
@pytest.mark.parametrize("d", [1, 2])
def test_log_prob_normalises_over_the_box(name, d):
    torch.manual_seed(1)
    head = _head(name, d)
    with torch.no_grad():  # push the head away from its initial state so the test is not about a flat density
        for p in head.parameters():
            p.add_(0.15 * torch.randn_like(p))
    # float32 actions cannot resolve |a| > 1 - 1e-6 (|u| > 7.25); keep the mass out there negligible
    pts, vol = _grid(d, 4000 if d == 1 else 300)
    for obs in (torch.zeros(1, 2), torch.tensor([[0.3, -0.7]])):
        with torch.no_grad():
            lp = head.log_prob(obs.expand(len(pts), -1), pts)
        total = float((lp.double().exp() * vol).sum())
        assert total == pytest.approx(1.0, abs=2e-3), (name, d, total)


@pytest.mark.parametrize("name", sorted(HEADS))
def test_samples_and_actions_stay_in_the_box(name):
    head = _head(name, 2)
    obs = torch.rand(7, 2) * 2 - 1
    with torch.no_grad():
        for p in head.parameters():
            p.mul_(4.0)  # extreme parameters: tanh saturates, flows overshoot, polynomials peak
    s = head.sample(obs, 50)
    assert s.shape == (50, 7, 2)
    assert bool((s.abs() <= 1.0).all())
    a, rec = head.act(obs)
    assert a.shape == (7, 2) and bool((a.abs() <= 1.0).all())


@pytest.mark.parametrize("name", sorted(HEADS))
def test_ratio_is_one_at_rollout_params_and_gradients_flow(name):
    torch.manual_seed(0)
    head = _head(name, 2)
    obs = torch.rand(16, 2) * 2 - 1
    _, rec = head.act(obs)
    log_ratio, ent = head.evaluate(obs, rec)
    assert log_ratio.shape == (16,)
    assert float(log_ratio.abs().max()) < 1e-4
    if name == "fpo":
        assert ent is None and not head.exact_entropy
    else:
        assert ent.shape == (16,) and bool(torch.isfinite(ent).all())
    adv = torch.randn(16)
    loss = -(log_ratio.exp() * adv).mean() - (0.1 * ent.mean() if ent is not None else 0.0)
    loss.backward()
    grads = [p.grad for p in head.parameters() if p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0
    # after a parameter change the ratio moves (the stored record is the old policy)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(0.05 * torch.randn_like(p))
    log_ratio2, _ = head.evaluate(obs, rec)
    assert float(log_ratio2.abs().max()) > 1e-4


def test_mepoly_entropy_is_exact_and_uniform_at_zero_params():
    head = make_head("mepoly", 1, 2, order=4)
    with torch.no_grad():
        for p in head.net[-1].parameters():
            p.zero_()
    ent = head.entropy(torch.zeros(3, 1))
    assert torch.allclose(ent, torch.full((3,), math.log(4.0)), atol=1e-5)
    assert head.exact_entropy and head.exact_log_prob


@pytest.mark.parametrize("name", ["gaussian", "gmm"])
def test_entropy_estimates_match_monte_carlo(name):
    torch.manual_seed(3)
    head = _head(name, 2)
    obs = torch.tensor([[0.2, 0.5]])
    with torch.no_grad():
        a = head.sample(obs, 20000)[:, 0]
        mc = float(-head.log_prob(obs.expand(len(a), -1), a).mean())
        logw, mu, std = head.params(obs)
        est = float(torch.stack([head.entropy_estimate(logw, mu, std) for _ in range(400)]).mean())
    assert est == pytest.approx(mc, abs=0.03)
    assert est <= math.log(4.0) + 0.03  # a density on the box cannot beat the uniform one


def test_bandit_shared_log_partition_matches_per_row():
    head = make_head("mepoly", 1, 2, order=8)
    obs = torch.zeros(64, 1)
    a = head.sample(obs[:1], 64)[:, 0]
    shared = head.log_prob(obs, a)  # 64 identical rows -> one log-partition
    direct = head.family(head.natural_params(obs)).log_prob(a)
    assert torch.allclose(shared, direct, atol=1e-5)
