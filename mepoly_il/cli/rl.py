"""`mepoly-il rl {ppo,sweep,report}`: PPO with Gaussian / mixture / MePoly / flow heads on the bandits and
Smooth World.

    mepoly-il rl ppo --env bandit-lemniscate --head mepoly --seed 0 --out runs/rl/x
    mepoly-il rl sweep --envs bandit-lemniscate bandit-two-moons --heads gaussian gmm mepoly fpo \\
        --seeds 0 1 2 --out runs/rl/main --jobs 2
    mepoly-il rl report runs/rl/main --out eval/rl

ENV is ``bandit-lemniscate``, ``bandit-two-moons`` or ``smoothworld-<layout>`` (layouts: two_walls,
four_walls, tree_in_the_middle, two_slits, cshape, three_goals; hyphens or underscores). Options left unset take
the per-env / per-head preset of :func:`mepoly_il.rl.config.preset` (the budget of the published tables in
eval/rl/), then the dataclass defaults. Option names take hyphens or underscores (``--num-envs`` = ``--num_envs``).
"""

from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, fields
from pathlib import Path

from mepoly_il.errors import UserError

BANDIT_ENVS = {"bandit-lemniscate": "lemniscate", "bandit-two-moons": "two_moons"}


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


def _sections() -> list[type]:
    """The dataclasses behind `rl ppo`'s options, in --help order (their field names are disjoint)."""
    from mepoly_il.eval.rl_eval import RLEvalConfig
    from mepoly_il.rl.config import EnvConfig, HeadConfig
    from mepoly_il.rl.ppo import PPOConfig

    return [PPOConfig, HeadConfig, EnvConfig, RLEvalConfig]


def _underscored(argv: list[str]) -> list[str]:
    """``--num-envs 3`` -> ``--num_envs 3``: the flags keep their hyphenated spelling, jsonargparse uses field names."""
    out = []
    for a in argv:
        if a.startswith("--") and len(a) > 2:
            name, eq, value = a[2:].partition("=")
            a = "--" + name.replace("-", "_") + eq + value
        out.append(a)
    return out


def _parse(parser, argv: list[str]):
    """Parse with ``parser`` (built with exit_on_error=False); a bad command line becomes a one-line UserError."""
    import argparse

    try:
        return parser.parse_args(argv)
    except argparse.ArgumentError as err:
        msg = " ".join(line.strip() for line in str(err).splitlines())
        raise UserError(f"{msg} (see `{parser.prog} --help`)") from None


def _peek(argv: list[str], flag: str) -> str | None:
    """The value of ``--flag V`` / ``--flag=V`` in ``argv`` (last one wins), or None."""
    value = None
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            value = argv[i + 1]
        elif a.startswith(flag + "="):
            value = a[len(flag) + 1 :]
    return value


def _presets_text() -> str:
    from mepoly_il.rl.config import HEAD_PRESETS, LAYOUT_PRESETS, RL_PRESETS

    lines = ["presets (applied under the options you pass; shown defaults include them once --env and --head are set):"]
    for kind, d in RL_PRESETS.items():
        lines.append(f"  {kind}: " + ", ".join(f"{k}={v}" for k, v in d.items()))
    for name, d in {**LAYOUT_PRESETS, **HEAD_PRESETS}.items():
        lines.append(f"  {name}: " + ", ".join(f"{k}={v}" for k, v in d.items()))
    return "\n".join(lines)


def ppo_parser(env: str | None = None, head: str | None = None):
    """The jsonargparse parser of `rl ppo`; with ``env`` and ``head`` its defaults include their preset."""
    import argparse

    from jsonargparse import ArgumentParser, DefaultHelpFormatter, set_parsing_settings

    from mepoly_il.rl.config import PPO_HEADS, preset

    class Formatter(argparse.RawDescriptionHelpFormatter, DefaultHelpFormatter):
        """jsonargparse's help, with the presets epilog kept line by line."""

    p = ArgumentParser(
        prog="mepoly-il rl ppo",
        description="Train one PPO run and evaluate it; the run directory holds config.json, progress.csv, tb/,\n"
        "checkpoints/final.pt, metrics.json and samples.npz. Flags take hyphens or underscores (--num-envs).",
        epilog=_presets_text(),
        formatter_class=Formatter,
        exit_on_error=False,
    )
    p.add_argument("--env", required=True, help="bandit-lemniscate | bandit-two-moons | smoothworld-<layout>")
    p.add_argument("--head", required=True, choices=PPO_HEADS, help="policy head")
    p.add_argument("--seed", type=int, default=0, help="seeds torch, numpy, env starts and the bandit cloud")
    p.add_argument("--out", required=True, help="run directory (built atomically)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    # field docstrings become --help text; the switch is global in jsonargparse, so only for these classes
    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    try:
        for cls in _sections():
            p.add_class_arguments(cls, None, as_group=True)
    finally:
        set_parsing_settings(docstring_parse_attribute_docstrings=False)
    if env is not None and head in PPO_HEADS:
        kind, task = parse_env(env)
        p.set_defaults(preset(kind, task, head))
    return p


def parse_ppo(argv: list[str]):
    """`rl ppo` options -> (namespace with env/head/seed/out/overwrite/quiet, PPOConfig, HeadConfig, EnvConfig,
    RLEvalConfig): preset values under explicit ones, each dataclass validated (UserError on a bad value)."""
    from mepoly_il.eval.rl_eval import RL_EVAL_SEED_OFFSET

    argv = _underscored(argv)
    env_name = _peek(argv, "--env")
    if env_name is not None:
        parse_env(env_name)  # an unknown env is named before anything else
    ns = _parse(ppo_parser(env_name, _peek(argv, "--head")), argv)
    if not 0 <= ns.seed < RL_EVAL_SEED_OFFSET:
        raise UserError(f"--seed {ns.seed}: must lie in [0, {RL_EVAL_SEED_OFFSET}) so evaluation seeds never repeat it")
    return (ns, *(cls(**{f.name: ns[f.name] for f in fields(cls)}) for cls in _sections()))


def run_ppo(argv: list[str]) -> dict:
    """Parse `rl ppo` options, train + evaluate one run and build ``--out`` atomically. Returns the metrics."""
    import numpy as np
    import torch

    from mepoly_il.eval.rl_eval import eval_bandit, eval_smoothworld, variant_name
    from mepoly_il.rl.heads import make_head
    from mepoly_il.rl.ppo import ActorCritic, train_ppo
    from mepoly_il.utils import atomic_path, check_output_path, write_json_atomic

    ns, ppo_cfg, head_cfg, env_cfg, eval_cfg = parse_ppo(argv)
    kind, task = parse_env(ns.env)
    check_output_path(ns.out, ns.overwrite)
    torch.manual_seed(ns.seed)
    np.random.seed(ns.seed)

    if kind == "bandit":
        from mepoly_il.envs.bandit import BanditTask, VecBandit

        btask = BanditTask(task, sigma=env_cfg.sigma, cloud_seed=ns.seed)
        envs = VecBandit(btask, ppo_cfg.num_envs)
    else:
        from mepoly_il.envs.smoothworld import VecSmoothWorld

        envs = VecSmoothWorld(task, ppo_cfg.num_envs, max_steps=env_cfg.max_steps, seed=ns.seed)
    head_kw = head_cfg.head_kwargs(ns.head)
    head = make_head(ns.head, envs.obs_dim, envs.act_dim, **head_kw)
    agent = ActorCritic(head, envs.obs_dim)
    config = {
        "env": ns.env,
        "kind": kind,
        "task": task,
        "head": ns.head,
        "seed": ns.seed,
        "ppo": asdict(ppo_cfg),
        "head_kwargs": head_kw,
        "head_info": head.describe(),
        "sigma": env_cfg.sigma if kind == "bandit" else None,
        "max_steps": env_cfg.max_steps if kind == "smoothworld" else None,
        "head_config": asdict(head_cfg),
        "eval": asdict(eval_cfg),
        "torch_threads": torch.get_num_threads(),
        "command": "mepoly-il rl ppo " + " ".join(sys.argv[3:]),
    }
    with atomic_path(ns.out, overwrite=ns.overwrite) as out:
        out.mkdir(parents=True)
        write_json_atomic(out / "config.json", config)
        t0 = time.perf_counter()
        history = train_ppo(
            agent,
            envs,
            ppo_cfg,
            seed=ns.seed,
            log_dir=out,
            progress_desc=None if ns.quiet else f"{ns.env} {ns.head} s{ns.seed}",
        )
        train_s = time.perf_counter() - t0
        (out / "checkpoints").mkdir()
        torch.save(agent.state_dict(), out / "checkpoints" / "final.pt")
        t1 = time.perf_counter()
        if kind == "bandit":
            metrics, arrays = eval_bandit(agent, btask, envs, eval_cfg.eval_samples, ns.seed)
        else:
            metrics, arrays = eval_smoothworld(agent, envs, eval_cfg.eval_episodes, ns.seed, env_cfg.max_steps)
        metrics.update(
            {
                "env": ns.env,
                "head": ns.head,
                "seed": ns.seed,
                "variant": variant_name(ns.head, head_cfg),
                "env_steps": ppo_cfg.batch_size * ppo_cfg.iterations,
                "train_seconds": train_s,
                "eval_seconds": time.perf_counter() - t1,
                "iteration_seconds_mean": float(np.mean([r["time_iteration_s"] for r in history])),
                "final_train_return": history[-1]["episode_return"],
            }
        )
        np.savez_compressed(out / "samples.npz", **arrays)
        write_json_atomic(out / "metrics.json", metrics)
    return metrics


# ------------------------------------------------------------------------------------------------ sweep
def sweep_parser():
    """The parser of `rl sweep` (arguments after ``--`` are not its own: they go to every `rl ppo` run)."""
    from jsonargparse import ArgumentParser

    from mepoly_il.rl.config import PPO_HEADS

    p = ArgumentParser(
        prog="mepoly-il rl sweep",
        description="heads x seeds x envs; extra args after `--` go to every `rl ppo` run",
        exit_on_error=False,
    )
    p.add_argument("--envs", nargs="+", required=True, help="env names as in `rl ppo --env`")
    p.add_argument("--heads", nargs="+", default=list(PPO_HEADS), choices=PPO_HEADS, help="policy heads")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4], help="training seeds")
    p.add_argument("--out", required=True, help="root; runs go to ROOT/<env>/<variant>/seed<S>")
    p.add_argument("--variant", default=None, help="directory name instead of the head name (ablations)")
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel (each single-threaded)")
    return p


def _sweep(argv: list[str]) -> int:
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    else:
        extra = []
    args = _parse(sweep_parser(), argv)
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
        # The child's output goes to a log beside its run folder; a failure is one line naming the command and the
        # log (and the child's own one-line error, if it printed one), never the child's traceback.
        t = time.time()
        out = Path(cmd[cmd.index("--out") + 1])
        log = out.parent / f"{out.name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as f:
            code = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, text=True).returncode
        tag = " ".join(cmd[cmd.index("--env") : cmd.index("--out")])
        if code == 0:
            status = "ok"
        else:
            said = [line for line in log.read_text(errors="replace").splitlines() if "error:" in line]
            why = f" ({said[-1].strip()})" if said else ""
            status = f"FAILED rc={code}{why}: `{shlex.join(cmd)}`, log {log}"
        print(f"[{time.strftime('%H:%M:%S')}] {tag} {time.time() - t:.0f}s {status}", flush=True)
        return code

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as ex:
        codes = list(ex.map(run, jobs))
    return 0 if all(c == 0 for c in codes) else 1


def report_parser():
    """The parser of `rl report`."""
    from jsonargparse import ArgumentParser

    from mepoly_il.eval import rl_report

    p = ArgumentParser(prog="mepoly-il rl report", description=rl_report.__doc__.splitlines()[0], exit_on_error=False)
    p.add_argument("roots", nargs="+", help="run roots (directories searched for metrics.json)")
    p.add_argument("--out", required=True, help="output directory for tables and plots")
    p.add_argument("--overwrite", action="store_true", help="replace files in --out")
    return p


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        print("commands: ppo, sweep, report   (mepoly-il rl COMMAND --help for its options)")
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "ppo":
        import torch

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        m = run_ppo(rest)
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
        from mepoly_il.eval.rl_report import write_report

        args = _parse(report_parser(), rest)
        n = write_report(args.roots, args.out, overwrite=args.overwrite)
        print(f"rl report: {n} runs -> {args.out}")
        return 0
    raise UserError(f"unknown rl command {cmd!r}; choose one of ppo, sweep, report")
