"""`mepoly-il rl {ppo,sweep,report}`: PPO with Gaussian / mixture / MePoly / flow heads on the bandits and
Smooth World.

    mepoly-il rl ppo --env bandit-lemniscate --head mepoly --seed 0 --out runs/rl/x
    mepoly-il rl sweep --envs bandit-lemniscate bandit-two-moons --heads gaussian gmm mepoly fpo \\
        --seeds 0 1 2 --out runs/rl/main --jobs 2
    mepoly-il rl report runs/rl/main --out eval/rl

ENV is ``bandit-lemniscate``, ``bandit-two-moons`` or ``smoothworld-<layout>`` (layouts: two_walls,
four_walls, tree_in_the_middle, two_slits, cshape, three_goals; hyphens or underscores). Every option left
unset takes the per-env / per-head default of :func:`defaults` (the budget of the published tables in
eval/rl/).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mepoly_il.errors import UserError

HEAD_NAMES = ("gaussian", "gmm", "mepoly", "fpo")
BANDIT_ENVS = {"bandit-lemniscate": "lemniscate", "bandit-two-moons": "two_moons"}

# Smooth World per-layout settings: (iterations, update epochs, entropy coefficient). The authors' entropy
# coefficients for MePoly (0.10 / 0.05) are used for every head with a density on the box (see README).
# CPU budget: 30 iterations x 2048 steps = 61,440 env steps per run (the authors ran 1M-12M on a GPU machine).
SMOOTHWORLD_BUDGET = {
    "two_walls": (30, 4, 0.10),
    "four_walls": (30, 4, 0.10),
    "tree_in_the_middle": (30, 4, 0.05),
    "two_slits": (30, 4, 0.10),
    "cshape": (30, 4, 0.05),
    "three_goals": (30, 4, 0.10),
}


def parse_env(env: str) -> tuple[str, str]:
    """Split an env name: 'smoothworld-two-walls' -> ('smoothworld', 'two_walls'), 'bandit-lemniscate' ->
    ('bandit', 'lemniscate')."""
    from mepoly_il.envs.smoothworld import LAYOUTS

    if env in BANDIT_ENVS:
        return "bandit", BANDIT_ENVS[env]
    if env.startswith("smoothworld-"):
        layout = env[len("smoothworld-") :].replace("-", "_")
        if layout in LAYOUTS:
            return "smoothworld", layout
    choices = list(BANDIT_ENVS) + [f"smoothworld-{lay}" for lay in LAYOUTS]
    raise UserError(f"--env {env!r}: unknown environment; choose one of {', '.join(choices)}")


def defaults(kind: str, task: str, head: str) -> dict:
    """Default PPO / head / eval settings for one (env, head)."""
    if kind == "bandit":
        d = {
            "num_envs": 1024,
            "num_steps": 1,
            "iterations": 100,
            "lr": 1e-4,
            "gamma": 1.0,
            "gae_lambda": 1.0,
            "update_epochs": 10,
            "num_minibatches": 4,
            "ent_coef": 0.2,
            "target_kl": 0.02,
            "order": 14,
            "lambda_clip": None,
            "eval_samples": 4096,
        }
    else:
        iters, epochs, ent = SMOOTHWORLD_BUDGET[task]
        d = {
            "num_envs": 128,
            "num_steps": 16,
            "iterations": iters,
            "lr": 3e-4,
            "gamma": 0.99,
            "gae_lambda": 0.98,
            "update_epochs": epochs,
            "num_minibatches": 4,
            "ent_coef": ent,
            "target_kl": 0.02,
            "order": 5,
            "lambda_clip": 5.0,
            "eval_episodes": 200,
            "sample_nodes": 65,
        }
    if head == "fpo":
        d["ent_coef"] = 0.0
    return d


def _ppo_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mepoly-il rl ppo", description="train one PPO run and evaluate it")
    p.add_argument("--env", required=True, help="bandit-lemniscate | bandit-two-moons | smoothworld-<layout>")
    p.add_argument("--head", required=True, choices=HEAD_NAMES)
    p.add_argument("--seed", type=int, default=0, help="seeds torch, numpy, env starts and the bandit cloud")
    p.add_argument("--out", required=True, help="run directory (built atomically)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    g = p.add_argument_group("PPO (unset = per-env default)")
    for name, typ, hlp in (
        ("iterations", int, "rollout + update cycles (bandit 100, Smooth World 30)"),
        ("num_envs", int, "parallel envs (bandit 1024, Smooth World 128)"),
        ("num_steps", int, "steps per env per rollout (bandit 1, Smooth World 16)"),
        ("lr", float, "Adam learning rate (bandit 1e-4, Smooth World 3e-4)"),
        ("gamma", float, "discount (bandit 1, Smooth World 0.99)"),
        ("gae_lambda", float, "GAE lambda (Smooth World 0.98)"),
        ("update_epochs", int, "passes over each batch (bandit 10, Smooth World 4)"),
        ("num_minibatches", int, "minibatches per epoch (4); must divide num_envs * num_steps"),
        ("ent_coef", float, "entropy bonus (bandit 0.2; Smooth World 0.1 or 0.05; FPO always 0)"),
        ("target_kl", float, "stop an update after an epoch whose mean approx KL exceeds this (0.02)"),
    ):
        g.add_argument(f"--{name.replace('_', '-')}", dest=name, type=typ, default=None, help=hlp)
    h = p.add_argument_group("heads")
    h.add_argument("--order", type=int, default=None, help="MePoly total degree K (bandit 14, Smooth World 5)")
    h.add_argument("--basis", default="legendre", choices=("legendre", "monomial"), help="MePoly basis")
    h.add_argument(
        "--lambda-clip",
        type=float,
        default=None,
        help="MePoly soft clip of natural params (Smooth World default 5; <= 0 disables)",
    )
    h.add_argument("--quadrature", default="auto", choices=("auto", "gauss", "trapezoid"), help="MePoly log Z rule")
    h.add_argument("--nodes", type=int, default=None, help="MePoly quadrature nodes per dim (default: family's)")
    h.add_argument("--components", type=int, default=4, help="GMM components")
    h.add_argument("--fpo-pairs", type=int, default=32, help="FPO (eps, t) pairs per action (authors 50 / 2000)")
    h.add_argument("--flow-steps", type=int, default=10, help="FPO Euler steps")
    e = p.add_argument_group("env / evaluation")
    e.add_argument("--sigma", type=float, default=0.1, help="bandit reward width (code 0.1, paper text 0.05)")
    e.add_argument("--eval-samples", type=int, default=None, help="bandit evaluation samples (default 4096)")
    e.add_argument("--eval-episodes", type=int, default=None, help="Smooth World eval episodes per start (200)")
    e.add_argument("--max-steps", type=int, default=256, help="Smooth World time limit")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def run_ppo(args: argparse.Namespace) -> dict:
    """Train + evaluate one run; build ``args.out`` atomically. Returns metrics."""
    import numpy as np
    import torch

    from mepoly_il.rl.heads import make_head
    from mepoly_il.rl.ppo import ActorCritic, PPOConfig, config_dict, train_ppo
    from mepoly_il.utils import atomic_path, check_output_path, write_json_atomic

    kind, task = parse_env(args.env)
    d = defaults(kind, task, args.head)
    for k in list(d):
        v = getattr(args, k, None)
        if v is not None:
            d[k] = v
    if d.get("lambda_clip") is not None and d["lambda_clip"] <= 0:
        d["lambda_clip"] = None
    for k in ("iterations", "num_envs", "num_steps", "update_epochs", "num_minibatches"):
        if d[k] < 1:
            raise UserError(f"--{k.replace('_', '-')} {d[k]}: must be >= 1")
    try:
        cfg = PPOConfig(
            **{
                k: d[k]
                for k in (
                    "num_envs",
                    "num_steps",
                    "iterations",
                    "lr",
                    "gamma",
                    "gae_lambda",
                    "update_epochs",
                    "num_minibatches",
                    "ent_coef",
                    "target_kl",
                )
            }
        )
    except ValueError as err:
        raise UserError(f"PPO settings: {err}; change --num-envs/--num-steps/--num-minibatches") from None
    check_output_path(args.out, args.overwrite)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)

    if kind == "bandit":
        from mepoly_il.envs.bandit import BanditTask, VecBandit

        btask = BanditTask(task, sigma=args.sigma, cloud_seed=args.seed)
        envs = VecBandit(btask, cfg.num_envs)
    else:
        from mepoly_il.envs.smoothworld import VecSmoothWorld

        envs = VecSmoothWorld(task, cfg.num_envs, max_steps=args.max_steps, seed=args.seed)
    head_kw: dict = {}
    if args.head == "mepoly":
        fk = {"quadrature": args.quadrature}
        if "sample_nodes" in d:  # a coarser sampler grid: K=5 conditionals are smooth, and sampling is per
            # step
            fk["sample_nodes"] = d["sample_nodes"]
        if args.nodes is not None:
            fk["nodes"] = args.nodes
        head_kw = {
            "order": d["order"],
            "basis": args.basis,
            "lambda_clip": d["lambda_clip"],
            "family_kwargs": fk,
        }
    elif args.head == "gmm":
        head_kw = {"num_components": args.components}
    elif args.head == "fpo":
        head_kw = {"num_pairs": args.fpo_pairs, "flow_steps": args.flow_steps}
    head = make_head(args.head, envs.obs_dim, envs.act_dim, **head_kw)
    agent = ActorCritic(head, envs.obs_dim)
    config = {
        "env": args.env,
        "kind": kind,
        "task": task,
        "head": args.head,
        "seed": args.seed,
        "ppo": config_dict(cfg),
        "head_kwargs": head_kw,
        "head_info": head.describe(),
        "sigma": args.sigma if kind == "bandit" else None,
        "max_steps": args.max_steps if kind == "smoothworld" else None,
        "torch_threads": torch.get_num_threads(),
        "command": "mepoly-il rl ppo " + " ".join(sys.argv[3:]),
    }
    with atomic_path(args.out, overwrite=args.overwrite) as out:
        out.mkdir(parents=True)
        write_json_atomic(out / "config.json", config)
        t0 = time.perf_counter()
        history = train_ppo(
            agent,
            envs,
            cfg,
            seed=args.seed,
            log_dir=out,
            progress_desc=None if args.quiet else f"{args.env} {args.head} s{args.seed}",
        )
        train_s = time.perf_counter() - t0
        (out / "checkpoints").mkdir()
        torch.save(agent.state_dict(), out / "checkpoints" / "final.pt")
        t1 = time.perf_counter()
        if kind == "bandit":
            metrics, arrays = _eval_bandit(
                agent,
                btask,
                envs,
                d["eval_samples"] if args.eval_samples is None else args.eval_samples,
                args.seed,
            )
        else:
            metrics, arrays = _eval_smoothworld(
                agent,
                envs,
                d["eval_episodes"] if args.eval_episodes is None else args.eval_episodes,
                args.seed,
                args.max_steps,
            )
        metrics.update(
            {
                "env": args.env,
                "head": args.head,
                "seed": args.seed,
                "variant": _variant(args, d),
                "env_steps": cfg.batch_size * cfg.iterations,
                "train_seconds": train_s,
                "eval_seconds": time.perf_counter() - t1,
                "iteration_seconds_mean": float(np.mean([r["time_iteration_s"] for r in history])),
                "final_train_return": history[-1]["episode_return"],
            }
        )
        np.savez_compressed(out / "samples.npz", **arrays)
        write_json_atomic(out / "metrics.json", metrics)
    return metrics


def _variant(args, d) -> str:
    if args.head != "mepoly":
        return args.head
    return f"mepoly-K{d['order']}-{args.basis}"


def _eval_bandit(agent, btask, envs, n: int, seed: int):
    import torch

    from mepoly_il.eval.rl_metrics import bandit_metrics

    torch.manual_seed(10_000 + seed)
    head = agent.head
    obs = torch.zeros(1, envs.obs_dim)
    actions = head.sample(obs, n)[:, 0].numpy()
    m = bandit_metrics(actions, btask.target, envs.reward_fn.points, btask.sample_target, btask.sigma, seed=seed)
    if head.exact_entropy:
        with torch.no_grad():
            m["entropy_exact"] = float(head.entropy(obs)[0])
    m["sigma"] = btask.sigma
    return m, {"actions": actions.astype("float32"), "target_points": envs.reward_fn.points.astype("float32")}


def _eval_smoothworld(agent, envs, episodes: int, seed: int, max_steps: int):
    import numpy as np
    import torch

    from mepoly_il.envs.smoothworld import SHORTEST_STEPS, rollout_episodes, sample_starts, to_obs
    from mepoly_il.eval.rl_metrics import mode_stats, smoothworld_metrics

    torch.manual_seed(10_000 + seed)
    layout = envs.layout
    head = agent.head

    def act_fn(o):
        with torch.no_grad():
            return head.act(torch.as_tensor(o))[0].numpy()

    starts = np.repeat(np.asarray(layout.eval_start, dtype=np.float64)[None], episodes, 0)
    fixed = rollout_episodes(layout, act_fn, starts, max_steps)
    rng = np.random.default_rng(20_000 + seed)
    uniform = rollout_episodes(layout, act_fn, sample_starts(layout, episodes, rng), max_steps)
    m = {"eval_start": list(layout.eval_start)}
    m.update(smoothworld_metrics(fixed, layout.classes, SHORTEST_STEPS.get(layout.name)))
    um = smoothworld_metrics(uniform, layout.classes, None)
    m["uniform_start"] = {k: um[k] for k in ("success_rate", "death_rate", "timeout_rate")}
    m["uniform_start"]["return_mean"] = 20.0 * um["success_rate"] - 10.0 * um["death_rate"]
    # within-policy multimodality at the eval start: share of sampled actions per 8 direction sectors
    with torch.no_grad():
        a = head.sample(torch.as_tensor(to_obs(starts[:1])), 4096)[:, 0].numpy()
    ang = np.arctan2(a[:, 1], a[:, 0])
    sector = ((ang + np.pi / 8) // (np.pi / 4)).astype(int) % 8
    ms = mode_stats(sector, 8)
    m["start_action_sectors"] = ms["class_counts"]
    m["start_action_sector_entropy_norm"] = ms["mode_entropy_norm"]
    arrays = {
        "traj": fixed["traj"],
        "outcome": fixed["outcome"],
        "length": fixed["length"],
        "cls": fixed["cls"],
        "uniform_traj": uniform["traj"],
        "uniform_outcome": uniform["outcome"],
        "start_actions": a.astype("float32"),
    }
    return m, arrays


# ------------------------------------------------------------------------------------------------ sweep
def _sweep(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="mepoly-il rl sweep",
        description="heads x seeds x envs; extra args after `--` go to every `rl ppo` run",
    )
    p.add_argument("--envs", nargs="+", required=True)
    p.add_argument("--heads", nargs="+", default=list(HEAD_NAMES), choices=HEAD_NAMES)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--out", required=True, help="root; runs go to ROOT/<env>/<variant>/seed<S>")
    p.add_argument("--variant", default=None, help="directory name instead of the head name (ablations)")
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel (each single-threaded)")
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    else:
        extra = []
    args = p.parse_args(argv)
    for e in args.envs:
        parse_env(e)
    jobs = []
    for env in args.envs:
        for head in args.heads:
            for seed in args.seeds:
                out = Path(args.out) / env / (args.variant or head) / f"seed{seed}"
                if (out / "metrics.json").exists():
                    continue
                jobs.append(
                    [
                        sys.executable,
                        "-m",
                        "mepoly_il",
                        "rl",
                        "ppo",
                        "--env",
                        env,
                        "--head",
                        head,
                        "--seed",
                        str(seed),
                        "--out",
                        str(out),
                        "--quiet",
                        "--overwrite",
                        *extra,
                    ]
                )
    print(f"rl sweep: {len(jobs)} runs to do under {args.out}", flush=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")

    def run(cmd):
        t = time.time()
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        tag = " ".join(cmd[cmd.index("--env") : cmd.index("--out")])
        status = "ok" if r.returncode == 0 else f"FAILED rc={r.returncode}: {r.stderr.strip()[-500:]}"
        print(f"[{time.strftime('%H:%M:%S')}] {tag} {time.time() - t:.0f}s {status}", flush=True)
        return r.returncode

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as ex:
        codes = list(ex.map(run, jobs))
    return 0 if all(c == 0 for c in codes) else 1


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        print("commands: ppo, sweep, report")
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "ppo":
        import torch

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        args = _ppo_parser().parse_args(rest)
        m = run_ppo(args)
        keys = [
            k
            for k in (
                "reward_mean",
                "precision_0.05",
                "coverage_0.05",
                "mode_balance",
                "sliced_w2",
                "success_rate",
                "mode_entropy_norm",
                "num_modes_10pct",
            )
            if k in m
        ]
        print(
            json.dumps({k: (round(m[k], 4) if isinstance(m[k], float) and math.isfinite(m[k]) else m[k]) for k in keys})
        )
        return 0
    if cmd == "sweep":
        return _sweep(rest)
    if cmd == "report":
        from mepoly_il.eval.rl_report import main as report_main

        return report_main(rest)
    raise UserError(f"unknown rl command {cmd!r}; choose one of ppo, sweep, report")
