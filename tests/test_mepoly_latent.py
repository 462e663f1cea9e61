"""The stage-1 latent: objective options, diagnostics, and the stage-2 review fixes (bf16, frozen encoder, seeds)."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from mepoly_il.data.datamodule import DemoDataModule
from mepoly_il.data.synthetic import make_bimodal_dataset, make_synthetic_dataset
from mepoly_il.errors import UserError
from mepoly_il.policies import read_checkpoint
from mepoly_il.policies.mepoly.config import MePolyVAEConfig
from mepoly_il.policies.mepoly.lightning import (
    Stage1Module,
    Stage2Module,
    derangement,
    fixed_scale_stress,
    mds_stress,
)
from mepoly_il.policies.mepoly.modules import LatentHeads, TrajectoryDecoder

SHAPE = dict(obs_dim=5, act_dim=3, obs_horizon=2, act_horizon=4, pred_horizon=8)
TINY = dict(d_model=32, n_heads=4, ff_dim=64, enc_layers=1, obs_layers=1, dec_layers=1, dropout=0.1)
HORIZONS = dict(obs_horizon=2, act_horizon=4, pred_horizon=8)


def _trainer(tmp, steps, **kw):
    args = dict(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp),
                limit_val_batches=0, num_sanity_val_steps=0)  # fmt: skip
    args.update(kw)
    return L.Trainer(**args)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("lat") / "syn.zarr", num_episodes=6, length=(20, 26))


@pytest.fixture(scope="module")
def stage1_ckpt(data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("s1")
    module = Stage1Module({**SHAPE, **TINY}, latent_plot_samples=0)
    trainer = _trainer(tmp, 3, limit_val_batches=1, val_check_interval=3)
    trainer.fit(module, DemoDataModule(str(data), batch_size=16, **HORIZONS))
    trainer.save_checkpoint(tmp / "s1.ckpt")
    return tmp / "s1.ckpt"


def _radial(stress_fn, scale):
    torch.manual_seed(0)
    traj = torch.randn(32, 8, 3)
    mu = (torch.randn(32, 3) * scale).requires_grad_(True)
    stress_fn(traj, mu).backward()
    return float((mu.detach() * mu.grad).sum())


def test_fixed_scale_stress_sees_the_latent_size_and_the_batch_stress_does_not():
    ref = float(torch.cdist(torch.randn(32, 24), torch.randn(32, 24)).mean())
    fixed = lambda t, z: fixed_scale_stress(t, z, ref, 0.8)  # noqa: E731
    # A shrunk latent is pushed outwards (<mu, dL/dmu> clearly negative), an inflated one inwards.
    assert _radial(fixed, 0.05) < -1e-3
    assert _radial(fixed, 5.0) > 1e-3
    assert abs(_radial(mds_stress, 0.05)) < 1e-4  # scale-free: no radial force at all


def test_posterior_std_floor_holds_and_zero_keeps_old_heads():
    torch.manual_seed(0)
    feat = torch.randn(64, 32) * 50
    heads = LatentHeads(32, 3, min_std=0.1)
    with torch.no_grad():
        heads.logvar[-1].bias.fill_(-20.0)  # a head that wants a (nearly) deterministic code
    std = (0.5 * heads(feat)[1]).exp()
    assert float(std.min()) >= 0.1 - 1e-6
    plain = LatentHeads(32, 3)
    plain.load_state_dict(heads.state_dict())
    assert float((0.5 * plain(feat)[1]).exp().min()) < 0.01
    with pytest.raises(UserError, match="min_posterior_std"):
        MePolyVAEConfig(**SHAPE, min_posterior_std=1.5)


def test_latent_embed_path_is_zero_at_init_and_learns():
    torch.manual_seed(0)
    dec = TrajectoryDecoder(3, 8, 32, 2, 4, 64, 3, 0.0, latent_embed=True)
    memory = torch.randn(4, 2, 32)
    z1, z2 = torch.rand(4, 3) * 2 - 1, torch.rand(4, 3) * 2 - 1
    torch.testing.assert_close(dec(z1, memory), dec(z2, memory))  # starts like a plain Transformer
    dec(z1.requires_grad_(True), memory).sum().backward()
    assert dec.blocks[0].norm1.proj[1].weight.grad.abs().sum() > 0  # but the projections do get a gradient
    assert "z_embed.weight" in dec.state_dict()
    assert "z_embed.weight" not in TrajectoryDecoder(3, 8, 32, 2, 4, 64, 3, 0.0).state_dict()  # old layout


def test_stage1_options_are_validated_and_recon_sum_is_t_times_da_the_mean():
    for kw, name in ((dict(iso_norm="median"), "iso_norm"), (dict(iso_scale=0), "iso_scale"),
                     (dict(recon_reduction="max"), "recon_reduction")):  # fmt: skip
        with pytest.raises(UserError, match=name):
            Stage1Module({**SHAPE, **TINY}, **kw)
    batch = {"obs": torch.randn(8, 2, 5), "action": torch.rand(8, 8, 3) * 2 - 1}
    means = Stage1Module({**SHAPE, **TINY, "dropout": 0.0})
    sums = Stage1Module({**SHAPE, **TINY, "dropout": 0.0}, recon_reduction="sum")
    sums.load_state_dict(means.state_dict())
    r_mean, r_sum = means._losses(batch, sample=False)["recon"], sums._losses(batch, sample=False)["recon"]
    torch.testing.assert_close(r_sum, r_mean * 24)


def test_latent_gain_pairs_windows_at_random_and_reproducibly():
    perm = derangement(64, seed=3)
    assert sorted(perm.tolist()) == list(range(64)) and not (perm == torch.arange(64)).any()
    assert torch.equal(perm, derangement(64, seed=3)) and not torch.equal(perm, derangement(64, seed=4))
    # Not the time-neighbour shift: most windows get a partner far away in the batch.
    assert float(((perm - torch.arange(64)).abs() > 1).float().mean()) > 0.8


def test_dataset_scale_reference_is_set_at_fit_and_diagnostics_go_into_the_checkpoint(data, tmp_path):
    module = Stage1Module({**SHAPE, **TINY}, iso_norm="dataset", latent_plot_samples=0)
    with pytest.raises(RuntimeError, match="iso_ref"):
        module._losses({"obs": torch.randn(4, 2, 5), "action": torch.randn(4, 8, 3)}, sample=True)
    trainer = _trainer(tmp_path, 2, limit_val_batches=2, val_check_interval=2)
    trainer.fit(module, DemoDataModule(str(data), batch_size=16, **HORIZONS))
    assert float(module.iso_ref) > 0
    trainer.save_checkpoint(tmp_path / "a.ckpt")
    diag = read_checkpoint(tmp_path / "a.ckpt")["mepoly_il"]["diagnostics"]
    assert set(diag) == set(Stage1Module.diagnostic_keys)
    # epoch means of per-batch ratios: close to, not exactly, the ratio of the means
    assert diag["spread_noise_ratio"] == pytest.approx(diag["code_spread"] / diag["posterior_noise"], rel=0.05)


def test_stage2_trains_under_bf16_autocast(stage1_ckpt, data, tmp_path):
    module = Stage2Module(str(stage1_ckpt), policy=dict(prior_hidden=[16], poly_order=4))
    dm = DemoDataModule(str(data), batch_size=16, **HORIZONS)
    trainer = _trainer(tmp_path, 2, precision="bf16-mixed", limit_val_batches=1, val_check_interval=2)
    trainer.fit(module, dm)
    metrics = trainer.callback_metrics
    for key in ("val/nll", "val/action_mse_mode", "val/action_mse_sample", "val/entropy_gap"):
        assert torch.isfinite(metrics[key]), key
    trainer.save_checkpoint(tmp_path / "s2.ckpt")
    diag = read_checkpoint(tmp_path / "s2.ckpt")["mepoly_il"]["diagnostics"]
    assert diag["entropy_gap"] == pytest.approx(diag["entropy"] - diag["posterior_entropy"], abs=1e-4)


def test_restoring_train_mode_after_a_rollout_keeps_the_frozen_encoder_in_eval(stage1_ckpt):
    module = Stage2Module(str(stage1_ckpt), policy=dict(prior_hidden=[16], poly_order=4))
    module.train()
    policy = module.policy  # what the evaluation callback acts with when no EMA copy exists yet
    was_training = policy.training
    policy.eval()
    policy.train(was_training)  # what evaluate_policy does afterwards
    assert policy.decoder.training
    assert not policy.action_encoder.training and not policy.latent_heads.training


def test_data_split_and_order_follow_the_run_seed_unless_set(data):
    def split(seed_everything, seed=None):
        L.seed_everything(seed_everything)
        dm = DemoDataModule(str(data), batch_size=4, val_ratio=0.34, seed=seed, **HORIZONS)
        dm.setup("fit")
        first = next(iter(dm.train_dataloader()))["action"]
        return list(dm.val_episodes), first, dm.seed

    a, b, c = split(1), split(2), split(2, seed=1)
    assert a[2] == 1 and b[2] == 2 and c[2] == 1
    assert a[0] != b[0] or not torch.equal(a[1], b[1])
    assert a[0] == c[0] and torch.equal(a[1], c[1])  # an explicit data.seed wins


def test_bimodal_dataset_has_balanced_opposite_modes(tmp_path):
    path, modes = make_bimodal_dataset(tmp_path / "bi.zarr", num_episodes=8, length=12)
    assert sorted(modes.tolist()) == [-1.0] * 4 + [1.0] * 4
    dm = DemoDataModule(str(path), batch_size=8, val_ratio=0.0, **HORIZONS)
    dm.setup("fit")
    assert len(dm.train_set) > 0
