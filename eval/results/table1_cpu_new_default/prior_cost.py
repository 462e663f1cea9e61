"""Cost and accuracy of the stage-2 prior's log Z on two trained checkpoints (e.g. new vs old stage-1 default).

For one training batch of PushCube windows (batch 128, one thread): the median over 5 repeats of one
``log_prob + entropy`` forward and backward through each checkpoint's prior, the Gauss-Legendre nodes per dim the
family chose for its rows, and, for the first checkpoint, the error of log Z at fixed node counts against 81 nodes.
Usage::

    python eval/results/table1_cpu_new_default/prior_cost.py NEW_STAGE2.ckpt OLD_STAGE2.ckpt [DATASET.zarr]
"""

import sys
import time

import torch

from mepoly_il.data.datamodule import DemoDataModule
from mepoly_il.policies import load_policy
from mepoly_il.poly import PolynomialFamily
from mepoly_il.poly.family import PolynomialDistribution

torch.set_num_threads(1)
dm = DemoDataModule(path=sys.argv[3] if len(sys.argv) > 3 else "datasets/PushCube-v1.zarr", batch_size=128)
dm.setup("fit")
batch = next(iter(dm.train_dataloader()))
pols = {"new": load_policy(sys.argv[1]), "old": load_policy(sys.argv[2])}
times = {k: [] for k in pols}
for rep in range(5):
    for name, pol in pols.items():
        with torch.no_grad():
            z = pol.encode(batch["action"])[0].float().clamp(-1, 1)
        t0 = time.perf_counter()
        dist = pol.prior_dist(batch["obs"])
        (-dist.log_prob(z).mean() - 1e-3 * dist.entropy().mean()).backward()
        times[name].append(time.perf_counter() - t0)
        if rep == 0:
            n = dist.base.quadrature_nodes.float()
            print(f"{name}: nodes per dim min/median/max {n.min():.0f}/{n.median():.0f}/{n.max():.0f}")
med = {k: sorted(v)[2] for k, v in times.items()}
print(f"median s: new {med['new']:.3f}, old {med['old']:.3f}, ratio {med['new'] / med['old']:.2f}")
with torch.no_grad():
    d = pols["new"].prior_dist(batch["obs"]).base
    lam, fam = d.natural_params.double(), d.family
    log_z = {}
    for n in (20, 24, 30, 36, 54, 81):
        fixed = PolynomialFamily(dim=fam.dim, order=fam.order, quadrature="gauss", nodes=n, check=False)
        log_z[n] = PolynomialDistribution(fixed, lam).log_partition
    for n in (20, 24, 30, 36, 54):
        e = (log_z[n] - log_z[81]).abs()
        q = torch.quantile(e, torch.tensor([0.5, 0.9, 1.0], dtype=e.dtype)).tolist()
        print(f"n={n}: |log Z_n - log Z_81| median {q[0]:.2e}, p90 {q[1]:.2e}, max {q[2]:.2e}")
