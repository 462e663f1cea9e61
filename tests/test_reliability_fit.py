"""`fit` that loses nothing: exact resume, run folders that never mix two runs, bad checkpoints and configs refused
in one line before anything is written, polynomial sizes checked before anything is allocated."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mepoly_il.data.datamodule import DemoDataModule
from mepoly_il.data.synthetic import make_synthetic_dataset
from mepoly_il.policies import read_checkpoint

REPO = Path(__file__).resolve().parents[1]
HORIZONS = ["--data.obs_horizon", "2", "--data.act_horizon", "8", "--data.pred_horizon", "16"]
TINY = ["--model.policy.d_model", "16", "--model.policy.ff_dim", "32", "--model.policy.enc_layers", "1",
        "--model.policy.obs_layers", "1", "--model.policy.dec_layers", "1", *HORIZONS]  # fmt: skip


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "mepoly_il", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("fit") / "d.zarr", num_episodes=6, length=(20, 26))


def _stage1(dataset: Path, root: Path, steps: int, *extra: str) -> subprocess.CompletedProcess:
    # The same optimisation for any max_steps (constant LR after the warm-up). Two batches per epoch, so that
    # the runs below stop at epoch ends (Lightning replays a partly-run epoch
    # from its first batch: see lightning_base's module docstring) and the sampler's order matters.
    dm = DemoDataModule(path=str(dataset), obs_horizon=2, act_horizon=8, pred_horizon=16, val_ratio=0.2)
    dm.setup("fit")
    batch = len(dm.train_set) // 2
    return run_cli(
        "fit", "stage1", "--config", "configs/stage1/cpu.yaml", "--data.path", str(dataset), *TINY,
        "--data.batch_size", str(batch), "--data.val_ratio", "0.2", "--trainer.default_root_dir", str(root),
        "--trainer.max_steps", str(steps), "--trainer.val_check_interval", "2", "--trainer.log_every_n_steps", "1",
        "--model.warmup_steps", "2", "--model.lr_schedule", "constant", *extra,  # cosine depends on max_steps
    )  # fmt: skip


def test_resume_is_bit_exact(dataset, tmp_path):
    whole = _stage1(dataset, tmp_path / "whole", 8)
    assert whole.returncode == 0, whole.stderr[-3000:]
    half = _stage1(dataset, tmp_path / "half", 4)
    assert half.returncode == 0, half.stderr[-3000:]
    last = tmp_path / "half" / "checkpoints" / "last.ckpt"
    assert "mepoly_il_rng" in torch.load(last, map_location="cpu", weights_only=True)
    resumed = _stage1(dataset, tmp_path / "half", 8, "--ckpt_path", str(last))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = read_checkpoint(tmp_path / "whole" / "checkpoints" / "last.ckpt")
    b = read_checkpoint(last)
    assert a["global_step"] == b["global_step"] == 8
    assert a["state_dict"].keys() == b["state_dict"].keys()
    diff = max((a["state_dict"][k].float() - b["state_dict"][k].float()).abs().max().item() for k in a["state_dict"])
    assert diff == 0.0
