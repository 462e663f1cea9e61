"""Gradient estimators for ``J(theta) = E_{a ~ pi_theta}[f(a)]``, written as surrogate losses.

Each function returns a scalar *surrogate* whose autograd gradient is the estimator (its value is an estimate of
``J`` where noted). ``f`` may itself depend on ``theta`` (SAC's ``f = Q - alpha log pi``); autograd then adds the
direct term ``E[grad_theta f]`` to every estimator alike.

- RP (reparameterisation; SAC's Gaussian, the mixture paper's SG-RP): ``a = mu + std * eps``, ``eps ~ N(0, I)``,
  gradient ``mean_n grad f(a_n)``.
- LR (likelihood ratio / score function; the mixture paper's SGM-LR): ``a_n ~ pi`` without gradient, gradient
  ``mean_n (f(a_n) - b) grad log pi(a_n)`` with the baseline ``b`` = the mean of ``f`` over the state's samples
  (the mixture paper's baseline, §E.1). The mean includes ``a_n`` itself, so the estimate carries a bias
  factor ``(n - 1) / n``; ``leave_one_out=True`` removes it.
- MRP (marginalised reparameterisation, the mixture paper's Eq. 10): for a mixture ``sum_k w_k N(mu_k, std_k)``
  sum over the components exactly and reparameterise inside each,
  ``grad sum_k w_k mean_n f(mu_k + std_k eps_kn)``: the mixing weights get ``sum_k grad w_k f_k`` and each
  component its RP gradient weighted by ``w_k``. A baseline changes nothing here (``sum_k grad w_k = 0``).

Shapes: leading batch ``B`` of states, ``n`` samples per state, ``K`` components, ``d`` action dims. The
functions work in the unbounded space; a squashing map belongs inside ``f``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def rp_surrogate(f: Callable[[Tensor], Tensor], mu: Tensor, std: Tensor, n: int = 1) -> Tensor:
    """RP estimate of ``E_{N(mu, std^2)}[f]`` per state. ``mu, std (B, d)``; ``f((n, B, d)) -> (n, B)``;
    returns ``(B,)`` (differentiable in ``mu, std`` and whatever ``f`` depends on)."""
    eps = torch.randn((n, *mu.shape), dtype=mu.dtype, device=mu.device)
    return f(mu + std * eps).mean(0)


def mrp_surrogate(f: Callable[[Tensor], Tensor], logw: Tensor, mu: Tensor, std: Tensor, n: int = 1) -> Tensor:
    """MRP estimate of ``E_{sum_k w_k N(mu_k, std_k^2)}[f]`` per state. ``logw (B, K)``, ``mu, std (B, K, d)``;
    ``f((n, B, K, d)) -> (n, B, K)``; returns ``(B,)``."""
    eps = torch.randn((n, *mu.shape), dtype=mu.dtype, device=mu.device)
    fk = f(mu + std * eps).mean(0)  # (B, K)
    return (logw.exp() * fk).sum(-1)


def lr_surrogate(f_values: Tensor, log_prob: Tensor, leave_one_out: bool = False) -> Tensor:
    """LR surrogate per state from samples drawn without gradient.

    ``f_values (n, B)``: ``f`` at the samples (detached here); ``log_prob (n, B)``: ``log pi_theta`` at the same
    samples, differentiable in theta. Returns ``(B,)`` whose gradient is ``mean_n (f_n - b) grad log pi_n``
    (its value is not an estimate of ``J``). Needs ``n >= 2`` for a baseline.
    """
    n = f_values.shape[0]
    fv = f_values.detach()
    if n < 2:
        b = torch.zeros_like(fv)
    elif leave_one_out:
        b = (fv.sum(0, keepdim=True) - fv) / (n - 1)
    else:
        b = fv.mean(0, keepdim=True)
    return ((fv - b) * log_prob).mean(0)


def sample_mixture(logw: Tensor, mu: Tensor, std: Tensor, n: int) -> Tensor:
    """``n`` samples per state of ``sum_k w_k N(mu_k, std_k^2)`` without gradient: ``(B, K), (B, K, d) -> (n, B,
    d)``."""
    with torch.no_grad():
        k = torch.distributions.Categorical(logits=logw).sample((n,))  # (n, B)
        idx = k[..., None, None].expand(n, mu.shape[0], 1, mu.shape[-1])
        m = torch.gather(mu.expand(n, *mu.shape), 2, idx).squeeze(2)
        s = torch.gather(std.expand(n, *std.shape), 2, idx).squeeze(2)
        return m + s * torch.randn_like(m)


def mixture_log_prob(x: Tensor, logw: Tensor, mu: Tensor, std: Tensor) -> Tensor:
    """Log density of ``x (..., B, d)`` under the mixture ``(B, K)``, ``(B, K, d)`` -> ``(..., B)``."""
    comp = torch.distributions.Normal(mu, std).log_prob(x.unsqueeze(-2)).sum(-1)
    return torch.logsumexp(comp + logw, dim=-1)
