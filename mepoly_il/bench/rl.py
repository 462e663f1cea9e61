"""`mepoly-il bench rl`: PPO iteration wall time per head at the same batch, and MePoly cost vs order and
grid.

Part 1 runs ``--iterations`` PPO iterations of every head on the same Smooth World batch (``--num-envs`` x
``--num-steps`` steps, 4 epochs x 4 minibatches) and reports rollout / update / total seconds per iteration
and the ratio to the Gaussian head. Part 2 times one MePoly forward + backward (log_prob + exact entropy of
``--rows`` distinct states) and one sampling call per (order, quadrature nodes per dim). Everything
single-threaded on CPU unless ``--threads`` says otherwise; timings are medians.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from pathlib import Path


def _time(fn, repeats: int) -> float:
    fn()  # warm-up (caches, allocator)
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def bench_heads(num_envs: int, num_steps: int, iterations: int, layout: str) -> list[dict]:
    import torch

    from mepoly_il.envs.smoothworld import VecSmoothWorld
    from mepoly_il.rl.heads import make_head
    from mepoly_il.rl.ppo import ActorCritic, PPOConfig, train_ppo

    rows = []
    for name, kw in (
        ("gaussian", {}),
        ("gmm", {}),
        ("mepoly", {"order": 5, "lambda_clip": 5.0, "family_kwargs": {"sample_nodes": 65}}),
        ("fpo", {"num_pairs": 32}),
    ):
        torch.manual_seed(0)
        envs = VecSmoothWorld(layout, num_envs, seed=0)
        agent = ActorCritic(make_head(name, 2, 2, **kw), 2)
        cfg = PPOConfig(
            num_envs=num_envs,
            num_steps=num_steps,
            iterations=iterations,
            update_epochs=4,
            num_minibatches=4,
            ent_coef=0.05,
            target_kl=None,
        )
        hist = train_ppo(agent, envs, cfg, seed=0)[1:]  # drop the first (warm-up) iteration
        rows.append(
            {
                "head": name,
                "batch": cfg.batch_size,
                "rollout_s": statistics.median(h["time_rollout_s"] for h in hist),
                "update_s": statistics.median(h["time_update_s"] for h in hist),
                "iteration_s": statistics.median(h["time_iteration_s"] for h in hist),
            }
        )
    base = rows[0]["iteration_s"]
    for r in rows:
        r["ratio_vs_gaussian"] = r["iteration_s"] / base
    return rows


def bench_mepoly(orders, nodes_list, rows: int, repeats: int) -> list[dict]:
    import torch

    from mepoly_il.rl.heads import make_head

    out = []
    for order in orders:
        for nodes in nodes_list:
            torch.manual_seed(0)
            head = make_head(
                "mepoly",
                2,
                2,
                order=order,
                family_kwargs={"quadrature": "gauss", "nodes": nodes, "check": False},
            )
            obs = torch.rand(rows, 2) * 2 - 1
            act = torch.rand(rows, 2) * 2 - 1

            def fwd_bwd(head=head, obs=obs, act=act):
                lp, ent = head._log_prob_and_entropy(obs, act, with_entropy=True)
                (lp.mean() + ent.mean()).backward()

            out.append(
                {
                    "order": order,
                    "features": head.family.num_features,
                    "nodes_per_dim": nodes,
                    "grid_nodes": nodes * nodes,
                    "rows": rows,
                    "fwd_bwd_ms": 1e3 * _time(fwd_bwd, repeats),
                    "sample_ms": 1e3 * _time(lambda head=head, obs=obs: head.sample(obs, 1), repeats),
                }
            )
    return out


def benchmark(
    *,
    num_envs: int = 128,
    num_steps: int = 16,
    iterations: int = 4,
    layout: str = "two_walls",
    orders: Sequence[int] = (2, 6, 10, 14),
    nodes: Sequence[int] = (16, 32, 64, 128),
    rows: int = 256,
    repeats: int = 3,
    threads: int = 1,
    out: str | None = None,
) -> int:
    """Run both parts, print their tables and optionally write the JSON.

    Args:
        num_envs: Smooth World envs per PPO rollout
        num_steps: steps per env per rollout
        iterations: PPO iterations per head (the first one is dropped)
        layout: Smooth World layout
        orders: MePoly orders K to time
        nodes: quadrature nodes per dimension to time
        rows: distinct states per MePoly call
        repeats: timed calls per MePoly measurement (median)
        threads: torch intra-op threads
        out: write the results as JSON here
    """
    import torch

    from mepoly_il.utils import write_json_atomic

    torch.set_num_threads(threads)
    heads = bench_heads(num_envs, num_steps, iterations, layout)
    print(
        f"PPO iteration, Smooth World {layout}, batch {heads[0]['batch']} (4 epochs x 4 minibatches), "
        f"{threads} thread(s)"
    )
    print(f"{'head':<10}{'rollout s':>11}{'update s':>10}{'iter s':>9}{'x gauss':>9}")
    for r in heads:
        print(
            f"{r['head']:<10}{r['rollout_s']:>11.3f}{r['update_s']:>10.3f}{r['iteration_s']:>9.3f}"
            f"{r['ratio_vs_gaussian']:>9.2f}"
        )
    poly = bench_mepoly(orders, nodes, rows, repeats)
    print(f"\nMePoly head, {rows} distinct states: log_prob + exact entropy fwd+bwd, and one sample each")
    print(f"{'K':>3}{'feat':>6}{'nodes/dim':>11}{'fwd+bwd ms':>12}{'sample ms':>11}")
    for r in poly:
        print(
            f"{r['order']:>3}{r['features']:>6}{r['nodes_per_dim']:>11}{r['fwd_bwd_ms']:>12.1f}{r['sample_ms']:>11.1f}"
        )
    if out:
        write_json_atomic(Path(out), {"heads": heads, "mepoly": poly, "threads": threads})
    return 0
