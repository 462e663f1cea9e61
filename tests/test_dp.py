"""Diffusion Policy baseline: UNet, policy protocol, Lightning training through the CLI, checkpoints."""

from __future__ import annotations

import sys
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import EMAWeightAveraging

from mepoly_il.cli import main as cli_main
from mepoly_il.data.datamodule import DemoDataModule
from mepoly_il.data.synthetic import make_synthetic_dataset
from mepoly_il.errors import UserError
from mepoly_il.policies import load_policy, read_checkpoint
from mepoly_il.policies.diffusion.lightning import DiffusionModule
from mepoly_il.policies.diffusion.policy import DiffusionPolicy
from mepoly_il.policies.diffusion.unet import ConditionalUnet1D

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "dp" / "cpu.yaml"
# The synthetic datasets' env id is not a registered task, so `fit` needs their horizons on the command line.
HORIZONS = ["--data.obs_horizon", "2", "--data.act_horizon", "8", "--data.pred_horizon", "16"]
SMALL = {"down_dims": [16, 32, 64], "diffusion_step_embed_dim": 16}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("dp") / "syn.zarr", num_episodes=8, obs_dim=5, act_dim=3)


@pytest.fixture
def restore_argv():
    saved = list(sys.argv)
    yield
    sys.argv[:] = saved


def test_unet_shapes_and_baseline_size():
    torch.manual_seed(0)
    unet = ConditionalUnet1D(act_dim=4, cond_dim=2 * 35)
    out = unet(torch.randn(3, 16, 4), torch.tensor([0, 50, 99]), torch.randn(3, 70))
    assert out.shape == (3, 16, 4)
    # ManiSkill's state DP for PushCube (obs 35, act 4, To 2, widths 64/128/256) has 4.34M parameters.
    assert sum(p.numel() for p in unet.parameters()) == pytest.approx(4.34e6, rel=0.01)
    # the condition reaches the output (FiLM): changing only the observation changes the prediction
    x, t = torch.randn(1, 16, 4), torch.tensor([10])
    assert not torch.allclose(unet(x, t, torch.zeros(1, 70)), unet(x, t, torch.ones(1, 70)))


def _count_unet_calls(policy: DiffusionPolicy, obs: torch.Tensor) -> int:
    calls = []
    handle = policy.unet.register_forward_hook(lambda *a: calls.append(1))
    try:
        policy.predict_action_chunk(obs)
    finally:
        handle.remove()
    return len(calls)


def test_ddpm_and_ddim_step_counts():
    policy = DiffusionPolicy(5, 3, 2, 4, 8, **SMALL).eval()
    obs = torch.randn(2, 2, 5)
    assert _count_unet_calls(policy, obs) == 100
    for k in (10, 7, 1):
        policy.set_inference("ddim", k)
        assert _count_unet_calls(policy, obs) == k
    chunk = policy.predict_action_chunk(obs)
    assert chunk.shape == (2, 4, 3)
    # actions are clipped to the normalized box before unnormalizing with identity bounds
    assert chunk.abs().max() <= 1.0


def test_select_action_replans_every_act_horizon():
    policy = DiffusionPolicy(5, 3, 2, 4, 8, inference="ddim", num_inference_steps=2, **SMALL).eval()
    policy.reset()
    calls = []
    policy.unet.register_forward_hook(lambda *a: calls.append(1))
    for _ in range(8):
        assert policy.select_action(torch.randn(3, 5)).shape == (3, 3)
    assert len(calls) == 2 * 2  # two chunks of 4 actions, 2 denoising steps each


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"inference": "ddim", "num_inference_steps": 200}, "num_inference_steps=200"),
        ({"inference": "ddpm", "num_inference_steps": 10}, "inference='ddim'"),
        ({"inference": "dpm"}, "inference='dpm'"),
        ({"down_dims": [12, 24]}, "n_groups=8"),
        ({"beta_schedule": "cosine"}, "beta_schedule='cosine'"),
    ],
)
def test_bad_policy_config_fails_clearly(kwargs, needle):
    with pytest.raises(UserError, match=needle.replace("(", r"\(").replace("[", r"\[")):
        DiffusionPolicy(5, 3, 2, 4, 8, **{**SMALL, **kwargs})


def fit_dp(dataset: Path, *args: str) -> int:
    """``mepoly-il fit dp`` with the CPU config on ``dataset``, in process; returns the exit code."""
    return cli_main(["fit", "dp", "--config", str(CONFIG), "--data.path", str(dataset), *HORIZONS, *args])


def test_bad_pred_horizon_via_cli(dataset, restore_argv, capsys):
    rc = fit_dp(dataset, "--data.pred_horizon", "10", "--data.act_horizon", "4", "--trainer.fast_dev_run", "true")
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert "data.pred_horizon=10 is not divisible by 4" in err[-1]


def test_fast_dev_run_cli(dataset, restore_argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc = fit_dp(dataset, "--trainer.fast_dev_run", "true", "--data.batch_size", "16")
    assert rc == 0
    assert "DP parameters:" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_fit_writes_checkpoint_that_loads_and_acts(dataset, restore_argv, tmp_path):
    root = tmp_path / "run"
    rc = fit_dp(
        dataset, "--trainer.max_steps", "3", "--trainer.default_root_dir", str(root), "--data.batch_size", "16",
        "--trainer.val_check_interval", "2", "--model.policy.inference", "ddim", "--model.policy.num_inference_steps",
        "4",
    )  # fmt: skip
    assert rc == 0
    ckpt = root / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    assert list((root / "lightning_logs").glob("version_*/metrics.csv"))
    policy = load_policy(ckpt)
    assert policy.meta["dataset"]["env_id"] == "Synthetic-v0"
    assert (policy.inference, policy.num_inference_steps) == ("ddim", 4)
    policy.reset()
    assert policy.select_action(torch.zeros(2, 5)).shape == (2, 3)


def test_print_config_shows_parameter_count(dataset, restore_argv, capsys):
    with pytest.raises(SystemExit) as exc:
        cli_main(["fit", "dp", "--config", str(CONFIG), "--data.path", str(dataset), *HORIZONS, "--print_config"])
    assert exc.value.code in (0, None)
    out = capsys.readouterr()
    down_dims = yaml.safe_load(CONFIG.read_text())["model"]["policy"]["down_dims"]
    expected = sum(p.numel() for p in ConditionalUnet1D(3, 2 * 5, down_dims).parameters())
    assert f"DP parameters: {expected:,}" in out.err
    assert "down_dims:" in out.out  # stdout stays the YAML config


def quiet_trainer(steps: int, ema: EMAWeightAveraging) -> pl.Trainer:
    return pl.Trainer(
        max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, callbacks=[ema],
    )  # fmt: skip


@pytest.mark.parametrize("normalize_obs", [True, False])
def test_train_save_load_identical_actions(dataset, tmp_path, normalize_obs):
    """Train a few steps with EMA, save, load_policy: same actions for the same noise seed; bounds round-trip."""
    dm = DemoDataModule(str(dataset), obs_horizon=2, act_horizon=4, pred_horizon=8, batch_size=32)
    model = DiffusionModule(
        dict(obs_dim=dm.obs_dim, act_dim=dm.act_dim, obs_horizon=2, act_horizon=4, pred_horizon=8, **SMALL),
        normalize_obs=normalize_obs,
        warmup_steps=2,
    )
    trainer = quiet_trainer(4, EMAWeightAveraging(decay=0.5))
    trainer.fit(model, dm)
    ckpt_path = tmp_path / "dp.ckpt"
    trainer.save_checkpoint(ckpt_path)

    ckpt = read_checkpoint(ckpt_path)  # weights_only load: hyperparameters are primitives
    assert ckpt["mepoly_il"]["policy"] == "dp"
    # hyperparameters live in mepoly_il.policy_config, so `--ckpt_path` resumes cannot override the command line
    assert "hyper_parameters" not in ckpt and ckpt["mepoly_il"]["policy_config"]["down_dims"] == SMALL["down_dims"]
    assert ckpt["mepoly_il"]["dataset"]["episode_seeds"] == list(range(8))
    loaded = load_policy(ckpt_path)
    assert isinstance(loaded, DiffusionPolicy) and not loaded.training
    np.testing.assert_allclose(loaded.act_normalizer.lo.numpy(), dm.act_bounds[0])
    if normalize_obs:
        np.testing.assert_allclose(loaded.obs_normalizer.hi.numpy(), dm.obs_bounds[1])
    else:  # raw observations: identity bounds
        assert torch.equal(loaded.obs_normalizer.lo, -torch.ones(dm.obs_dim))

    # the weights that were saved are the EMA weights the trained module acts with
    live = model.policy.eval()
    obs = torch.randn(3, 2, dm.obs_dim)
    torch.manual_seed(7)
    a = live.predict_action_chunk(obs)
    torch.manual_seed(7)
    b = loaded.predict_action_chunk(obs)
    torch.manual_seed(8)
    c = loaded.predict_action_chunk(obs)
    assert a.shape == (3, 4, dm.act_dim)
    assert torch.equal(a, b)
    assert not torch.equal(b, c)  # DDPM sampling is stochastic: the seed matters
    lo, hi = dm.act_bounds
    assert bool(((b >= torch.from_numpy(lo) - 1e-5) & (b <= torch.from_numpy(hi) + 1e-5)).all())


def test_checkpoint_before_first_ema_update_keeps_dataset_bounds(dataset, tmp_path):
    """The EMA copy is made before the module sets its normalizers; it must still carry the dataset bounds."""
    dm = DemoDataModule(str(dataset), obs_horizon=2, act_horizon=4, pred_horizon=8, batch_size=32)
    model = DiffusionModule(
        dict(obs_dim=dm.obs_dim, act_dim=dm.act_dim, obs_horizon=2, act_horizon=4, pred_horizon=8, **SMALL)
    )
    trainer = quiet_trainer(2, EMAWeightAveraging(decay=0.9, update_starting_at_step=100))
    trainer.fit(model, dm)
    trainer.save_checkpoint(tmp_path / "early.ckpt")
    loaded = load_policy(tmp_path / "early.ckpt")
    np.testing.assert_allclose(loaded.act_normalizer.hi.numpy(), dm.act_bounds[1])
    np.testing.assert_allclose(loaded.obs_normalizer.lo.numpy(), dm.obs_bounds[0])
