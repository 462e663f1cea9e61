"""Latent prior families pi(z | s) on the box [-1, 1]^dz, behind one interface.

A prior head is an ``nn.Module`` with ``num_params`` (how many numbers the prior network must output) whose
``forward(params (B, num_params))`` returns a distribution object with

* ``log_prob(z (B, dz)) -> (B,)``
* ``entropy() -> (B,)``
* ``sample() -> (B, dz)`` (inside the box)
* ``mode`` -> (B, dz) (inside the box)

Families (``make_prior(kind, ...)``):

* ``"polynomial"`` (the paper's): a polynomial exponential family from :mod:`mepoly_il.poly`. Exact
  log-density, entropy and sampling on its quadrature grid. Natural parameters are soft-clipped to ``[-clip,
  clip]`` (the paper clips elementwise; ``clip * tanh(x / clip)`` keeps a gradient at the bound).
* ``"gaussian"`` (ablation): diagonal Gaussian on R^dz with mean ``tanh(.)`` inside the box. ``log_prob`` and
  ``entropy`` are those of the untruncated Gaussian (exact for it); samples are clamped into the box.
* ``"gmm"`` (ablation): mixture of ``n_components`` diagonal Gaussians. ``log_prob`` is exact; the mixture has
  no closed-form entropy, so ``entropy()`` returns the deterministic, differentiable lower bound of Huber et
  al. (2008), ``-sum_i w_i log sum_j w_j N(mu_i; mu_j, S_i + S_j)``. ``mode`` is the component mean with the
  highest mixture density (exact when the components are well separated); samples are clamped into the box.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

PRIOR_KINDS = ("polynomial", "gaussian", "gmm")
#: Samples and modes are kept this far inside the box so that they are valid polynomial-density arguments.
BOX_EPS = 1e-4
_LOG_STD_MIN, _LOG_STD_MAX = -6.0, 1.0


def to_box(z: torch.Tensor) -> torch.Tensor:
    """Clamp (..., dz) into [-1 + BOX_EPS, 1 - BOX_EPS]."""
    return z.clamp(-1.0 + BOX_EPS, 1.0 - BOX_EPS)


class PolynomialPrior(nn.Module):
    """Polynomial exponential family on [-1, 1]^dz; ``params`` are its natural parameters (soft-clipped)."""

    def __init__(self, latent_dim: int, order: int = 8, basis: str = "legendre", clip: float = 5.0, **family_kw):
        super().__init__()
        from mepoly_il.poly import PolynomialFamily

        self.family = PolynomialFamily(
            dim=latent_dim,
            order=order,
            basis=basis,
            clip=clip if clip > 0 else None,
            soft_clip=True,
            **family_kw,
        )
        self.num_params = int(self.family.num_features)

    def forward(self, params: torch.Tensor) -> _PolyDist:
        return _PolyDist(self.family(params))


class _PolyDist:
    """The family's distribution; samples and mode moved strictly inside the box (they may hit its edge)."""

    def __init__(self, dist) -> None:
        self.base = dist

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return self.base.log_prob(z)

    def entropy(self) -> torch.Tensor:
        return self.base.entropy()

    def sample(self) -> torch.Tensor:
        return to_box(self.base.sample())

    @property
    def mode(self) -> torch.Tensor:
        return to_box(self.base.mode)


class _GaussianDist(_PolyDist):
    """Diagonal Gaussian with the same box handling; its mode is the mean."""

    def __init__(self, mean: torch.Tensor, log_std: torch.Tensor) -> None:
        super().__init__(torch.distributions.Independent(torch.distributions.Normal(mean, log_std.exp()), 1))

    @property
    def mode(self) -> torch.Tensor:
        return to_box(self.base.base_dist.loc)


class GaussianPrior(nn.Module):
    """Diagonal Gaussian: params = [mean_raw (dz), log_std (dz)]; mean = tanh(mean_raw)."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = int(latent_dim)
        self.num_params = 2 * self.latent_dim

    def forward(self, params: torch.Tensor) -> _GaussianDist:
        mean_raw, log_std = params.chunk(2, dim=-1)
        return _GaussianDist(torch.tanh(mean_raw), log_std.clamp(_LOG_STD_MIN, _LOG_STD_MAX))


class _GMMDist:
    def __init__(self, logits: torch.Tensor, means: torch.Tensor, log_stds: torch.Tensor) -> None:
        self.logits, self.means, self.log_stds = logits, means, log_stds  # (B, K), (B, K, dz), (B, K, dz)
        comp = torch.distributions.Independent(torch.distributions.Normal(means, log_stds.exp()), 1)
        self.base = torch.distributions.MixtureSameFamily(torch.distributions.Categorical(logits=logits), comp)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return self.base.log_prob(z)

    def entropy(self) -> torch.Tensor:
        # Huber et al. (2008) lower bound: the pairwise Gaussian overlap integrals are closed-form.
        log_w = F.log_softmax(self.logits, dim=-1)  # (B, K)
        var = (2.0 * self.log_stds).exp()
        diff = rearrange(self.means, "b i d -> b i 1 d") - rearrange(self.means, "b j d -> b 1 j d")
        var_sum = rearrange(var, "b i d -> b i 1 d") + rearrange(var, "b j d -> b 1 j d")
        log_overlap = -0.5 * ((diff**2) / var_sum + var_sum.log() + math.log(2 * math.pi)).sum(-1)  # (B, K, K)
        inner = torch.logsumexp(rearrange(log_w, "b j -> b 1 j") + log_overlap, dim=-1)  # (B, K)
        return -(log_w.exp() * inner).sum(-1)

    def sample(self) -> torch.Tensor:
        return to_box(self.base.sample())

    @property
    def mode(self) -> torch.Tensor:
        centers = rearrange(self.means, "b k d -> k b d")
        dens = torch.stack([self.base.log_prob(c) for c in centers], dim=-1)  # (B, K)
        best = dens.argmax(dim=-1)
        return to_box(self.means[torch.arange(best.shape[0], device=best.device), best])


class GMMPrior(nn.Module):
    """Mixture of ``n_components`` diagonal Gaussians.

    params = [logits (K), means_raw (K * dz), log_stds (K * dz)]; means = tanh(means_raw).
    """

    def __init__(self, latent_dim: int, n_components: int = 4) -> None:
        super().__init__()
        self.latent_dim, self.n_components = int(latent_dim), int(n_components)
        self.num_params = self.n_components * (1 + 2 * self.latent_dim)

    def forward(self, params: torch.Tensor) -> _GMMDist:
        k, d = self.n_components, self.latent_dim
        logits = params[..., :k]
        means = rearrange(torch.tanh(params[..., k : k + k * d]), "b (k d) -> b k d", k=k)
        log_stds = rearrange(params[..., k + k * d :], "b (k d) -> b k d", k=k).clamp(_LOG_STD_MIN, _LOG_STD_MAX)
        return _GMMDist(logits, means, log_stds)


def make_prior(
    kind: str,
    latent_dim: int,
    poly_order: int = 8,
    poly_basis: str = "legendre",
    poly_clip: float = 5.0,
    gmm_components: int = 4,
) -> nn.Module:
    """Build the prior head named ``kind`` (one of :data:`PRIOR_KINDS`)."""
    if kind == "polynomial":
        return PolynomialPrior(latent_dim, order=poly_order, basis=poly_basis, clip=poly_clip)
    if kind == "gaussian":
        return GaussianPrior(latent_dim)
    if kind == "gmm":
        return GMMPrior(latent_dim, n_components=gmm_components)
    raise ValueError(f"prior must be one of {PRIOR_KINDS}, got {kind!r}")
