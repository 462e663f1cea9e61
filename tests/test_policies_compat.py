"""Checkpoints written before the config dataclasses still load and act the same; the format version is checked;
the configs validate in one place."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch

from mepoly_il.data.datamodule import DemoDataModule
from mepoly_il.data.synthetic import make_synthetic_dataset
from mepoly_il.errors import UserError
from mepoly_il.policies import load_policy, read_checkpoint
from mepoly_il.policies.diffusion.config import DiffusionConfig
from mepoly_il.policies.lightning_base import lr_factor
from mepoly_il.policies.mepoly.config import MePolyConfig, MePolyPriorConfig, MePolyVAEConfig
from mepoly_il.policies.mepoly.lightning import Stage2Module

FROZEN = Path(__file__).parent / "data" / "frozen"
EXPECTED = json.loads((FROZEN / "expected.json").read_text())


def test_frozen_mepoly_checkpoint_loads_and_reproduces_actions_and_log_partition():
    policy = load_policy(FROZEN / "mepoly_stage2.ckpt")
    stored = read_checkpoint(FROZEN / "mepoly_stage2.ckpt")["mepoly_il"]["policy_config"]
    assert policy.policy_config == MePolyConfig.from_dict(stored)
    assert policy.sample_mode == "mode"
    obs = torch.tensor(EXPECTED["obs"])
    actions = policy.predict_action_chunk(obs)
    torch.testing.assert_close(actions, torch.tensor(EXPECTED["mepoly_actions_mode"]), atol=1e-5, rtol=0)
    with torch.no_grad():
        log_z = policy.prior_dist(policy.obs_normalizer.normalize(obs)).base.log_partition
    torch.testing.assert_close(log_z, torch.tensor(EXPECTED["mepoly_log_partition"]), atol=1e-5, rtol=0)


def test_frozen_dp_checkpoint_loads_and_reproduces_seeded_actions():
    policy = load_policy(FROZEN / "dp.ckpt")
    assert isinstance(policy.policy_config, DiffusionConfig) and policy.policy_config.down_dims == [8, 16]
    torch.manual_seed(EXPECTED["dp_seed"])
    actions = policy.predict_action_chunk(torch.tensor(EXPECTED["obs"]))
    torch.testing.assert_close(actions, torch.tensor(EXPECTED["dp_actions"]), atol=1e-5, rtol=0)


def test_frozen_stage1_checkpoint_still_feeds_stage2(tmp_path):
    # the dataset make_frozen.py trained on (deterministic), so the normalizers match stage 1's
    data = make_synthetic_dataset(tmp_path / "syn.zarr", num_episodes=6, obs_dim=5, act_dim=3)
    dm = DemoDataModule(str(data), obs_horizon=2, act_horizon=4, pred_horizon=8, batch_size=32)
    shape = {k: getattr(dm, k) for k in MePolyPriorConfig.SHAPE_FIELDS}  # what `fit` links from data
    prior = MePolyPriorConfig(**shape, prior_hidden=[16], poly_order=4)
    module = Stage2Module(str(FROZEN / "mepoly_stage1.ckpt"), policy=prior)
    trainer = L.Trainer(
        max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(module, dm)
    trainer.save_checkpoint(tmp_path / "s2.ckpt")
    loaded = load_policy(tmp_path / "s2.ckpt")
    assert loaded.policy_config.latent_dim == 2 and loaded.policy_config.d_model == 16  # the frozen stage 1's VAE
    assert loaded.select_action(torch.zeros(1, 5)).shape == (1, 3)


def test_unknown_format_version_is_refused(tmp_path):
    ckpt = torch.load(FROZEN / "dp.ckpt", map_location="cpu", weights_only=True)
    ckpt["mepoly_il"]["format_version"] = 99
    torch.save(ckpt, tmp_path / "future.ckpt")
    with pytest.raises(UserError, match="format version 99"):
        load_policy(tmp_path / "future.ckpt")


def test_unknown_policy_config_key_is_refused(tmp_path):
    ckpt = torch.load(FROZEN / "mepoly_stage2.ckpt", map_location="cpu", weights_only=True)
    ckpt["mepoly_il"]["policy_config"]["warp_drive"] = 1
    torch.save(ckpt, tmp_path / "odd.ckpt")
    with pytest.raises(UserError, match=r"unknown MePolyConfig settings \['warp_drive'\]"):
        load_policy(tmp_path / "odd.ckpt")


@pytest.mark.parametrize(
    "cls, kwargs, needle",
    [
        (MePolyVAEConfig, {"latent_dim": 0}, "model.policy.latent_dim=0"),
        (MePolyVAEConfig, {"d_model": 30, "n_heads": 4}, "d_model=30 is not divisible"),
        (MePolyVAEConfig, {"obs_horizon": 2, "act_horizon": 16, "pred_horizon": 16}, "lower act_horizon"),
        (MePolyPriorConfig, {"poly_order": 0}, "model.policy.poly_order=0"),
        (MePolyPriorConfig, {"prior": "flow"}, "model.policy.prior='flow'"),
        (MePolyPriorConfig, {"poly_basis": "chebyshev"}, "model.policy.poly_basis='chebyshev'"),
        (MePolyPriorConfig, {"sample_mode": "mean"}, "model.policy.sample_mode='mean'"),
        (DiffusionConfig, {"beta_schedule": "cosine"}, "model.policy.beta_schedule='cosine'"),
        (DiffusionConfig, {"pred_horizon": 10, "obs_horizon": 2, "act_horizon": 8}, "not divisible by 4"),
    ],
)
def test_configs_validate_with_the_field_and_the_fix(cls, kwargs, needle):
    with pytest.raises(UserError, match=needle.replace("(", r"\(").replace("[", r"\[")):
        cls(**kwargs)


def test_policy_needs_its_shape():
    from mepoly_il.policies.mepoly.policy import MePolyPolicy

    with pytest.raises(UserError, match="obs_dim is not set"):
        MePolyPolicy(MePolyConfig())


def test_one_lr_schedule_for_both_conventions():
    # MePoly: warm-up from 1/W; DP (diffusers): from 0, then the same cosine to 0 at the last step.
    assert lr_factor(0, 4, 10) == 0.25 and lr_factor(0, 4, 10, from_zero=True) == 0.0
    assert lr_factor(4, 4, 10) == 1.0 and lr_factor(4, 4, 10, schedule="constant") == 1.0
    assert lr_factor(7, 4, 10) == pytest.approx(0.5)
    from diffusers.optimization import get_scheduler

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    ref = get_scheduler("cosine", opt, num_warmup_steps=4, num_training_steps=10)
    for step in range(10):
        assert lr_factor(step, 4, 10, from_zero=True) == ref.lr_lambdas[0](step)
