"""The S2AC paper's entropy-estimator check (§4.1): SVGD's closed-form entropy against known entropies.

Targets: the paper's 2-D Gaussian (mean (-0.687, 0.801), covariance 5 [[0.226, 0.165], [0.165, 0.678]], exact
entropy) and Gaussian mixtures with K unit-variance modes on the circle of radius 4 (entropy by Monte Carlo, 200k
samples). SVGD starts from the paper's N(0, 6 I); 16 independent runs per setting; the estimate is
``-mean_i log q_L(u_i)`` (:func:`mepoly_il.rl.s2ac.svgd_sample`). Also reported: the cross-entropy
``-mean_i log p(u_i)`` of the final particles (how close they are to the target).

Usage: python eval/rl/seed_methods/s2ac_entropy.py OUT.json
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import torch

from mepoly_il.rl.s2ac import svgd_sample

RUNS = 16
SETTINGS = [(m, steps, bw) for bw in ("half_mean", "log") for m in (20, 50) for steps in (100, 300, 1000)]
STEP_SIZE = 0.1


def gaussian_target():
    mu = torch.tensor([-0.687, 0.801], dtype=torch.float64)
    cov = 5 * torch.tensor([[0.226, 0.165], [0.165, 0.678]], dtype=torch.float64)
    dist = torch.distributions.MultivariateNormal(mu, cov)
    return dist.log_prob, float(dist.entropy())


def gmm_target(k: int):
    ang = 2 * math.pi * torch.arange(k, dtype=torch.float64) / k
    means = 4 * torch.stack([ang.cos(), ang.sin()], -1)

    def log_p(u):
        return torch.logsumexp(torch.distributions.Normal(means, 1.0).log_prob(u[..., None, :]).sum(-1), -1) - math.log(
            k
        )

    x = means[torch.randint(0, k, (200_000,))] + torch.randn(200_000, 2, dtype=torch.float64)
    return log_p, float(-log_p(x).mean())


def main() -> None:
    out = Path(sys.argv[1])
    torch.set_num_threads(1)
    torch.manual_seed(0)
    targets = {"gaussian": gaussian_target(), "gmm2": gmm_target(2), "gmm4": gmm_target(4)}
    rows, t0 = [], time.perf_counter()
    for name, (log_p, exact) in targets.items():

        def score(u, log_p=log_p):
            with torch.enable_grad():
                return torch.autograd.grad(log_p(u).sum(), u)[0]

        for m, steps, bw in SETTINGS:
            std = math.sqrt(6.0)
            u0 = std * torch.randn(RUNS, m, 2, dtype=torch.float64)
            lq0 = torch.distributions.Normal(0.0, std).log_prob(u0).sum(-1)
            u, lq = svgd_sample(u0, lq0, score, steps, STEP_SIZE, bandwidth=bw)
            est = -lq.mean(1)
            row = {
                "target": name,
                "exact_entropy": exact,
                "particles": m,
                "steps": steps,
                "step_size": STEP_SIZE,
                "bandwidth": bw,
                "estimate_mean": float(est.mean()),
                "estimate_std": float(est.std()),
                "cross_entropy": float(-log_p(u.detach()).mean()),
            }
            rows.append(row)
            print({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    out.write_text(json.dumps({"runs_per_setting": RUNS, "rows": rows, "seconds": time.perf_counter() - t0}, indent=1))


if __name__ == "__main__":
    main()
