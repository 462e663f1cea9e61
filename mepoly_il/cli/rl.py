"""`mepoly-il rl {ppo,sac,s2ac,rpg,sweep,report}`: PPO with Gaussian / mixture / MePoly / flow heads, SAC with
Gaussian / mixture / MePoly heads, S2AC and RPG on the bandits, Smooth World and the multi-goal point mass.

    mepoly-il rl ppo --env bandit-lemniscate --head mepoly --seed 0 --out runs/rl/x
    mepoly-il rl sac --env multigoal --head mepoly --estimator quadrature --seed 0 --out runs/rl/y
    mepoly-il rl s2ac --env multigoal --alpha 1.0 --seed 0 --out runs/rl/z
    mepoly-il rl rpg --env toy1d --seed 0 --out runs/rl/t
    mepoly-il rl sweep --envs bandit-lemniscate bandit-two-moons --heads gaussian gmm mepoly fpo \\
        --seeds 0 1 2 --out runs/rl/main --jobs 2
    mepoly-il rl report runs/rl/main --out eval/rl

ENV is ``bandit-lemniscate``, ``bandit-two-moons`` or ``smoothworld-<layout>`` (layouts: two_walls,
four_walls, tree_in_the_middle, two_slits, cshape, three_goals; hyphens or underscores); sac and s2ac also take
``multigoal``, ``mountaincar-minus1`` (MountainCar paying -1 per step) and ``mountaincar-sparse`` (paying 1 at the
goal only), rpg ``toy1d``. Options left
unset take the per-env / per-head preset of
:func:`mepoly_il.rl.config.preset` (PPO: the budget of the published tables in eval/rl/) or
:func:`mepoly_il.rl.config.sac_preset`, then the dataclass defaults. Option names take hyphens or underscores
(``--num-envs`` = ``--num_envs``).
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
#: MountainCar env names -> the reward of :class:`mepoly_il.envs.mountaincar.VecMountainCar`
MOUNTAINCAR_ENVS = {"mountaincar-minus1": "minus1", "mountaincar-sparse": "goal"}


def parse_env(env: str, extra: tuple[str, ...] = ()) -> tuple[str, str]:
    """Split an env name: 'smoothworld-two-walls' -> ('smoothworld', 'two_walls'), 'bandit-lemniscate' ->
    ('bandit', 'lemniscate'); ``extra`` admits single-name envs of other commands ('multigoal', 'toy1d') as
    (name, name)."""
    from mepoly_il.envs.smoothworld import LAYOUTS

    if env in BANDIT_ENVS:
        return "bandit", BANDIT_ENVS[env]
    if env in extra:
        return env, env
    if env.startswith("smoothworld-"):
        layout = env[len("smoothworld-") :].replace("-", "_")
        if layout in LAYOUTS:
            return "smoothworld", layout
    choices = list(BANDIT_ENVS) + [f"smoothworld-{lay}" for lay in LAYOUTS] + list(extra)
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
    from mepoly_il.eval.rl_eval import variant_name

    ns, ppo_cfg, head_cfg, env_cfg, eval_cfg = parse_ppo(argv)
    return _ppo_run(ns, ns.head, ppo_cfg, head_cfg, env_cfg, eval_cfg, "ppo", variant_name(ns.head, head_cfg))


def _make_envs(kind: str, task: str, num_envs: int, env_cfg, seed: int):
    """-> (vectorised envs, the bandit task or None)."""
    if kind == "bandit":
        from mepoly_il.envs.bandit import BanditTask, VecBandit

        btask = BanditTask(task, sigma=env_cfg.sigma, cloud_seed=seed)
        return VecBandit(btask, num_envs), btask
    if kind == "multigoal":
        from mepoly_il.envs.multigoal import VecMultiGoal

        return VecMultiGoal(num_envs, max_steps=env_cfg.max_steps), None
    if kind in MOUNTAINCAR_ENVS:
        from mepoly_il.envs.mountaincar import VecMountainCar

        return VecMountainCar(num_envs, env_cfg.max_steps, seed, reward=MOUNTAINCAR_ENVS[kind]), None
    from mepoly_il.envs.smoothworld import VecSmoothWorld

    return VecSmoothWorld(task, num_envs, max_steps=env_cfg.max_steps, seed=seed), None


def check_run_out(out: str, overwrite: bool) -> None:
    """Before any work: ``--out`` must be a new folder in a writable place, or (with --overwrite) an earlier run
    folder of these commands (it has a config.json); any other file or folder is never replaced."""
    from mepoly_il.utils import check_output

    is_run = (lambda p: (p / "config.json").is_file(), "an `rl` run folder (no config.json)")
    check_output(out, [], overwrite=overwrite, kind="dir", replaceable=is_run)


def check_head_size(head_kw: dict, act_dim: int) -> None:
    """UserError if a polynomial head's ``--order`` over ``act_dim`` action dimensions cannot be trained (its
    quadrature would not fit the polynomial family's memory budget), before anything is allocated."""
    from mepoly_il.policies import poly_size_problem

    order = head_kw.get("order")
    problem = None if order is None else poly_size_problem(act_dim, int(order))
    if problem is not None:
        _, rest = problem.split(" has ", 1)
        rest = rest.replace("use poly_order <=", "use --order <=")
        raise UserError(f"--order {order} over {act_dim} action dimensions has {rest}")


def _make_head(name: str, obs_dim: int, act_dim: int, head_kw: dict):
    from mepoly_il.rl.heads import make_head

    check_head_size(head_kw, act_dim)

    if name == "rpg":  # lives beside its own trainer (rl/rpg.py imports heads, so heads cannot list it)
        from mepoly_il.rl.rpg import LatentPolicy

        return LatentPolicy(obs_dim, act_dim, **head_kw)
    return make_head(name, obs_dim, act_dim, **head_kw)


def _evaluate(agent, kind: str, btask, envs, env_cfg, eval_cfg, seed: int) -> tuple[dict, dict]:
    from mepoly_il.eval.rl_eval import eval_bandit, eval_mountaincar, eval_multigoal, eval_smoothworld

    if kind == "bandit":
        return eval_bandit(agent, btask, envs, eval_cfg.eval_samples, seed)
    if kind == "multigoal":
        return eval_multigoal(agent, eval_cfg.eval_episodes, seed, env_cfg.max_steps)
    if kind in MOUNTAINCAR_ENVS:
        return eval_mountaincar(agent, eval_cfg.eval_episodes, seed, env_cfg.max_steps)
    return eval_smoothworld(agent, envs, eval_cfg.eval_episodes, seed, env_cfg.max_steps)


def _record_run(ns, config: dict, variant: str, train, weights, policy, evaluation: tuple, summarize) -> dict:
    """One run folder, the same for every trainer: config.json (``config`` plus threads and command), training
    (``train(out) -> history``), the final weights (``weights()``), evaluation of ``policy``, samples.npz and
    metrics.json (the run's labels, timings and ``summarize(history)``). ``evaluation`` is
    ``(kind, btask, envs, env_cfg, eval_cfg)``."""
    import numpy as np
    import torch

    from mepoly_il.utils import atomic_path, write_json_atomic

    config = {
        **config,
        "torch_threads": torch.get_num_threads(),
        "command": f"mepoly-il rl {config['method']} " + " ".join(sys.argv[3:]),
    }
    labels = {**{k: config[k] for k in ("env", "head", "seed", "method")}, "variant": variant}
    with atomic_path(ns.out, overwrite=ns.overwrite) as out:
        out.mkdir(parents=True)
        write_json_atomic(out / "config.json", config)
        t0 = time.perf_counter()
        history = train(out)
        train_s = time.perf_counter() - t0
        (out / "checkpoints").mkdir()
        torch.save(weights(), out / "checkpoints" / "final.pt")
        t1 = time.perf_counter()
        metrics, arrays = _evaluate(policy, *evaluation, ns.seed)
        metrics.update(
            {**labels, "train_seconds": train_s, "eval_seconds": time.perf_counter() - t1, **summarize(history)}
        )
        np.savez_compressed(out / "samples.npz", **arrays)
        write_json_atomic(out / "metrics.json", metrics)
    return metrics


def _ppo_run(ns, head_name, ppo_cfg, head_cfg, env_cfg, eval_cfg, method: str, variant: str) -> dict:
    """Train + evaluate one PPO run of ``head_name``; ``method`` and ``variant`` label it in metrics.json."""
    import numpy as np
    import torch

    from mepoly_il.rl.ppo import ActorCritic, train_ppo

    kind, task = parse_env(ns.env)
    check_run_out(ns.out, ns.overwrite)
    torch.manual_seed(ns.seed)
    np.random.seed(ns.seed)
    envs, btask = _make_envs(kind, task, ppo_cfg.num_envs, env_cfg, ns.seed)
    head_kw = head_cfg.head_kwargs(head_name)
    head = _make_head(head_name, envs.obs_dim, envs.act_dim, head_kw)
    agent = ActorCritic(head, envs.obs_dim)
    config = {
        "env": ns.env,
        "kind": kind,
        "task": task,
        "head": head_name,
        "seed": ns.seed,
        "method": method,
        "ppo": asdict(ppo_cfg),
        "head_kwargs": head_kw,
        "head_info": head.describe(),
        "sigma": env_cfg.sigma if kind == "bandit" else None,
        "max_steps": env_cfg.max_steps if kind == "smoothworld" else None,
        "head_config": asdict(head_cfg),
        "eval": asdict(eval_cfg),
    }
    return _record_run(
        ns,
        config,
        variant,
        lambda out: train_ppo(
            agent,
            envs,
            ppo_cfg,
            seed=ns.seed,
            log_dir=out,
            progress_desc=None if ns.quiet else f"{ns.env} {head_name} s{ns.seed}",
        ),
        agent.state_dict,
        agent,
        (kind, btask, envs, env_cfg, eval_cfg),
        lambda history: {
            "env_steps": ppo_cfg.batch_size * ppo_cfg.iterations,
            "iteration_seconds_mean": float(np.mean([r["time_iteration_s"] for r in history])),
            "final_train_return": history[-1]["episode_return"],
        },
    )


# ------------------------------------------------------------------------------------------------ sac, s2ac, rpg
#: env kinds each off-policy / RPG command accepts besides the bandits and Smooth World
EXTRA_ENVS = {
    "sac": ("multigoal", "mountaincar-minus1", "mountaincar-sparse"),
    "s2ac": ("multigoal", "mountaincar-minus1", "mountaincar-sparse"),
    "rpg": ("toy1d",),
}
ENV_HELP = "bandit-lemniscate | bandit-two-moons | smoothworld-<layout>"


def method_sections(method: str, env: str | None = None) -> list[type]:
    """The dataclasses behind `rl sac|s2ac|rpg`'s options (field names disjoint within each list)."""
    from mepoly_il.eval.rl_eval import RLEvalConfig
    from mepoly_il.rl.config import EnvConfig, HeadConfig, S2ACConfig
    from mepoly_il.rl.ppo import PPOConfig
    from mepoly_il.rl.rpg import RPGBanditConfig
    from mepoly_il.rl.sac import SACConfig

    if method == "sac":
        return [SACConfig, HeadConfig, EnvConfig, RLEvalConfig]
    if method == "s2ac":
        return [SACConfig, S2ACConfig, EnvConfig, RLEvalConfig]
    if env == "toy1d":
        return [RPGBanditConfig, RLEvalConfig]
    return [PPOConfig, HeadConfig, EnvConfig, RLEvalConfig]


_DESCRIPTIONS = {
    "sac": "Train one soft actor-critic run (twin Q, target critics, fixed or tuned temperature) with a Gaussian\n"
    "(--estimator rp), mixture (mrp, lr) or MePoly (quadrature, lr) head and evaluate it.",
    "s2ac": "Train one S2AC run: SAC whose actor is an SVGD sampler of exp(Q / alpha) with a closed-form entropy\n"
    "(particle version; --amortised true learns the initial distribution), at a fixed temperature --alpha.\n"
    "--svgd-drive grad_q moves the particles along grad Q instead of grad Q / alpha, as the authors' code does.",
    "rpg": "--env toy1d: RPG's published 1-D toy bandit (latent-conditioned policy, reparameterised reward term,\n"
    "ELBO bonus). Other envs (our variant, not the paper's method): the same latent-conditioned policy as a PPO\n"
    "head (exact marginal log-prob over the latents; no entropy, no ELBO bonus). `--env toy1d --help` lists the\n"
    "toy's options.",
}
_FILES = (
    "The run directory holds config.json, progress.csv, checkpoints/final.pt, metrics.json and samples.npz, as `rl\n"
    "ppo` writes them, so `rl report` tables them beside PPO runs. Flags take hyphens or underscores."
)


def method_parser(method: str, env: str | None = None, head: str | None = None):
    """The jsonargparse parser of `rl sac|s2ac|rpg`; with ``env`` (and for sac ``head``) its defaults include
    their preset."""
    import argparse

    from jsonargparse import ArgumentParser, DefaultHelpFormatter, set_parsing_settings

    from mepoly_il.rl.config import RPG_PPO_PRESET, S2AC_UNUSED, SAC_HEADS, SAC_PRESETS, preset, sac_preset

    class Formatter(argparse.RawDescriptionHelpFormatter, DefaultHelpFormatter):
        """jsonargparse's help, with the presets epilog kept line by line."""

    extra = EXTRA_ENVS[method]
    if method == "rpg":
        epilog = "presets: PPO's per-env presets (see `rl ppo --help`), then " + ", ".join(
            f"{k}={v}" for k, v in RPG_PPO_PRESET.items()
        )
    else:
        epilog = "presets (untuned CPU budgets; applied under the options you pass):\n" + "\n".join(
            f"  {k}: " + ", ".join(f"{f}={v}" for f, v in d.items()) for k, d in SAC_PRESETS.items()
        )
        epilog += "\n  default estimator per head: " + ", ".join(f"{h}={e}" for h, e in SAC_HEADS.items())
    p = ArgumentParser(
        prog=f"mepoly-il rl {method}",
        description=_DESCRIPTIONS[method] + "\n" + _FILES,
        epilog=epilog,
        formatter_class=Formatter,
        exit_on_error=False,
    )
    p.add_argument("--env", required=True, help=ENV_HELP + " | " + " | ".join(extra))
    if method == "sac":
        p.add_argument("--head", required=True, choices=tuple(SAC_HEADS), help="policy head")
    p.add_argument("--seed", type=int, default=0, help="seeds torch, numpy, env starts and the bandit cloud")
    p.add_argument("--out", required=True, help="run directory (built atomically)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    try:
        for cls in method_sections(method, env):
            skip = S2AC_UNUSED if method == "s2ac" and cls.__name__ == "SACConfig" else None
            p.add_class_arguments(cls, None, as_group=True, skip=skip)
    finally:
        set_parsing_settings(docstring_parse_attribute_docstrings=False)
    if env is not None:
        kind, task = parse_env(env, extra)
        if method == "sac" and head in SAC_HEADS:
            p.set_defaults(sac_preset(kind, head))
        elif method == "s2ac":
            p.set_defaults(sac_preset(kind, None))
        elif method == "rpg" and kind != "toy1d":
            p.set_defaults({**preset(kind, task, "rpg"), **RPG_PPO_PRESET})
    return p


def parse_method(method: str, argv: list[str]):
    """`rl sac|s2ac|rpg` options -> (namespace, kind, task, one validated config per section of
    :func:`method_sections`)."""
    from mepoly_il.eval.rl_eval import RL_EVAL_SEED_OFFSET

    argv = _underscored(argv)
    env_name = _peek(argv, "--env")
    if env_name is not None:
        parse_env(env_name, EXTRA_ENVS[method])  # an unknown env is named before anything else
    ns = _parse(method_parser(method, env_name, _peek(argv, "--head")), argv)
    kind, task = parse_env(ns.env, EXTRA_ENVS[method])
    if not 0 <= ns.seed < RL_EVAL_SEED_OFFSET:
        raise UserError(f"--seed {ns.seed}: must lie in [0, {RL_EVAL_SEED_OFFSET}) so evaluation seeds never repeat it")
    cfgs = [cls(**{f.name: ns[f.name] for f in fields(cls) if f.name in ns}) for cls in method_sections(method, ns.env)]
    return ns, kind, task, cfgs


def run_sac(method: str, argv: list[str]) -> dict:
    """Parse `rl sac|s2ac` options, train + evaluate one run and build ``--out`` atomically. Returns the metrics."""
    import numpy as np
    import torch

    from mepoly_il.eval.rl_eval import EvalView, variant_name
    from mepoly_il.rl.sac import TwinQ, make_actor, train_sac

    ns, kind, task, (sac_cfg, actor_cfg, env_cfg, eval_cfg) = parse_method(method, argv)
    if method == "s2ac" and sac_cfg.autotune:
        raise UserError("--autotune true: S2AC runs at a fixed temperature (paper and authors' code); set --alpha")
    check_run_out(ns.out, ns.overwrite)
    torch.manual_seed(ns.seed)
    np.random.seed(ns.seed)
    envs, btask = _make_envs(kind, task, sac_cfg.num_envs, env_cfg, ns.seed)
    critic = TwinQ(envs.obs_dim, envs.act_dim, sac_cfg.hidden)
    if method == "sac":
        head_name, head_kw = ns.head, actor_cfg.head_kwargs(ns.head)
        head = _make_head(head_name, envs.obs_dim, envs.act_dim, head_kw)
        actor = make_actor(head, sac_cfg)
        variant = f"sac-{variant_name(head_name, actor_cfg)}-{sac_cfg.estimator}"
        head_info = head.describe()
    else:
        from mepoly_il.rl.s2ac import SVGDActor

        c = actor_cfg
        head_name, head_kw = "svgd", {}
        actor = SVGDActor(
            envs.obs_dim,
            envs.act_dim,
            critic,
            alpha=sac_cfg.alpha,
            particles=c.particles,
            steps=c.svgd_steps,
            step_size=c.svgd_step_size,
            init_std=c.init_std,
            amortised=c.amortised,
            hidden=c.actor_hidden,
            train_selection=c.train_selection,
            eval_selection=c.eval_selection,
            drive=c.svgd_drive,
        )
        variant = ("s2ac-amortised" if c.amortised else "s2ac") + ("-gradq" if c.svgd_drive == "grad_q" else "")
        head_info = {"name": variant, "particles": c.particles, "svgd_steps": c.svgd_steps}
    if not sac_cfg.autotune:  # runs at different fixed temperatures are different variants in the reports
        variant += f"-a{sac_cfg.alpha:g}"
    config = {
        "env": ns.env,
        "kind": kind,
        "task": task,
        "head": head_name,
        "seed": ns.seed,
        "method": method,
        "sac": asdict(sac_cfg),
        "head_kwargs": head_kw,
        "head_info": head_info,
        "sigma": env_cfg.sigma if kind == "bandit" else None,
        "max_steps": env_cfg.max_steps if kind != "bandit" else None,
        ("head_config" if method == "sac" else "s2ac"): asdict(actor_cfg),
        "eval": asdict(eval_cfg),
    }
    return _record_run(
        ns,
        config,
        variant,
        lambda out: train_sac(actor, critic, envs, sac_cfg, ns.seed, log_dir=out, on_log=_progress_printer(ns)),
        lambda: {"actor": actor.state_dict(), "critic": critic.state_dict()},
        EvalView(actor),
        (kind, btask, envs, env_cfg, eval_cfg),
        lambda history: {
            "env_steps": history[-1]["env_steps"],
            "final_train_return": history[-1]["episode_return"],
            "final_alpha": history[-1]["alpha"],
        },
    )


def _progress_printer(ns):
    """One line per SAC history row unless --quiet."""
    if ns.quiet:
        return None

    def show(row: dict) -> None:
        keys = ("env_steps", "episode_return", "critic_loss", "entropy", "alpha", "time_s")
        print(" ".join(f"{k}={row[k]:.4g}" for k in keys), flush=True)

    return show


def run_rpg(argv: list[str]) -> dict:
    """Parse `rl rpg` options; the toy bandit runs RPG's own trainer, other envs PPO with the latent head."""
    import csv

    import numpy as np
    import torch

    from mepoly_il.eval.rl_eval import eval_toy1d
    from mepoly_il.rl.rpg import train_rpg_bandit
    from mepoly_il.utils import atomic_path, write_json_atomic

    ns, kind, task, cfgs = parse_method("rpg", argv)
    if kind != "toy1d":
        ppo_cfg, head_cfg, env_cfg, eval_cfg = cfgs
        return _ppo_run(ns, "rpg", ppo_cfg, head_cfg, env_cfg, eval_cfg, "rpg", "rpg-latent-ppo")
    rpg_cfg, eval_cfg = cfgs
    check_run_out(ns.out, ns.overwrite)
    config = {
        "env": ns.env,
        "kind": kind,
        "task": task,
        "head": "rpg",
        "seed": ns.seed,
        "method": "rpg",
        "rpg": asdict(rpg_cfg),
        "eval": asdict(eval_cfg),
        "torch_threads": torch.get_num_threads(),
        "command": "mepoly-il rl rpg " + " ".join(sys.argv[3:]),
    }
    with atomic_path(ns.out, overwrite=ns.overwrite) as out:
        out.mkdir(parents=True)
        write_json_atomic(out / "config.json", config)
        t0 = time.perf_counter()
        policy, history = train_rpg_bandit(rpg_cfg, ns.seed)
        train_s = time.perf_counter() - t0
        with open(out / "progress.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["env_steps", "step", "episode_return", "time_s"])
            w.writeheader()
            for row in history:
                w.writerow(
                    {
                        "env_steps": row["step"] * rpg_cfg.batch_size,
                        "step": row["step"],
                        "episode_return": row["reward"],
                        "time_s": row["time_s"],
                    }
                )
        (out / "checkpoints").mkdir()
        torch.save(policy.state_dict(), out / "checkpoints" / "final.pt")
        t1 = time.perf_counter()
        metrics, arrays = eval_toy1d(policy, eval_cfg.eval_samples, ns.seed)
        metrics.update(
            {
                "env": ns.env,
                "head": "rpg",
                "seed": ns.seed,
                "method": "rpg",
                "variant": "rpg",
                "env_steps": rpg_cfg.steps * rpg_cfg.batch_size,
                "train_seconds": train_s,
                "eval_seconds": time.perf_counter() - t1,
                "final_train_return": history[-1]["reward"],
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
    if args.jobs < 1:
        raise UserError(f"--jobs {args.jobs}: must be >= 1 (runs in parallel)")
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
        print("commands: ppo, sac, s2ac, rpg, sweep, report   (mepoly-il rl COMMAND --help for its options)")
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd in ("ppo", "sac", "s2ac", "rpg"):
        import torch

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        m = run_ppo(rest) if cmd == "ppo" else run_rpg(rest) if cmd == "rpg" else run_sac(cmd, rest)
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
                "goal_shares",
                "left_goals_share",
                "global_peak_share",
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
    raise UserError(f"unknown rl command {cmd!r}; choose one of ppo, sac, s2ac, rpg, sweep, report")
