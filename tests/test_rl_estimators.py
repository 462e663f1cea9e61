"""RP / LR / MRP gradient estimators (mepoly_il/rl/estimators.py) against closed-form gradients of E[f] for a
quadratic f under a Gaussian and a 2-component Gaussian mixture."""

from __future__ import annotations

import pytest
import torch

from mepoly_il.rl.estimators import lr_surrogate, mixture_log_prob, mrp_surrogate, rp_surrogate, sample_mixture

C = torch.tensor([0.3, -0.5], dtype=torch.float64)


def _f(a: torch.Tensor) -> torch.Tensor:
    """f(a) = -||a - c||^2 over the last dim."""
    return -((a - C) ** 2).sum(-1)


def _params(k: int):
    torch.manual_seed(0)
    mu = torch.tensor([[[0.1, 0.4], [-0.6, 0.2]]], dtype=torch.float64)[:, :k].clone().requires_grad_()
    log_std = torch.tensor([[[-0.5, -1.0], [-0.2, -0.7]]], dtype=torch.float64)[:, :k].clone().requires_grad_()
    logits = torch.tensor([[0.4, -0.3]], dtype=torch.float64)[:, :k].clone().requires_grad_()
    return mu, log_std, logits


def _exact_grad(mu, log_std, logits):
    """grad of E[f] = sum_k w_k (-(||mu_k - c||^2 + ||std_k||^2)) in closed form."""
    w = torch.softmax(logits, -1)
    jk = -(((mu - C) ** 2).sum(-1) + (log_std.exp() ** 2).sum(-1))
    return torch.autograd.grad((w * jk).sum(), (mu, log_std, logits))


def _close(got, want, rtol, atol):
    for g, w in zip(got, want, strict=True):
        assert torch.allclose(g, w, rtol=rtol, atol=atol), (g, w)


def test_rp_matches_the_gaussian_gradient():
    mu, log_std, logits = _params(1)
    want = _exact_grad(mu, log_std, logits)[:2]
    torch.manual_seed(1)
    j = rp_surrogate(_f, mu[:, 0], log_std[:, 0].exp(), n=200_000).sum()
    got = torch.autograd.grad(j, (mu, log_std))
    _close(got, want, rtol=0.02, atol=0.01)
    exact_value = -(((mu - C) ** 2).sum() + (log_std.exp() ** 2).sum())
    assert float(j.detach()) == pytest.approx(float(exact_value.detach()), abs=0.01)


def test_mrp_matches_the_mixture_gradient():
    mu, log_std, logits = _params(2)
    want = _exact_grad(mu, log_std, logits)
    torch.manual_seed(2)
    j = mrp_surrogate(_f, torch.log_softmax(logits, -1), mu, log_std.exp(), n=200_000).sum()
    got = torch.autograd.grad(j, (mu, log_std, logits))
    _close(got, want, rtol=0.02, atol=0.01)


@pytest.mark.parametrize("leave_one_out", [False, True])
def test_lr_matches_the_mixture_gradient(leave_one_out):
    mu, log_std, logits = _params(2)
    want = _exact_grad(mu, log_std, logits)
    torch.manual_seed(3)
    logw = torch.log_softmax(logits, -1)
    a = sample_mixture(logw, mu, log_std.exp(), 400_000)  # (n, 1, d), no grad
    lp = mixture_log_prob(a, logw, mu, log_std.exp())
    got = torch.autograd.grad(lr_surrogate(_f(a), lp, leave_one_out=leave_one_out).sum(), (mu, log_std, logits))
    _close(got, want, rtol=0.05, atol=0.02)


def test_mrp_has_lower_variance_than_lr():
    """The mixture paper's claim (Prop. 4.7) on this smooth f: per-draw gradient variance, 8 samples per draw."""
    mu, log_std, logits = _params(2)
    logw = torch.log_softmax(logits, -1)
    torch.manual_seed(4)

    def grads(kind):
        out = []
        for _ in range(200):
            if kind == "mrp":
                j = mrp_surrogate(_f, torch.log_softmax(logits, -1), mu, log_std.exp(), n=4).sum()
            else:
                a = sample_mixture(logw.detach(), mu.detach(), log_std.exp().detach(), 8)
                j = lr_surrogate(_f(a), mixture_log_prob(a, torch.log_softmax(logits, -1), mu, log_std.exp())).sum()
            out.append(torch.cat([g.flatten() for g in torch.autograd.grad(j, (mu, log_std, logits))]))
        return torch.stack(out)

    assert float(grads("mrp").var(0).sum()) < 0.5 * float(grads("lr").var(0).sum())
