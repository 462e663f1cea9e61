"""Polynomial bases on [-1, 1] and the total-degree multi-index set.

Feature convention (used everywhere in ``mepoly_il.poly``):

* A feature is ``phi_e(x) = prod_j B_{e_j}(x_j)`` for a multi-index ``e`` with ``1 <= |e| <= order``.
* The constant multi-index ``(0, ..., 0)`` is **not** a feature. Its natural parameter would only add a
  constant to the energy, which cancels against ``log Z``: it is unidentifiable and gets no gradient from
  the likelihood. So ``num_features = C(dim + order, dim) - 1`` (the paper's Appendix B code keeps it).
* Order: by total degree, then lexicographically descending, so for dim 2 the list starts
  ``(1,0), (0,1), (2,0), (1,1), (0,2), ...``.
* ``legendre``: un-normalised Legendre polynomials ``P_n`` (``P_n(1) = 1``), as in the paper's code, so a
  natural-parameter clip of 5 means the same thing here and there.
  ``monomial``: plain powers ``x^n`` (the paper's "w/o Legendre" ablation).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch

__all__ = ["BASES", "basis_table", "legendre_table", "monomial_table", "multi_indices", "total_degree_tuples"]


def legendre_table(x: torch.Tensor, order: int) -> torch.Tensor:
    """Legendre values ``P_0..P_order`` at ``x`` (Bonnet recurrence): ``(...,)`` -> ``(..., order+1)``."""
    cols = [torch.ones_like(x)]
    if order >= 1:
        cols.append(x)
    for n in range(2, order + 1):
        cols.append(((2 * n - 1) * x * cols[n - 1] - (n - 1) * cols[n - 2]) / n)
    return torch.stack(cols, dim=-1)


def monomial_table(x: torch.Tensor, order: int) -> torch.Tensor:
    """Powers ``x^0..x^order``: ``(...,)`` -> ``(..., order+1)``.

    Built by repeated multiplication rather than ``x ** k`` so the gradient at ``x = 0`` is finite.
    """
    cols = [torch.ones_like(x)]
    for _ in range(order):
        cols.append(cols[-1] * x)
    return torch.stack(cols, dim=-1)


BASES: dict[str, Callable[[torch.Tensor, int], torch.Tensor]] = {
    "legendre": legendre_table,
    "monomial": monomial_table,
}


def basis_table(basis: str, x: torch.Tensor, order: int) -> torch.Tensor:
    """1-D basis table of ``basis`` at ``x``: ``(...,)`` -> ``(..., order+1)``."""
    try:
        fn = BASES[basis]
    except KeyError:
        raise ValueError(f"unknown basis {basis!r}; choose one of {sorted(BASES)}") from None
    return fn(x, order)


def total_degree_tuples(dim: int, order: int, include_constant: bool) -> list[tuple[int, ...]]:
    """All exponent tuples of length ``dim`` with total degree <= ``order`` in the feature order above."""
    out = []
    for deg in range(0 if include_constant else 1, order + 1):
        # descending lexicographic within a degree: x1 varies slowest, highest power first
        tuples = [t for t in itertools.product(range(deg + 1), repeat=dim) if sum(t) == deg]
        out.extend(sorted(tuples, reverse=True))
    return out


def multi_indices(dim: int, order: int) -> torch.Tensor:
    """Feature multi-indices (constant excluded): ``(num_features, dim)`` long tensor."""
    if dim < 1 or order < 1:
        raise ValueError(f"need dim >= 1 and order >= 1, got dim={dim}, order={order}")
    return torch.tensor(total_degree_tuples(dim, order, include_constant=False), dtype=torch.long)
