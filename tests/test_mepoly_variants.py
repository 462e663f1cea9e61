"""Stage-1 settings used by the multimodal comparison: the fixed-scale stress under EMA weights, and the
``fixed_latent`` regressor baseline."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging

from mepoly_il.data.datamodule import DemoDataModule
from mepoly_il.data.synthetic import make_synthetic_dataset
from mepoly_il.policies.mepoly.config import MePolyConfig
from mepoly_il.policies.mepoly.lightning import Stage1Module
from mepoly_il.policies.mepoly.policy import MePolyPolicy

SHAPE = dict(obs_dim=5, act_dim=3, obs_horizon=2, act_horizon=4, pred_horizon=8)
TINY = dict(d_model=32, n_heads=4, ff_dim=64, enc_layers=1, obs_layers=1, dec_layers=1, dropout=0.0)


def test_dataset_stress_validates_with_ema_weights(tmp_path):
    """The EMA copy validates (and is what checkpoints hold): it needs the dataset scale too."""
    data = make_synthetic_dataset(tmp_path / "syn.zarr", num_episodes=6, length=(20, 26))
    module = Stage1Module({**SHAPE, **TINY}, iso_norm="dataset", latent_plot_samples=0)
    trainer = L.Trainer(
        max_steps=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path),
        limit_val_batches=1, val_check_interval=2, num_sanity_val_steps=1,
        callbacks=[EMAWeightAveraging(decay=0.9)],
    )  # fmt: skip
    trainer.fit(module, DemoDataModule(str(data), batch_size=16, obs_horizon=2, act_horizon=4, pred_horizon=8))
    ema = trainer.callbacks[0]._average_model.module
    assert float(ema.iso_ref) == float(module.iso_ref) > 0
    assert torch.isfinite(trainer.callback_metrics["val/recon"])


def test_fixed_latent_decodes_the_same_chunk_for_every_z():
    torch.manual_seed(0)
    policy = MePolyPolicy(MePolyConfig(**SHAPE, **TINY, fixed_latent=True, prior=None))
    with torch.no_grad():  # past the zero-initialised AdaLN gates, so that z could matter
        for p in policy.parameters():
            p.normal_(0.0, 0.3)
    memory = policy.memory(torch.randn(4, 2, 5))
    a, b = policy.decode(torch.rand(4, 3) * 2 - 1, memory), policy.decode(torch.rand(4, 3) * 2 - 1, memory)
    torch.testing.assert_close(a, b)
    free = MePolyPolicy(MePolyConfig(**SHAPE, **TINY, prior=None))
    free.load_state_dict(policy.state_dict())
    z = torch.ones(4, 3)
    assert not torch.allclose(free.decode(z, memory), free.decode(-z, memory))
