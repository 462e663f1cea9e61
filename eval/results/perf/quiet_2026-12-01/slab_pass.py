"""One log Z pass on the full 54- and 81-node grids (dim 3, order 8, one random row, float32), whole against
split into slabs along the first dim so that each slab's energies stay in cache. Same value either way.

Usage: OMP_NUM_THREADS=1 python slab_pass.py
"""

from __future__ import annotations

import time

import torch

from mepoly_il.poly import family as F


def timed(fn, repeats: int = 20) -> float:
    fn()
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t) / repeats * 1e3


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    fam = F.PolynomialFamily(dim=3, order=8, basis="legendre")
    plan = fam.plan
    coef = torch.nn.functional.pad(torch.randn(1, fam.num_features) * 0.3, (1, 0))
    for n in (54, 81):
        _, tables, lw, _ = fam._grid("gauss", n, torch.float32, coef.device)

        def slabs(s: int, n: int = n, tables: list = tables, lw: torch.Tensor = lw) -> torch.Tensor:
            cur = plan.contract(coef[:, None, :], tables[:1])  # (1, n, R_1)
            outs = []
            for a in range(0, n, s):
                e = plan.contract(cur[:, a : a + s], tables[1:], start=1)[..., 0]
                outs.append(torch.logsumexp(e + lw[a * n * n : (a + s) * n * n], -1, keepdim=True))
            return torch.logsumexp(torch.cat(outs, -1), -1)

        whole = timed(lambda tables=tables, lw=lw: F._grid_log_z(coef, plan, tables, lw))
        diff = (F._grid_log_z(coef, plan, tables, lw) - slabs(8)).abs().item()
        per = ", ".join(f"{s}: {timed(lambda s=s: slabs(s)):.2f}" for s in (2, 4, 8, 16))
        print(f"{n} nodes: whole {whole:.2f} ms; slabs of k first-dim nodes (k: ms) {per}; |dlogZ| {diff:.1e}")


if __name__ == "__main__":
    main()
