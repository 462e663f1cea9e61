"""Where one PPO iteration on Smooth World spends its time, per head: env stepping, the head's action sampling
(MePoly: its quadrature grid), the rest of the rollout, and the update (epochs x minibatches of log-prob / entropy /
backward), in CPU time of this single-threaded process (so a loaded machine slows the wall clock, not these
numbers). Then the CPU cost of the MePoly paper authors' step budget at that speed.

Usage: python eval/rl/profile_smoothworld.py [ITERATIONS]   (single thread; prints a markdown table)
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import torch

from mepoly_il.cli.rl import _make_envs, _make_head, parse_env, parse_ppo
from mepoly_il.rl.ppo import ActorCritic, train_ppo

LAYOUT = "smoothworld-tree_in_the_middle"
#: the authors' iterations of >= 2048 env steps per layout (their run scripts), our batch is 2048 steps too
AUTHORS_ITERS = {"two_walls": 500, "four_walls": 2000, "tree_in_the_middle": 4000}


class Timed:
    """Wrap ``obj.name`` and add its CPU time to ``self.s``."""

    def __init__(self, obj, name: str):
        self.s, fn = 0.0, getattr(obj, name)

        def wrapped(*a, **k):
            t = time.process_time()
            try:
                return fn(*a, **k)
            finally:
                self.s += time.process_time() - t

        setattr(obj, name, wrapped)


def profile(head_name: str, iters: int) -> dict:
    ns, ppo_cfg, head_cfg, env_cfg, _ = parse_ppo(
        ["--env", LAYOUT, "--head", head_name, "--out", "/nonexistent/x", "--iterations", str(iters)]
    )
    kind, task = parse_env(ns.env)
    torch.manual_seed(0)
    envs, _ = _make_envs(kind, task, ppo_cfg.num_envs, env_cfg, 0)
    agent = ActorCritic(_make_head(head_name, envs.obs_dim, envs.act_dim, head_cfg.head_kwargs(head_name)), 2)
    t_env, t_act = Timed(envs, "step"), Timed(agent.head, "act")
    t_update = Timed(agent.head, "evaluate")  # the update's log-prob / entropy forward passes
    cpu0, wall0 = time.process_time(), time.perf_counter()
    hist = train_ppo(agent, envs, ppo_cfg, seed=0)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    # the update's share of wall time, applied to CPU time (the trainer times its phases by wall clock)
    update_share = sum(r["time_update_s"] for r in hist) / sum(r["time_iteration_s"] for r in hist)
    ms = lambda s: 1e3 * s / iters  # noqa: E731
    return {
        "head": head_name,
        "env": ms(t_env.s),
        "act": ms(t_act.s),
        "evaluate": ms(t_update.s),
        "update": ms(update_share * cpu),
        "iteration": ms(cpu),
        "wall": ms(wall),
        "epochs": float(np.mean([r["epochs_done"] for r in hist])),
    }


def main() -> None:
    torch.set_num_threads(1)
    iters = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    load0 = os.getloadavg()[0]
    rows = [profile(h, iters) for h in ("gaussian", "gmm", "mepoly")]
    print(f"{LAYOUT}, {iters} iterations of 2048 env steps (128 envs x 16), ms per iteration, 1 thread, "
          f"load {load0:.1f} -> {os.getloadavg()[0]:.1f}\n")  # fmt: skip
    print("| head | env step | head act (sampling) | update (of which head log-prob + entropy) | iteration (CPU) | "
          "iteration (wall) | epochs done | authors' budget, CPU-h (two_walls / four_walls / tree) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        hours = " / ".join(f"{n * r['iteration'] / 3.6e6:.2f}" for n in AUTHORS_ITERS.values())
        print(f"| {r['head']} | {r['env']:.0f} ms | {r['act']:.0f} ms | {r['update']:.0f} ms "
              f"({r['evaluate']:.0f} ms) | {r['iteration']:.0f} ms | {r['wall']:.0f} ms | {r['epochs']:.1f} | "
              f"{hours} |")  # fmt: skip


if __name__ == "__main__":
    main()
