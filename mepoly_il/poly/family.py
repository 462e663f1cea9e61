"""Polynomial exponential-family densities on the box [-1, 1]^dim.

``p(x | lam) = exp(<lam, T(x)> - log Z(lam))`` with ``T`` the total-degree polynomial features of
``mepoly_il.poly.basis`` (constant excluded) and ``log Z`` computed by quadrature:

* ``"gauss"``: tensor-product Gauss-Legendre, evaluated separably (``ContractionPlan``). Converges
  exponentially in the node count for these analytic integrands; the default node count is
  ``max(12, 2 * order + 8)`` per dim.
* ``"trapezoid"``: the paper's rule (``linspace(-1, 1, n)``, n=64 by default), kept for parity runs.
  Second-order accurate only; it is poor where the density is large at the box edges.
* ``"qmc"``: for dims a full grid cannot serve. Randomised quasi-Monte Carlo with importance sampling: the
  proposal is a mean-field product density (coordinate ascent on KL(q || p) over products of 1-D densities,
  each held on a fine 1-D grid, mixed with 5% uniform, and sampled by inverse CDF of its piecewise
  log-linear interpolant), fed with ``qmc_replicates`` independently scrambled Sobol sequences of
  ``qmc_points`` points. Because the weights use the exact density of that interpolant, the estimate of
  ``Z`` is unbiased (``log Z`` has a Jensen bias of the order of the squared relative error); its
  error is estimated from the spread of the replicates and stored in ``dist.log_partition_error``. It is
  small when the cross-coordinate terms are weak and grows with them. Measured with 4 x 4096 points against
  fine Gauss-Legendre grids, order 4, i.i.d. ``N(0, s^2)`` natural params: |error in log Z| about 1e-4
  (dim 4) and 1e-3 (dim 6) at s = 0.1; 1e-3 (dim 4) and 4e-2 (dim 6) at s = 0.3; the replicate estimate
  tracks the actual error within ~2x (``tests/test_poly.py`` checks s = 0.1 in dims 4 and 6). Use it for
  moderate params; for strongly coupled, peaked densities in high dims the error is large and is reported
  (``QuadratureWarning`` above 1e-3). Sparse grids were not chosen: with peaked integrands
  their negative weights make ``log Z`` and the entropy undefined. Sampling in this mode is
  sampling-importance-resampling from a fresh proposal pool (continuous points, bias O(1 / pool size)).
* ``"auto"`` (default): Gauss-Legendre when the grid fits ``max_grid_bytes`` per row and (unless ``nodes``
  is given) has at most ``2**17`` nodes, otherwise QMC. A *requested* full grid that does not fit
  ``max_grid_bytes`` per batch row raises ``ValueError`` instead of swapping.

Under-resolution. Large natural params make the density very peaked. For the grid rules every ``log Z`` is checked.
Gauss: a cheap screen first compares with ``n - 4`` nodes; that difference is about the coarse rule's error, an
upper estimate of the error at ``n`` (measured up to 100-1000x above it on Gaussians with std 0.03-0.3, the ratio
growing as the error shrinks far below ``tol``). Rows the screen flags are compared with a clearly wider rule (x1.5
nodes per dim) whose error is far smaller, so ``|Q_n - Q_1.5n|`` is the error at ``n`` itself (within 3x, checked
in ``tests/test_poly.py``): a row within ``tol`` keeps its ``n`` nodes. The others go up the x1.5 ladder, up to
``max_nodes``: each new level ``n'`` is screened like the base one (against ``n' - 4`` nodes) and a row within
``tol`` takes it, while the comparison with the level above only decides whether a row may stay at the level below.
So a level costs its own pass and a slightly smaller one, never a pass x3.4 its size (dim 3). A row whose errors so
far, extrapolated at their rate of decay, say that the next level's screen would fail too skips that level (this
saves passes, it never accepts a level without its screen). Trapezoid: ``n/2`` nodes with a Richardson factor,
since its error is O(h^2), and the finer level of a passing pair is used. Rows still over ``tol`` at the cap raise
a loud ``QuadratureWarning`` naming the numbers. ``dist.quadrature_nodes`` and ``dist.log_partition_error`` report
what was used. The default ``tol = 1e-3`` nats is an error in every log-likelihood term far below the minibatch
noise of a mean NLL (per-sample log densities vary by nats, so a batch of a few hundred has noise of several 1e-2).
The screen costs about ``((n-4)/n)^dim`` of a pass (58% for dim 3 with 24 nodes); ``check=False`` skips all of it.

Sampling (grid rules). One coordinate at a time: the conditional density of x_j given the drawn x_<j, with
the later coordinates integrated out by the quadrature rule, is evaluated on ``sample_nodes`` (257) uniform
nodes including the edges, and x_j is drawn by the exact inverse CDF of its piecewise log-linear
interpolant (float64 CDF, normalised by its last value). Draws are continuous, edges get their full weight,
and ``log_prob`` evaluates the density at exactly the drawn point (no clamping), so sampler and density
differ only by interpolation and quadrature error. ``tests/test_poly.py`` checks this with KS and
chi-square tests on peaked multimodal densities. Sampling needs no log Z or entropy, only a grid that resolves
each row: rows the screen passes use the base rule; Gauss rows it flags are drawn on a box zoomed onto their mass
(all nodes, fine and quadrature, laid on it), which costs the same as the base rule however narrow the peak is,
and only rows whose box fails its checks (mass spread over the whole box, e.g. at several edges) or would hardly
shrink the domain go up the x1.5 ladder; ``dist.sampler_rows`` counts each kind.

Speed and memory. The grid ``log Z`` / entropy pass is one autograd function: rows are processed in blocks whose
grid energies (about 1 MiB) stay in cache, backward recomputes a block's energies instead of storing them (it
keeps them when everything is one block), and the contraction's adjoint is written out, so memory stays bounded
for any batch. The blocks' many small ops run on one intra-op thread (``single_thread_for_small_ops``): split over
threads, every op would end in a barrier, which costs little on an idle machine but many times the work when
another process keeps a core busy. Other grid passes (mean, mode, sampling) are chunked under ``chunk_bytes``,
checkpointing chunks when differentiating.
"""

from __future__ import annotations

import itertools
import math
import warnings

import torch
from einops import rearrange
from torch.distributions import Distribution, constraints
from torch.utils.checkpoint import checkpoint

from mepoly_il.poly.basis import basis_table, multi_indices
from mepoly_il.poly.quadrature import (
    ContractionPlan,
    Rule,
    grid_log_weights,
    loglinear_inverse,
    loglinear_log_density,
    rule,
    single_thread_for_small_ops,
)

__all__ = ["PolynomialDistribution", "PolynomialFamily", "QuadratureWarning"]

_QUADRATURES = ("auto", "gauss", "trapezoid", "qmc")
# grid energies per block of rows in the fused log Z pass: about 1 MiB of float32, so one block's temporaries
# stay in cache and every op is small enough to run without thread synchronisation
_BLOCK_ELEMENTS = 2**18


def _block_rows(grid_nodes: int) -> int:
    return max(1, _BLOCK_ELEMENTS // grid_nodes)


#: The fused log Z pass keeps its blocks' grid energies for backward while they total at most this many elements
#: (16 MiB of float32: a training batch of a few hundred rows on a 24^3 grid); above it, backward recomputes them.
_KEEP_ELEMENTS = 2**22


_AUTO_MAX_NODES = 2**17
#: Sampling peaked rows on zoomed boxes (``PolynomialFamily._zoom_boxes``): base-grid nodes whose marginal log mass is
#: more than ``_ZOOM_KEEP`` nats below the largest are left out, and the box's faces must lie ``_ZOOM_FACE_MARGIN``
#: nats below its highest energy (mass outside then about e^-25 of the total or less, far under ``tol``).
_ZOOM_KEEP = 30.0
#: The sampler's conditional log densities are floored this many nats below each row's peak (float32 exp underflows
#: near -87 to -103); a node that low carries no mass the interpolant could give to a draw.
_SAMPLE_FLOOR = 120.0
#: Energies per row in one column block of the sampler's conditional densities (``_fine_log_mass``): 1 MiB of
#: float32, so a block's exp and weighted sum read it from cache.
_FINE_BLOCK = 2**18
_ZOOM_FACE_MARGIN = 25.0
#: A row whose mass needs more boxes than this goes up the refinement ladder instead.
_ZOOM_MAX_BOXES = 8
#: ... and so does a row with a box narrower than the domain by less than this factor in every dim: the base rule on
#: it is then no finer than the ladder's first level (x1.5 nodes) on the whole domain.
_ZOOM_MIN_SHRINK = 1.5


class QuadratureWarning(RuntimeWarning):
    """log Z could not be resolved to the requested tolerance within the node/memory caps."""


def default_gauss_nodes(order: int) -> int:
    """Gauss-Legendre nodes per dim used before any refinement."""
    return max(12, 2 * order + 8)


class PolynomialFamily:
    """The structure shared by all densities of one shape: basis, multi-indices, quadrature.

    Args:
        dim: event dimension (>= 1).
        order: maximum total degree K (>= 1). ``num_features = C(dim + K, dim) - 1``.
        basis: ``"legendre"`` (default) or ``"monomial"``.
        quadrature: ``"auto" | "gauss" | "trapezoid" | "qmc"`` (see module docstring).
        nodes: 1-D nodes per dim for the grid rules (default: Gauss ``max(12, 2K + 8)``, trapezoid 64).
        clip: optional elementwise clip of the natural params (the paper clamps at 5).
        soft_clip: clip with ``clip * tanh(lam / clip)`` instead of a hard clamp (keeps gradients alive).
        tol: target absolute error of ``log Z`` (nats) for the under-resolution check; 1e-3 by default, far
            below the minibatch noise of a negative log-likelihood (see the module docstring).
        check: run the under-resolution check/refinement (grid rules).
        max_nodes: cap on refined nodes per dim (default: ``2**21`` grid nodes per row, at most 1024).
        max_grid_bytes: per-row memory a full grid may take; larger requested grids raise ``ValueError``.
        chunk_bytes: budget for temporaries of one chunk of batch rows.
        sample_nodes: fine 1-D nodes of the conditional inverse-CDF sampler.
        qmc_points, qmc_replicates: Sobol points per replicate and number of scrambled replicates.
    """

    def __init__(
        self,
        dim: int,
        order: int,
        basis: str = "legendre",
        quadrature: str = "auto",
        nodes: int | None = None,
        clip: float | None = None,
        soft_clip: bool = False,
        tol: float = 1e-3,
        check: bool = True,
        max_nodes: int | None = None,
        max_grid_bytes: int = 512 * 2**20,
        chunk_bytes: int = 64 * 2**20,
        sample_nodes: int = 257,
        qmc_points: int = 4096,
        qmc_replicates: int = 4,
    ):
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be an integer >= 1, got {dim!r}")
        if isinstance(order, bool) or not isinstance(order, int) or order < 1:
            raise ValueError(f"order must be an integer >= 1, got {order!r}")
        if quadrature not in _QUADRATURES:
            raise ValueError(f"quadrature must be one of {_QUADRATURES}, got {quadrature!r}")
        basis_table(basis, torch.zeros(1), 1)  # validates the name
        if clip is not None and not clip > 0:
            raise ValueError(f"clip must be > 0 or None, got {clip!r}")
        if nodes is not None and (not isinstance(nodes, int) or nodes < 2):
            raise ValueError(f"nodes must be an integer >= 2 or None, got {nodes!r}")
        if sample_nodes < 3:
            raise ValueError(f"sample_nodes must be >= 3, got {sample_nodes}")
        self.dim, self.order, self.basis = dim, order, basis
        self.clip, self.soft_clip = clip, soft_clip
        self.tol, self.check = float(tol), check
        self.max_grid_bytes, self.chunk_bytes = int(max_grid_bytes), int(chunk_bytes)
        self.sample_nodes = int(sample_nodes)
        self.qmc_points, self.qmc_replicates = int(qmc_points), int(qmc_replicates)
        self.multi_indices = multi_indices(dim, order)
        self.num_features = int(self.multi_indices.shape[0])
        self.plan = ContractionPlan(dim, order)

        requested = quadrature
        kind = "trapezoid" if quadrature == "trapezoid" else "gauss"
        n0 = nodes or (64 if kind == "trapezoid" else default_gauss_nodes(order))
        if quadrature == "auto":
            fits = self._row_bytes(n0) <= self.max_grid_bytes and (nodes is not None or n0**dim <= _AUTO_MAX_NODES)
            quadrature = "gauss" if fits else "qmc"
        elif quadrature in ("gauss", "trapezoid") and self._row_bytes(n0) > self.max_grid_bytes:
            raise ValueError(
                f"a full {quadrature} grid of {n0}^{dim} = {n0**dim:.3g} nodes needs "
                f"{self._row_bytes(n0) / 2**20:.0f} MiB per batch row, over max_grid_bytes="
                f"{self.max_grid_bytes / 2**20:.0f} MiB; use quadrature='qmc' (or 'auto'), fewer nodes, "
                f"or raise max_grid_bytes"
            )
        self.requested_quadrature, self.quadrature, self.nodes = requested, quadrature, n0
        if max_nodes is None:
            max_nodes = n0
            while True:
                nxt = self._next_nodes(max_nodes)
                if nxt**dim > 2**21 or nxt > 1024 or self._row_bytes(nxt) > self.max_grid_bytes:
                    break
                max_nodes = nxt
        self.max_nodes = max(int(max_nodes), n0)
        self._pure = [self._pure_indices(j) for j in range(dim)]
        self._cache: dict = {}

    # ----------------------------------------------------------------------------------------- helpers
    def __repr__(self) -> str:
        return (
            f"PolynomialFamily(dim={self.dim}, order={self.order}, basis={self.basis!r}, "
            f"quadrature={self.quadrature!r}, nodes={self.nodes}, clip={self.clip}, "
            f"num_features={self.num_features})"
        )

    def _row_bytes(self, n: int) -> int:
        # the final grid is held ~4 times (logits, shifted, exp, product) in float64 at worst
        return 4 * 8 * self.plan.row_elements([n] * self.dim)

    def _next_nodes(self, n: int) -> int:
        return 2 * n - 1 if self.quadrature_kind == "trapezoid" else int(math.ceil(n * 1.5))

    @property
    def quadrature_kind(self) -> str:
        """The 1-D grid rule: ``"trapezoid"`` or ``"gauss"`` (also the rule of the QMC mode's sampler grids)."""
        return "trapezoid" if self.quadrature == "trapezoid" else "gauss"

    def _pure_indices(self, j: int) -> torch.Tensor:
        """Feature positions of ``B_k(x_j)`` for k = 1..K (terms that involve only coordinate j)."""
        mi = self.multi_indices
        others = torch.cat([mi[:, :j], mi[:, j + 1 :]], dim=1).sum(1)
        pos = torch.nonzero((others == 0) & (mi[:, j] > 0)).squeeze(1)
        return pos[torch.argsort(mi[pos, j])]

    def _grid(self, kind: str, n: int, dtype: torch.dtype, device: torch.device):
        key = ("grid", kind, n, dtype, device)
        if key not in self._cache:
            r: Rule = rule(kind, n)
            nodes = r.nodes.to(device=device, dtype=dtype)
            # tables are built in float64, then cast, so float32 runs lose nothing extra
            table = basis_table(self.basis, r.nodes, self.order).to(device=device, dtype=dtype)
            lw = grid_log_weights([r] * self.dim, dtype, device)
            self._cache[key] = (nodes, [table] * self.dim, lw, r.log_weights.to(device=device, dtype=dtype))
        return self._cache[key]

    def _fine(self, dtype: torch.dtype, device: torch.device):
        key = ("fine", dtype, device)
        if key not in self._cache:
            x = torch.linspace(-1.0, 1.0, self.sample_nodes, dtype=torch.float64, device=device)
            table = basis_table(self.basis, x, self.order).to(dtype)
            self._cache[key] = (x.to(dtype), table, [table] * self.dim)
        return self._cache[key]

    def _table(self, x64: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Basis table of float64 points, cast afterwards: ``(...,)`` -> ``(..., K+1)``."""
        return basis_table(self.basis, x64, self.order).to(dtype)

    def _rest_log_weights(self, lw1: torch.Tensor, n: int, k: int) -> torch.Tensor:
        """Log-weights of the ``n``-node rule over ``k`` dims, flattened (last fastest): ``(n^k,)``, cached."""
        key = ("rest_lw", n, k, lw1.dtype, lw1.device)
        if key not in self._cache:
            self._cache[key] = grid_log_weights_from_1d(lw1, k)
        return self._cache[key]

    def _rest_weights(self, lw1: torch.Tensor, n: int) -> tuple[list[float], list[torch.Tensor]]:
        """Per coordinate j: the largest log-weight ``c_j`` of the rule over the later dims and ``exp(w - c_j)``
        flattened ``(n^(d-j-1),)`` (what the sampler's conditionals sum with), cached."""
        key = ("rest_w", n, lw1.dtype, lw1.device)
        if key not in self._cache:
            rest_lw = [self._rest_log_weights(lw1, n, self.dim - j - 1) for j in range(self.dim)]
            shift = [float(w.max()) for w in rest_lw]
            self._cache[key] = (shift, [(w - c).exp().reshape(-1) for w, c in zip(rest_lw, shift, strict=True)])
        return self._cache[key]

    def _zoom_boxes(self, lam: torch.Tensor):
        """Disjoint boxes holding the mass of peaked densities, one or a few per row: lam ``(b, F)`` (clipped) ->
        row ``(K,)`` (the row of each box), lo, hi ``(K, d)`` (float64), log_mass ``(K,)`` and ok ``(b,)``.

        From the base Gauss grid (exact energies at its nodes, inexact masses when under-resolved), each dim keeps
        the nodes whose marginal log mass is within ``_ZOOM_KEEP`` nats of the largest. The kept nodes of a dim form
        one or more runs; each run, widened by one node on each side (or to the edge), is an interval, and the
        products of one interval per dim are disjoint candidate boxes. A candidate is dropped when none of its base
        nodes comes within ``_ZOOM_KEEP`` nats of the row's largest node mass, so a density with separate modes gets
        one box per mode instead of one box spanning them all. A second round sharpens every box the same way with
        the rule laid on it (one run: first to last kept node). A row is ``ok`` when the base rule laid on each of
        its boxes resolves the row's log Z, the log of the boxes' summed masses (``|Q_n - Q_{n-4}| <= tol``, the
        screen of "Under-resolution", so a box with a tiny share of the mass may be resolved more loosely), when
        every face inside ``(-1, 1)^d`` lies ``_ZOOM_FACE_MARGIN`` nats below the row's highest energy, and when
        it needs at most ``_ZOOM_MAX_BOXES`` boxes. A row whose kept nodes span every dim, or with a box that shrinks
        no dim by ``_ZOOM_MIN_SHRINK`` or more, gets no box (the zoom cannot shrink its domain enough to help) and is
        not ``ok``, at the cost of the first round only. ``log_mass`` is each box's log Z by the base rule laid on
        it; it weighs the boxes of a row when sampling.
        """
        n, d, dtype, dev = self.nodes, self.dim, lam.dtype, lam.device
        b = lam.shape[0]
        nodes64 = self._grid("gauss", n, torch.float64, dev)[0]
        _, tables, lw, _ = self._grid("gauss", n, dtype, dev)
        coef = torch.nn.functional.pad(lam, (1, 0))
        step = self._rows_per_chunk(n**d, lam.element_size())
        logp = torch.cat(
            [self.plan.contract(coef[a : a + step, None, :], tables)[..., 0] + lw for a in range(0, b, step)]
        ).view(b, *([n] * d))
        marg = _log_marginals(logp)  # (b, d, n)
        keep = (marg >= marg.amax(-1, keepdim=True) - _ZOOM_KEEP).tolist()
        floor = (logp.reshape(b, -1).amax(-1) - _ZOOM_KEEP).tolist()
        x = nodes64.tolist()
        rows, los, his = [], [], []
        no_zoom = torch.zeros(b, dtype=torch.bool, device=dev)
        for r in range(b):
            runs = []
            for j in range(d):
                kj, rj = keep[r][j], []
                for i in range(n):
                    if kj[i] and (i == 0 or not kj[i - 1]):
                        rj.append([i, i])
                    elif kj[i]:
                        rj[-1][1] = i
                runs.append(rj)
            boxes = [
                box
                for box in itertools.product(*runs)
                if float(logp[(r, *(slice(f, last + 1) for f, last in box))].max()) >= floor[r]
            ]
            box_lo = [[x[f - 1] if f > 0 else -1.0 for f, _ in box] for box in boxes]
            box_hi = [[x[last + 1] if last < n - 1 else 1.0 for _, last in box] for box in boxes]
            wide = any(
                max(2.0 / (b - a) for a, b in zip(blo, bhi, strict=True)) < _ZOOM_MIN_SHRINK
                for blo, bhi in zip(box_lo, box_hi, strict=True)
            )
            if not boxes or len(boxes) > _ZOOM_MAX_BOXES or wide:
                # too many boxes, or a box that hardly shrinks the domain in any dim (the whole domain, or most of
                # it split off by a gap that only the coarse grid sees): the base rule laid on it resolves it no
                # better than the ladder's next level would, and the second round would find about the same box
                # and fail the same checks, so the row goes up the ladder right away
                no_zoom[r] = True
                continue
            rows += [r] * len(boxes)
            los += box_lo
            his += box_hi
        row = torch.tensor(rows, dtype=torch.long, device=dev)
        lo = torch.tensor(los, dtype=torch.float64, device=dev).view(-1, d)
        hi = torch.tensor(his, dtype=torch.float64, device=dev).view(-1, d)
        if not rows:
            return row, lo, hi, lo.new_empty(0, dtype=dtype), ~no_zoom
        c = coef[row][:, None, :]
        k = row.numel()
        # second round: the same rule on each box finds its mass more sharply
        mid, half = (lo + hi) / 2, (hi - lo) / 2
        xb = mid[..., None] + half[..., None] * nodes64  # (K, d, n)
        tabs = self._table(xb, dtype)  # (K, d, n, K+1)
        logpb = (self.plan.contract(c, list(tabs.unbind(1)))[..., 0] + lw).view(k, *([n] * d))
        margb = _log_marginals(logpb)
        new_lo, new_hi = [], []
        for j in range(d):
            mj = margb[:, j]
            kj = mj >= mj.amax(-1, keepdim=True) - _ZOOM_KEEP
            first = kj.int().argmax(-1, keepdim=True)
            last = n - 1 - kj.flip(-1).int().argmax(-1, keepdim=True)
            xj = xb[:, j]
            new_lo.append(torch.where(first > 0, xj.gather(1, (first - 1).clamp(min=0)), lo[:, j, None]))
            new_hi.append(torch.where(last < n - 1, xj.gather(1, (last + 1).clamp(max=n - 1)), hi[:, j, None]))
        lo, hi = torch.cat(new_lo, -1), torch.cat(new_hi, -1)
        mid, half = (lo + hi) / 2, (hi - lo) / 2
        # checks: the screen on the row's boxes together, and every box's faces far below the row's peak
        log_vol = half.log().sum(-1)
        z = []
        for nn in (n, max(1, n - 4)):
            tabs = self._table(mid[..., None] + half[..., None] * self._grid("gauss", nn, torch.float64, dev)[0], dtype)
            e = self.plan.contract(c, list(tabs.unbind(1)))[..., 0]
            z.append(torch.logsumexp(e + self._grid("gauss", nn, dtype, dev)[2], dim=-1).double() + log_vol)
            if nn == n:
                peak, inner = e.amax(-1), tabs
        row_z = [_logsumexp_by(zz, row, b) for zz in z]
        ok = ((row_z[0] - row_z[1]).abs() <= self.tol)[row]
        peak = torch.full((b,), -math.inf, dtype=peak.dtype, device=dev).scatter_reduce(0, row, peak, "amax")[row]
        faces = torch.stack([lo, hi], dim=-1)  # (K, d, 2)
        face_tabs = self._table(faces, dtype)  # (K, d, 2, K+1)
        for j in range(d):
            steps = list(inner.unbind(1))
            steps[j] = face_tabs[:, j]
            e_face = self.plan.contract(c, steps)[..., 0].view(k, *[n] * j, 2, *[n] * (d - j - 1))
            e_face = e_face.movedim(j + 1, 1).reshape(k, 2, -1).amax(-1)  # (K, 2): lower and upper face
            ok &= ((faces[:, j].abs() >= 1.0) | (e_face <= peak[:, None] - _ZOOM_FACE_MARGIN)).all(-1)
        row_ok = ~no_zoom
        row_ok[row[~ok]] = False
        return row, lo, hi, z[0], row_ok

    def _rows_per_chunk(self, elements_per_row: int, itemsize: int) -> int:
        return max(1, self.chunk_bytes // max(1, 4 * itemsize * elements_per_row))

    # ----------------------------------------------------------------------------------------- public
    def __call__(self, natural_params: torch.Tensor, validate_args: bool | None = None) -> PolynomialDistribution:
        """``natural_params (..., num_features)`` -> distribution with batch_shape ``natural_params.shape[:-1]``."""
        return PolynomialDistribution(self, natural_params, validate_args=validate_args)

    def clip_params(self, natural_params: torch.Tensor) -> torch.Tensor:
        if self.clip is None:
            return natural_params
        if self.soft_clip:
            return self.clip * torch.tanh(natural_params / self.clip)
        return natural_params.clamp(-self.clip, self.clip)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Sufficient statistics ``T(x)``: ``(..., dim)`` -> ``(..., num_features)``."""
        table = basis_table(self.basis, x, self.order)  # (..., dim, K+1)
        mi = self.multi_indices.to(x.device)
        out = table[..., 0, mi[:, 0]]
        for j in range(1, self.dim):
            out = out * table[..., j, mi[:, j]]
        return out

    def energy(self, natural_params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``<lam, T(x)>`` (no clipping, no normaliser): ``(..., F), (..., dim)`` broadcast -> ``(...)``."""
        return (self.features(x) * natural_params).sum(-1)

    # ----------------------------------------------------------------------------------- grid passes
    def _grid_pass(self, coef: torch.Tensor, kind: str, n: int, full: bool):
        """One quadrature pass on a chunk: coef ``(b, R0)`` -> logZ ``(b,)`` [and entropy ``(b,)``]."""
        _, tables, lw, _ = self._grid(kind, n, coef.dtype, coef.device)
        if not full:
            return _grid_log_z(coef, self.plan, tables, lw)
        return _GridLogZEntropy.apply(coef, self.plan, tables, lw)

    def _grid_mean(self, coef: torch.Tensor, log_z: torch.Tensor, kind: str, n: int) -> torch.Tensor:
        """``E[x]`` on a chunk: coef ``(b, R0)``, log Z ``(b,)`` -> ``(b, d)``."""
        nodes, tables, lw, _ = self._grid(kind, n, coef.dtype, coef.device)
        logits = self.plan.grid_energies(coef, tables)
        p = torch.exp(logits + lw - log_z[:, None]).reshape(coef.shape[0], *([n] * self.dim))
        means = []
        for j in range(self.dim):
            other = tuple(k + 1 for k in range(self.dim) if k != j)
            marg = p.sum(dim=other) if other else p
            means.append(marg @ nodes)
        return torch.stack(means, dim=-1)

    def _chunked(self, fn, coef: torch.Tensor, elements_per_row: int, *args):
        """Apply ``fn(coef_chunk, *args)`` over row chunks; checkpoint chunks when differentiating."""
        rows = coef.shape[0]
        step = self._rows_per_chunk(elements_per_row, coef.element_size())
        if rows <= step:
            return fn(coef, *args)
        grad = torch.is_grad_enabled() and coef.requires_grad
        outs = []
        for s in range(0, rows, step):
            chunk = coef[s : s + step]
            # per-row tensor arguments (e.g. log Z) are sliced with the rows
            cargs = [a[s : s + step] if isinstance(a, torch.Tensor) and a.shape[:1] == (rows,) else a for a in args]
            outs.append(checkpoint(fn, chunk, *cargs, use_reentrant=False) if grad else fn(chunk, *cargs))
        if isinstance(outs[0], tuple):
            return tuple(torch.cat(parts, dim=0) for parts in zip(*outs))
        return torch.cat(outs, dim=0)

    def _grid_stats(self, coef: torch.Tensor, natural_params: torch.Tensor):
        """logZ, entropy, error estimate, nodes used: each ``(B,)``. See "Under-resolution" in the module doc."""
        kind, n = self.quadrature_kind, self.nodes
        log_z, ent = self._grid_pass(coef, kind, n, True)
        rows = coef.shape[0]
        used = torch.full((rows,), n, dtype=torch.long, device=coef.device)
        err = torch.full((rows,), float("nan"), dtype=coef.dtype, device=coef.device)
        if not self.check:
            return log_z, ent, err, used, None
        trapezoid = kind == "trapezoid"
        with torch.no_grad():
            cz = coef.detach()
            # screen: a cheap coarser rule (its own error, an upper estimate of the error at n)
            m = (n + 1) // 2 if trapezoid else max(1, n - 4)
            err = self._err_estimate(log_z.detach(), self._grid_pass(cz, kind, m, False), n, m, kind)
            pending = torch.nonzero(~(err <= self.tol)).squeeze(1)  # NaN/inf count as failing
            assigned, pending, cur_n = self._ladder(cz, pending, log_z.detach()[pending], err)
            if pending.numel():
                assigned[cur_n] = torch.cat([assigned.get(cur_n, pending[:0]), pending])
                lam = natural_params.detach()[pending]
                warnings.warn(
                    f"PolynomialDistribution: log Z under-resolved for {pending.numel()} of {rows} rows even "
                    f"with {cur_n} {kind} nodes per dim (max_nodes={self.max_nodes}): estimated error up to "
                    f"{err[pending].max().item():.3g} > tol={self.tol:g}; max |natural param| of those rows "
                    f"= {lam.abs().max().item():.3g}. The density is too peaked for this grid: clip the "
                    f"natural params, raise max_nodes/max_grid_bytes, or accept the error.",
                    QuadratureWarning,
                    stacklevel=4,
                )
        for nn, idx in assigned.items():
            if nn == n or idx.numel() == 0:
                continue
            z2, h2 = self._grid_pass(coef[idx], kind, nn, True)
            log_z = log_z.index_put((idx,), z2)
            ent = ent.index_put((idx,), h2)
            used[idx] = nn
        return log_z, ent, err, used, None

    def _ladder(self, coef: torch.Tensor, pending: torch.Tensor, cur_z: torch.Tensor, err: torch.Tensor):
        """The refinement ladder of "Under-resolution" (no grad) for the rows ``pending`` of ``coef`` whose
        base-level log Z ``cur_z`` failed the screen -> ``({nodes: rows}, rows unresolved at max_nodes, their
        nodes)``; ``err`` ``(B,)`` gets each row's estimate at the level it ends on.

        Gauss, per level ``n -> n' = 1.5 n``: a row with ``|Q_n - Q_n'| <= tol`` keeps ``n`` (the wider rule's
        error is far smaller, so the difference is the error at ``n`` itself); for the others ``Q_n'`` is screened
        like the base level, against ``n' - 4`` nodes (about that coarser rule's error, an upper estimate of the
        error at ``n'``), and a row within ``tol`` takes ``n'``. So a level is accepted at the cost of its own
        pass and a slightly smaller one, not of a pass 3.4x its size (dim 3), and only rows that fail both go up.
        A row that fails both skips the next level when its errors so far (about the error at ``n`` and at
        ``n' - 4``), extrapolated at their rate, say that level's screen would fail too: that only saves the pass,
        since every accepted level still passes its own screen. Trapezoid: Richardson on ``n`` vs ``n'``, and a
        passing row takes ``n'``."""
        kind = self.quadrature_kind
        assigned: dict[int, torch.Tensor] = {}

        def assign(n: int, idx: torch.Tensor) -> None:
            assigned[n] = torch.cat([assigned[n], idx]) if n in assigned else idx

        levels, n = [], self.nodes
        while (n := self._next_nodes(n)) <= self.max_nodes:
            levels.append(n)
        if not levels:
            return assigned, pending, self.nodes
        # per level still to compute: (rows, their log Z at the level they come from, that level's nodes)
        todo: dict[int, list] = {levels[0]: [pending, cur_z, torch.full_like(pending, self.nodes)]}

        def push(level: int, rows: torch.Tensor, z: torch.Tensor, n_prev: torch.Tensor) -> None:
            if level in todo:
                todo[level] = [torch.cat([a, b]) for a, b in zip(todo[level], (rows, z, n_prev), strict=True)]
            else:
                todo[level] = [rows, z, n_prev]

        left = pending[:0]
        for li, nxt in enumerate(levels):
            if nxt not in todo or not todo[nxt][0].numel():
                continue
            rows, z_prev, n_prev = todo.pop(nxt)
            z_next = self._grid_pass(coef[rows], kind, nxt, False)
            e = self._err_estimate(z_next, z_prev, nxt, n_prev.to(z_next.dtype), kind)
            err[rows] = e
            done = e <= self.tol
            if kind == "trapezoid":  # never skips a level
                assign(nxt, rows[done])
                fail, z_fail, screen = rows[~done], z_next[~done], None
            else:
                for n_done in torch.unique(n_prev[done]).tolist():
                    assign(n_done, rows[done & (n_prev == n_done)])
                rest = torch.nonzero(~done).squeeze(1)
                if not rest.numel():
                    continue
                screen = (z_next[rest] - self._grid_pass(coef[rows[rest]], kind, max(1, nxt - 4), False)).abs()
                err[rows[rest]] = screen
                passed = screen <= self.tol
                assign(nxt, rows[rest[passed]])
                keep = rest[~passed]
                fail, z_fail, screen, e_fail = rows[keep], z_next[keep], screen[~passed], e[keep]
                n_fail = n_prev[keep]
            if not fail.numel():
                continue
            if li + 1 == len(levels):
                left = fail
                break
            target = torch.full_like(fail, li + 1)
            if screen is not None and li + 2 < len(levels):
                # error ~ exp(-rate * nodes): e at n_prev, screen at nxt - 4; the next level's screen is at
                # levels[li + 1] - 4. Skip it when that extrapolation still exceeds tol (no skip without decay).
                rate = (e_fail / screen).log() / ((nxt - 4) - n_fail).to(screen.dtype)
                pred = screen * torch.exp(-rate * (levels[li + 1] - nxt))
                target = torch.where((rate > 0) & (pred > self.tol), li + 2, li + 1)
            for t in torch.unique(target).tolist():
                sel = target == t
                push(levels[t], fail[sel], z_fail[sel], torch.full_like(fail[sel], nxt))
        return assigned, left, levels[-1]

    @staticmethod
    def _err_estimate(z_fine, z_coarse, n_fine, n_coarse, kind):
        diff = (z_fine - z_coarse).abs()
        if kind == "trapezoid":  # error ~ h^2: Richardson estimate of the fine rule's error
            return diff / (((n_fine - 1) / (n_coarse - 1)) ** 2 - 1)
        return diff  # Gauss converges fast: |fine - coarse| is about the coarse rule's error

    # ------------------------------------------------------------------------------------ qmc passes
    def _proposal(self, lam: torch.Tensor, sweeps: int = 4, defensive: float = 0.05) -> torch.Tensor:
        """Mean-field proposal: per-dim log densities on the fine grid ``(B, d, M)`` (detached, float64).

        Starts from the single-coordinate terms, then ``sweeps`` rounds of coordinate ascent on
        ``KL(q || p)`` over product densities: ``q_j(u) ~ exp(E_{q_-j}[l(x) | x_j = u])``, which only needs
        the 1-D basis moments of the other factors. Each factor is mixed with ``defensive`` of the uniform
        so that the importance weights stay bounded where the mean field is too narrow.
        """
        x, table, _ = self._fine(torch.float64, lam.device)
        lam64 = lam.detach().double()
        mi = self.multi_indices.to(lam.device)
        m_nodes, d = x.shape[0], self.dim
        h = 2.0 / (m_nodes - 1)
        tw = torch.full((m_nodes,), h, dtype=torch.float64, device=lam.device)
        tw[0] = tw[-1] = h / 2  # trapezoid on the fine grid: only used to build the proposal
        logd = torch.stack([lam64[:, self._pure[j]] @ table[:, 1:].T for j in range(d)], dim=1)
        for _ in range(sweeps):
            for j in range(d):
                q = torch.softmax(logd + tw.log(), dim=-1)  # (B, d, M) node masses
                mom = q @ table  # (B, d, K+1): E_q[B_k(x_i)]
                g = mom[:, torch.arange(d, device=lam.device)[None, :], mi]  # (B, F, d)
                g[:, :, j] = 1.0
                coef = lam64 * g.prod(-1)  # (B, F)
                c = coef.new_zeros(coef.shape[0], self.order + 1).index_add_(1, mi[:, j], coef)
                logd[:, j] = c @ table.T
        log_mass = torch.logsumexp(logd + tw.log(), dim=-1, keepdim=True)
        dens = (logd - log_mass).exp()
        return torch.log((1 - defensive) * dens + defensive / 2)

    def _proposal_draw(self, logd: torch.Tensor, u: torch.Tensor):
        """Uniforms ``(B, N, d)`` -> proposal points ``(B, N, d)`` and their log density ``(B, N)`` (float64)."""
        h = 2.0 / (self.sample_nodes - 1)
        xs, lq = [], 0.0
        for j in range(self.dim):
            xj = loglinear_inverse(logd[:, j], -1.0, h, u[..., j]).clamp(-1.0, 1.0)
            lq = lq + loglinear_log_density(logd[:, j], -1.0, h, xj)
            xs.append(xj)
        return torch.stack(xs, dim=-1), lq

    def _qmc_pass(self, lam: torch.Tensor, x: torch.Tensor, lq: torch.Tensor):
        """lam ``(b, F)``, points ``(b, N, d)``, log q ``(b, N)`` -> energies and log weights ``(b, N)``."""
        ell = torch.einsum("bnf,bf->bn", self.features(x), lam)
        return ell, ell - lq

    def _qmc_stats(self, lam: torch.Tensor):
        rows, dtype, dev = lam.shape[0], lam.dtype, lam.device
        reps, npts = self.qmc_replicates, self.qmc_points
        logd = self._proposal(lam)
        us = []
        for _ in range(reps):
            seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
            us.append(torch.quasirandom.SobolEngine(self.dim, scramble=True, seed=seed).draw(npts, dtype=torch.float64))
        u = torch.cat(us, dim=0).to(dev)  # (R*N, d) shared by all rows (common random numbers)
        x64, lq = self._proposal_draw(logd, u.expand(rows, -1, -1))
        x = x64.to(dtype)
        elems = x.shape[1] * self.num_features * (self.dim + 1)

        def fn(lam_c, x_c, lq_c):
            return self._qmc_pass(lam_c, x_c, lq_c)

        step = self._rows_per_chunk(elems, lam.element_size())
        grad = torch.is_grad_enabled() and lam.requires_grad
        outs = []
        for s in range(0, rows, step):
            args = (lam[s : s + step], x[s : s + step], lq[s : s + step].to(dtype))
            outs.append(checkpoint(fn, *args, use_reentrant=False) if grad and rows > step else fn(*args))
        ell = torch.cat([o[0] for o in outs])
        logw = torch.cat([o[1] for o in outs])
        log_z = torch.logsumexp(logw, dim=-1) - math.log(logw.shape[-1])
        with torch.no_grad():
            per_rep = torch.logsumexp(logw.reshape(rows, reps, npts), dim=-1) - math.log(npts)
            err = per_rep.std(dim=-1) / math.sqrt(reps) if reps > 1 else torch.full_like(log_z, float("nan"))
        w = torch.softmax(logw, dim=-1)
        ent = log_z - (w * ell).sum(-1)
        extras = {"mean": torch.einsum("bn,bnd->bd", w, x), "points": x.detach(), "energies": ell.detach()}
        used = torch.full((rows,), reps * npts, dtype=torch.long, device=dev)
        if self.check and bool((err > max(self.tol, 1e-3)).any()):
            warnings.warn(
                f"PolynomialDistribution: QMC log Z standard error up to {err.max().item():.3g} "
                f"({reps} x {npts} points); raise qmc_points or clip the natural params.",
                QuadratureWarning,
                stacklevel=4,
            )
        return log_z, ent, err, used, extras


def _log_marginals(logp: torch.Tensor) -> torch.Tensor:
    """Log marginal masses of grid log masses ``(b, n, ..., n)`` along every dim -> ``(b, d, n)``.

    One exp of the grid (shifted by each row's largest entry) and sums, instead of a logsumexp per dim; entries
    more than ~87 nats below the largest underflow to -inf, far below every threshold this is compared with.
    """
    b, d = logp.shape[0], logp.dim() - 1
    top = logp.reshape(b, -1).amax(-1).view(b, *([1] * d))
    p = (logp - top).exp_()
    margs = [p.sum(dim=tuple(k + 1 for k in range(d) if k != j)) if d > 1 else p for j in range(d)]
    return torch.stack(margs, dim=1).log_() + top.view(b, 1, 1)


def _fine_log_mass(first: torch.Tensor, per_k: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``log sum_c weights_c exp(E[r, m, c])`` with ``E = first @ per_k`` (``ContractionPlan.split_energies``):
    first ``(M, K+1)`` or ``(r, M, K+1)``, per_k ``(r, K+1, C)``, weights ``(C,)`` -> ``(r, M)``, floored
    ``_SAMPLE_FLOOR`` nats below each row's peak.

    One shift per row instead of a logsumexp per node: exp, then a matrix-vector product with the weights. The
    columns go in blocks of about ``_FINE_BLOCK`` energies per row, each block's exp and sum done while its energies
    are in cache (a (257 x 81^2) table written whole and read back twice is memory-bound), with the running sum
    rescaled when a later block raises the row's peak."""
    cols = per_k.shape[-1]
    width = math.ceil(cols / math.ceil(cols * first.shape[-2] / _FINE_BLOCK))  # equal blocks, <= ~_FINE_BLOCK
    top = mass = None
    for c in range(0, cols, width):
        e = first @ per_k[..., c : c + width]  # (r, M, w)
        peak = e.amax(dim=(1, 2))
        if top is None:
            top = peak
        else:
            new = torch.maximum(top, peak)
            mass.mul_((top - new).exp_()[:, None])
            top = new
        part = e.sub_(top[:, None, None]).exp_() @ weights[c : c + width]
        mass = part if mass is None else mass.add_(part)
    # nodes more than _SAMPLE_FLOOR nats below the row's peak (no mass) are floored there
    return mass.log_().clamp_(min=-_SAMPLE_FLOOR).add_(top[:, None])


def _logsumexp_by(values: torch.Tensor, group: torch.Tensor, groups: int) -> torch.Tensor:
    """``logsumexp`` of ``values (K,)`` within each group (``group (K,)`` in ``0..groups-1``) -> ``(groups,)``."""
    top = torch.full((groups,), -math.inf, dtype=values.dtype, device=values.device)
    top = top.scatter_reduce(0, group, values, "amax")
    total = torch.zeros_like(top).index_add_(0, group, (values - top[group]).exp())
    return top + total.log()


def _log_z_entropy(logits: torch.Tensor, lw: torch.Tensor):
    """``log Z = logsumexp(l + lw)`` and ``E_p[l]`` of grid energies ``(b, N)`` -> ``(b,), (b,)``."""
    a = logits + lw
    m = a.amax(dim=-1, keepdim=True)
    a.sub_(m).exp_()
    s = a.sum(dim=-1)
    log_z = m.squeeze(-1) + s.log()
    e_ell = (a.mul_(logits)).sum(-1) / s  # einsum/bmm is several times slower here on CPU
    return log_z, e_ell


@torch.no_grad()
def _grid_log_z(coef: torch.Tensor, plan: ContractionPlan, tables: list, lw: torch.Tensor) -> torch.Tensor:
    """``log Z`` alone on a full tensor grid (screens, the refinement ladder): the blocks of
    ``_GridLogZEntropy`` without the entropy's extra passes over the energies."""
    step = _block_rows(lw.numel())
    with single_thread_for_small_ops(coef.device):
        return torch.cat(
            [
                torch.logsumexp(plan.grid_energies(coef[a : a + step], tables) + lw, dim=-1)
                for a in range(0, coef.shape[0], step)
            ]
        )


class _GridLogZEntropy(torch.autograd.Function):
    """Fused ``(log Z, H)`` on a full tensor grid from the coefficients, with a hand-written backward.

    ``log Z = logsumexp(l + lw)``, ``H = log Z - sum p l`` with ``p = exp(l + lw - log Z)``; so
    ``dlogZ/dl = p`` and ``dH/dl = -p (l - E_p[l])``, and ``d/dcoef`` is the adjoint of the (linear) separable
    contraction. Rows are processed in blocks whose grid energies stay in cache (``_BLOCK_ELEMENTS``). Backward
    needs each block's energies again: they are kept while all blocks together stay under ``_KEEP_ELEMENTS``
    (a training batch), and recomputed block by block above it, so memory stays bounded for any batch.
    """

    @staticmethod
    def forward(ctx, coef: torch.Tensor, plan: ContractionPlan, tables: list, lw: torch.Tensor):
        rows = coef.shape[0]
        step = _block_rows(lw.numel())
        keep = rows * lw.numel() <= _KEEP_ELEMENTS
        with single_thread_for_small_ops(coef.device):
            if rows <= step:  # one block
                logits = [plan.grid_energies(coef, tables)]
                log_z, e_ell = _log_z_entropy(logits[0], lw)
            else:
                logits = []
                log_z, e_ell = coef.new_empty(rows), coef.new_empty(rows)
                for a in range(0, rows, step):
                    block = plan.grid_energies(coef[a : a + step], tables)
                    log_z[a : a + step], e_ell[a : a + step] = _log_z_entropy(block, lw)
                    if keep:
                        logits.append(block)
        ctx.plan, ctx.tables, ctx.logits = plan, tables, logits if keep else None
        ctx.save_for_backward(coef, lw, log_z, e_ell)
        return log_z, log_z - e_ell

    @staticmethod
    def backward(ctx, g_z: torch.Tensor, g_h: torch.Tensor):
        coef, lw, log_z, e_ell = ctx.saved_tensors
        plan, tables = ctx.plan, ctx.tables
        if g_z is None:
            g_z = torch.zeros_like(log_z)
        if g_h is None:
            g_h = torch.zeros_like(log_z)
        grad = torch.empty_like(coef)
        step = _block_rows(lw.numel())
        with single_thread_for_small_ops(coef.device):
            for i, a in enumerate(range(0, coef.shape[0], step)):
                sl = slice(a, a + step)
                logits = ctx.logits[i] if ctx.logits is not None else plan.grid_energies(coef[sl], tables)
                p = (logits + lw).sub_(log_z[sl, None]).exp_()
                # dL/dl = p * (g_z + g_h * (E[l] - l))
                w = (logits * -g_h[sl, None]).add_((g_z[sl] + g_h[sl] * e_ell[sl])[:, None])
                grad[sl] = plan.grid_energies_adjoint(p.mul_(w), tables)
        return grad, None, None, None


class PolynomialDistribution(Distribution):
    """``p(x) = exp(<lam, T(x)> - log Z(lam))`` on ``[-1, 1]^dim``; build it with ``PolynomialFamily(...)(lam)``.

    batch_shape = ``natural_params.shape[:-1]``, event_shape = ``(dim,)``. ``log_prob``, ``entropy``,
    ``log_partition`` and ``mean`` are differentiable in the natural params; ``sample`` is not
    (``has_rsample = False``); ``mode`` is a detached argmax.
    """

    arg_constraints: dict = {}
    has_rsample = False

    def __init__(self, family: PolynomialFamily, natural_params: torch.Tensor, validate_args: bool | None = None):
        if not isinstance(natural_params, torch.Tensor):
            raise ValueError(f"natural_params must be a torch.Tensor, got {type(natural_params).__name__}")
        if natural_params.dtype not in (torch.float32, torch.float64):
            raise ValueError(f"natural_params must be float32 or float64, got {natural_params.dtype}")
        if natural_params.dim() < 1 or natural_params.shape[-1] != family.num_features:
            raise ValueError(
                f"natural_params must have shape (..., {family.num_features}) for dim={family.dim}, "
                f"order={family.order}; got {tuple(natural_params.shape)}"
            )
        self.family = family
        self.raw_natural_params = natural_params
        self.natural_params = family.clip_params(natural_params)
        super().__init__(natural_params.shape[:-1], torch.Size([family.dim]), validate_args=validate_args)
        if self._validate_args and not bool(torch.isfinite(natural_params).all()):
            bad = int((~torch.isfinite(natural_params)).sum())
            raise ValueError(f"natural_params contain {bad} non-finite values")
        self._stats: tuple | None = None
        self._mean: torch.Tensor | None = None

    @constraints.dependent_property(is_discrete=False, event_dim=1)
    def support(self):
        return constraints.independent(constraints.interval(-1.0, 1.0), 1)

    # ------------------------------------------------------------------------------------- internals
    def _flat(self) -> torch.Tensor:
        return rearrange(self.natural_params, "... f -> (...) f")

    def _unflat(self, t: torch.Tensor) -> torch.Tensor:
        return t.reshape(tuple(self.batch_shape) + tuple(t.shape[1:]))

    def _compute(self):
        if self._stats is None:
            lam = self._flat()
            if self.family.quadrature == "qmc":
                self._stats = self.family._qmc_stats(lam)
            else:
                coef = torch.nn.functional.pad(lam, (1, 0))
                with single_thread_for_small_ops(lam.device):
                    self._stats = self.family._grid_stats(coef, lam)
        return self._stats

    def _validate_sample(self, value: torch.Tensor) -> None:
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"value must be a torch.Tensor, got {type(value).__name__}")
        if value.dim() < 1 or value.shape[-1] != self.family.dim:
            raise ValueError(f"value must have shape (..., {self.family.dim}); got {tuple(value.shape)}")
        try:
            torch.broadcast_shapes(value.shape[:-1], self.batch_shape)
        except RuntimeError:
            raise ValueError(
                f"value batch shape {tuple(value.shape[:-1])} does not broadcast with the distribution's "
                f"batch_shape {tuple(self.batch_shape)}"
            ) from None
        excess = (value.abs() - 1.0).max().item() if value.numel() else 0.0
        if not excess <= 1e-6:  # also catches NaN
            raise ValueError(
                f"points must lie in the box [-1, 1]^{self.family.dim}; the largest violation is "
                f"{excess:.3g} outside it. Normalise actions to [-1, 1] before calling log_prob."
            )

    # ---------------------------------------------------------------------------------------- API
    @property
    def log_partition(self) -> torch.Tensor:
        """``log Z`` per batch element: ``batch_shape``."""
        return self._unflat(self._compute()[0])

    @property
    def log_partition_error(self) -> torch.Tensor:
        """Estimated absolute error of ``log_partition`` (NaN when the check is off): ``batch_shape``."""
        return self._unflat(self._compute()[2])

    @property
    def quadrature_nodes(self) -> torch.Tensor:
        """Nodes per dim actually used (grid rules) or total QMC points, per batch element."""
        return self._unflat(self._compute()[3])

    def entropy(self) -> torch.Tensor:
        """Differential entropy ``-E[log p]`` by the same quadrature as ``log_partition``: ``batch_shape``."""
        return self._unflat(self._compute()[1])

    @property
    def mean(self) -> torch.Tensor:
        """``E[x]`` by the same quadrature (computed on first use): ``batch_shape + (dim,)``."""
        if self._mean is None:
            fam = self.family
            log_z, _, _, used, _ = self._compute()
            if fam.quadrature == "qmc":
                self._mean = self._compute()[4]["mean"]
            else:
                coef = torch.nn.functional.pad(self._flat(), (1, 0))
                mean = coef.new_zeros(coef.shape[0], fam.dim)
                for nn in torch.unique(used).tolist():
                    idx = torch.nonzero(used == nn).squeeze(1)
                    mean = mean.index_put(
                        (idx,),
                        fam._chunked(
                            fam._grid_mean,
                            coef[idx],
                            fam.plan.row_elements([nn] * fam.dim),
                            log_z[idx],
                            fam.quadrature_kind,
                            nn,
                        ),
                    )
                self._mean = mean
        return self._unflat(self._mean)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """Log density at ``value (*sample, *batch, dim)`` -> ``(*sample, *batch)``; no clamping of ``value``."""
        if self._validate_args:
            self._validate_sample(value)
        ell = self.family.energy(self.natural_params, value.to(self.natural_params.dtype))
        return ell - self.log_partition

    def sample(self, sample_shape: torch.Size | tuple = ()) -> torch.Tensor:
        """Draws from the continuous density: ``(*sample_shape, *batch_shape, dim)``."""
        sample_shape = torch.Size(sample_shape)
        s = max(1, sample_shape.numel())
        with torch.no_grad():
            lam = self._flat().detach()
            if self.family.quadrature == "qmc":
                x = self._sample_sir(lam, s)
            else:
                with single_thread_for_small_ops(lam.device):
                    x = self._sample_grid(lam, s)
        return x.reshape(*sample_shape, *self.batch_shape, self.family.dim)

    def _sample_grid(self, lam: torch.Tensor, s: int) -> torch.Tensor:
        """Grid-rule sampling, each row on the cheapest grid that resolves it -> ``(s * B, d)`` (sample-major).

        Rows the base rule resolves (the screen of "Under-resolution") are drawn on it. Gauss rows it does not
        resolve (peaked densities) are drawn on boxes zoomed onto their mass (``PolynomialFamily._zoom_boxes``;
        one per separate mode, each draw picking a box by its mass), at the cost of the base rule per box whatever
        the peaks' widths; only rows whose boxes fail their checks go up the refinement ladder.
        ``self.sampler_rows`` counts the rows of each kind.
        """
        fam, rows, d = self.family, lam.shape[0], self.family.dim
        if fam.quadrature_kind == "trapezoid" or not fam.check:
            self.sampler_rows = {"base": rows, "zoomed": 0, "refined": 0}
            return self._sample_sequential(lam, s, int(self._compute()[3].max().item()))
        coef = torch.nn.functional.pad(lam, (1, 0))
        if self._stats is not None:
            base = self._stats[3] == fam.nodes
        else:
            z_n = fam._grid_pass(coef, "gauss", fam.nodes, False)
            base = (z_n - fam._grid_pass(coef, "gauss", max(1, fam.nodes - 4), False)).abs() <= fam.tol
        out = lam.new_empty(s, rows, d)
        counts = {"base": 0, "zoomed": 0, "refined": 0}

        def put(idx: torch.Tensor, kind: str, n: int, box=None) -> None:
            if idx.numel():
                out[:, idx] = self._sample_sequential(lam[idx], s, n, box).view(s, -1, d)
                counts[kind] += idx.numel()

        put(torch.nonzero(base).squeeze(1), "base", fam.nodes)
        rest = torch.nonzero(~base).squeeze(1)
        if rest.numel():
            box_row, lo, hi, log_mass, ok = fam._zoom_boxes(lam[rest])
            if ok.any():
                self._sample_boxes(lam, s, out, rest, box_row, lo, hi, log_mass, ok)
                counts["zoomed"] += int(ok.sum())
            bad = rest[~ok]
            if self._stats is not None:
                for n in torch.unique(self._stats[3][bad]).tolist():
                    put(bad[self._stats[3][bad] == n], "refined", n)
            else:  # the ladder of "Under-resolution" for log Z alone (no entropy, no second pass at the level used)
                assigned, left, n_left = fam._ladder(coef, bad, z_n[bad], z_n.new_empty(rows))
                for n, idx in assigned.items():
                    put(idx, "refined", n)
                if left.numel():
                    warnings.warn(
                        f"PolynomialDistribution.sample: {left.numel()} of {rows} rows under-resolved even with "
                        f"{n_left} gauss nodes per dim (max_nodes={fam.max_nodes}); sampled on that grid",
                        QuadratureWarning,
                        stacklevel=4,
                    )
                    put(left, "refined", n_left)
        self.sampler_rows = counts
        return out.reshape(s * rows, d)

    def _sample_boxes(self, lam, s, out, rest, box_row, lo, hi, log_mass, ok) -> None:
        """Draw the ``ok`` rows of ``rest`` on their zoomed boxes (``PolynomialFamily._zoom_boxes``) into ``out``
        ``(s, B, d)``. The boxes of a row are disjoint and hold its mass, so each draw picks a box with probability
        proportional to the box's mass, then draws on that box."""
        fam, d = self.family, self.family.dim
        keep = ok[box_row]
        box_row, lo, hi, log_mass = box_row[keep], lo[keep], hi[keep], log_mass[keep]
        pairs, picks = [], []  # (box index, positions of the draws that picked it)
        for r in torch.unique(box_row).tolist():
            mine = torch.nonzero(box_row == r).squeeze(1)
            if mine.numel() == 1:
                pairs.append(int(mine))
                picks.append(torch.arange(s, device=lam.device))
                continue
            chosen = torch.multinomial(torch.softmax(log_mass[mine], dim=0), s, replacement=True)
            for i, k in enumerate(mine.tolist()):
                pos = torch.nonzero(chosen == i).squeeze(1)
                if pos.numel():
                    pairs.append(k)
                    picks.append(pos)
        idx = torch.tensor(pairs, dtype=torch.long, device=lam.device)
        most = max(p.numel() for p in picks)
        x = self._sample_sequential(lam[rest[box_row[idx]]], most, fam.nodes, (lo[idx], hi[idx])).view(most, -1, d)
        for p, (k, pos) in enumerate(zip(pairs, picks, strict=True)):
            out[pos, rest[box_row[k]]] = x[: pos.numel(), p]

    def _sample_sequential(self, lam: torch.Tensor, s: int, n: int, box=None) -> torch.Tensor:
        """Conditional inverse CDF, one coordinate at a time -> ``(s * B, d)`` (sample-major rows).

        For coordinate j the unnormalised conditional density given the already drawn x_<j is evaluated on
        ``sample_nodes`` uniform nodes including the interval's ends, with the later coordinates integrated out
        by the ``n``-node rule, and a point is drawn from its piecewise log-linear interpolant. The draw is
        continuous (no grid lattice), includes the edges with full weight, and its density differs from
        ``exp(log_prob)`` only by the interpolation and quadrature errors. ``box``: optional per-row
        ``(lo, hi)``, each ``(B, d)`` float64: every coordinate's nodes (fine and quadrature) are laid on
        ``[lo_j, hi_j]`` instead of ``[-1, 1]`` (the density outside is taken as zero).
        """
        fam, d, dtype, dev = self.family, self.family.dim, lam.dtype, lam.device
        plan = fam.plan
        nodes64 = fam._grid(fam.quadrature_kind, n, torch.float64, dev)[0]
        _, steps, _, lw1 = fam._grid(fam.quadrature_kind, n, dtype, dev)
        _, _, fine_steps = fam._fine(dtype, dev)  # 1-D tables shared by all rows
        m = fam.sample_nodes
        rows = lam.shape[0]
        if box is None:
            lo, h = torch.full((rows, d), -1.0, dtype=torch.float64, device=dev), 2.0 / (m - 1)
        else:  # per-row tables on the box (the rule's constant log-weight shift per row cancels in each draw)
            lo, hi = box
            mid, half = (lo + hi) / 2, (hi - lo) / 2
            unit = torch.linspace(0.0, 1.0, m, dtype=torch.float64, device=dev)
            steps = list(fam._table(mid[..., None] + half[..., None] * nodes64, dtype).unbind(1))
            fine_steps = list(fam._table(lo[..., None] + 2 * half[..., None] * unit, dtype).unbind(1))
            h = (2 * half / (m - 1)).unsqueeze(-1)  # (B, d, 1)
        coef = torch.nn.functional.pad(lam, (1, 0))[:, None, :]  # (B, 1, R0)
        shift, weights = fam._rest_weights(lw1, n)

        def cond_logd(cur: torch.Tensor, j: int, reps: int) -> torch.Tensor:
            """cur ``(r, 1, R_j)`` -> log conditional density of x_j on the fine nodes ``(r, M)``."""
            tables = [fine_steps[j]] + steps[j + 1 :]
            if box is not None:  # per-row tables follow the sample-major rows of cur
                tables = [t.repeat(reps, 1, 1) for t in tables]
            elems = plan.row_elements([m] + [n] * (d - j - 1), start=j)
            step = fam._rows_per_chunk(elems, cur.element_size())
            outs = []
            for a in range(0, cur.shape[0], step):
                tabs = tables if box is None else [t[a : a + step] for t in tables]
                per_k = plan.split_factors(cur[a : a + step], j, tabs[1:])  # (r, K+1, C), C = n^(d-j-1)
                outs.append(_fine_log_mass(tabs[0], per_k, weights[j]).add_(shift[j]))
            return torch.cat(outs)

        def spacing(j: int, reps: int):
            return h if box is None else h[:, j].repeat(reps, 1)

        u = torch.rand(rows, s, dtype=torch.float64, device=dev)
        x0 = loglinear_inverse(cond_logd(coef, 0, 1), lo[:, :1], spacing(0, 1), u)  # (B, s)
        xs = [rearrange(x0, "b s -> (s b)")]
        cur = coef.repeat(s, 1, 1)  # (s*B, 1, R0), sample-major
        for j in range(1, d):
            tj = basis_table(fam.basis, xs[-1].to(dtype), fam.order)[:, None, :]  # (s*B, 1, K+1)
            cur = plan.contract(cur, [tj], start=j - 1)
            u = torch.rand(cur.shape[0], 1, dtype=torch.float64, device=dev)
            xs.append(loglinear_inverse(cond_logd(cur, j, s), lo[:, j].repeat(s)[:, None], spacing(j, s), u)[:, 0])
        return torch.stack(xs, dim=-1).clamp(-1.0, 1.0).to(dtype)

    def _sample_sir(self, lam: torch.Tensor, s: int) -> torch.Tensor:
        """Sampling-importance-resampling from a fresh pool of separable-proposal draws -> ``(s * B, d)``."""
        fam, rows, dev = self.family, lam.shape[0], lam.device
        pool = max(2048, 8 * s)
        logd = fam._proposal(lam)
        u = torch.rand(rows, pool, fam.dim, dtype=torch.float64, device=dev)
        x, lq = fam._proposal_draw(logd, u)
        x = x.to(lam.dtype)
        step = fam._rows_per_chunk(pool * fam.num_features * (fam.dim + 1), lam.element_size())
        logw = torch.cat(
            [
                fam._qmc_pass(lam[a : a + step], x[a : a + step], lq[a : a + step].to(lam.dtype))[1]
                for a in range(0, rows, step)
            ]
        )
        idx = torch.multinomial(torch.softmax(logw.double(), dim=-1), s, replacement=True)  # (B, s)
        picked = x.gather(1, idx[..., None].expand(-1, -1, fam.dim))  # (B, s, d)
        return rearrange(picked, "b s d -> (s b) d")

    @property
    def mode(self) -> torch.Tensor:
        """Highest-density point: best grid node, then projected gradient ascent: ``batch_shape + (dim,)``."""
        with single_thread_for_small_ops(self.natural_params.device):
            return self._mode()

    def _mode(self) -> torch.Tensor:
        fam = self.family
        lam = self._flat().detach()
        with torch.no_grad():
            if fam.quadrature == "qmc":
                extras = self._compute()[4]
                x_pts, ell = extras["points"], extras["energies"]
                best = ell.argmax(dim=-1)
                x = x_pts[torch.arange(lam.shape[0], device=lam.device), best]
                spacing = 2.0 / fam.sample_nodes
            else:
                n = fam.nodes
                nodes, steps, _, _ = fam._grid(fam.quadrature_kind, n, lam.dtype, lam.device)
                coef = torch.nn.functional.pad(lam, (1, 0))
                elems = fam.plan.row_elements([n] * fam.dim)
                step = fam._rows_per_chunk(elems, lam.element_size())
                idx = torch.cat(
                    [
                        fam.plan.contract(coef[a : a + step, None, :], steps)[..., 0].argmax(-1)
                        for a in range(0, lam.shape[0], step)
                    ]
                )
                coords = []
                for _ in range(fam.dim):
                    coords.append(nodes[idx % n])
                    idx = idx // n
                x = torch.stack(coords[::-1], dim=-1)
                spacing = 2.0 / n
        x = x.clone()
        eta = torch.full((x.shape[0], 1), spacing, dtype=x.dtype, device=x.device)
        for _ in range(40):
            with torch.enable_grad():
                xg = x.detach().requires_grad_(True)
                e = fam.energy(lam, xg)
                (g,) = torch.autograd.grad(e.sum(), xg)
            with torch.no_grad():
                gn = g / g.norm(dim=-1, keepdim=True).clamp_min(1e-12)
                cand = (x + eta * gn).clamp(-1.0, 1.0)
                better = fam.energy(lam, cand) > e.detach()
                x = torch.where(better[:, None], cand, x)
                eta = torch.where(better[:, None], eta * 1.5, eta * 0.5)
        return self._unflat(x.detach())


def grid_log_weights_from_1d(lw1: torch.Tensor, k: int) -> torch.Tensor:
    """Tensor-product log-weights of ``k`` copies of a 1-D rule, flattened (last fastest): ``(n^k,)``."""
    out = lw1.new_zeros(())
    for _ in range(k):
        out = (out[..., None] + lw1).reshape(-1)
    return out
