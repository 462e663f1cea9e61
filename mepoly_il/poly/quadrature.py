"""Quadrature rules on [-1, 1] and the separable evaluation of polynomial energies on tensor grids.

Separable contraction
---------------------
The energy ``l(x) = sum_e lam_e prod_j B_{e_j}(x_j)`` on a tensor grid ``x_{i_1} x ... x x_{i_d}`` is never
formed as ``(grid nodes, features) @ lam``. Instead the coefficients are contracted with 1-D basis tables one
dimension at a time: after step ``j`` the intermediate is indexed by (grid indices of dims ``< j``, exponent
tuples of dims ``>= j`` whose total degree is <= order). Step ``j`` gathers, for each later tuple ``q``, the
``K+1`` coefficients of the exponents of dim ``j`` (zero where the degree would exceed the order) and multiplies
by the 1-D table: ``N_1..N_j (K+1) R_{j+1}`` multiply-adds per batch row (``R_j`` = number of such tuples). For
dim 3, order 8, 24 nodes that is about 0.18 M against 2.3 M for the dense ``(nodes, features)`` matrix, which is
never formed; the last step (a plain matmul) dominates. Each 1-D table is either shared by all rows
``(n, K+1)`` or per row ``(rows, n, K+1)``; the per-row form is what conditional sampling uses (a sampled
coordinate is a 1-node "grid").
"""

from __future__ import annotations

import contextlib
import math
import threading
from dataclasses import dataclass

import numpy as np
import torch

from mepoly_il.poly.basis import total_degree_tuples

__all__ = [
    "ContractionPlan",
    "Rule",
    "gauss_legendre",
    "log_expm1_ratio",
    "loglinear_cell_masses",
    "loglinear_inverse",
    "loglinear_log_density",
    "rule",
    "single_thread_for_small_ops",
    "trapezoid",
]

_guard = threading.local()


@contextlib.contextmanager
def single_thread_for_small_ops(device: torch.device):
    """Run the enclosed CPU ops with one intra-op thread, restoring the previous count afterwards.

    The grid passes issue many ops on about a MiB or less each. Split over threads (torch's elementwise ops
    above their grain size, MKL's matmuls even when tiny), each op ends in a barrier; when another process keeps
    a core busy, the threads wait for each other at every barrier and the pass gets tens of times slower, while
    one thread loses little. Switching costs well under a microsecond. Re-entrant (only the outermost level
    changes and restores the setting); CUDA work is unaffected. torch's thread count is process-wide: other
    Python threads running torch ops meanwhile also get one thread.
    """
    if device.type != "cpu" or getattr(_guard, "depth", 0) > 0 or torch.get_num_threads() == 1:
        _guard.depth = getattr(_guard, "depth", 0) + 1
        try:
            yield
        finally:
            _guard.depth -= 1
        return
    before = torch.get_num_threads()
    _guard.depth = 1
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
        _guard.depth = 0


@dataclass(frozen=True)
class Rule:
    """A 1-D rule on [-1, 1]: ``nodes`` and ``log_weights`` are float64 tensors of shape ``(n,)``."""

    kind: str
    n: int
    nodes: torch.Tensor
    log_weights: torch.Tensor


def gauss_legendre(n: int) -> Rule:
    """n-point Gauss-Legendre rule (exact for polynomials of degree <= 2n-1)."""
    x, w = np.polynomial.legendre.leggauss(n)
    return Rule("gauss", n, torch.from_numpy(x), torch.from_numpy(np.log(w)))


def trapezoid(n: int) -> Rule:
    """The paper's rule: ``linspace(-1, 1, n)`` with composite-trapezoid weights (end weights halved)."""
    if n < 2:
        raise ValueError(f"trapezoid rule needs n >= 2 nodes, got {n}")
    x = torch.linspace(-1.0, 1.0, n, dtype=torch.float64)
    w = torch.full((n,), 2.0 / (n - 1), dtype=torch.float64)
    w[0] = w[-1] = 1.0 / (n - 1)
    return Rule("trapezoid", n, x, w.log())


def rule(kind: str, n: int) -> Rule:
    if kind == "gauss":
        return gauss_legendre(n)
    if kind == "trapezoid":
        return trapezoid(n)
    raise ValueError(f"unknown quadrature rule {kind!r}; choose 'gauss' or 'trapezoid'")


class ContractionPlan:
    """Index tables for the separable contraction of total-degree coefficients (see module docstring).

    ``tuples[j]`` lists the exponent tuples of dims ``j..d-1`` with total degree <= order; ``tuples[0]`` is
    ``[constant] + feature multi-indices`` so that ``pad(lam, (1, 0))`` is the full coefficient vector.
    ``gather[j]`` ``(K+1, R_{j+1})`` maps (exponent of dim j, tuple of the later dims) to the position in
    ``tuples[j]``, or to ``R_j`` (a zero pad slot) when the total degree would exceed the order.
    ``inverse[j]`` ``(R_j,)`` is the flat position of each tuple in the ``(R_{j+1}, K+1)`` layout of that gather:
    every tuple appears exactly once there, so the adjoint of the gather is again a gather (no scatter-add).
    """

    def __init__(self, dim: int, order: int):
        self.dim, self.order = dim, order
        self.tuples: list[list[tuple[int, ...]]] = [total_degree_tuples(dim, order, include_constant=True)]
        for j in range(1, dim + 1):
            self.tuples.append(total_degree_tuples(dim - j, order, include_constant=True) if j < dim else [()])
        self.sizes = [len(t) for t in self.tuples]
        self.gather: list[torch.Tensor] = []
        self.inverse: list[torch.Tensor] = []
        for j in range(dim):
            pos = {t: i for i, t in enumerate(self.tuples[j])}
            idx = torch.full((order + 1, self.sizes[j + 1]), self.sizes[j], dtype=torch.long)
            inv = torch.empty(self.sizes[j], dtype=torch.long)
            for r, rest in enumerate(self.tuples[j + 1]):
                for k in range(order + 1 - sum(rest)):
                    idx[k, r] = pos[(k,) + rest]
                    inv[pos[(k,) + rest]] = r * (order + 1) + k
            self.gather.append(idx)
            self.inverse.append(inv)
        self._dev_cache: dict[torch.device, tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]] = {}

    def _on(self, device: torch.device):
        if device not in self._dev_cache:
            self._dev_cache[device] = (
                [g.to(device) for g in self.gather],
                [g.T.reshape(-1).to(device) for g in self.gather],  # (R_{j+1} * (K+1),): q major, k minor
                [i.to(device) for i in self.inverse],
            )
        return self._dev_cache[device]

    def gather_on(self, device: torch.device) -> list[torch.Tensor]:
        return self._on(device)[0]

    def row_elements(self, sizes: list[int], start: int = 0) -> int:
        """Largest intermediate (elements per batch row) when contracting dims ``start..`` with these node counts."""
        biggest, prod = 0, 1
        for j in range(start, self.dim):
            n = sizes[j - start]
            biggest = max(biggest, prod * (self.order + 1) * self.sizes[j + 1], prod * n * self.sizes[j + 1])
            prod *= n
        return max(biggest, prod)

    def _shared_step(self, cur: torch.Tensor, j: int, table: torch.Tensor) -> torch.Tensor:
        """Contract dim ``j`` with a shared table ``(n, K+1)``: ``(rows, P, R_j) -> (rows, P * n, R_{j+1})``.

        Only the ``R_{j+1} * (K+1)`` coefficients that can occur are gathered, then one matmul over the
        exponent: about ``(K+1) / R_j`` of the multiply-adds of a dense (gather-folded) step matrix.
        """
        rows, p, _ = cur.shape
        r_next, n = self.sizes[j + 1], table.shape[0]
        if r_next == 1:  # last dim: tuples[j] is (0,), ..., (K,) in order, the gather is the identity
            return (cur @ table.T).reshape(rows, p * n, 1)
        padded = torch.cat([cur, cur.new_zeros(rows, p, 1)], dim=-1)
        g = padded.index_select(-1, self._on(cur.device)[1][j]).view(rows, p, r_next, self.order + 1)
        return (g @ table.T).transpose(-1, -2).reshape(rows, p * n, r_next)

    def _row_step(self, cur: torch.Tensor, j: int, table: torch.Tensor) -> torch.Tensor:
        """``_shared_step`` with a table per row ``(rows, n, K+1)``: one batched matmul per row."""
        rows, p, _ = cur.shape
        r_next, n = self.sizes[j + 1], table.shape[-2]
        if r_next == 1:
            return (cur @ table.transpose(-1, -2)).reshape(rows, p * n, 1)
        padded = torch.cat([cur, cur.new_zeros(rows, p, 1)], dim=-1)
        g = padded.index_select(-1, self._on(cur.device)[1][j]).view(rows, p * r_next, self.order + 1)
        out = (g @ table.transpose(-1, -2)).view(rows, p, r_next, n)
        return out.transpose(-1, -2).reshape(rows, p * n, r_next)

    def _shared_step_adjoint(self, grad: torch.Tensor, j: int, table: torch.Tensor) -> torch.Tensor:
        """Adjoint of ``_shared_step``: ``(rows, P * n, R_{j+1}) -> (rows, P, R_j)``."""
        rows, pn, r_next = grad.shape
        n = table.shape[0]
        p = pn // n
        if r_next == 1:
            return grad.view(rows, p, n) @ table
        g = grad.view(rows, p, n, r_next).transpose(-1, -2) @ table  # (rows, P, R_{j+1}, K+1)
        return g.reshape(rows, p, -1).index_select(-1, self._on(grad.device)[2][j])

    def grid_energies(self, coef: torch.Tensor, tables: list[torch.Tensor]) -> torch.Tensor:
        """Energies on a full tensor grid: coef ``(rows, R_0)``, shared tables ``(n_j, K+1)`` -> ``(rows, prod n_j)``
        (last grid dim fastest)."""
        return self.contract(coef[:, None, :], tables)[..., 0]

    def grid_energies_adjoint(self, grad: torch.Tensor, tables: list[torch.Tensor]) -> torch.Tensor:
        """Adjoint (vector-Jacobian product) of ``grid_energies``: ``(rows, prod n_j) -> (rows, R_0)``."""
        cur = grad[..., None]
        for j in range(self.dim - 1, -1, -1):
            cur = self._shared_step_adjoint(cur, j, tables[j])
        return cur[:, 0, :]

    def split_factors(self, cur: torch.Tensor, j: int, rest: list[torch.Tensor]) -> torch.Tensor:
        """The later dims of ``split_energies`` contracted once per exponent of dim ``j``: cur ``(rows, 1, R_j)``
        -> ``(rows, K+1, prod n_rest)``; the energies are ``first @ split_factors(...)``."""
        rows, k1 = cur.shape[0], self.order + 1
        padded = torch.cat([cur[:, 0, :], cur.new_zeros(rows, 1)], dim=-1)
        per_k = padded.index_select(-1, self._on(cur.device)[0][j].reshape(-1)).view(rows * k1, 1, self.sizes[j + 1])
        if rest:
            rest = [t if t.dim() == 2 else t.repeat_interleave(k1, dim=0) for t in rest]
            per_k = self.contract(per_k, rest, start=j + 1)
        return per_k.view(rows, k1, -1)

    def split_energies(self, cur: torch.Tensor, j: int, first: torch.Tensor, rest: list[torch.Tensor]) -> torch.Tensor:
        """Energies on (nodes of dim ``j``) x (grid of dims ``j+1..``): cur ``(rows, 1, R_j)``, ``first`` a table
        ``(M, K+1)`` shared or ``(rows, M, K+1)`` per row, ``rest`` one table per later dim (as in ``contract``)
        -> ``(rows, M, prod n_rest)``, the values of ``contract(cur, [first] + rest, start=j)``.

        Computed the other way round: the later dims are contracted first, once per exponent of dim ``j`` (K+1
        small passes, :meth:`split_factors`), then one matmul with ``first``. For many nodes in dim ``j`` (the
        sampler's fine grid) this avoids gathering and transposing intermediates M times larger, and the bulk is
        one dense matmul."""
        return first @ self.split_factors(cur, j, rest)

    def contract(self, coef: torch.Tensor, steps: list[torch.Tensor], start: int = 0) -> torch.Tensor:
        """Energies on a tensor grid over dims ``start .. start+len(steps)-1``.

        coef: ``(rows, P, R_start)`` coefficients over the tuples of dims ``start..`` (``P`` = grid points of
        the dims already contracted). steps: one per contracted dim, either a 1-D basis table shared by all
        rows ``(n_j, K+1)`` or a per-row table ``(rows, n_j, K+1)``. Returns ``(rows, P * n_start * ..., R_stop)``
        (last grid dim fastest); ``R_stop = 1`` once all dims are done.
        """
        cur = coef
        for j, step in zip(range(start, start + len(steps)), steps, strict=True):
            if step.dim() == 2:
                cur = self._shared_step(cur, j, step)
            else:
                cur = self._row_step(cur, j, step)
        return cur


def grid_log_weights(rules: list[Rule], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Tensor-product log-weights, flattened with the last dim fastest: ``(prod n_j,)``."""
    lw = torch.zeros((), dtype=torch.float64)
    for r in rules:
        lw = (lw[..., None] + r.log_weights).reshape(-1)
    return lw.to(device=device, dtype=dtype)


def log_expm1_ratio(s: torch.Tensor) -> torch.Tensor:
    """``log((exp(s) - 1) / s)``, stable for all real ``s`` (0 at ``s = 0``)."""
    small = s.abs() < 1e-3
    safe = torch.where(small, torch.ones_like(s), s)
    pos = safe + torch.log(-torch.expm1(-safe.abs())) - torch.log(safe.abs())
    neg = torch.log(-torch.expm1(-safe.abs())) - torch.log(safe.abs())
    big = torch.where(safe > 0, pos, neg)
    return torch.where(small, s / 2 + s * s / 24, big)


def loglinear_cell_masses(logd: torch.Tensor, h: float) -> torch.Tensor:
    """Log mass of each cell of a piecewise log-linear density on a uniform grid.

    logd: ``(..., M)`` log density at the M nodes (spacing ``h``) -> ``(..., M-1)`` log cell masses.
    """
    s = logd[..., 1:] - logd[..., :-1]
    return math.log(h) + logd[..., :-1] + log_expm1_ratio(s)


def loglinear_inverse(
    logd: torch.Tensor, lo: float | torch.Tensor, h: float | torch.Tensor, u: torch.Tensor
) -> torch.Tensor:
    """Inverse CDF of the piecewise log-linear interpolant of ``exp(logd)``.

    logd: ``(rows, M)``; u: ``(rows, S)`` uniforms in [0, 1) -> ``(rows, S)`` points in ``[lo, lo + (M-1) h]``.
    ``lo`` and ``h`` are numbers or per-row ``(rows, 1)`` float64 tensors. Computed in float64 and normalised by
    the last CDF value, so the float32 tail bug of the paper's sampler (u above the final cumulative sum snapping
    to the last node) cannot occur.
    """
    logd = logd.double()
    logm = loglinear_cell_masses(logd, 1.0)  # the spacing is a common factor of a row's cells: it cancels below
    logm = logm - torch.logsumexp(logm, dim=-1, keepdim=True)
    cdf = torch.cumsum(logm.exp(), dim=-1)
    target = u.double() * cdf[..., -1:]
    idx = torch.searchsorted(cdf, target, right=True).clamp(max=cdf.shape[-1] - 1)
    prev = torch.where(idx > 0, cdf.gather(-1, (idx - 1).clamp(min=0)), torch.zeros_like(target))
    mass = logm.gather(-1, idx).exp()
    v = ((target - prev) / mass.clamp_min(1e-300)).clamp(0.0, 1.0)
    s = (logd[..., 1:] - logd[..., :-1]).gather(-1, idx)
    small = s.abs() < 1e-8
    safe = torch.where(small, torch.ones_like(s), s)
    # fraction t of the cell solves (e^{s t} - 1) / (e^s - 1) = v, written to avoid overflow for large |s|
    t_pos = 1.0 + torch.log(v + (1.0 - v) * torch.exp(-safe.clamp(min=0))) / safe
    t_neg = torch.log1p(v * torch.expm1(safe.clamp(max=0))) / safe
    t = torch.where(small, v, torch.where(safe > 0, t_pos, t_neg)).clamp(0.0, 1.0)
    return lo + h * (idx.double() + t)


def loglinear_log_density(logd: torch.Tensor, lo: float, h: float, x: torch.Tensor) -> torch.Tensor:
    """Normalised log density of the log-linear interpolant at ``x``: ``(rows, M), (rows, S) -> (rows, S)``."""
    logd = logd.double()
    logm = loglinear_cell_masses(logd, h)
    log_total = torch.logsumexp(logm, dim=-1, keepdim=True)
    m = logd.shape[-1]
    pos = ((x.double() - lo) / h).clamp(0.0, m - 1.0)
    idx = pos.floor().long().clamp(max=m - 2)
    t = pos - idx
    left = logd.gather(-1, idx)
    right = logd.gather(-1, idx + 1)
    return left + t * (right - left) - log_total
