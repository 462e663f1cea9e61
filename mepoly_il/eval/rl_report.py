"""`mepoly-il rl report RUN_ROOTS... --out DIR`: tables (mean +- std across seeds, per-seed CSV) and plots.

Reads every run directory (one with ``metrics.json`` + ``config.json``) under the given roots and writes:

- ``runs.csv``: one row per run (per seed), every scalar metric;
- ``bandit.md``, ``ablation.md``, ``smoothworld.md``, ``multigoal.md``,
  ``mountaincar.md``, ``toy1d.md``: mean +- std across seeds per
  (env, variant), n = #seeds; PPO heads first, then every other variant found (SAC, S2AC, RPG runs);
- ``bandit_scatter.png`` (Figs 3-4 style), ``ablation_scatter.png``, ``smoothworld_trajectories.png`` (Fig. 2
  style), ``learning_curves_bandit.png``, ``learning_curves_smoothworld.png``.
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from mepoly_il.errors import UserError

MAIN_VARIANTS = ("gaussian", "gmm", "mepoly-K14-legendre", "fpo")
SW_HEADS = ("gaussian", "gmm", "mepoly-K5-legendre", "fpo")
BANDIT_COLS = [
    ("reward_mean", "E[r]"),
    ("precision_0.05", "prec@.05"),
    ("coverage_0.05", "cov@.05"),
    ("coverage_0.1", "cov@.1"),
    ("mode_balance", "mode bal."),
    ("sliced_w2", "SW2"),
    ("mmd2_h0.1", "MMD²(.1)"),
    ("chamfer", "Chamfer"),
    ("entropy_knn", "H kNN"),
    ("entropy_exact", "H exact"),
]
SW_COLS = [
    ("success_rate", "success"),
    ("death_rate", "death"),
    ("timeout_rate", "timeout"),
    ("mode_entropy_norm", "mode H/logC"),
    ("num_modes_10pct", "#modes≥10%"),
    ("steps_over_shortest", "steps/BFS"),
    ("uniform_return", "return (unif. starts)"),
    ("start_action_sector_entropy_norm", "start-action dir. H"),
]
MG_COLS = [
    ("success_rate", "success"),
    ("left_goals_share", "left goals (G2+G3)"),
    ("share_G1", "G1"),
    ("share_G2", "G2"),
    ("share_G3", "G3"),
    ("share_timeout", "timeout"),
    ("mode_entropy_norm", "goal H/logC"),
    ("return_mean", "return"),
]
MC_COLS = [
    ("success_rate", "success"),
    ("steps_to_goal_mean", "steps to goal"),
    ("first_push_left_share", "first push left"),
    ("env_steps", "env steps"),
]
TOY_COLS = [("reward_mean", "E[r]"), ("global_peak_share", "share on global peak")]


def load_runs(roots: list[str]) -> list[dict]:
    """Every run under ``roots`` -> list of {dir, config, metrics}."""
    runs = []
    for root in roots:
        r = Path(root)
        if not r.exists():
            raise UserError(f"{root}: no such directory; pass run roots written by `mepoly-il rl sweep/ppo`")
        for mf in sorted(r.rglob("metrics.json")):
            if any(p.startswith(".tmp-") for p in mf.parts):
                continue
            cfg_path = mf.parent / "config.json"
            if not cfg_path.exists():
                continue
            m = json.loads(mf.read_text())
            if "uniform_start" in m:
                m["uniform_return"] = m["uniform_start"]["return_mean"]
            if "goal_shares" in m:
                m.update({f"share_{n}": v for n, v in zip(m["goal_names"], m["goal_shares"])})
            runs.append({"dir": mf.parent, "config": json.loads(cfg_path.read_text()), "metrics": m})
    return runs


def _fmt(vals: list[float]) -> str:
    vals = [v for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return "–"
    mu = float(np.mean(vals))
    sd = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
    prec = 3 if abs(mu) < 100 else 1
    return f"{mu:.{prec}f} ± {sd:.{prec}f}"


def _group(runs: list[dict]) -> dict[tuple[str, str], list[dict]]:
    g: dict[tuple[str, str], list[dict]] = defaultdict(list)
    seen = set()
    for r in runs:
        m = r["metrics"]
        key = (m["env"], m["variant"], m["seed"])
        if key in seen:  # the same config twice (e.g. main run and ablation): keep the first
            continue
        seen.add(key)
        g[(m["env"], m["variant"])].append(m)
    return g


def bandit_table(groups, envs, variants, title: str) -> str:
    lines = [f"## {title}", ""]
    for env in envs:
        rows = [(v, groups.get((env, v), [])) for v in variants]
        rows = [(v, ms) for v, ms in rows if ms]
        if not rows:
            continue
        lines += [
            f"### {env}",
            "",
            "| head | n | " + " | ".join(c for _, c in BANDIT_COLS) + " |",
            "|---|---|" + "---|" * len(BANDIT_COLS),
        ]
        for v, ms in rows:
            lines.append(
                f"| {v} | {len(ms)} | " + " | ".join(_fmt([m.get(k) for m in ms]) for k, _ in BANDIT_COLS) + " |"
            )
        allm = [m for _, ms in rows for m in ms]
        floor = {
            "reward_mean": None,
            "sliced_w2": "sliced_w2_floor",
            "mmd2_h0.1": "mmd2_h0.1_floor",
            "chamfer": "chamfer_floor",
            "entropy_knn": "entropy_knn_target",
        }
        cells = [(_fmt([m.get(floor[k]) for m in allm]) if floor.get(k) else "") for k, _ in BANDIT_COLS]
        lines.append("| *target vs fresh target (noise floor)* | | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _variants(groups, envs, first, exclude=()) -> list[str]:
    """``first`` (the PPO heads, in table order), then every other variant with runs in ``envs``, sorted."""
    rest = sorted({v for (e, v) in groups if e in envs and v not in first and v not in exclude})
    return [*first, *rest]


def simple_table(groups, envs, cols, title: str) -> str:
    """Mean +- std across seeds per (env, variant) for the envs of the other methods (multi-goal, toy1d)."""
    lines = [f"## {title}", "", "| env | variant | n | " + " | ".join(c for _, c in cols) + " |"]
    lines.append("|---|---|---|" + "---|" * len(cols))
    per_seed = ["", "### Per seed", ""]
    for env in envs:
        for v in _variants(groups, [env], ()):
            ms = sorted(groups.get((env, v), []), key=lambda m: m["seed"])
            lines.append(
                f"| {env} | {v} | {len(ms)} | " + " | ".join(_fmt([m.get(k) for m in ms]) for k, _ in cols) + " |"
            )
            if "goal_hits" in ms[0]:
                names = ms[0]["goal_names"]
                hits = "; ".join(
                    f"s{m['seed']}: " + ", ".join(f"{n}={c}" for n, c in zip(names, m["goal_hits"])) for m in ms
                )
                per_seed.append(f"- {env} / {v} (hits of {ms[0]['eval_episodes']} episodes): {hits}")
            else:  # the first column per seed
                key, name = cols[0]
                vals = "; ".join(f"s{m['seed']}: {m.get(key, float('nan')):.3f}" for m in ms)
                per_seed.append(f"- {env} / {v} ({name}): {vals}")
    return "\n".join(lines + (per_seed if len(per_seed) > 3 else [])) + "\n"


def sw_table(groups, envs) -> str:
    lines = [
        "## Smooth World (episodes from the fixed eval start unless noted)",
        "",
        "| layout | head | n | " + " | ".join(c for _, c in SW_COLS) + " |",
        "|---|---|---|" + "---|" * len(SW_COLS),
    ]
    hist = ["", "### Route-class histograms per seed (eval start, successes only)", ""]
    for env in envs:
        for v in _variants(groups, [env], SW_HEADS):
            ms = sorted(groups.get((env, v), []), key=lambda m: m["seed"])
            if not ms:
                continue
            lines.append(
                f"| {env.replace('smoothworld-', '')} | {v} | {len(ms)} | "
                + " | ".join(_fmt([m.get(k) for m in ms]) for k, _ in SW_COLS)
                + " |"
            )
            names = ms[0]["class_names"]
            per = "; ".join(
                f"s{m['seed']}: " + ", ".join(f"{n}={c}" for n, c in zip(names, m["class_counts"])) for m in ms
            )
            hist.append(f"- {env.replace('smoothworld-', '')} / {v}: {per}")
    return "\n".join(lines + hist) + "\n"


def write_csv(runs: list[dict], path: Path) -> None:
    rows = []
    for r in runs:
        flat = {k: v for k, v in r["metrics"].items() if isinstance(v, (int, float, str))}
        flat["run_dir"] = str(r["dir"])
        rows.append(flat)
    keys = sorted({k for row in rows for k in row})
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def _find(runs, env, variant, seed=None):
    for r in runs:
        m = r["metrics"]
        if m["env"] == env and m["variant"] == variant and (seed is None or m["seed"] == seed):
            return r
    return None


def plot_bandit_scatter(runs, envs, variants, path: Path, seed: int = 0) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = ["target", *variants]
    fig, axes = plt.subplots(len(envs), len(cols), figsize=(2.6 * len(cols), 2.6 * len(envs)), squeeze=False)
    for i, env in enumerate(envs):
        for j, c in enumerate(cols):
            ax = axes[i, j]
            r = _find(runs, env, variants[0] if c == "target" else c, seed) or _find(runs, env, c)
            if r is not None:
                z = np.load(r["dir"] / "samples.npz")
                pts = z["target_points"] if c == "target" else z["actions"]
                # the cloud is stored in generation order (moon 1 first): subsample at random, not the head
                pts = pts[np.random.default_rng(0).permutation(len(pts))[:2000]]
                ax.scatter(pts[:, 0], pts[:, 1], s=1, alpha=0.4, c="k" if c == "target" else "C0")
                if c != "target":
                    m = r["metrics"]
                    ax.set_xlabel(f"cov {m['coverage_0.05']:.2f} prec {m['precision_0.05']:.2f}", fontsize=7)
            ax.set_xlim(-1.05, 1.05)
            ax.set_ylim(-1.05, 1.05)
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(c, fontsize=8)
            if j == 0:
                ax.set_ylabel(env.replace("bandit-", ""), fontsize=8)
    fig.suptitle(f"bandit: 2000 of the evaluation samples, seed {seed}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_smoothworld(runs, envs, path: Path, seed: int = 0, max_traj: int = 50) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mepoly_il.envs.smoothworld import GRID, make_layout

    fig, axes = plt.subplots(len(envs), len(SW_HEADS), figsize=(2.8 * len(SW_HEADS), 2.8 * len(envs)), squeeze=False)
    for i, env in enumerate(envs):
        lay = make_layout(env.replace("smoothworld-", "").replace("-", "_"))
        img = np.ones((GRID, GRID, 3))
        img[lay.wall] = (0.3, 0.3, 0.3)
        img[lay.goal] = (0.6, 0.9, 0.6)
        img[lay.death] = (0.95, 0.6, 0.6)
        for j, v in enumerate(SW_HEADS):
            ax = axes[i, j]
            ax.imshow(img, origin="lower", extent=(0, GRID, 0, GRID))
            r = _find(runs, env, v, seed) or _find(runs, env, v)
            if r is not None:
                z = np.load(r["dir"] / "samples.npz")
                for tr, oc in zip(z["traj"][:max_traj], z["outcome"][:max_traj]):
                    ax.plot(tr[:, 0], tr[:, 1], lw=0.6, alpha=0.6, c=("C0", "C3", "C7")[int(oc)])
                m = r["metrics"]
                mode_h = m["mode_entropy_norm"] + 0.0  # no "-0.00" for a single class
                ax.set_xlabel(f"succ {m['success_rate']:.2f}  modeH {mode_h:.2f}", fontsize=7)
            ax.plot(*lay.eval_start, "k*", ms=8)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(v, fontsize=8)
            if j == 0:
                ax.set_ylabel(lay.name, fontsize=8)
    fig.suptitle(
        f"Smooth World: {max_traj} eval episodes (blue success, red death, grey timeout), seed {seed}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(runs, envs, variants, key: str, path: Path, ylabel: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(envs), figsize=(4 * len(envs), 3), squeeze=False)
    for ax, env in zip(axes[0], envs):
        for k, v in enumerate(variants):
            curves = []
            for r in runs:
                m = r["metrics"]
                if m["env"] != env or m["variant"] != v:
                    continue
                with open(r["dir"] / "progress.csv") as f:
                    rows = list(csv.DictReader(f))
                if rows and key in rows[0]:
                    x = np.array([float(q["env_steps"]) for q in rows])
                    curves.append(np.array([float(q[key]) if q[key] not in ("", "nan") else np.nan for q in rows]))
            if not curves:
                continue
            n = min(len(c) for c in curves)
            y = np.stack([c[:n] for c in curves])
            mu, sd = np.nanmean(y, 0), np.nanstd(y, 0)
            ax.plot(x[:n], mu, label=f"{v} (n={len(curves)})", c=f"C{k}")
            ax.fill_between(x[:n], mu - sd, mu + sd, alpha=0.2, color=f"C{k}")
        ax.set_title(env, fontsize=9)
        ax.set_xlabel("env steps")
        ax.set_ylabel(ylabel)
    if axes[0][0].get_legend_handles_labels()[0]:
        axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(roots: list[str | Path], out: str | Path, overwrite: bool = False) -> int:
    """Write the tables and plots of every finished run under ``roots`` into ``out``; return the number of runs.
    An existing report in ``out`` is replaced only with ``overwrite``."""
    runs = load_runs(roots)
    if not runs:
        raise UserError(
            f"{', '.join(map(str, roots))}: no finished runs (metrics.json) found; run `mepoly-il rl sweep`"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if (out / "runs.csv").exists() and not overwrite:
        raise UserError(f"{out}: a report already exists; pass --overwrite to replace it")
    groups = _group(runs)
    envs = sorted({m["env"] for (m) in (r["metrics"] for r in runs)})
    b_envs = [e for e in envs if e.startswith("bandit")]
    s_envs = [e for e in envs if e.startswith("smoothworld")]
    write_csv(runs, out / "runs.csv")
    if b_envs:
        abl = [f"mepoly-K{k}-{b}" for b in ("legendre", "monomial") for k in (2, 6, 10, 14)]
        variants = _variants(groups, b_envs, MAIN_VARIANTS, abl)
        (out / "bandit.md").write_text(bandit_table(groups, b_envs, variants, "Bandit: all heads") + "\n")
        (out / "ablation.md").write_text(
            bandit_table(groups, b_envs, abl, "Bandit: MePoly order / basis ablation") + "\n"
        )
        plot_bandit_scatter(runs, b_envs, variants, out / "bandit_scatter.png")
        plot_bandit_scatter(runs, b_envs, abl, out / "ablation_scatter.png")
        plot_curves(
            runs,
            b_envs,
            MAIN_VARIANTS,
            "episode_return",
            out / "learning_curves_bandit.png",
            "mean reward (training batch)",
        )
    if s_envs:
        (out / "smoothworld.md").write_text(sw_table(groups, s_envs))
        plot_smoothworld(runs, s_envs, out / "smoothworld_trajectories.png")
        plot_curves(
            runs,
            s_envs,
            SW_HEADS,
            "success_rate",
            out / "learning_curves_smoothworld.png",
            "success (finished training episodes)",
        )
    if "multigoal" in envs:
        (out / "multigoal.md").write_text(
            simple_table(groups, ["multigoal"], MG_COLS, "Multi-goal point mass: goal shares of the test episodes")
        )
    mc_envs = [e for e in ("mountaincar-minus1", "mountaincar-sparse") if e in envs]
    if mc_envs:
        title = "MountainCar (-minus1: -1 per step; -sparse: 1 at the goal, else 0), test episodes"
        (out / "mountaincar.md").write_text(simple_table(groups, mc_envs, MC_COLS, title))
    if "toy1d" in envs:
        (out / "toy1d.md").write_text(simple_table(groups, ["toy1d"], TOY_COLS, "RPG toy bandit (1-D)"))
    return len(runs)
