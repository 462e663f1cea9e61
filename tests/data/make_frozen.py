"""Regenerate the frozen checkpoints of ``test_policies_compat.py`` (tiny MePoly stage 1 + 2 and DP) and their
expected outputs.

These files pin the checkpoint format as it was BEFORE policies took config dataclasses: they were made at commit
040c201 (``git worktree add /tmp/frozen 040c201`` and run this script there with ``PYTHONPATH=/tmp/frozen``).
Re-running it with newer code would only compare the code with itself, so do that only on purpose, when the
checkpoint format changes, and keep the old files as a second fixture.

    python tests/data/make_frozen.py [OUT_DIR]    # default: tests/data/frozen
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging

from mepoly_il.data.datamodule import DemoDataModule
from mepoly_il.data.synthetic import make_synthetic_dataset
from mepoly_il.policies import load_policy
from mepoly_il.policies.diffusion.lightning import DiffusionModule
from mepoly_il.policies.mepoly.lightning import Stage1Module, Stage2Module

HORIZONS = dict(obs_horizon=2, act_horizon=4, pred_horizon=8)
OBS_DIM, ACT_DIM = 5, 3


def _fit(module, dm, steps: int, path: Path) -> None:
    trainer = L.Trainer(
        max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
        callbacks=[EMAWeightAveraging(decay=0.9)],
    )  # fmt: skip
    trainer.fit(module, dm)
    trainer.save_checkpoint(path, weights_only=True)  # no optimizer state: keeps the files small


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    L.seed_everything(0)
    with tempfile.TemporaryDirectory() as tmp:
        data = make_synthetic_dataset(Path(tmp) / "syn.zarr", num_episodes=6, obs_dim=OBS_DIM, act_dim=ACT_DIM)
        dm = DemoDataModule(str(data), batch_size=32, **HORIZONS)
        s1 = Stage1Module(
            obs_dim=OBS_DIM, act_dim=ACT_DIM, **HORIZONS, latent_dim=2, d_model=16, n_heads=2, ff_dim=32,
            enc_layers=1, obs_layers=1, dec_layers=1, dropout=0.0, warmup_steps=2, latent_plot_samples=0,
        )  # fmt: skip
        _fit(s1, dm, 10, out / "mepoly_stage1.ckpt")
        s2 = Stage2Module(
            str(out / "mepoly_stage1.ckpt"), obs_dim=OBS_DIM, act_dim=ACT_DIM, **HORIZONS, prior_hidden=[16],
            poly_order=4, sample_mode="mode", warmup_steps=2,
        )  # fmt: skip
        _fit(s2, dm, 10, out / "mepoly_stage2.ckpt")
        dp = DiffusionModule(
            obs_dim=OBS_DIM, act_dim=ACT_DIM, **HORIZONS, down_dims=[8, 16], diffusion_step_embed_dim=8,
            n_groups=4, num_train_timesteps=10, num_inference_steps=10, warmup_steps=2,
        )  # fmt: skip
        _fit(dp, dm, 10, out / "dp.ckpt")

    obs = torch.randn(3, HORIZONS["obs_horizon"], OBS_DIM, generator=torch.Generator().manual_seed(0))
    mepoly = load_policy(out / "mepoly_stage2.ckpt")
    with torch.no_grad():
        log_z = mepoly.prior_dist(mepoly.obs_normalizer.normalize(obs)).base.log_partition
    dp_policy = load_policy(out / "dp.ckpt")
    torch.manual_seed(123)
    dp_actions = dp_policy.predict_action_chunk(obs)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    expected = {
        "commit": commit,
        "obs": obs.tolist(),
        "mepoly_actions_mode": mepoly.predict_action_chunk(obs).tolist(),
        "mepoly_log_partition": log_z.tolist(),
        "dp_seed": 123,
        "dp_actions": dp_actions.tolist(),
    }
    (out / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    for p in sorted(out.iterdir()):
        print(f"{p.name}: {p.stat().st_size:,} bytes")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "frozen")
