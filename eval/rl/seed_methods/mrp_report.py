"""Tables of the synthetic multimodal bandits (``mrp_bandits.py`` output): one row per (bandit, alpha, step size)
with every method's per-seed final E[r], share on the global peak and modes found (seeds side by side, never
pooled), then a compact count of the (bandit, seed) runs where each method ends with most of its mass on the
global peak, per alpha and step size. With several step sizes the summary marks each method's best one per alpha
(highest mean final E[r] over all its runs), as the paper reports each method at its best setting.

Usage: python eval/rl/seed_methods/mrp_report.py RUN_DIR OUT.md   (reads every RUN_DIR/*.json)
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

from mepoly_il.utils import atomic_path


def main() -> None:
    src, out = Path(sys.argv[1]), Path(sys.argv[2])
    files = sorted(src.glob("*.json"))
    rows, metas = [], []
    for f in files:
        d = json.loads(f.read_text())
        rows += [{"lr": d["meta"]["lr"], **r} for r in d["rows"]]  # files before the lr sweep: one lr in meta
        metas.append(d["meta"])
    if not rows:
        raise SystemExit(f"{src}: no mrp_bandits JSON found; run eval/rl/seed_methods/run.sh mrp")
    meta = metas[0]
    cell = defaultdict(list)
    for r in rows:
        cell[(r["bandit"], r["alpha"], r["lr"], r["method"])].append(r)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    seeds = sorted({r["seed"] for r in rows})
    alphas, lrs = sorted({r["alpha"] for r in rows}), sorted({r["lr"] for r in rows})
    design = meta.get("design", "wide")
    sd_lo, sd_hi = meta.get("sd_range", (0.02, 0.3))
    lines = [
        f"# Synthetic multimodal bandits, true reward as critic (mixture paper §5.1), design `{design}`",
        "",
        f"Peak stds ~ U({sd_lo}, {sd_hi}), means ~ U(-0.9, 0.9). Budget per run: {meta['steps']} actor steps "
        f"x batch {meta['batch']} (Adam, step size {', '.join(f'{lr:g}' for lr in lrs)}), fixed alpha; "
        f"{meta['peaks']} Gaussian peaks per bandit, best action pays 1; evaluation {meta['eval_samples']} policy "
        f"samples. Jobs: {len(files)} (load average at start/end of each: "
        + "; ".join(f"{m['load_start'][0]:.1f}/{m['load_end'][0]:.1f}" for m in metas)
        + f"; wall s: {', '.join(str(round(m['wall_s'])) for m in metas)}).",
        "",
        f"Cells list seeds {', '.join(map(str, seeds))} in order: E[r] / share of samples in the global peak's "
        "basin / basins holding >= 5 % of the samples.",
        "",
        "| bandit | alpha | step size | " + " | ".join(methods) + " |",
        "|---|---|---|" + "---|" * len(methods),
    ]
    wins = defaultdict(int)
    rsum = defaultdict(float)
    n = defaultdict(int)
    for b in sorted({k[0] for k in cell}):
        for a in alphas:
            for lr in lrs:
                cells = []
                for m in methods:
                    rs = sorted(cell.get((b, a, lr, m), []), key=lambda r: r["seed"])
                    cells.append(
                        ", ".join(f"{r['reward_mean']:.2f}/{r['global_share']:.2f}/{r['modes_found']}" for r in rs)
                        or "–"
                    )
                    for r in rs:
                        wins[(m, a, lr)] += r["global_share"] > 0.5
                        rsum[(m, a, lr)] += r["reward_mean"]
                        n[(m, a, lr)] += 1
                lines.append(f"| {b} | {a:g} | {lr:g} | " + " | ".join(cells) + " |")
    best = {
        (m, a): max((lr for lr in lrs if n[(m, a, lr)]), key=lambda lr: rsum[(m, a, lr)] / n[(m, a, lr)])
        for m in methods
        for a in alphas
        if any(n[(m, a, lr)] for lr in lrs)
    }
    lines += [
        "",
        "## Summary: runs ending with > 50 % of their samples on the global peak, and mean final E[r]",
        "",
        "Per alpha and step size."
        + (" **Bold**: the method's best step size at that alpha (highest mean E[r])." if len(lrs) > 1 else ""),
        "",
        "| method | step size | " + " | ".join(f"alpha {a:g}" for a in alphas) + " |",
        "|---|---|" + "---|" * len(alphas),
    ]
    for m in methods:
        for lr in lrs:
            cells = []
            for a in alphas:
                if not n[(m, a, lr)]:
                    cells.append("–")
                    continue
                k = (m, a, lr)
                text = f"{wins[k]}/{n[k]} on the global peak, E[r] {rsum[k] / n[k]:.3f}"
                cells.append(f"**{text}**" if len(lrs) > 1 and best.get((m, a)) == lr else text)
            lines.append(f"| {m} | {lr:g} | " + " | ".join(cells) + " |")
    with atomic_path(out, overwrite=True) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
