"""The polynomial core against independent truths (closed forms, numpy/scipy quadrature, sampling tests).

The reference values here never go through ``mepoly_il.poly``: they use numpy's Legendre module, scipy's
adaptive quadrature or closed forms.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from numpy.polynomial import legendre as npleg
from scipy import integrate, special, stats

from mepoly_il.poly import PolynomialFamily, QuadratureWarning, multi_indices

# ----------------------------------------------------------------------------- independent references


def np_features(x: np.ndarray, mi: np.ndarray, basis: str) -> np.ndarray:
    """Features with numpy only: x (N, d), mi (F, d) -> (N, F)."""
    out = np.ones((x.shape[0], mi.shape[0]))
    for j in range(mi.shape[1]):
        for f, k in enumerate(mi[:, j]):
            if basis == "legendre":
                coeffs = np.zeros(k + 1)
                coeffs[k] = 1.0
                out[:, f] *= npleg.legval(x[:, j], coeffs)
            else:
                out[:, f] *= x[:, j] ** k
    return out


def np_grid(dim: int, n: int):
    """Tensor Gauss-Legendre grid with numpy: points (n^d, d), weights (n^d,)."""
    x, w = npleg.leggauss(n)
    pts = np.stack(np.meshgrid(*([x] * dim), indexing="ij"), -1).reshape(-1, dim)
    wts = np.prod(np.stack(np.meshgrid(*([w] * dim), indexing="ij"), -1).reshape(-1, dim), axis=1)
    return pts, wts


def np_stats(lam: np.ndarray, dim: int, order: int, basis: str = "legendre", n: int = 200):
    """log Z, entropy and E[T] by a dense numpy Gauss-Legendre rule (n nodes per dim)."""
    mi = multi_indices(dim, order).numpy()
    pts, wts = np_grid(dim, n)
    phi = np_features(pts, mi, basis)
    ell = phi @ lam
    a = ell + np.log(wts)
    log_z = special.logsumexp(a)
    p = np.exp(a - log_z)
    return log_z, log_z - p @ ell, p @ phi


def rand_params(family: PolynomialFamily, *shape: int, scale: float = 0.3, seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, family.num_features, generator=g, dtype=dtype) * scale


# ----------------------------------------------------------------------------------------- structure


def test_multi_indices_exclude_constant_and_count():
    for d, k in [(1, 1), (2, 5), (3, 8), (4, 3)]:
        mi = multi_indices(d, k)
        assert mi.shape == (math.comb(d + k, d) - 1, d)
        deg = mi.sum(1)
        assert deg.min() == 1 and deg.max() == k
        assert torch.all(deg[1:] >= deg[:-1])  # graded order
        assert len({tuple(r) for r in mi.tolist()}) == mi.shape[0]
    assert multi_indices(2, 2).tolist() == [[1, 0], [0, 1], [2, 0], [1, 1], [0, 2]]


@pytest.mark.parametrize("basis", ["legendre", "monomial"])
def test_features_match_numpy(basis):
    fam = PolynomialFamily(3, 5, basis=basis)
    x = np.random.default_rng(0).uniform(-1, 1, size=(50, 3))
    ours = fam.features(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours, np_features(x, fam.multi_indices.numpy(), basis), rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------------------- uniform + closed forms


@pytest.mark.parametrize("dim", [1, 2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("basis", ["legendre", "monomial"])
def test_uniform_case(dim, dtype, basis):
    fam = PolynomialFamily(dim, 4, basis=basis)
    dist = fam(torch.zeros(fam.num_features, dtype=dtype))
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert abs(dist.log_partition.item() - dim * math.log(2)) < tol
    assert abs(dist.entropy().item() - dim * math.log(2)) < tol
    assert dist.mean.abs().max().item() < tol
    x = dist.sample((4000,))
    assert x.dtype == dtype and x.shape == (4000, dim)
    assert torch.allclose(dist.log_prob(x), torch.full((4000,), -dim * math.log(2), dtype=dtype), atol=tol)
    # uniform marginals: KS on each coordinate
    for j in range(dim):
        assert stats.kstest(x[:, j].double().numpy(), stats.uniform(-1, 2).cdf).pvalue > 1e-3


@pytest.mark.parametrize("a", [-4.0, 0.7, 6.0])
def test_truncated_exponential_closed_form(a):
    """Natural params only on degree 1: p(x) ~ exp(a x) on [-1, 1]."""
    fam = PolynomialFamily(1, 3)
    dist = fam(torch.tensor([a, 0.0, 0.0], dtype=torch.float64))
    log_z = math.log(2 * math.sinh(a) / a)
    mean = 1 / math.tanh(a) - 1 / a
    assert abs(dist.log_partition.item() - log_z) < 1e-10
    assert abs(dist.mean.item() - mean) < 1e-10
    assert abs(dist.entropy().item() - (log_z - a * mean)) < 1e-10
    assert abs(dist.mode.item() - math.copysign(1.0, a)) < 1e-9
    # the sampler must not under-sample the edge where the density is largest (paper's trapezoid bug)
    torch.manual_seed(1)
    x = dist.sample((50000,))[:, 0].numpy()
    cdf = lambda t: (np.exp(a * t) - math.exp(-a)) / (math.exp(a) - math.exp(-a))  # noqa: E731
    assert stats.kstest(x, cdf).pvalue > 1e-3


def test_truncated_gaussian_closed_form_both_bases():
    """Degree 2 only: exp(-c x^2) is a truncated Gaussian; Legendre P2 = (3x^2 - 1) / 2 shifts log Z by a constant."""
    c = 3.0
    log_z_mono = math.log(math.sqrt(math.pi / c) * math.erf(math.sqrt(c)))
    mono = PolynomialFamily(1, 2, basis="monomial")(torch.tensor([0.0, -c], dtype=torch.float64))
    assert abs(mono.log_partition.item() - log_z_mono) < 1e-10
    lam2 = -c / 1.5
    leg = PolynomialFamily(1, 2)(torch.tensor([0.0, lam2], dtype=torch.float64))
    assert abs(leg.log_partition.item() - (log_z_mono - lam2 / 2)) < 1e-10
    x = torch.linspace(-1, 1, 11, dtype=torch.float64)[:, None]
    assert torch.allclose(mono.log_prob(x), leg.log_prob(x), atol=1e-10)


# ----------------------------------------------------------------------------------------- random params vs numpy/scipy


@pytest.mark.parametrize("dim,order,n_ref", [(1, 10, 200), (2, 6, 120), (3, 4, 48)])
@pytest.mark.parametrize("basis", ["legendre", "monomial"])
def test_log_partition_entropy_grad_against_numpy(dim, order, n_ref, basis):
    fam = PolynomialFamily(dim, order, basis=basis, tol=1e-10)  # tight tol: the refinement must reach it
    lam = rand_params(fam, 3, scale=0.6, seed=dim)
    lam.requires_grad_(True)
    dist = fam(lam)
    log_z = dist.log_partition
    (grad,) = torch.autograd.grad(log_z.sum(), lam)
    for b in range(3):
        ref_z, ref_h, ref_et = np_stats(lam[b].detach().numpy(), dim, order, basis, n=n_ref)
        assert abs(log_z[b].item() - ref_z) < 1e-9
        assert abs(dist.entropy()[b].item() - ref_h) < 1e-8
        # exponential-family identity: grad log Z = E[T(x)]
        np.testing.assert_allclose(grad[b].numpy(), ref_et, atol=1e-7)


def test_log_partition_1d_against_scipy_quad():
    lam = rand_params(PolynomialFamily(1, 8), scale=1.5, seed=3)
    mi = multi_indices(1, 8).numpy()
    f = lambda t: math.exp(float(np_features(np.array([[t]]), mi, "legendre")[0] @ lam.numpy()))  # noqa: E731
    z, _ = integrate.quad(f, -1, 1, epsabs=1e-13, epsrel=1e-13, limit=200)
    default = PolynomialFamily(1, 8)(lam)
    assert abs(default.log_partition.item() - math.log(z)) < default.family.tol
    assert abs(default.log_partition.item() - math.log(z)) <= default.log_partition_error.item()  # conservative
    tight = PolynomialFamily(1, 8, tol=1e-11)(lam)
    assert abs(tight.log_partition.item() - math.log(z)) < 1e-10


def test_entropy_gradient_gradcheck():
    fam = PolynomialFamily(2, 3)
    lam = rand_params(fam, 2, scale=0.5).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: fam(t).entropy(), (lam,), eps=1e-6, atol=1e-6)
    assert torch.autograd.gradcheck(lambda t: fam(t).mean, (lam,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("dim,order", [(1, 8), (2, 6)])
def test_density_integrates_to_one(dim, order):
    """exp(log_prob) integrates to 1 by an independent rule (midpoint sums + Richardson extrapolation)."""
    fam = PolynomialFamily(dim, order)
    dist = fam(rand_params(fam, scale=0.8, seed=7))

    def midpoint(m: int) -> float:
        c = (np.arange(m) + 0.5) / m * 2 - 1
        pts = torch.from_numpy(np.stack(np.meshgrid(*([c] * dim), indexing="ij"), -1).reshape(-1, dim))
        return dist.log_prob(pts).exp().sum().item() * (2 / m) ** dim

    m = 2000 if dim == 1 else 250
    total = (4 * midpoint(2 * m) - midpoint(m)) / 3  # midpoint error is O(h^2)
    assert abs(total - 1) < 1e-5


# ----------------------------------------------------------------------------------------- sampling


def test_sampling_ks_peaked_bimodal_1d():
    """Two narrow modes near +-0.6 (monomial order 4: -c (x^2 - 0.36)^2) plus a tilt."""
    c = 60.0
    lam = torch.tensor([0.8, 2 * 0.36 * c, 0.0, -c], dtype=torch.float64)
    dist = PolynomialFamily(1, 4, basis="monomial")(lam)
    torch.manual_seed(0)
    x = dist.sample((40000,))[:, 0].numpy()
    grid = np.linspace(-1, 1, 200001)
    dens = np.exp(0.8 * grid + 2 * 0.36 * c * grid**2 - c * grid**4)
    cdf = integrate.cumulative_trapezoid(dens, grid, initial=0.0)
    cdf /= cdf[-1]
    res = stats.kstest(x, lambda t: np.interp(t, grid, cdf))
    assert res.pvalue > 1e-3, res
    assert (x > 0).mean() > 0.5  # the tilt favours the right mode


def test_sampling_chi_square_2d_multimodal():
    """Four-mode 2-D density; chi-square on a 12 x 12 binning with bin masses from numpy quadrature."""
    c = 12.0
    fam = PolynomialFamily(2, 4, basis="monomial")
    mi = [tuple(r) for r in fam.multi_indices.tolist()]
    lam = torch.zeros(fam.num_features, dtype=torch.float64)
    # -c (x^2 - 0.3)^2 - c (y^2 - 0.3)^2 + 1.5 x y  (modes near the four (+-0.55, +-0.55))
    lam[mi.index((2, 0))] = lam[mi.index((0, 2))] = 2 * 0.3 * c
    lam[mi.index((4, 0))] = lam[mi.index((0, 4))] = -c
    lam[mi.index((1, 1))] = 1.5
    dist = fam(lam)
    torch.manual_seed(0)
    x = dist.sample((30000,)).numpy()
    edges = np.linspace(-1, 1, 13)
    counts, _, _ = np.histogram2d(x[:, 0], x[:, 1], bins=[edges, edges])
    # bin masses: 8-point Gauss-Legendre per bin and dim, numpy only
    gx, gw = npleg.leggauss(8)
    mass = np.zeros((12, 12))
    for i in range(12):
        for j in range(12):
            xs = edges[i] + (gx + 1) / 2 * (edges[i + 1] - edges[i])
            ys = edges[j] + (gx + 1) / 2 * (edges[j + 1] - edges[j])
            xx, yy = np.meshgrid(xs, ys, indexing="ij")
            f = np.exp(2 * 0.3 * c * (xx**2 + yy**2) - c * (xx**4 + yy**4) + 1.5 * xx * yy)
            mass[i, j] = (f * np.outer(gw, gw)).sum() * (1 / 6) ** 2
    expected = mass / mass.sum() * len(x)
    keep = expected > 5
    chi2 = ((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum()
    pval = stats.chi2.sf(chi2, keep.sum() - 1)
    assert pval > 1e-3, (chi2, keep.sum())
    assert x.min() >= -1 and x.max() <= 1
    # continuous draws: no lattice
    assert len(np.unique(x[:, 0])) > 0.99 * len(x)


def test_sampling_3d_marginal_means_match_quadrature():
    fam = PolynomialFamily(3, 4)
    lam = rand_params(fam, 2, scale=0.8, seed=5)
    dist = fam(lam)
    torch.manual_seed(0)
    x = dist.sample((4000,))
    mean = x.mean(0)
    se = x.std(0) / math.sqrt(4000)
    assert torch.all((mean - dist.mean).abs() < 5 * se)


def test_log_prob_is_density_of_samples_at_the_boundary():
    """No clamping mismatch: log_prob at exactly +-1 equals the energy there minus log Z."""
    fam = PolynomialFamily(2, 3)
    lam = rand_params(fam, scale=1.0)
    dist = fam(lam)
    corner = torch.tensor([[1.0, -1.0]], dtype=torch.float64)
    expect = (fam.features(corner) * lam).sum(-1) - dist.log_partition
    assert torch.allclose(dist.log_prob(corner), expect)


# ----------------------------------------------------------------------------------------- shapes and dtypes


@pytest.mark.parametrize("batch", [(), (5,), (3, 4)])
def test_batch_shapes(batch):
    fam = PolynomialFamily(2, 3)
    dist = fam(rand_params(fam, *batch))
    assert dist.batch_shape == batch and dist.event_shape == (2,)
    assert dist.log_partition.shape == batch
    assert dist.entropy().shape == batch
    assert dist.mean.shape == (*batch, 2)
    assert dist.mode.shape == (*batch, 2)
    x = dist.sample((7,))
    assert x.shape == (7, *batch, 2)
    assert dist.log_prob(x).shape == (7, *batch)
    assert dist.sample().shape == (*batch, 2)
    assert dist.log_prob(torch.zeros(2, dtype=torch.float64)).shape == batch  # broadcasts


def test_float32_matches_float64():
    fam = PolynomialFamily(3, 6)
    lam = rand_params(fam, 16, scale=0.3)
    d64, d32 = fam(lam), fam(lam.float())
    assert d32.log_partition.dtype == torch.float32
    assert (d32.log_partition.double() - d64.log_partition).abs().max() < 1e-5
    assert (d32.entropy().double() - d64.entropy()).abs().max() < 5e-5


def test_chunking_does_not_change_values_or_gradients():
    big = PolynomialFamily(2, 5)
    small = PolynomialFamily(2, 5, chunk_bytes=4096)  # forces one row per chunk, checkpointed
    lam = rand_params(big, 9, scale=0.5)
    outs = []
    for fam in (big, small):
        t = lam.clone().requires_grad_(True)
        d = fam(t)
        (d.log_partition.sum() + 0.3 * d.entropy().sum()).backward()
        outs.append((d.log_partition.detach(), t.grad))
    assert torch.allclose(outs[0][0], outs[1][0], atol=1e-12)
    assert torch.allclose(outs[0][1], outs[1][1], atol=1e-12)


def test_blocked_pass_matches_one_block(monkeypatch):
    import mepoly_il.poly.family as family_module

    fam = PolynomialFamily(3, 4)
    lam = rand_params(fam, 7, scale=0.8, seed=5)
    outs = []
    # one block for all rows; 2 rows per block of 16^3 nodes (the last short), energies kept or recomputed
    for block, keep in ((2**30, 2**30), (2 * 16**3, 2**30), (2 * 16**3, 0)):
        monkeypatch.setattr(family_module, "_BLOCK_ELEMENTS", block)
        monkeypatch.setattr(family_module, "_KEEP_ELEMENTS", keep)
        t = lam.clone().requires_grad_(True)
        d = fam(t)
        (d.log_partition.sum() + 0.7 * d.entropy().sum()).backward()
        outs.append((d.log_partition.detach(), d.entropy().detach(), t.grad))
    for other in outs[1:]:
        for a, b in zip(outs[0], other, strict=True):
            assert torch.allclose(a, b, atol=1e-12)


def test_single_thread_guard_restores_and_nests():
    from mepoly_il.poly.quadrature import single_thread_for_small_ops

    before = torch.get_num_threads()
    cpu = torch.device("cpu")
    try:
        torch.set_num_threads(2)
        with single_thread_for_small_ops(cpu):
            assert torch.get_num_threads() == 1
            with single_thread_for_small_ops(cpu):
                assert torch.get_num_threads() == 1
            assert torch.get_num_threads() == 1  # the inner exit does not restore early
        assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError), single_thread_for_small_ops(cpu):
            raise RuntimeError
        assert torch.get_num_threads() == 2  # restored on error too
        fam = PolynomialFamily(3, 8)
        d = fam(rand_params(fam, 64, scale=0.2, dtype=torch.float32).requires_grad_(True))
        (d.log_partition.sum() + d.entropy().sum()).backward()
        d.sample((2,)), d.mode  # noqa: B018
        assert torch.get_num_threads() == 2  # forward, backward, sampling, mode leave the setting as it was
    finally:
        torch.set_num_threads(before)


def test_clip_hard_and_soft():
    fam = PolynomialFamily(1, 2, clip=5.0)
    d = fam(torch.tensor([10.0, -7.0], dtype=torch.float64))
    ref = PolynomialFamily(1, 2)(torch.tensor([5.0, -5.0], dtype=torch.float64))
    assert torch.allclose(d.log_partition, ref.log_partition)
    soft = PolynomialFamily(1, 2, clip=5.0, soft_clip=True)
    t = torch.tensor([10.0, -7.0], dtype=torch.float64, requires_grad=True)
    soft(t).log_partition.backward()
    assert torch.all(t.grad.abs() > 0)  # tanh clip keeps gradients alive
    assert torch.all(soft.clip_params(t).abs() < 5.0)


def test_mode_and_mean_of_a_gaussian_bump():
    a, b, c = 0.3, -0.2, 40.0
    fam = PolynomialFamily(2, 2, basis="monomial", tol=1e-4)  # mean to 1e-4 needs log Z to about that
    lam = torch.tensor([2 * c * a, 2 * c * b, -c, 0.0, -c], dtype=torch.float64)
    d = fam(lam)
    assert torch.allclose(d.mode, torch.tensor([a, b], dtype=torch.float64), atol=1e-4)
    assert torch.allclose(d.mean, torch.tensor([a, b], dtype=torch.float64), atol=1e-4)


def test_trapezoid_rule_matches_the_paper_reference():
    from mepoly_il.bench.poly_reference import ReferencePolynomial

    fam = PolynomialFamily(2, 5, quadrature="trapezoid", nodes=64, check=False)
    lam = rand_params(fam, 4, scale=0.5)
    ref = ReferencePolynomial(2, 5, grid_size=64, dtype=torch.float64)
    full = ref.params_from(lam, fam.multi_indices)  # the reference keeps the constant and its own order
    z_ref, h_ref = ref.log_partition_and_entropy(full)
    d = fam(lam)
    assert torch.allclose(d.log_partition, z_ref, atol=1e-10)
    assert torch.allclose(d.entropy(), h_ref, atol=1e-10)


# ----------------------------------------------------------------------------------------- under-resolution


def test_peaked_density_is_refined_not_silently_wrong():
    fam = PolynomialFamily(1, 8)
    lam = rand_params(fam, 4, scale=12.0, seed=11)
    d = fam(lam)
    with warnings.catch_warnings():
        warnings.simplefilter("error", QuadratureWarning)
        log_z = d.log_partition
    assert d.quadrature_nodes.max() > fam.nodes  # refined
    for b in range(4):
        ref_z, ref_h, _ = np_stats(lam[b].numpy(), 1, 8, n=400)
        assert abs(log_z[b].item() - ref_z) < fam.tol
        assert abs(d.entropy()[b].item() - ref_h) < 10 * fam.tol


def test_under_resolved_warns_loudly():
    fam = PolynomialFamily(2, 8, max_nodes=28)
    lam = rand_params(fam, 2, scale=6.0, seed=2)
    with pytest.warns(QuadratureWarning, match="under-resolved"):
        d = fam(lam)
        d.log_partition  # noqa: B018
    assert (d.log_partition_error > fam.tol).any()


def gaussian_params(dim: int, order: int, sigma: float, rows: int, seed: int) -> torch.Tensor:
    """Natural params (Legendre basis) of correlated Gaussians exp(-(x-c)^T P (x-c) / 2) restricted to the box.

    Centres uniform in [-0.9, 0.9]^dim, per-axis std between sigma and 2 sigma along a random rotation.
    Uses x = P_1(x) and x^2 = (2 P_2(x) + 1) / 3; constants drop out of the density.
    """
    g = torch.Generator().manual_seed(seed)
    mi = multi_indices(dim, order).tolist()
    lam = torch.zeros(rows, len(mi), dtype=torch.float64)
    for r in range(rows):
        c = (torch.rand(dim, generator=g, dtype=torch.float64) * 2 - 1) * 0.9
        q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
        std = sigma * 2 ** torch.rand(dim, generator=g, dtype=torch.float64)
        prec = q @ torch.diag(std**-2) @ q.T
        lin = prec @ c
        for f, e in enumerate(mi):
            if sum(e) == 1:
                lam[r, f] = lin[e.index(1)]
            elif sum(e) == 2 and 2 in e:
                lam[r, f] = -prec[e.index(2), e.index(2)] / 3
            elif sum(e) == 2:
                i, j = (k for k in range(dim) if e[k] == 1)
                lam[r, f] = -prec[i, j]
    return lam


@pytest.mark.parametrize("sigma", [0.03, 0.05, 0.1, 0.3])
def test_error_estimate_and_refinement_on_peaked_gaussians(sigma):
    """Refine only rows whose unrefined log Z is off by more than tol; every row ends within tol (up to rows right
    at the boundary). Rows that look under-resolved by the cheap screen (n - 4 nodes) are checked against a
    wider rule, and their estimate is within 3x of the actual error; for the others the estimate is the screen's,
    an upper estimate."""
    fam = PolynomialFamily(2, 8)
    lam = gaussian_params(2, 8, sigma, 8, seed=int(sigma * 100))
    truth = torch.tensor([np_stats(row.numpy(), 2, 8, n=200)[0] for row in lam], dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error", QuadratureWarning)
        d = fam(lam)
        err = (d.log_partition - truth).abs()
    est, used = d.log_partition_error, d.quadrature_nodes
    unrefined = (PolynomialFamily(2, 8, check=False)(lam).log_partition - truth).abs()
    refined = used > fam.nodes
    assert (err <= 1.5 * fam.tol).all(), err
    assert not (refined & (unrefined <= fam.tol / 3)).any(), (unrefined, used)  # no needless refinement
    assert not (~refined & (unrefined > 1.5 * fam.tol)).any(), (unrefined, used)  # no missed one
    if sigma <= 0.05:
        assert refined.any()
    else:
        assert not refined.any()
    coarse = PolynomialFamily(2, 8, nodes=fam.nodes - 4, check=False)(lam).log_partition
    screen = (PolynomialFamily(2, 8, check=False)(lam).log_partition - coarse).abs()
    wide = screen > fam.tol
    assert torch.equal(est[~wide], screen[~wide])
    assert (est[~wide] >= err[~wide] / 3 - 1e-12).all()  # an upper estimate (up to float rounding)
    kept = wide & ~refined  # the wider rule vouched for the base level: the difference is the error at n itself
    ratio = est[kept] / err[kept]
    assert ((ratio >= 1 / 3) & (ratio <= 3)).all(), ratio
    assert (est[refined] <= fam.tol).all()  # a refined row carries the screen of the level it was accepted at
    if sigma <= 0.05:
        assert wide.any()


def test_ladder_accepts_a_level_by_its_own_screen():
    """A row the base level cannot resolve but 1.5x its nodes can is accepted there after that level's n - 4
    screen, without a pass at the level above it (3.4x its cost in dim 3); log Z ends within tol of the truth."""
    fam = PolynomialFamily(2, 8)
    lam = gaussian_params(2, 8, 0.05, 8, seed=5)[[0, 1, 4, 6]]  # rows that 24 nodes miss and 36 resolve
    asked: list[int] = []
    grid_pass = fam._grid_pass

    def spy(coef, kind, n, full):
        asked.append(n)
        return grid_pass(coef, kind, n, full)

    fam._grid_pass = spy
    d = fam(lam)
    log_z, used = d.log_partition, d.quadrature_nodes
    truth = torch.tensor([np_stats(row.numpy(), 2, 8, n=200)[0] for row in lam], dtype=torch.float64)
    assert (used == 36).all(), used
    # base pass 24 + its screen 20; ladder: 36, screened against 32 (never checked against 54); entropy pass at 36
    assert asked == [24, 20, 36, 32, 36], asked
    assert ((log_z - truth).abs() <= fam.tol).all()


def test_trapezoid_error_estimate_flags_edge_heavy_density():
    fam = PolynomialFamily(1, 2, quadrature="trapezoid", nodes=64, max_nodes=64)
    d = fam(torch.tensor([8.0, 3.0], dtype=torch.float64))
    with pytest.warns(QuadratureWarning):
        err_est = d.log_partition_error.item()
    true = abs(d.log_partition.item() - np_stats(np.array([8.0, 3.0]), 1, 2, n=200)[0])
    assert err_est > 0.3 * true  # the Richardson estimate sees the actual error


# ----------------------------------------------------------------------------------------- scalable normaliser


@pytest.mark.parametrize("dim,n_ref", [(4, 16), (6, 9)])
def test_qmc_normaliser_against_gauss_grid(dim, n_ref):
    fam = PolynomialFamily(dim, 4, quadrature="qmc")
    lam = rand_params(fam, 3, scale=0.1, seed=dim)
    torch.manual_seed(0)
    d = fam(lam)
    ref = PolynomialFamily(dim, 4, quadrature="gauss", nodes=n_ref, check=False)(lam)
    err = (d.log_partition - ref.log_partition).abs()
    assert err.max() < 3e-3, err
    assert (d.entropy() - ref.entropy()).abs().max() < 5e-3
    # the reported error estimate is of the right size (within 10x either way of the actual error)
    assert (d.log_partition_error > 0).all()
    assert (d.log_partition_error * 10 > err).all()
    x = d.sample((50,))
    assert x.shape == (50, 3, dim) and x.abs().max() <= 1


def test_auto_picks_qmc_for_high_dims_and_refuses_huge_grids():
    assert PolynomialFamily(2, 8).quadrature == "gauss"
    assert PolynomialFamily(6, 4).quadrature == "qmc"
    with pytest.raises(ValueError, match="max_grid_bytes"):
        PolynomialFamily(6, 8, quadrature="gauss")


# ----------------------------------------------------------------------------------------- bad inputs


def test_bad_inputs():
    with pytest.raises(ValueError, match="dim"):
        PolynomialFamily(0, 3)
    with pytest.raises(ValueError, match="order"):
        PolynomialFamily(2, 0)
    with pytest.raises(ValueError, match="basis"):
        PolynomialFamily(2, 3, basis="chebyshev")
    with pytest.raises(ValueError, match="quadrature"):
        PolynomialFamily(2, 3, quadrature="simpson")
    fam = PolynomialFamily(2, 3)
    with pytest.raises(ValueError, match=r"\(\.\.\., 9\)"):
        fam(torch.zeros(4, 8))
    with pytest.raises(ValueError, match="float32 or float64"):
        fam(torch.zeros(4, 9, dtype=torch.long))
    d = fam(torch.zeros(4, 9), validate_args=True)
    with pytest.raises(ValueError, match="largest violation is 0.5"):
        d.log_prob(torch.tensor([[0.0, 1.5]]))
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 2\)"):
        d.log_prob(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="broadcast"):
        d.log_prob(torch.zeros(5, 2))
    d.log_prob(torch.full((4, 2), 1.0 + 1e-7))  # rounding tolerance
    with pytest.raises(ValueError, match="non-finite"):
        fam(torch.full((9,), float("nan")), validate_args=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    fam = PolynomialFamily(3, 6)
    lam = rand_params(fam, 64, scale=0.3, dtype=torch.float32)
    cpu = fam(lam)
    gpu_lam = lam.cuda().requires_grad_(True)
    gpu = fam(gpu_lam)
    assert torch.allclose(gpu.log_partition.cpu(), cpu.log_partition, atol=1e-4)
    assert torch.allclose(gpu.entropy().cpu(), cpu.entropy(), atol=1e-4)
    gpu.log_partition.sum().backward()
    assert gpu_lam.grad.is_cuda and torch.isfinite(gpu_lam.grad).all()
    x = gpu.sample((10,))
    assert x.is_cuda and x.shape == (10, 64, 3)
    assert gpu.mode.is_cuda


def test_entropy_is_minus_expected_log_prob_of_samples():
    fam = PolynomialFamily(2, 6)
    dist = fam(rand_params(fam, scale=0.7, seed=9))
    torch.manual_seed(3)
    lp = dist.log_prob(dist.sample((20000,)))
    se = lp.std().item() / math.sqrt(lp.numel())
    assert abs(dist.entropy().item() + lp.mean().item()) < 4 * se


def test_peaked_rows_are_sampled_on_a_zoomed_box_and_match_the_density():
    """Peaked 2-D Gaussians the base rule under-resolves: sampled on a zoomed box at the base rule's cost, the
    draws follow the density (KS on each marginal against a dense numpy grid), and an unpeaked row in the same
    batch keeps the base grid."""
    fam = PolynomialFamily(2, 8)
    lam = torch.cat([gaussian_params(2, 8, 0.03, 2, seed=7), torch.zeros(1, fam.num_features, dtype=torch.float64)])
    d = fam(lam)
    torch.manual_seed(0)
    x = d.sample((3000,)).numpy()
    assert d.sampler_rows == {"base": 1, "zoomed": 2, "refined": 0}
    mi = multi_indices(2, 8).numpy()
    g = np.linspace(-1, 1, 401)
    pts = np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    for b in range(2):
        logp = (np_features(pts, mi, "legendre") @ lam[b].numpy()).reshape(401, 401)
        p = np.exp(logp - logp.max())
        for j in range(2):
            marg = p.sum(axis=1 - j)
            cdf = integrate.cumulative_trapezoid(marg, g, initial=0.0)
            res = stats.kstest(x[:, b, j], lambda t, cdf=cdf / cdf[-1]: np.interp(t, g, cdf))
            assert res.pvalue > 1e-3, (b, j, res)
    assert stats.kstest(x[:, 2, 0], "uniform", args=(-1, 2)).pvalue > 1e-3


def test_separate_peaked_modes_are_sampled_on_one_box_each():
    """Four narrow modes (a product of two quartic double wells, tilted so that their masses differ) that the
    base rule under-resolves and no single box can hold: sampled on zoomed boxes, one per mode, picked by mass.
    The share of draws per quadrant matches numpy's quadrature and each marginal passes a KS test."""
    c = 400.0
    fam = PolynomialFamily(2, 4, basis="monomial", nodes=24)  # the node count of the default order 8
    mi = [tuple(r) for r in fam.multi_indices.tolist()]
    lam = torch.zeros(fam.num_features, dtype=torch.float64)
    # -c (x^2 - 0.36)^2 - c (y^2 - 0.36)^2 + 1.5 x + 0.8 y: modes near (+-0.6, +-0.6), 52 nats above the middle
    lam[mi.index((2, 0))], lam[mi.index((4, 0))] = 2 * 0.36 * c, -c
    lam[mi.index((0, 2))], lam[mi.index((0, 4))] = 2 * 0.36 * c, -c
    lam[mi.index((1, 0))], lam[mi.index((0, 1))] = 1.5, 0.8
    dist = fam(lam)
    torch.manual_seed(0)
    x = dist.sample((8000,)).numpy()
    assert dist.sampler_rows == {"base": 0, "zoomed": 1, "refined": 0}
    g = np.linspace(-1, 1, 2001)
    xx, yy = np.meshgrid(g, g, indexing="ij")
    logp = 2 * 0.36 * c * xx**2 - c * xx**4 + 2 * 0.36 * c * yy**2 - c * yy**4 + 1.5 * xx + 0.8 * yy
    p = np.exp(logp - logp.max())
    p /= p.sum()
    for sx in (-1, 1):
        for sy in (-1, 1):
            share = ((np.sign(x[:, 0]) == sx) & (np.sign(x[:, 1]) == sy)).mean()
            expect = p[(np.sign(xx) == sx) & (np.sign(yy) == sy)].sum()
            assert abs(share - expect) < 4 * math.sqrt(expect * (1 - expect) / len(x)) + 1e-3, (sx, sy, share, expect)
    for j in range(2):
        marg = p.sum(axis=1 - j)
        cdf = np.cumsum(marg)
        assert stats.kstest(x[:, j], lambda t, cdf=cdf: np.interp(t, g, cdf)).pvalue > 1e-3


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_split_energies_match_the_forward_contraction(dim):
    """The sampler's later-dims-first contraction gives the energies of the plain one, shared and per-row tables."""
    from mepoly_il.poly.basis import basis_table
    from mepoly_il.poly.quadrature import ContractionPlan

    plan, g = ContractionPlan(dim, 8), torch.Generator().manual_seed(dim)
    first = basis_table("legendre", torch.linspace(-1, 1, 33, dtype=torch.float64), 8)
    for j in range(dim):
        cur = torch.randn(5, 1, plan.sizes[j], generator=g, dtype=torch.float64)
        rest = [basis_table("legendre", torch.rand(7, generator=g, dtype=torch.float64) * 2 - 1, 8)]
        rest = rest * (dim - j - 1)
        want = plan.contract(cur, [first, *rest], start=j)[..., 0].view(5, 33, -1)
        torch.testing.assert_close(plan.split_energies(cur, j, first, rest), want, rtol=0, atol=1e-12)
        per_row = [t.expand(5, *t.shape).clone() for t in (first, *rest)]
        torch.testing.assert_close(plan.split_energies(cur, j, per_row[0], per_row[1:]), want, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("a", "passes", "used"), [(12, [54, 50], 54), (24, [81, 77], 81), (40, [81, 77, 122, 118], 122)]
)
def test_ladder_skips_a_level_its_errors_say_would_fail(monkeypatch, a, passes, used):
    """exp(a P_8) in each coordinate: after the 36-node level the errors so far decay slowly enough for a >= 24 that
    the 54-node level would fail, so the ladder goes to 81 directly (never past the last level); a = 12 still takes
    54. Each row ends where the full ladder ends, with log Z within tol of a 160-node rule."""
    fam = PolynomialFamily(3, 8)
    lam = torch.zeros(1, fam.num_features, dtype=torch.float64)
    for f, e in enumerate(fam.multi_indices.tolist()):
        if sorted(e) == [0, 0, 8]:
            lam[0, f] = float(a)
    grid_pass, seen = PolynomialFamily._grid_pass, []

    def recording(self, coef, kind, n, full):
        seen.append(n)
        return grid_pass(self, coef, kind, n, full)

    monkeypatch.setattr(PolynomialFamily, "_grid_pass", recording)
    d = fam(lam)
    log_z = d.log_partition
    assert seen[:4] == [24, 20, 36, 32] and seen[4:-1] == passes and int(d.quadrature_nodes) == used
    ref = grid_pass(fam, torch.nn.functional.pad(lam, (1, 0)), "gauss", 160, False)
    assert abs(float(log_z - ref)) <= fam.tol


@pytest.mark.parametrize("block", [2**40, 200, 37])
def test_fine_log_mass_in_column_blocks_matches_one_logsumexp(monkeypatch, block):
    """The sampler's conditional log masses, summed over column blocks with a running peak, equal one logsumexp over
    all columns, also when a later block holds the row's peak (the running sum is rescaled) and with per-row
    tables; nodes far below the peak are floored, not -inf."""
    import mepoly_il.poly.family as family

    monkeypatch.setattr(family, "_FINE_BLOCK", block)
    g = torch.Generator().manual_seed(0)
    first = torch.randn(9, 4, generator=g, dtype=torch.float64)
    per_k = torch.randn(3, 4, 50, generator=g, dtype=torch.float64) * 5
    per_k[1, :, 45:] *= 4  # row 1's peak lies in its last columns
    per_k[2] *= 40  # row 2 spans hundreds of nats: its low nodes hit the floor
    weights = torch.rand(50, generator=g, dtype=torch.float64) + 0.1
    e = first @ per_k
    want = torch.logsumexp(e + weights.log(), dim=-1)
    want = torch.maximum(want, e.amax(dim=(1, 2))[:, None] - family._SAMPLE_FLOOR)
    for tab in (first, first.expand(3, 9, 4).clone()):
        got = family._fine_log_mass(tab, per_k, weights)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-9)
    assert bool((want[2] == e[2].max() - family._SAMPLE_FLOOR).any())  # the floor was exercised


@pytest.mark.parametrize("case", ["spanning", "wide_box"])
def test_rows_the_zoom_cannot_help_go_up_the_ladder_and_sample_exactly(case):
    """Factorised densities that 24 nodes do not resolve and that no box can shrink enough. "spanning":
    exp(10 P_8(x0) + 10 P_8(x1)), peaks across the whole box, so the kept base nodes span every dim. "wide_box":
    exp(-300 ((x0 + 1) / 2)^8 + 10 P_8(x1)), x0 keeps its mass on about [-1, 0.55]; the only box shrinks no dim by
    1.5x, so the base rule laid on it would be no finer than the ladder's first level. Either way the row gets no
    box and goes straight up the ladder, and its draws follow the exact marginals."""
    t = np.linspace(-1, 1, 20001)
    wavy = 10 * special.eval_legendre(8, t)
    if case == "spanning":
        x0_coefs, energies = np.eye(9)[8] * 10.0, (wavy, wavy)
    else:  # -300 ((x + 1) / 2)^8 in the Legendre basis
        x0_coefs = -300.0 * npleg.poly2leg(np.polynomial.polynomial.polyfromroots([-1.0] * 8) / 2**8)
        energies = (-300 * ((t + 1) / 2) ** 8, wavy)
    fam = PolynomialFamily(2, 8)
    lam = torch.zeros(1, fam.num_features, dtype=torch.float64)
    for f, e in enumerate(fam.multi_indices.tolist()):
        if e[1] == 0:
            lam[0, f] = float(x0_coefs[e[0]])
        elif e == [0, 8]:
            lam[0, f] = 10.0
    row, _, _, _, ok = fam._zoom_boxes(lam)
    assert row.numel() == 0 and not ok.any()
    torch.manual_seed(0)
    d = fam(lam)
    x = d.sample((4000,))[:, 0]
    assert d.sampler_rows == {"base": 0, "zoomed": 0, "refined": 1}
    for k, energy in enumerate(energies):
        cdf = integrate.cumulative_trapezoid(np.exp(energy - energy.max()), t, initial=0)
        assert stats.kstest(x[:, k].numpy(), lambda v, c=cdf: np.interp(v, t, c / c[-1])).pvalue > 0.01
