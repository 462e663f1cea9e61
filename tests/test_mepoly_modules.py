"""MePoly networks, prior heads and the policy protocol, on random tensors (no training, no files)."""

from __future__ import annotations

import math

import pytest
import torch

from mepoly_il.policies.mepoly.lightning import kl_to_isotropic, mds_stress
from mepoly_il.policies.mepoly.modules import AdaLN, TrajectoryDecoder, attend
from mepoly_il.policies.mepoly.policy import MePolyPolicy
from mepoly_il.policies.mepoly.priors import GaussianPrior, GMMPrior, PolynomialPrior

SMALL = dict(d_model=32, ff_dim=64, n_heads=4, prior_hidden=[32, 32], dropout=0.0)


def small_policy(**kw) -> MePolyPolicy:
    args = dict(obs_dim=5, act_dim=3, obs_horizon=2, act_horizon=4, pred_horizon=8, **SMALL)
    args.update(kw)
    return MePolyPolicy(**args).eval()


def test_vae_shapes_and_gradients():
    policy = small_policy()
    actions, obs = torch.randn(6, 8, 3), torch.randn(6, 2, 5)
    mu, logvar = policy.encode(actions)
    assert mu.shape == logvar.shape == (6, 3)
    memory = policy.memory(obs)
    assert memory.shape == (6, 2, 32)
    out = policy.decode(mu, memory)
    assert out.shape == (6, 8, 3)
    # The zero-initialized AdaLN blocks z's gradient at init; the heads get it from their own outputs.
    (out.pow(2).mean() + mu.sum() + logvar.sum()).backward()
    grads = {n for n, p in policy.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    for prefix in ("action_encoder.", "latent_heads.mu", "latent_heads.logvar", "obs_encoder.", "decoder."):
        assert any(n.startswith(prefix) for n in grads), prefix


def test_adaln_projection_starts_at_zero_so_decoder_ignores_z_at_init():
    ada = AdaLN(16, 3)
    x = torch.randn(2, 5, 16)
    assert torch.equal(ada(x, torch.randn(2, 3)), ada(x, torch.randn(2, 3)))
    dec = TrajectoryDecoder(
        act_dim=2, pred_horizon=5, d_model=16, n_layers=2, n_heads=2, ff_dim=32, latent_dim=3, dropout=0.0
    )
    memory = torch.randn(4, 2, 16)
    assert torch.allclose(dec(torch.randn(4, 3), memory), dec(torch.randn(4, 3), memory))
    # ...and z matters as soon as the projection moves away from zero.
    torch.nn.init.normal_(dec.blocks[0].norm1.proj[1].weight)
    assert not torch.allclose(dec(torch.randn(4, 3), memory), dec(torch.randn(4, 3), memory))


@pytest.mark.parametrize("grad", [True, False])
@pytest.mark.parametrize("kv_len", [None, 2])  # self-attention over 16 tokens, cross-attention to 2
def test_attend_matches_multihead_attention(grad, kv_len):
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(32, 4, batch_first=True)
    x = torch.randn(5, 16, 32, requires_grad=grad)
    memory = None if kv_len is None else torch.randn(5, kv_len, 32)
    kv = x if memory is None else memory
    with torch.set_grad_enabled(grad):
        ours, reference = attend(mha, x, memory), mha(x, kv, kv, need_weights=False)[0]
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)
    if grad:
        g = torch.randn_like(ours)
        ours_grad = torch.autograd.grad(ours, [x, mha.in_proj_weight], g)
        ref_grad = torch.autograd.grad(reference, [x, mha.in_proj_weight], g)
        for a, b in zip(ours_grad, ref_grad):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_mds_stress_is_zero_for_a_scaled_isometry_and_positive_otherwise():
    traj = torch.randn(10, 1, 3)
    assert mds_stress(traj, 0.25 * traj[:, 0]).item() < 1e-10
    assert mds_stress(traj, torch.randn(10, 3)).item() > 1e-3


def test_kl_to_isotropic_matches_torch():
    mu, logvar = torch.randn(7, 3), torch.randn(7, 3)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros(3), torch.full((3,), 0.5))
    ref = torch.distributions.kl_divergence(q, p).sum(-1).mean()
    assert torch.allclose(kl_to_isotropic(mu, logvar, 0.5), ref, atol=1e-5)
    assert kl_to_isotropic(torch.zeros(2, 3), torch.full((2, 3), math.log(0.25)), 0.5).abs().item() < 1e-6


@pytest.mark.parametrize("head", ["polynomial", "gaussian", "gmm"])
def test_prior_heads_share_one_interface(head):
    prior = {"polynomial": PolynomialPrior(2, order=4), "gaussian": GaussianPrior(2), "gmm": GMMPrior(2, 3)}[head]
    params = torch.randn(5, prior.num_params, requires_grad=True)
    dist = prior(params)
    z = dist.sample()
    assert z.shape == (5, 2) and bool((z.abs() < 1).all())
    mode = dist.mode
    assert mode.shape == (5, 2) and bool((mode.abs() < 1).all())
    lp, ent = dist.log_prob(z), dist.entropy()
    assert lp.shape == ent.shape == (5,) and torch.isfinite(lp).all() and torch.isfinite(ent).all()
    (lp.sum() + ent.sum()).backward()
    assert params.grad is not None and params.grad.abs().sum() > 0


def test_polynomial_prior_density_integrates_to_one_and_mode_is_highest():
    prior = PolynomialPrior(2, order=6)
    dist = prior(torch.randn(3, prior.num_params) * 2)
    g = torch.linspace(-1, 1, 201)
    grid = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 1, 2).expand(-1, 3, 2)
    dens = dist.log_prob(grid).exp()  # (N, 3)
    mass = torch.trapezoid(torch.trapezoid(dens.reshape(201, 201, 3), g, dim=0), g, dim=0)
    assert torch.allclose(mass, torch.ones(3), atol=1e-2)  # 201-point trapezoid on a peaked density
    assert bool((dist.log_prob(dist.mode) >= dist.log_prob(grid).max(0).values - 1e-3).all())


def test_gmm_entropy_is_a_lower_bound_of_the_monte_carlo_entropy():
    prior = GMMPrior(2, 3)
    params = torch.randn(4, prior.num_params)
    dist = prior(params)
    x = dist.base.sample((20000,))
    mc = -dist.base.log_prob(x).mean(0)
    assert bool((dist.entropy() <= mc + 0.05).all())
    assert bool((dist.entropy() >= mc - 1.0).all())  # a bound, but not a vacuous one


def test_paper_scale_parameter_count():
    policy = MePolyPolicy(obs_dim=35, act_dim=4, obs_horizon=2, act_horizon=8, pred_horizon=16)
    counts = policy.num_parameters()
    # d=256, ff=2048, 3+2 encoder layers, 4 decoder blocks: ~13M, the paper's "matched to 12M" scale.
    assert 11e6 < counts["total"] < 14e6
    assert counts["total"] == sum(v for k, v in counts.items() if k != "total")


def test_select_action_queue_semantics():
    policy = small_policy(sample_mode="mode")
    obs = torch.randn(10, 3, 5)  # (time, B, Ds)
    # Plan 1: the history is the first observation repeated To times.
    chunk1 = policy.predict_action_chunk(torch.stack([obs[0], obs[0]], dim=1))
    assert chunk1.shape == (3, 4, 3)
    policy.reset()
    got = [policy.select_action(obs[t]) for t in range(4)]
    for t in range(4):
        assert torch.allclose(got[t], chunk1[:, t], atol=1e-6)
    # Plan 2 happens at the 5th call, from the two latest observations.
    chunk2 = policy.predict_action_chunk(torch.stack([obs[3], obs[4]], dim=1))
    assert torch.allclose(policy.select_action(obs[4]), chunk2[:, 0], atol=1e-6)
    # reset() clears both queues: the next call re-plans from a fresh history.
    policy.reset()
    assert torch.allclose(policy.select_action(obs[0]), chunk1[:, 0], atol=1e-6)
    with pytest.raises(ValueError, match=r"\(B, 5\)"):
        policy.select_action(torch.zeros(3, 7))


def test_actions_are_unnormalized_into_environment_units():
    policy = small_policy(sample_mode="mode")
    lo, hi = torch.tensor([10.0, 20.0, 30.0]), torch.tensor([11.0, 22.0, 33.0])
    policy.set_normalizers((torch.zeros(5).numpy(), torch.ones(5).numpy()), (lo.numpy(), hi.numpy()))
    act = policy.predict_action_chunk(torch.rand(2, 2, 5))
    assert bool(((act >= lo) & (act <= hi)).all())


def test_sample_mode_sample_is_seeded():
    policy = small_policy(prior="gaussian")
    for m in policy.modules():  # a trained decoder uses z; at init the zero AdaLN projection ignores it
        if isinstance(m, AdaLN):
            torch.nn.init.normal_(m.proj[1].weight)
    obs = torch.randn(4, 2, 5)
    torch.manual_seed(3)
    a = policy.predict_action_chunk(obs)
    torch.manual_seed(3)
    b = policy.predict_action_chunk(obs)
    torch.manual_seed(4)
    c = policy.predict_action_chunk(obs)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_stage1_policy_without_prior_cannot_act():
    policy = small_policy(prior=None)
    with pytest.raises(RuntimeError, match="stage 2"):
        policy.predict_action_chunk(torch.zeros(1, 2, 5))


def _stage1(**kw):
    from mepoly_il.policies.mepoly.lightning import Stage1Module

    return Stage1Module(
        dict(obs_dim=5, act_dim=3, obs_horizon=2, act_horizon=4, pred_horizon=8, d_model=32, n_heads=4, ff_dim=64,
             enc_layers=1, obs_layers=1, dec_layers=1, dropout=0.0),
        **kw,
    )  # fmt: skip


def test_stage1_iso_latent_switch_is_validated_and_latent_gain_reported():
    from mepoly_il.errors import UserError

    with pytest.raises(UserError, match="iso_latent"):
        _stage1(iso_latent="median")
    batch = {"obs": torch.randn(16, 2, 5), "action": torch.rand(16, 8, 3) * 2 - 1}
    for mode in ("mean", "sample"):
        module = _stage1(iso_latent=mode)
        train = module._losses(batch, sample=True)
        assert torch.isfinite(train["iso"]) and "latent_gain" not in train
        val = module._losses(batch, sample=False)
        # AdaLN starts at zero, so an untrained decoder ignores z: shuffling codes changes nothing.
        assert abs(float(val["latent_gain"])) < 1e-6
