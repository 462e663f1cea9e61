"""The mixture paper's synthetic multimodal bandits (§5.1, App. E.1): the true reward is the critic, and SG-RP
(tanh-Gaussian, reparameterised), SGM-MRP (5-component tanh mixture, marginalised reparameterisation) and SGM-LR
(the same mixture, likelihood ratio with the mean baseline) ascend ``E_pi[r] + alpha H(pi)`` at one dummy state.

Bandits (our instance; the stored paper text lost its ranges): 1-D action in [-1, 1], ``r(a)`` proportional to the
sum of ``PEAKS`` Gaussian densities with means ~ U(-0.9, 0.9) and stds ~ U(0.02, 0.3) (design ``wide``) or
~ U(0.01, 0.05) (design ``narrow``: six separate basins, each a small target), scaled so the best action pays 1.
Narrow peaks are high and hard to find; wide ones are low and easy. Per (bandit, method, alpha, seed):
the final E[r] of 4096 policy samples, the share of samples in the global peak's basin (basins split at the
reward's local minima), and the number of basins holding >= 5 % of the samples ("modes found").

Usage: python eval/rl/seed_methods/mrp_bandits.py OUT.json [--narrow] [--lr LR] BANDIT [BANDIT ...]
(one JSON for the bandits named; ``--narrow``: the narrow design, seeds 0-4 instead of 0-2; ``--lr``: Adam step
size, default 3e-3)
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from mepoly_il.rl.heads import make_head
from mepoly_il.rl.sac import SACConfig, make_actor, optimise_known_q
from mepoly_il.utils import write_json_atomic

PEAKS = 6
DESIGNS = {"wide": (1000, 0.02, 0.3, range(3)), "narrow": (2000, 0.01, 0.05, range(5))}  # rng base, std range, seeds
ALPHAS = (0.003, 0.03)
METHODS = {"SG-RP": ("gaussian", "rp", {}), "SGM-MRP": ("gmm", "mrp", {"num_components": 5}),
           "SGM-LR": ("gmm", "lr", {"num_components": 5})}  # fmt: skip
STEPS, BATCH, LR, EVAL = 1000, 32, 3e-3, 4096
GRID = np.linspace(-1.0, 1.0, 4001)


def make_bandit(b: int, design: str = "wide") -> dict:
    """Peak means, stds and the scale that makes max r = 1 on a fine grid."""
    base, sd_lo, sd_hi, _ = DESIGNS[design]
    rng = np.random.default_rng(base + b)
    mu, sd = rng.uniform(-0.9, 0.9, PEAKS), rng.uniform(sd_lo, sd_hi, PEAKS)
    dens = (np.exp(-0.5 * ((GRID[:, None] - mu) / sd) ** 2) / sd).sum(1)
    return {"mu": mu, "sd": sd, "scale": 1.0 / dens.max()}


def reward(bandit: dict, a: torch.Tensor) -> torch.Tensor:
    """``a (...)`` -> ``r (...)``, differentiable."""
    mu = torch.as_tensor(bandit["mu"], dtype=a.dtype)
    sd = torch.as_tensor(bandit["sd"], dtype=a.dtype)
    z = (a[..., None] - mu) / sd
    return bandit["scale"] * (torch.exp(-0.5 * z**2) / sd).sum(-1)


def basins(bandit: dict) -> tuple[np.ndarray, int]:
    """Edges of the reward's basins (its interior local minima) and the index of the global peak's basin."""
    r = reward(bandit, torch.as_tensor(GRID)).numpy()
    minima = np.where((r[1:-1] < r[:-2]) & (r[1:-1] <= r[2:]))[0] + 1
    edges = GRID[minima]
    return edges, int(np.searchsorted(edges, GRID[r.argmax()]))


def run(bandit: dict, method: str, alpha: float, seed: int, lr: float = LR) -> dict:
    head_name, est, kw = METHODS[method]
    torch.manual_seed(seed)
    actor = make_actor(make_head(head_name, 1, 1, **kw), SACConfig(estimator=est))

    def q(obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:  # (B, 1), (..., B, 1) -> (..., B)
        return reward(bandit, act[..., 0])

    t0 = time.perf_counter()
    hist = optimise_known_q(actor, q, 1, STEPS, alpha, batch_size=BATCH, lr=lr, seed=seed, log_every=STEPS // 10)
    seconds = time.perf_counter() - t0
    torch.manual_seed(10_000 + seed)
    with torch.no_grad():
        a = actor.head.sample(torch.zeros(1, 1), EVAL)[:, 0, 0]
    r = reward(bandit, a).numpy()
    edges, top = basins(bandit)
    counts = np.bincount(np.searchsorted(edges, a.numpy()), minlength=len(edges) + 1) / EVAL
    return {
        "reward_mean": float(r.mean()),
        "global_share": float(counts[top]),
        "modes_found": int((counts >= 0.05).sum()),
        "num_basins": len(edges) + 1,
        "objective_curve": [h["objective"] for h in hist],
        "seconds": seconds,
    }


def main() -> None:
    torch.set_num_threads(1)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("bandits", type=int, nargs="+")
    ap.add_argument("--narrow", action="store_true")
    ap.add_argument("--lr", type=float, default=LR)
    args = ap.parse_args()
    design, bandits = "narrow" if args.narrow else "wide", args.bandits
    load0, t0 = os.getloadavg(), time.perf_counter()
    rows = []
    for b in bandits:
        bandit = make_bandit(b, design)
        for alpha in ALPHAS:
            for method in METHODS:
                for seed in DESIGNS[design][3]:
                    row = {"bandit": b, "method": method, "alpha": alpha, "seed": seed, "lr": args.lr}
                    row.update(run(bandit, method, alpha, seed, args.lr))
                    rows.append(row)
                    print(b, method, alpha, seed, f"{row['reward_mean']:.3f} {row['global_share']:.2f}", flush=True)
    meta = {
        "design": design,
        "sd_range": DESIGNS[design][1:3],
        "peaks": PEAKS,
        "steps": STEPS,
        "batch": BATCH,
        "lr": args.lr,
        "eval_samples": EVAL,
        "alphas": ALPHAS,
        "bandits": {b: {k: np.round(make_bandit(b, design)[k], 4).tolist() for k in ("mu", "sd")} for b in bandits},
        "load_start": load0,
        "load_end": os.getloadavg(),
        "wall_s": time.perf_counter() - t0,
    }
    write_json_atomic(args.out, {"meta": meta, "rows": rows})


if __name__ == "__main__":
    main()
