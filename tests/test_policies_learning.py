"""Training moves the numbers it should: stage 2's prior NLL of the stage-1 codes falls over a short run."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from mepoly_il.data.datamodule import DemoDataModule
from mepoly_il.data.synthetic import make_synthetic_dataset
from mepoly_il.policies.mepoly.config import MePolyPriorConfig
from mepoly_il.policies.mepoly.lightning import Stage2Module
from mepoly_il.policies.mepoly.priors import to_box

FROZEN_STAGE1 = Path(__file__).parent / "data" / "frozen" / "mepoly_stage1.ckpt"


@torch.no_grad()
def _nll(module: Stage2Module, batch: dict[str, torch.Tensor]) -> float:
    """-log pi(mu(tau) | s) over every training window: the targets of target="mean" (deterministic, eval mode)."""
    policy = module.policy.eval()
    mu, _ = policy.encode(batch["action"])
    return float(-policy.prior_dist(batch["obs"]).log_prob(to_box(mu)).mean())


def test_stage2_prior_nll_falls(tmp_path):
    # the frozen tiny stage 1 (tests/data/make_frozen.py) and the synthetic data it was trained on
    data = make_synthetic_dataset(tmp_path / "syn.zarr", num_episodes=6, obs_dim=5, act_dim=3)
    dm = DemoDataModule(str(data), obs_horizon=2, act_horizon=4, pred_horizon=8, batch_size=64, val_ratio=0.0)
    shape = {k: getattr(dm, k) for k in MePolyPriorConfig.SHAPE_FIELDS}
    prior = MePolyPriorConfig(**shape, prior_hidden=[32, 32], poly_order=4)
    module = Stage2Module(
        str(FROZEN_STAGE1),
        policy=prior,
        target="mean",
        lr_prior=3e-3,
        lr_decoder=0.0,
        warmup_steps=2,
        lr_schedule="constant",
    )
    dm.setup("fit")
    batch = dm.train_set[list(range(len(dm.train_set)))]
    before = _nll(module, batch)
    trainer = L.Trainer(
        max_steps=40, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(module, dm)
    after = _nll(module, batch)
    assert after < before - 0.5, (before, after)
