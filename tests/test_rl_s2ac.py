"""S2AC (mepoly_il/rl/s2ac.py): the SVGD closed-form entropy against known entropies, the multi-goal env, and the
S2AC trainer on it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mepoly_il.envs.multigoal import GOALS, VecMultiGoal, goal_shares
from mepoly_il.errors import UserError
from mepoly_il.rl.heads import tanh_log_det
from mepoly_il.rl.s2ac import SVGDActor, rbf_bandwidth, svgd_direction, svgd_sample
from mepoly_il.rl.sac import SACConfig, TwinQ, train_sac

# the S2AC paper's 2-D Gaussian (its toy density experiment)
MU = torch.tensor([-0.687, 0.801], dtype=torch.float64)
SIGMA = 5 * torch.tensor([[0.226, 0.165], [0.165, 0.678]], dtype=torch.float64)
PREC = torch.linalg.inv(SIGMA)
GAUSS_H = float(0.5 * torch.logdet(2 * math.pi * math.e * SIGMA))


def _gauss_score(u):
    return -(u - MU) @ PREC


def _svgd_entropy(score, m, steps, step_size, runs=16, seed=0):
    """Mean over ``runs`` independent SVGD runs from the paper's N(0, 6 I) start of -mean_i log q_L(u_i)."""
    torch.manual_seed(seed)
    std = math.sqrt(6.0)
    u0 = std * torch.randn(runs, m, 2, dtype=torch.float64)
    lq0 = torch.distributions.Normal(0.0, std).log_prob(u0).sum(-1)
    u, lq = svgd_sample(u0, lq0, score, steps, step_size, bandwidth="half_mean")
    return float(-lq.mean()), u


def test_trace_formula_is_the_jacobian_trace_without_the_self_term():
    torch.manual_seed(0)
    u = torch.randn(1, 7, 2, dtype=torch.float64)
    s2 = rbf_bandwidth(u)
    _, trace = svgd_direction(u, _gauss_score(u), s2)
    for i in range(7):

        def phi_i(x, i=i):
            uu = torch.cat([u[0, :i], x[None], u[0, i + 1 :]])[None]
            return svgd_direction(uu, _gauss_score(uu), s2)[0][0, i]

        jac = torch.autograd.functional.jacobian(phi_i, u[0, i])
        self_term = -torch.trace(PREC) / 7  # (1/m) tr grad s_i, which the paper drops
        assert float(trace[0, i]) == pytest.approx(float(torch.trace(jac) - self_term), abs=1e-10)


def test_svgd_entropy_matches_a_gaussian():
    """20 particles, 300 steps of 0.1: within 0.25 nats of the exact entropy (3.41)."""
    est, u = _svgd_entropy(_gauss_score, m=20, steps=300, step_size=0.1)
    assert est == pytest.approx(GAUSS_H, abs=0.25)
    assert float((u.mean(1) - MU).norm(dim=-1).mean()) < 0.2  # the particles did reach the target


def test_svgd_entropy_matches_a_gaussian_mixture():
    """4 unit-variance modes on the circle of radius 4 (the paper's GMM layout); 20 particles, 300 steps of
    0.3: within 0.3 nats of the Monte-Carlo entropy (4.21)."""
    ang = 2 * math.pi * torch.arange(4, dtype=torch.float64) / 4
    means = 4 * torch.stack([ang.cos(), ang.sin()], -1)

    def log_p(u):
        comp = torch.distributions.Normal(means, 1.0).log_prob(u[..., None, :]).sum(-1)
        return torch.logsumexp(comp, -1) - math.log(4)

    def score(u):
        with torch.enable_grad():
            return torch.autograd.grad(log_p(u).sum(), u)[0]

    torch.manual_seed(1)
    x = means[torch.randint(0, 4, (200_000,))] + torch.randn(200_000, 2, dtype=torch.float64)
    exact = float(-log_p(x).mean())
    est, _ = _svgd_entropy(score, m=20, steps=300, step_size=0.3)
    assert est == pytest.approx(exact, abs=0.3)


@pytest.mark.slow
def test_svgd_entropy_drifts_down_when_run_past_convergence():
    """The documented limitation: with finite particles the estimate keeps falling after SVGD has converged."""
    h300, _ = _svgd_entropy(_gauss_score, m=20, steps=300, step_size=0.1)
    h1500, _ = _svgd_entropy(_gauss_score, m=20, steps=1500, step_size=0.1)
    assert h1500 < h300 - 1.0


def test_multigoal_rewards_goals_and_timeouts():
    env = VecMultiGoal(3)
    obs = env.reset()
    assert obs.shape == (3, 2) and not obs.any()
    # env 0 walks right to G1 (5 steps), env 1 towards G2 = (-4, 3) at 0.8 speed along (-0.8, 0.6), env 2 stays
    dirs = np.array([[1.0, 0.0], [-0.8, 0.6], [0.0, 0.0]])
    for t in range(5):
        obs, r, term, trunc, info = env.step(dirs)
        if t == 0:
            g = np.linalg.norm(np.array([1.0, 0.0]) - GOALS, axis=1).min()
            assert r[0] == pytest.approx(-30.0 - g**2)
            assert r[2] == pytest.approx(-(np.linalg.norm(GOALS, axis=1).min() ** 2))
    assert term[:2].all() and not term[2]
    assert info["episode_goal"].tolist() == [0, 1, -1]
    assert r[0] == pytest.approx(-30.0 + 10.0)  # on the goal: distance 0, bonus 10
    assert not obs[:2].any()  # autoreset to the origin
    for _ in range(25):
        obs, r, term, trunc, info = env.step(dirs * 0)
    assert trunc[2] and info["episode_goal"][2] == -1 and info["episode_length"][2] == 30
    shares = goal_shares(lambda o: np.tile([[1.0, 0.0]], (len(o), 1)), episodes=10, num_envs=4)
    assert shares["shares"].tolist() == [1.0, 0.0, 0.0, 0.0]


def _one_svgd_step_by_hand(actor, obs, scale):
    """Actions and log pi after one SVGD step, written out per particle from the module docstring's formulas, with
    the drive ``s_j = scale * grad_u min Q(s, tanh(u_j))``; the initial particles are the actor's (seed 0)."""
    torch.manual_seed(0)
    u0, lq0 = actor.initial(obs)
    u = u0.detach().requires_grad_()
    q = actor.critic[0].min_q(obs, torch.tanh(u).transpose(0, 1))
    s = torch.autograd.grad(q.sum(), u)[0] * scale
    u, s = u.detach(), s.detach()
    b, m, d = u.shape
    s2 = (torch.cdist(u, u) ** 2).mean((1, 2)) / (4 * math.log(m + 1))  # the "log" bandwidth
    u1, lq = torch.empty_like(u), lq0.detach().clone()
    for n in range(b):
        for i in range(m):
            phi, tr = torch.zeros(d), 0.0
            for j in range(m):
                diff = u[n, i] - u[n, j]
                k = torch.exp(-diff.pow(2).sum() / (2 * s2[n]))
                phi += k * s[n, j] + k * diff / s2[n]
                if j != i:
                    tr -= k * (diff @ s[n, j] + diff.pow(2).sum() / s2[n] - d) / (m * s2[n])
            u1[n, i] = u[n, i] + actor.step_size * phi / m
            lq[n, i] -= actor.step_size * tr
    return torch.tanh(u1), lq - tanh_log_det(u1)


@pytest.mark.parametrize("drive", ["grad_q_over_alpha", "grad_q"])
def test_svgd_drive_is_grad_q_over_alpha_or_grad_q(drive):
    """The paper's drive divides grad Q by alpha, the authors' code's does not; the trace follows the same drive."""
    torch.manual_seed(3)
    critic, obs = TwinQ(2, 2, 16), torch.randn(2, 2)
    for alpha in (0.25, 4.0):
        actor = SVGDActor(2, 2, critic, alpha=alpha, particles=4, steps=1, step_size=0.3, drive=drive)
        torch.manual_seed(0)
        a, logp = actor.sample(obs)
        a_ref, logp_ref = _one_svgd_step_by_hand(actor, obs, 1.0 / alpha if drive == "grad_q_over_alpha" else 1.0)
        torch.testing.assert_close(a, a_ref, rtol=0, atol=1e-5)
        torch.testing.assert_close(logp, logp_ref, rtol=0, atol=1e-4)
        # the drive matters: the same step without grad Q lands elsewhere
        a_free, _ = _one_svgd_step_by_hand(actor, obs, 0.0)
        assert float((a - a_free).abs().max()) > 1e-3
    torch.manual_seed(0)
    a1, _ = SVGDActor(2, 2, critic, alpha=1.0, particles=4, steps=1, step_size=0.3, drive=drive).sample(obs)
    torch.manual_seed(0)
    a1_other, _ = SVGDActor(2, 2, critic, alpha=1.0, particles=4, steps=1, step_size=0.3).sample(obs)
    torch.testing.assert_close(a1, a1_other, rtol=0, atol=0)  # both drives coincide at alpha = 1
    with pytest.raises(UserError, match="drive"):
        SVGDActor(2, 2, critic, drive="grad_log_q")


def test_s2ac_rejects_bad_settings():
    with pytest.raises(UserError, match="particles"):
        SVGDActor(2, 2, TwinQ(2, 2, 8), particles=1)
    critic = TwinQ(2, 2, 8)
    with pytest.raises(UserError, match="autotune=false"):
        train_sac(SVGDActor(2, 2, critic, alpha=1.0), critic, VecMultiGoal(2), SACConfig(alpha=1.0), seed=0)


@pytest.mark.parametrize("amortised", [False, True])
def test_s2ac_trains_on_multigoal(amortised):
    torch.manual_seed(0)
    critic = TwinQ(2, 2, 32)
    actor = SVGDActor(2, 2, critic, alpha=1.0, particles=6, steps=3, amortised=amortised, hidden=32)
    cfg = SACConfig(
        total_steps=160,
        num_envs=8,
        batch_size=32,
        learning_starts=96,
        hidden=32,
        autotune=False,
        alpha=1.0,
        log_every=80,
    )
    before = [p.detach().clone() for p in actor.parameters()]
    hist = train_sac(actor, critic, VecMultiGoal(8), cfg, seed=0)
    assert hist[-1]["updates"] == 9
    assert math.isfinite(hist[-1]["critic_loss"]) and math.isfinite(hist[-1]["entropy"])
    a = actor.act_eval(torch.zeros(5, 2))
    assert a.shape == (5, 2) and bool((a.abs() <= 1).all())
    moved = [not torch.equal(b, p) for b, p in zip(before, actor.parameters(), strict=True)]
    assert (len(moved) > 0 and all(moved)) == amortised  # S2AC(phi) has no actor parameters


@pytest.mark.slow
def test_s2ac_return_rises_on_the_bandit():
    """Uniform actions score ~0.43 on the lemniscate bandit; S2AC(phi), whose only learner is the critic, must climb
    well above that once its SVGD particles follow the learned Q."""
    from mepoly_il.envs.bandit import BanditTask, VecBandit

    torch.manual_seed(0)
    critic = TwinQ(1, 2, 64)
    actor = SVGDActor(1, 2, critic, alpha=0.2, particles=8, steps=5, step_size=0.02)
    cfg = SACConfig(
        total_steps=2_400,
        num_envs=16,
        batch_size=64,
        learning_starts=256,
        hidden=64,
        autotune=False,
        alpha=0.2,
        gamma=0.0,
        log_every=400,
        updates_per_step=2,
    )
    hist = train_sac(actor, critic, VecBandit(BanditTask(), 16), cfg, seed=0)
    assert hist[0]["episode_return"] < 0.5
    assert hist[-1]["episode_return"] > 0.6, [round(r["episode_return"], 3) for r in hist]
