"""SAC trainer (mepoly_il/rl/sac.py): config validation, the per-head actor objectives, and learning on the
project's 2-D bandit."""

from __future__ import annotations

import pytest
import torch

from mepoly_il.envs.bandit import BanditTask, VecBandit
from mepoly_il.errors import UserError
from mepoly_il.rl.heads import make_head
from mepoly_il.rl.sac import (
    HeadActor,
    QuadratureActor,
    SACConfig,
    TwinQ,
    make_actor,
    optimise_known_q,
    train_sac,
)

C = torch.tensor([0.4, -0.3])


def _toy_q(obs: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Q(s, a) = -||a - c||^2 (state-free)."""
    return -((a - C) ** 2).sum(-1)


@pytest.mark.parametrize(
    ("field", "value"),
    [("tau", 0.0), ("gamma", 1.5), ("alpha", 0.0), ("estimator", "reinforce"), ("batch_size", 0), ("quad_nodes", 1)],
)
def test_config_rejects_bad_values_in_one_line(field, value):
    with pytest.raises(UserError, match=field) as e:
        SACConfig(**{field: value})
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(("head", "estimator"), [("gaussian", "quadrature"), ("gmm", "rp"), ("mepoly", "mrp")])
def test_estimator_must_fit_the_head(head, estimator):
    kw = {"order": 4} if head == "mepoly" else {}
    with pytest.raises(UserError, match=estimator):
        make_actor(make_head(head, 1, 2, **kw), SACConfig(estimator=estimator))


def test_quadrature_objective_matches_monte_carlo_and_exact_entropy():
    torch.manual_seed(0)
    head = make_head("mepoly", 1, 2, order=6)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(0.3 * torch.randn_like(p))  # a non-trivial density
    actor = QuadratureActor(head)
    obs = torch.tensor([[0.2], [-0.7]])
    alpha = torch.tensor(0.3)
    j, ent = actor.objective(obs, _toy_q, alpha)
    with torch.no_grad():
        a = head.sample(obs, 10_000)  # (n, B, 2)
        mc_q = _toy_q(obs, a).mean(0)
        se = _toy_q(obs, a).std(0) / 100.0
        exact_h = head.family(head.natural_params(obs)).entropy()
    assert torch.allclose(ent, exact_h, atol=1e-5)
    eq = j.detach() - alpha * ent
    assert bool(((eq - mc_q).abs() < 4 * se + 1e-3).all()), (eq, mc_q, se)
    # the objective is deterministic and differentiable in the head's parameters
    j.sum().backward()
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in head.parameters())
    j2, _ = actor.objective(obs, _toy_q, alpha)
    assert torch.equal(j.detach(), j2.detach())


@pytest.mark.parametrize(("head", "estimator", "kw"), [("gaussian", "rp", {}), ("gmm", "mrp", {"num_components": 3})])
def test_reparameterised_objectives_estimate_q_plus_entropy(head, estimator, kw):
    """Averaged over many draws, rp / mrp give E[Q] + alpha H with the head's own entropy estimate."""
    torch.manual_seed(1)
    h = make_head(head, 1, 2, **kw)
    actor = HeadActor(h, estimator)
    obs = torch.zeros(20_000, 1)
    alpha = torch.tensor(0.5)
    with torch.no_grad():
        j, ent = actor.objective(obs, _toy_q, alpha)
        a = h.sample(obs[:1], 20_000)[:, 0]
        mc_q = _toy_q(obs[:1], a).mean()
        logw, mu, std = h.params(obs[:1])
        ref_h = h.entropy_estimate(logw.expand(2000, -1), mu.expand(2000, -1, -1), std.expand(2000, -1, -1)).mean()
    assert float(ent.mean()) == pytest.approx(float(ref_h), abs=0.03)
    assert float(j.mean()) == pytest.approx(float(mc_q + alpha * ref_h), abs=0.03)


@pytest.mark.parametrize(("head", "estimator"), [("gmm", "lr"), ("mepoly", "lr"), ("mepoly", "quadrature")])
def test_every_actor_runs_a_few_updates(head, estimator):
    kw = {"order": 4} if head == "mepoly" else {}
    cfg = SACConfig(
        total_steps=96,
        num_envs=8,
        batch_size=16,
        learning_starts=48,
        hidden=16,
        estimator=estimator,
        log_every=48,
        quad_nodes=8,
    )
    actor = make_actor(make_head(head, 1, 2, **kw), cfg)
    hist = train_sac(actor, TwinQ(1, 2, 16), VecBandit(BanditTask(num_points=256), 8), cfg, seed=0)
    assert hist[-1]["updates"] == 7  # vector steps at env steps 48, 56, ..., 96
    assert all(v == v for v in (hist[-1]["critic_loss"], hist[-1]["actor_objective"], hist[-1]["alpha"]))


@pytest.mark.slow
def test_sac_gaussian_return_rises_on_the_bandit():
    """Uniform actions score ~0.43 on the lemniscate bandit; SAC-Gaussian must climb well above that."""
    torch.manual_seed(0)
    cfg = SACConfig(
        total_steps=2_400,
        num_envs=16,
        batch_size=64,
        learning_starts=256,
        hidden=64,
        alpha=0.05,
        gamma=0.0,
        log_every=400,
        updates_per_step=2,
    )
    env = VecBandit(BanditTask(), 16)
    hist = train_sac(make_actor(make_head("gaussian", 1, 2), cfg), TwinQ(1, 2, 64), env, cfg, seed=0)
    assert hist[0]["episode_return"] < 0.5
    assert hist[-1]["episode_return"] > 0.7, [round(r["episode_return"], 3) for r in hist]


@pytest.mark.parametrize(
    ("head", "estimator", "kw"),
    [
        ("gaussian", "rp", {}),
        ("gmm", "mrp", {"num_components": 3}),
        ("gmm", "lr", {"num_components": 3}),
        ("mepoly", "quadrature", {"order": 4}),
    ],
)
def test_known_q_moves_the_policy_to_the_optimum(head, estimator, kw):
    """With the true reward as critic, every actor's mean action approaches argmax Q = c."""
    torch.manual_seed(0)
    h = make_head(head, 1, 2, **kw)
    actor = make_actor(h, SACConfig(estimator=estimator, quad_nodes=12))
    hist = optimise_known_q(actor, _toy_q, obs_dim=1, steps=150, alpha=0.01, batch_size=16, lr=1e-2, log_every=50)
    assert hist[-1]["objective"] > hist[0]["objective"]
    with torch.no_grad():
        mean_a = h.sample(torch.zeros(1, 1), 2000)[:, 0].mean(0)
    assert float((mean_a - C).norm()) < 0.15, mean_a
