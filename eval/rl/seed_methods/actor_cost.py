"""Wall time of one actor step (objective + backward) per SAC estimator, batch 64, critic 2x64, 1 thread.

Usage: python eval/rl/seed_methods/actor_cost.py
"""

from __future__ import annotations

import os
import time

import torch

from mepoly_il.rl.heads import make_head
from mepoly_il.rl.sac import SACConfig, TwinQ, make_actor


def main() -> None:
    torch.set_num_threads(1)
    cases = [
        ("gaussian", "rp", {}, None),
        ("gmm", "mrp", {"num_components": 5}, None),
        ("gmm", "lr", {"num_components": 5}, None),
        ("mepoly", "lr", {"order": 8}, None),
        ("mepoly", "quadrature", {"order": 8}, 12),
        ("mepoly", "quadrature", {"order": 8}, None),
    ]
    print("load", os.getloadavg())
    for d in (1, 2):
        for head, est, kw, nodes in cases:
            torch.manual_seed(0)
            actor = make_actor(make_head(head, 4, d, **kw), SACConfig(estimator=est, quad_nodes=nodes))
            critic = TwinQ(4, d, 64)
            obs, alpha = torch.randn(64, 4), torch.tensor(0.2)
            actor.objective(obs, critic.min_q, alpha)[0].mean().backward()  # warm-up
            t = time.perf_counter()
            for _ in range(5):
                actor.objective(obs, critic.min_q, alpha)[0].mean().backward()
            ms = (time.perf_counter() - t) / 5 * 1e3
            q_per_state = getattr(actor, "nodes", torch.zeros(0)).shape[0] or {"mrp": 5, "lr": 8}.get(est, 1)
            print(f"d={d} {head:8s} {est:10s} nodes={nodes} Q-evals/state={q_per_state:4d} {ms:8.1f} ms/step")
    print("load", os.getloadavg())


if __name__ == "__main__":
    main()
