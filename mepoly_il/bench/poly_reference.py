"""A faithful re-implementation of the paper's reference algorithm (MePoly Appendix B), for benchmarks only.

What it does, as the paper's listing does: a dense ``(G^d, F)`` feature matrix on the tensor-product
trapezoid grid ``linspace(-1, 1, G)`` (G = 64), the constant multi-index included, un-normalised Legendre
features by the Bonnet recurrence, ``log Z = logsumexp(lam @ Phi^T + log w)``, the quadrature entropy
``-sum w p log p`` and sampling by inverse CDF over the flattened grid nodes (a float32 cumsum, no jitter).
Written from the paper's description; it shares no code with ``mepoly_il.poly`` so that the benchmark
compares two independent implementations.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch


class ReferencePolynomial:
    """Dense-grid polynomial density of the paper. ``lam`` has ``C(d+K, d)`` entries (constant first)."""

    def __init__(
        self,
        dim: int,
        order: int,
        grid_size: int = 64,
        dtype=torch.float32,
        device="cpu",
        rule: str = "trapezoid",
        stochastic_size: int | None = None,
        seed: int = 0,
    ):
        """``rule="gauss"`` swaps in Gauss-Legendre nodes (used as a dense high-accuracy reference);
        ``stochastic_size`` reproduces the paper's grid for dims above 3: that many nodes of the trapezoid
        grid drawn once, uniformly with replacement, weights rescaled by ``G^d / S``."""
        self.dim, self.order = dim, order
        exps = [e for e in itertools.product(range(order + 1), repeat=dim) if sum(e) <= order]
        self.exponents = torch.tensor(exps, dtype=torch.long, device=device)
        if rule == "trapezoid":
            g = torch.linspace(-1.0, 1.0, grid_size, dtype=torch.float64)
            w = torch.full_like(g, 2.0 / (grid_size - 1))
            w[0] = w[-1] = 1.0 / (grid_size - 1)
        else:
            xg, wg = np.polynomial.legendre.leggauss(grid_size)
            g, w = torch.from_numpy(xg), torch.from_numpy(wg)
        g, logw1 = g.to(device=device, dtype=dtype), w.log().to(device=device, dtype=dtype)
        if stochastic_size is None:
            mesh = torch.meshgrid(*([g] * dim), indexing="ij")
            self.grid = torch.stack(mesh, dim=-1).reshape(-1, dim)
            wmesh = torch.meshgrid(*([logw1] * dim), indexing="ij")
            self.log_w = torch.stack(wmesh, dim=-1).sum(-1).reshape(-1)
        else:
            gen = torch.Generator().manual_seed(seed)
            idx = torch.randint(0, grid_size, (stochastic_size, dim), generator=gen).to(device)
            self.grid = g[idx]
            self.log_w = logw1[idx].sum(-1) + dim * math.log(grid_size) - math.log(stochastic_size)
        self.features = self._features(self.grid)  # (G^d, F): the dense matrix the paper precomputes

    def params_from(self, natural_params: torch.Tensor, multi_indices: torch.Tensor) -> torch.Tensor:
        """Map ``(..., F)`` params indexed by ``multi_indices (F, d)`` (no constant) to this layout ``(..., F+1)``."""
        pos = {tuple(e): i for i, e in enumerate(self.exponents.tolist())}
        idx = torch.tensor([pos[tuple(e)] for e in multi_indices.tolist()], device=natural_params.device)
        out = natural_params.new_zeros(*natural_params.shape[:-1], self.exponents.shape[0])
        out[..., idx] = natural_params
        return out

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        leg = [torch.ones_like(x), x]
        for n in range(2, self.order + 1):
            leg.append(((2 * n - 1) / n) * x * leg[n - 1] - ((n - 1) / n) * leg[n - 2])
        table = torch.stack(leg[: self.order + 1], dim=-1)  # (..., d, K+1)
        out = torch.ones(*x.shape[:-1], self.exponents.shape[0], dtype=x.dtype, device=x.device)
        for j in range(self.dim):
            out = out * table[..., j, :][..., self.exponents[:, j]]
        return out

    def logits(self, lam: torch.Tensor) -> torch.Tensor:
        return lam @ self.features.T

    def log_partition(self, lam: torch.Tensor) -> torch.Tensor:
        return torch.logsumexp(self.logits(lam) + self.log_w, dim=-1)

    def log_partition_and_entropy(self, lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, F+1) -> (B,), (B,)``. The paper's listing computes the grid logits once per call of
        ``log_partition`` and again in ``entropy``; here they are shared, which only makes the baseline faster."""
        logits = self.logits(lam)
        lz = torch.logsumexp(logits + self.log_w, dim=-1, keepdim=True)
        log_z = lz.squeeze(-1)
        log_p = logits - lz
        ent = -(log_p.exp() * log_p * self.log_w.exp()).sum(-1)
        return log_z, ent

    def sample(self, lam: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(self.logits(lam) + self.log_w, dim=-1)
        cdf = probs.cumsum(-1)
        u = torch.rand_like(cdf[..., :1])
        idx = torch.searchsorted(cdf, u, right=False).clamp(max=cdf.shape[-1] - 1)
        return self.grid[idx.squeeze(-1)]
