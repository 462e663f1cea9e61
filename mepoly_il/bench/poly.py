"""`mepoly-il bench poly`: the polynomial core vs the paper's reference algorithm, side by side in one run.

For each (dim, order, batch) the same random natural params go through

* ``ours``: ``mepoly_il.poly.PolynomialFamily`` (separable Gauss-Legendre, auto nodes, under-resolution check
  on; QMC for dims >= 4 when the grid is too big), and
* ``ref``: ``mepoly_il.bench.poly_reference.ReferencePolynomial``, a re-implementation of the paper's
  Appendix B (dense features on the 64^d trapezoid grid; the paper's 4096-node stochastic grid above dim 3).

Times are the best of a few repeats of ``log Z + entropy`` (forward) and of forward + backward of their sum.
Errors are against a float64 dense Gauss-Legendre rule with many nodes (independent code, on the first
``err_rows`` batch rows), or for dims >= 4 a fine separable Gauss-Legendre grid. Natural params are
``N(0, sigma^2)`` per coefficient; ``sigma = 0.2`` ("moderate") gives grid energies spanning a few units.
A second section sweeps sigma up to and past the paper's clip of 5 and reports what the core does there.
The headline case is also timed at batch 8 and 1 (what RL and acting use). ``--busy N`` runs the whole benchmark
next to N CPU-bound processes that it starts and always stops, so that "another job keeps a core busy" is
reproducible.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import torch

from mepoly_il.bench.machine import machine_info
from mepoly_il.bench.poly_reference import ReferencePolynomial
from mepoly_il.poly import PolynomialFamily, QuadratureWarning

MODERATE_SIGMA = 0.2


@contextlib.contextmanager
def busy_processes(n: int):
    """Keep ``n`` CPU-bound processes (a pure-Python spin loop each) running for the duration of the block.

    They are killed on exit, also when the block raises or is interrupted.
    """
    procs: list[subprocess.Popen] = []
    try:
        for _ in range(n):
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", "while True:\n    pass"],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        if procs:
            time.sleep(0.5)  # let them get scheduled before anything is timed
        yield procs
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


def _timeit(fn, reps: int, budget_s: float = 20.0) -> float:
    """Best wall time (s) of ``fn()`` over up to ``reps`` runs after one warm-up (fewer if slow).

    The minimum, not the median: on a shared machine other processes only ever add time.
    """
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    if first * reps > budget_s:
        return first
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _params(num_features: int, batch: int, sigma: float, seed: int, dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, num_features, generator=g, dtype=torch.float64) * sigma).to(dtype)


def _hi_acc(dim: int, order: int, lam: torch.Tensor, fam: PolynomialFamily):
    """float64 log Z and entropy, dense Gauss-Legendre (dims <= 3) or fine separable Gauss (dims >= 4)."""
    lam = lam.double()
    n = {1: 512, 2: 160, 3: 56}.get(dim, 0)
    if dim <= 3 and n**dim * (fam.num_features + 1) <= 4e7:  # dense features must fit in memory
        ref = ReferencePolynomial(dim, order, grid_size=n, dtype=torch.float64, rule="gauss")
        full = ref.params_from(lam, fam.multi_indices)
        out_z, out_h = [], []
        for s in range(0, lam.shape[0], 4):  # small chunks: the dense grid is large
            z, h = ref.log_partition_and_entropy(full[s : s + 4])
            out_z.append(z)
            out_h.append(h)
        return torch.cat(out_z), torch.cat(out_h), f"dense GL {n}^{dim} fp64"
    n = {1: 512, 2: 160, 3: 64, 4: 20, 5: 12, 6: 9}[dim]
    d = PolynomialFamily(dim, order, quadrature="gauss", nodes=n, check=False, max_grid_bytes=2**33)(lam)
    return d.log_partition, d.entropy(), f"separable GL {n}^{dim} fp64"


def _ours_fn(fam: PolynomialFamily, lam: torch.Tensor, backward: bool):
    def run():
        t = lam.detach().requires_grad_(backward)
        d = fam(t, validate_args=False)
        z, h = d.log_partition, d.entropy()
        if backward:
            (z.sum() + h.sum()).backward()
        return z, h

    return run


def _ref_fn(ref: ReferencePolynomial, full: torch.Tensor, backward: bool):
    def run():
        t = full.detach().requires_grad_(backward)
        z, h = ref.log_partition_and_entropy(t)
        if backward:
            (z.sum() + h.sum()).backward()
        return z, h

    return run


def bench_row(dim, order, batch, dtype, sigma, seed, reps, err_rows, ref_flop_cap):
    fam = PolynomialFamily(dim, order)
    lam = _params(fam.num_features, batch, sigma, seed, dtype)
    row: dict = {
        "dim": dim,
        "order": order,
        "batch": batch,
        "dtype": str(dtype).replace("torch.", ""),
        "sigma": sigma,
        "features": fam.num_features,
        "ours_quadrature": fam.quadrature,
    }
    rows_err = min(batch, err_rows)
    z_hi, h_hi, row["hi_acc"] = _hi_acc(dim, order, lam[:rows_err], fam)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", QuadratureWarning)
        d = fam(lam)
        z, h = d.log_partition, d.entropy()
        row["ours_nodes_max"] = int(d.quadrature_nodes.max())
        row["ours_err_est_max"] = float(d.log_partition_error.max())
    row["ours_warnings"] = len(caught)
    row["ours_dlogz"] = float((z[:rows_err].double() - z_hi).abs().max())
    row["ours_dH"] = float((h[:rows_err].double() - h_hi).abs().max())
    row["ours_fwd_s"] = _timeit(_ours_fn(fam, lam, False), reps)
    row["ours_fwdbwd_s"] = _timeit(_ours_fn(fam, lam, True), reps)

    stochastic = 4096 if dim > 3 else None
    ref = ReferencePolynomial(dim, order, grid_size=64, dtype=dtype, stochastic_size=stochastic, seed=seed)
    full = ref.params_from(lam, fam.multi_indices)
    nodes = ref.grid.shape[0]
    flops_per_row = 2.0 * nodes * full.shape[-1]
    ref_rows = batch if flops_per_row * batch <= ref_flop_cap else max(1, int(ref_flop_cap // flops_per_row))
    zr, hr = _ref_fn(ref, full[:rows_err], False)()
    row["ref_dlogz"] = float((zr.double() - z_hi).abs().max())
    row["ref_dH"] = float((hr.double() - h_hi).abs().max())
    scale = batch / ref_rows
    row["ref_rows_timed"] = ref_rows
    row["ref_fwd_s"] = _timeit(_ref_fn(ref, full[:ref_rows], False), reps) * scale
    row["ref_fwdbwd_s"] = _timeit(_ref_fn(ref, full[:ref_rows], True), reps) * scale
    row["speedup_fwd"] = row["ref_fwd_s"] / row["ours_fwd_s"]
    row["speedup_fwdbwd"] = row["ref_fwdbwd_s"] / row["ours_fwdbwd_s"]
    return row


def scale_row(dim, order, batch, sigma, seed, err_rows, uniform_clip=False):
    """Accuracy vs natural-param scale (float64 errors of float32 runs), with refinement/warnings."""
    fam = PolynomialFamily(dim, order)
    lam = _params(fam.num_features, batch, sigma, seed, torch.float32)
    if uniform_clip:  # every coefficient uniform in [-5, 5]: the paper's clip saturated everywhere
        g = torch.Generator().manual_seed(seed)
        lam = (torch.rand(batch, fam.num_features, generator=g) * 10 - 5).float()
    rows_err = min(batch, err_rows)
    # the high-accuracy reference must itself resolve peaked densities: fine separable grid, checked
    n_hi = {1: 2048, 2: 400, 3: 120}[dim]
    hi = PolynomialFamily(dim, order, nodes=n_hi, check=False, max_grid_bytes=2**33)(lam[:rows_err].double())
    hi2 = PolynomialFamily(dim, order, nodes=(3 * n_hi) // 4, check=False, max_grid_bytes=2**33)(
        lam[:rows_err].double()
    )
    z_hi = hi.log_partition
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", QuadratureWarning)
        t0 = time.perf_counter()
        d = fam(lam)
        z = d.log_partition
        d.entropy()
        t = time.perf_counter() - t0
        nodes = d.quadrature_nodes
        est = d.log_partition_error
    ref = ReferencePolynomial(dim, order, grid_size=64, dtype=torch.float32)
    zr, _ = ref.log_partition_and_entropy(ref.params_from(lam[:rows_err], fam.multi_indices))
    err = (z[:rows_err].double() - z_hi).abs()
    est_r = est[:rows_err].double()
    return {
        "dim": dim,
        "order": order,
        "batch": batch,
        "params": "U(-5,5)" if uniform_clip else f"N(0,{sigma}^2)",
        "max_abs_param": float(lam.abs().max()),
        "energy_range_max": float(_energy_range(fam, lam[:rows_err])),
        "hi_acc_self_diff": float((z_hi - hi2.log_partition).abs().max()),
        "ours_dlogz_max": float(err.max()),
        "ours_err_est_max": float(est.max()),
        "silent_rows": int(((err > 10 * fam.tol) & (est_r <= fam.tol)).sum()),
        "ours_nodes_mean": float(nodes.float().mean()),
        "ours_nodes_max": int(nodes.max()),
        "ours_warnings": len(caught),
        "ours_time_s": t,
        "ref_dlogz_max": float((zr.double() - z_hi).abs().max()),
    }


def _energy_range(fam: PolynomialFamily, lam: torch.Tensor) -> float:
    """max - min of the energy over a 33^d grid (what "logits of a few units" refers to), max over rows."""
    g = torch.linspace(-1, 1, 33, dtype=torch.float64)
    pts = torch.stack(torch.meshgrid(*([g] * fam.dim), indexing="ij"), -1).reshape(-1, fam.dim)
    e = fam.energy(lam.double()[:, None, :], pts)
    return float((e.max(-1).values - e.min(-1).values).max())


def _fmt(x: float, kind: str) -> str:
    if kind == "t":
        return f"{x * 1e3:.1f}ms" if x < 10 else f"{x:.1f}s"
    return f"{x:.1e}"


def format_main(rows: list[dict]) -> str:
    head = (
        "| dim | order | batch | dtype | ref fwd | ours fwd | speedup | ref fwd+bwd | ours fwd+bwd | speedup "
        "| \\|dlogZ\\| ours | \\|dlogZ\\| ref | \\|dH\\| ours | \\|dH\\| ref | ours nodes |"
    )
    lines = [head, "|" + "---|" * 15]
    for r in rows:
        extra = "*" if r["ref_rows_timed"] < r["batch"] else ""
        lines.append(
            f"| {r['dim']} | {r['order']} | {r['batch']} | {r['dtype']} | {_fmt(r['ref_fwd_s'], 't')}{extra} | "
            f"{_fmt(r['ours_fwd_s'], 't')} | {r['speedup_fwd']:.0f}x | {_fmt(r['ref_fwdbwd_s'], 't')}{extra} | "
            f"{_fmt(r['ours_fwdbwd_s'], 't')} | {r['speedup_fwdbwd']:.0f}x | {_fmt(r['ours_dlogz'], 'e')} | "
            f"{_fmt(r['ref_dlogz'], 'e')} | {_fmt(r['ours_dH'], 'e')} | {_fmt(r['ref_dH'], 'e')} | "
            f"{r['ours_quadrature']} {r['ours_nodes_max']} |"
        )
    return "\n".join(lines)


def format_scale(rows: list[dict]) -> str:
    lines = [
        "| dim | order | params | max\\|lam\\| | energy range | \\|dlogZ\\| ours | est. err | silent rows "
        "| nodes mean/max | warnings | \\|dlogZ\\| ref (trap 64) | hi-acc self-diff |",
        "|" + "---|" * 12,
    ]
    for r in rows:
        lines.append(
            f"| {r['dim']} | {r['order']} | {r['params']} | {r['max_abs_param']:.2f} | {r['energy_range_max']:.1f} "
            f"| {r['ours_dlogz_max']:.1e} | {r['ours_err_est_max']:.1e} | {r['silent_rows']} | "
            f"{r['ours_nodes_mean']:.0f}/{r['ours_nodes_max']} | {r['ours_warnings']} | {r['ref_dlogz_max']:.1e} "
            f"| {r['hi_acc_self_diff']:.0e} |"
        )
    return "\n".join(lines)


def benchmark(
    *,
    quick: bool = False,
    smoke: bool = False,
    out: str = "bench_poly.json",
    sections: str = "main,headline,qmc,scale",
    threads: int | None = None,
    busy: int = 0,
    seed: int = 0,
    reps: int = 3,
) -> int:
    """Time and check the core against the reference on a grid of (dim, order, batch); print tables, write JSON.

    Args:
        quick: small grid (about 30 s on an idle 2-core machine)
        smoke: tiny grid (seconds): checks the command runs, no claims
        out: JSON results file
        sections: comma-separated subset of: main, headline, qmc, scale
        threads: torch intra-op threads for both sides (default: torch's default)
        busy: run next to this many CPU-bound processes (pure-Python spin loops) that the benchmark starts before
            timing and always stops after; 1 on a 2-core machine = another job keeps one core busy
        seed: seed of the random natural params
        reps: timed repeats per measurement (best of)
    """
    args = SimpleNamespace(
        quick=quick, smoke=smoke, out=out, sections=sections, threads=threads, busy=busy, seed=seed, reps=reps
    )
    out = Path(args.out)
    if out.exists() and out.is_dir():
        from mepoly_il.errors import UserError

        raise UserError(f"{out}: is a directory; pass --out FILE.json")

    if args.smoke:
        args.reps = 1
        main_grid = [(1, 2, 1), (2, 3, 4)]
        qmc_grid = [(4, 2, 2)]
        scale_grid = [(1, 3, 1.0)]
        headline = (2, 3, 4)
        small_batches = (1,)
        err_rows, ref_cap = 2, 1e9
    elif args.quick:
        args.reps = min(args.reps, 2)
        main_grid = [(d, k, b) for d in (1, 2, 3) for k in (2, 8) for b in (1, 64)]
        qmc_grid = [(5, 4, 4)]
        scale_grid = [(2, 8, 2.0)]
        headline = (3, 8, 64)
        small_batches = (8, 1)
        err_rows, ref_cap = 4, 1e9
    else:
        main_grid = [(d, k, b) for d in (1, 2) for k in (2, 5, 8, 11, 14) for b in (1, 64, 1024)]
        main_grid += [(3, k, b) for k in (2, 8, 14) for b in (1, 64, 1024)]
        qmc_grid = [(4, 4, 16), (5, 4, 8), (6, 4, 8), (4, 8, 4)]
        scale_grid = [(dd, 8, s) for dd in (2, 3) for s in (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)]
        headline = (3, 8, 1024)
        small_batches = (8, 1)
        err_rows, ref_cap = 16, 1.2e10

    if args.threads is not None:
        if args.threads < 1:
            from mepoly_il.errors import UserError

            raise UserError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.busy < 0:
        from mepoly_il.errors import UserError

        raise UserError(f"--busy must be >= 0, got {args.busy}")
    with busy_processes(args.busy):
        return _run(args, out, main_grid, qmc_grid, scale_grid, headline, small_batches, err_rows, ref_cap)


def _run(args, out, main_grid, qmc_grid, scale_grid, headline, small_batches, err_rows, ref_cap) -> int:
    results: dict = {
        "command": "mepoly-il bench poly"
        + (" --quick" if args.quick else "")
        + (f" --threads {args.threads}" if args.threads else "")
        + (f" --busy {args.busy}" if args.busy else "")
        + (f" --sections {args.sections}" if args.sections != "main,headline,qmc,scale" else ""),
        "busy_processes": args.busy,
        "machine": machine_info(),
        "load_avg_start": os.getloadavg(),
        "seed": args.seed,
        "moderate_sigma": MODERATE_SIGMA,
    }
    sections = {x.strip() for x in args.sections.split(",") if x.strip()}
    unknown = sections - {"main", "headline", "qmc", "scale"}
    if unknown:
        from mepoly_il.errors import UserError

        raise UserError(f"--sections: unknown section(s) {sorted(unknown)}; choose from main, headline, qmc, scale")
    if "main" not in sections:
        main_grid = []
    if "qmc" not in sections:
        qmc_grid = []
    if "scale" not in sections:
        scale_grid = []
    rows = []
    t_start = time.perf_counter()
    for i, (d, k, b) in enumerate(main_grid):
        rows.append(bench_row(d, k, b, torch.float32, MODERATE_SIGMA, args.seed + i, args.reps, err_rows, ref_cap))
        print(
            f"  [{i + 1}/{len(main_grid)}] dim={d} order={k} batch={b}: {rows[-1]['speedup_fwd']:.0f}x", file=sys.stderr
        )
    hd, hk, hb = headline
    print("  headline, dims 4-6 and the scale sweep ...", file=sys.stderr)
    head_rows = []
    if "headline" in sections:
        head_rows = [
            bench_row(hd, hk, hb, dt, MODERATE_SIGMA, 1000, args.reps, err_rows, 1e12)
            for dt in ((torch.float32,) if args.quick else (torch.float32, torch.float64))
        ]
        head_rows += [
            bench_row(hd, hk, b, torch.float32, MODERATE_SIGMA, 1000, max(args.reps, 10), min(err_rows, b), 1e12)
            for b in small_batches
        ]
    qmc_rows = [
        bench_row(d, k, b, torch.float32, 0.1, 2000 + i, args.reps, min(err_rows, 8), 1e12)
        for i, (d, k, b) in enumerate(qmc_grid)
    ]
    scale_batch = 4 if args.smoke else 64
    scale_rows = [scale_row(d, k, scale_batch, s, 3000 + i, err_rows) for i, (d, k, s) in enumerate(scale_grid)]
    if not args.smoke and "scale" in sections:
        scale_rows += [
            scale_row(d, 8, 64, 0.0, 3100 + d, err_rows, uniform_clip=True) for d in ((2,) if args.quick else (2, 3))
        ]
    results.update(
        main=rows,
        headline=head_rows,
        qmc=qmc_rows,
        scale=scale_rows,
        total_s=time.perf_counter() - t_start,
        load_avg_end=os.getloadavg(),
    )
    h = head_rows[0] if head_rows else None
    goal = bool(h and min(h["speedup_fwd"], h["speedup_fwdbwd"]) >= 50 and h["ours_dlogz"] <= 1e-5)
    results["goal"] = {
        "speedup_fwd": h and h["speedup_fwd"],
        "speedup_fwdbwd": h and h["speedup_fwdbwd"],
        "ours_dlogz": h and h["ours_dlogz"],
        "met": goal,
    }

    print("\n## Main table (float32, natural params N(0, 0.2^2); * = reference timed on a sub-batch, scaled)\n")
    print(format_main(rows))
    print(f"\n## Headline: dim {hd}, order {hk}, batch {hb} and {small_batches} (reference timed on the full batch)\n")
    print(format_main(head_rows))
    print(
        "\n## Dims 4-6: ours (auto: QMC above the grid budget) vs the paper's 4096-node stochastic grid "
        "(N(0, 0.1^2) params)\n"
    )
    print(format_main(qmc_rows))
    print("\n## Accuracy vs natural-param scale (float32, batch 64; errors on the first rows)\n")
    print(format_scale(scale_rows))
    if h:
        print(
            f"\nGoal (>= 50x faster fwd and fwd+bwd at dim {hd}/order {hk}/batch {hb} fp32 with |dlogZ| <= 1e-5): "
            f"{'MET' if goal else 'NOT MET'} ({h['speedup_fwd']:.0f}x, {h['speedup_fwdbwd']:.0f}x, "
            f"{h['ours_dlogz']:.1e}; {args.busy} busy process(es))"
        )
    m = results["machine"]
    print(
        f"machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads); "
        f"load average {results['load_avg_start'][0]:.1f} -> {results['load_avg_end'][0]:.1f}; "
        f"total {results['total_s']:.0f} s"
    )
    from mepoly_il.utils import write_json_atomic

    write_json_atomic(out, results)
    print(f"wrote {out}")
    return 0
