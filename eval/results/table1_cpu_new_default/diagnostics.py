"""Stage-1 and stage-2 diagnostics stored in each checkpoint (``ckpt["mepoly_il"]["diagnostics"]``), as a table.

For every ``<runs>/stage1/<task>/seed<k>/checkpoints/last.ckpt`` (layout of ``eval/table1_cpu.sh``) one row: stage 1's
latent diagnostics and, when ``<runs>/mepoly/<task>/seed<k>`` has a last checkpoint, stage 2's. Usage::

    python eval/results/table1_cpu_new_default/diagnostics.py runs_t1new [runs_t1old ...]
"""

import sys
from pathlib import Path

import torch

keys1 = ("latent_gain", "code_spread", "posterior_noise", "spread_noise_ratio", "recon")
keys2 = ("entropy", "posterior_entropy", "entropy_gap", "action_mse_mode", "action_mse_sample")
print("| runs | task | seed | " + " | ".join(keys1) + " | " + " | ".join(f"stage 2 {k}" for k in keys2) + " |")
print("|---" * (3 + len(keys1) + len(keys2)) + "|")
for runs in sys.argv[1:]:
    for s1 in sorted(Path(runs).glob("stage1/*/seed*/checkpoints/last.ckpt")):
        task, seed = s1.parents[2].name, s1.parents[1].name[4:]
        d1 = torch.load(s1, map_location="cpu", weights_only=False)["mepoly_il"].get("diagnostics", {})
        s2 = Path(runs) / "mepoly" / task / f"seed{seed}" / "checkpoints" / "last.ckpt"
        d2 = (
            torch.load(s2, map_location="cpu", weights_only=False)["mepoly_il"].get("diagnostics", {})
            if s2.exists()
            else {}
        )
        f = lambda d, k: f"{d[k]:.3g}" if k in d else "-"
        print(
            f"| {runs} | {task} | {seed} | "
            + " | ".join(f(d1, k) for k in keys1)
            + " | "
            + " | ".join(f(d2, k) for k in keys2)
            + " |"
        )
