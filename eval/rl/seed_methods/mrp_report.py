"""Tables of the synthetic multimodal bandits (``mrp_bandits.py`` output): one row per (bandit, alpha, method)
with every seed's final E[r], share on the global peak and modes found (seeds side by side, never pooled), then a
compact count of the (bandit, alpha, seed) cells where each method ends with most of its mass on the global peak.

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
        rows += d["rows"]
        metas.append(d["meta"])
    if not rows:
        raise SystemExit(f"{src}: no mrp_bandits JSON found; run eval/rl/seed_methods/run.sh mrp")
    meta = metas[0]
    cell = defaultdict(list)
    for r in rows:
        cell[(r["bandit"], r["alpha"], r["method"])].append(r)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    lines = [
        "# Synthetic multimodal bandits, true reward as critic (mixture paper §5.1)",
        "",
        f"Budget per run: {meta['steps']} actor steps x batch {meta['batch']} (Adam {meta['lr']}), fixed alpha; "
        f"{meta['peaks']} Gaussian peaks per bandit, best action pays 1; evaluation {meta['eval_samples']} policy "
        f"samples. Jobs: {len(files)} (load average at start/end of each: "
        + "; ".join(f"{m['load_start'][0]:.1f}/{m['load_end'][0]:.1f}" for m in metas)
        + f"; wall s: {', '.join(str(round(m['wall_s'])) for m in metas)}).",
        "",
        "Cells list seeds 0, 1, 2 in order: E[r] / share of samples in the global peak's basin / basins holding "
        ">= 5 % of the samples.",
        "",
        "| bandit | alpha | " + " | ".join(methods) + " |",
        "|---|---|" + "---|" * len(methods),
    ]
    wins = defaultdict(int)
    rsum = defaultdict(float)
    n = defaultdict(int)
    for b in sorted({k[0] for k in cell}):
        for a in sorted({k[1] for k in cell}):
            cells = []
            for m in methods:
                rs = sorted(cell.get((b, a, m), []), key=lambda r: r["seed"])
                cells.append(
                    ", ".join(f"{r['reward_mean']:.2f}/{r['global_share']:.2f}/{r['modes_found']}" for r in rs) or "–"
                )
                for r in rs:
                    wins[(m, a)] += r["global_share"] > 0.5
                    rsum[(m, a)] += r["reward_mean"]
                    n[(m, a)] += 1
            lines.append(f"| {b} | {a:g} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Summary: runs ending with > 50 % of their samples on the global peak, and mean final E[r]",
        "",
        "| method | " + " | ".join(f"alpha {a:g}" for a in sorted({k[1] for k in cell})) + " |",
        "|---|" + "---|" * len({k[1] for k in cell}),
    ]
    for m in methods:
        lines.append(
            f"| {m} | "
            + " | ".join(
                f"{wins[(m, a)]}/{n[(m, a)]} on the global peak, E[r] {rsum[(m, a)] / max(n[(m, a)], 1):.3f}"
                for a in sorted({k[1] for k in cell})
            )
            + " |"
        )
    with atomic_path(out, overwrite=True) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
