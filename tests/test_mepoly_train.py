"""MePoly two-stage training: the CLI end to end, freezing, overfitting, checkpoints, safe loading, bad
input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging

from mepoly_il.data.datamodule import DemoDataModule
from mepoly_il.data.synthetic import make_synthetic_dataset
from mepoly_il.errors import UserError
from mepoly_il.policies import load_policy, policy_state_dict, read_checkpoint
from mepoly_il.policies.mepoly.lightning import Stage1Module, Stage2Module
from mepoly_il.policies.mepoly.policy import policy_from_checkpoint

REPO = Path(__file__).resolve().parents[1]
# The synthetic datasets' env id is not a registered task, so `fit` needs their horizons on the command line.
HORIZONS = ["--data.obs_horizon", "2", "--data.act_horizon", "8", "--data.pred_horizon", "16"]
HORIZON_KW = dict(obs_horizon=2, act_horizon=8, pred_horizon=16)
TINY = ["--model.policy.d_model", "32", "--model.policy.ff_dim", "64", "--data.batch_size", "32", *HORIZONS]
TINY_KW = dict(d_model=32, ff_dim=64, dropout=0.0)
SHAPE = dict(obs_dim=5, act_dim=3, obs_horizon=2)  # what `fit` links from the data into model.policy
PRIOR = {**SHAPE, "act_horizon": 8, "pred_horizon": 16, "prior_hidden": [32, 32], "poly_order": 4}


def run_cli(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return subprocess.run(
        [sys.executable, "-m", "mepoly_il", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def trainer(tmp: Path, steps: int, **kw) -> L.Trainer:
    args = dict(
        max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp),
        limit_val_batches=0, num_sanity_val_steps=0,
    )  # fmt: skip
    args.update(kw)
    return L.Trainer(**args)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mepoly")


@pytest.fixture(scope="module")
def dataset(workdir) -> Path:
    return make_synthetic_dataset(workdir / "syn.zarr", num_episodes=6, obs_dim=5, act_dim=3, length=(20, 26))


@pytest.fixture(scope="module")
def stage1_ckpt(workdir, dataset) -> Path:
    """Stage 1 through the CLI with the shipped CPU config (20 steps, tiny width)."""
    root = workdir / "s1"
    res = run_cli(
        "fit", "stage1", "--config", "configs/stage1/cpu.yaml", "--data.path", str(dataset),
        "--trainer.default_root_dir", str(root), "--trainer.max_steps", "20",
        "--trainer.val_check_interval", "10", "--trainer.log_every_n_steps", "5",
        *TINY,
    )  # fmt: skip
    return _last_ckpt(res, root)


def _last_ckpt(res: subprocess.CompletedProcess, root: Path) -> Path:
    """The run's last.ckpt, after checking that the run succeeded quietly."""
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Previous log files" not in res.stderr  # the CSV logger joins the run quietly (run_layout.py)
    ckpt = root / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    return ckpt


@pytest.fixture(scope="module")
def stage2_ckpt(workdir, dataset, stage1_ckpt) -> Path:
    root = workdir / "s2"
    res = run_cli(
        "fit", "stage2", "--config", "configs/stage2/cpu.yaml", "--data.path", str(dataset),
        "--model.stage1_ckpt", str(stage1_ckpt), "--trainer.default_root_dir", str(root),
        "--trainer.max_steps", "6", "--trainer.val_check_interval", "3",
        "--model.policy.prior_hidden", "[32, 32]", "--model.policy.poly_order", "4", "--data.batch_size", "32",
        *HORIZONS,
    )  # fmt: skip
    return _last_ckpt(res, root)


def test_stage1_cli_run_writes_checkpoint_logs_and_latent_plot(stage1_ckpt):
    root = stage1_ckpt.parents[1]
    ckpt = torch.load(stage1_ckpt, map_location="cpu", weights_only=True)  # primitives only
    info = ckpt["mepoly_il"]
    assert info["stage"] == 1 and info["policy"] is None and info["format_version"] == 1
    assert info["dataset"]["episode_seeds"] == list(range(6))
    assert info["policy_config"]["d_model"] == 32 and info["policy_config"]["prior"] is None
    assert "hyper_parameters" not in ckpt  # resume must not override the command line (module docstring)
    assert "current_model_state" in ckpt  # EMA ran: state_dict holds the averaged weights
    logs = list(root.glob("lightning_logs/version_0/*"))
    names = {p.name for p in logs}
    assert {"metrics.csv", "latents.png", "config.yaml"} <= names
    assert any(n.startswith("events.out.tfevents") for n in names)
    header = (root / "lightning_logs/version_0/metrics.csv").read_text().splitlines()[0]
    for key in ("train/recon", "train/iso", "train/box", "train/kl", "train/frac_outside_box", "val/recon"):
        assert key in header
    assert (root / "lightning_logs/version_0/latents.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(UserError, match=r"stage-1 \(VAE\) checkpoint, not a policy"):
        load_policy(stage1_ckpt)
    with pytest.raises(UserError, match="stage-1 checkpoint"):
        policy_from_checkpoint(read_checkpoint(stage1_ckpt))


def test_resume_continues_in_place_and_keeps_command_line_overrides(stage1_ckpt, dataset, tmp_path):
    import shutil

    root = tmp_path / "s1"
    shutil.copytree(stage1_ckpt.parents[1], root)
    res = run_cli(
        "fit", "stage1", "--config", "configs/stage1/cpu.yaml", "--data.path", str(dataset),
        "--trainer.default_root_dir", str(root), "--trainer.max_steps", "24", "--model.beta_iso", "0.7",
        "--ckpt_path", str(root / "checkpoints" / "last.ckpt"), *TINY,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    ckpt = torch.load(root / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 24  # continued from step 20, in the same checkpoints/ folder
    assert ckpt["mepoly_il"]["hparams"]["beta_iso"] == 0.7  # the override was not replaced by the checkpoint's
    assert "beta_iso: 0.7" in (root / "lightning_logs" / "version_1" / "config.yaml").read_text()


def test_stage2_cli_checkpoint_loads_as_policy(stage2_ckpt, stage1_ckpt, dataset):
    policy = load_policy(stage2_ckpt)
    s1 = policy_state_dict(read_checkpoint(stage1_ckpt))
    frozen = [k for k in s1 if k.startswith(("action_encoder.", "latent_heads."))]
    assert frozen and all(torch.equal(policy.state_dict()[k], s1[k]) for k in frozen)
    assert (policy.obs_horizon, policy.act_horizon, policy.pred_horizon) == (2, 8, 16)
    assert policy.meta["dataset"]["env_id"] == "Synthetic-v0" and policy.meta["stage1"]["sha256"]
    dm = DemoDataModule(str(dataset), **HORIZON_KW)
    assert torch.allclose(policy.obs_normalizer.lo, torch.as_tensor(dm.obs_bounds[0]))
    policy.reset()
    act = policy.select_action(torch.zeros(2, 5))
    assert act.shape == (2, 3) and torch.isfinite(act).all()


@pytest.mark.slow
def test_cli_fast_dev_run_both_stages(dataset, stage1_ckpt, tmp_path):
    res = run_cli("fit", "stage1", "--data.path", str(dataset), "--trainer.fast_dev_run", "true",
                  "--trainer.default_root_dir", str(tmp_path / "a"), *TINY)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    res = run_cli("fit", "stage2", "--data.path", str(dataset), "--model.stage1_ckpt", str(stage1_ckpt),
                  "--trainer.fast_dev_run", "true", "--trainer.default_root_dir", str(tmp_path / "b"),
                  "--model.policy.prior_hidden", "[32, 32]", "--model.policy.prior", "gmm", *HORIZONS)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]


def test_print_config_shows_every_stage2_option(dataset, stage1_ckpt):
    res = run_cli("fit", "stage2", "--config", "configs/stage2/cpu.yaml", "--print_config")
    assert res.returncode == 0, res.stderr[-2000:]
    for key in (
        "stage1_ckpt:",
        "alpha:",
        "gamma:",
        "lr_decoder:",
        "decoder_grad_clip:",
        "EMAWeightAveraging",
    ):
        assert key in res.stdout


def test_stage2_freezes_encoder_bit_identically_and_moves_decoder(dataset, stage1_ckpt, tmp_path):
    s1 = policy_state_dict(read_checkpoint(stage1_ckpt))
    module = Stage2Module(str(stage1_ckpt), policy=PRIOR, lr_decoder=1e-3)
    dm = DemoDataModule(str(dataset), batch_size=32, **HORIZON_KW)
    trainer(tmp_path, 5, callbacks=[EMAWeightAveraging(decay=0.9)]).fit(module, dm)
    after = module.policy.state_dict()
    frozen = [k for k in s1 if k.startswith(("action_encoder.", "latent_heads."))]
    assert frozen and all(torch.equal(after[k], s1[k]) for k in frozen)
    moved = [k for k in s1 if k.startswith("decoder.") and not torch.equal(after[k], s1[k])]
    assert moved, "the decoder was not updated in stage 2"
    assert not module.policy.action_encoder.training  # kept in eval mode although Lightning called train()


@pytest.mark.parametrize("every", [1, 2])
def test_foreach_ema_callback_gives_lightnings_weights_bit_for_bit(dataset, tmp_path, every):
    from mepoly_il.policies.ema import EMAWeightAveraging as ForeachEMA

    weights = []
    for callback in (EMAWeightAveraging, ForeachEMA):
        torch.manual_seed(0)
        module = Stage1Module({**SHAPE, **HORIZON_KW, **TINY_KW}, latent_plot_samples=0)
        dm = DemoDataModule(str(dataset), batch_size=32, val_ratio=0.0, **HORIZON_KW)
        ema = callback(decay=0.9, update_every_n_steps=every)
        trainer(tmp_path / callback.__module__, 6, callbacks=[ema]).fit(module, dm)
        weights.append(module.state_dict())  # the EMA weights, copied in at the end of training
    lightning, ours = weights
    assert lightning.keys() == ours.keys()
    assert all(torch.equal(lightning[k], ours[k]) for k in lightning)
    # the same key for the callback's state in checkpoints: a run started with Lightning's class resumes with ours
    assert ForeachEMA(decay=0.9).state_key == EMAWeightAveraging(decay=0.9).state_key


def test_save_load_gives_identical_actions(dataset, stage1_ckpt, tmp_path):
    module = Stage2Module(str(stage1_ckpt), policy=PRIOR)
    dm = DemoDataModule(str(dataset), batch_size=32, **HORIZON_KW)
    tr = trainer(tmp_path, 3, callbacks=[EMAWeightAveraging(decay=0.9)])
    tr.fit(module, dm)
    path = tmp_path / "s2.ckpt"
    tr.save_checkpoint(path)
    loaded = load_policy(path)
    policy = module.policy.eval()
    obs = torch.randn(3, 2, 5)
    torch.manual_seed(7)
    a = policy.predict_action_chunk(obs)
    torch.manual_seed(7)
    b = loaded.predict_action_chunk(obs)
    assert torch.equal(a, b)


@pytest.mark.slow
def test_stage1_overfits_a_tiny_dataset(tmp_path):
    path = make_synthetic_dataset(tmp_path / "tiny.zarr", num_episodes=2, length=(20, 20), seed=1)
    module = Stage1Module(
        {**SHAPE, "act_horizon": 8, "pred_horizon": 16, **TINY_KW}, lr=2e-3, warmup_steps=10, latent_plot_samples=0
    )
    dm = DemoDataModule(str(path), batch_size=64, val_ratio=0.0, **HORIZON_KW)
    trainer(tmp_path, 250).fit(module, dm)
    dm.setup("fit")
    batch = dm.train_set[list(range(len(dm.train_set)))]
    module.eval()
    with torch.no_grad():
        out = module._losses(batch, sample=False)
    assert out["recon"].item() < 0.01, out


def test_stage2_rejects_missing_or_mismatched_stage1(dataset, stage1_ckpt, tmp_path):
    with pytest.raises(UserError, match="nope.ckpt: file not found"):
        Stage2Module(str(tmp_path / "nope.ckpt"), policy=PRIOR)
    other = make_synthetic_dataset(tmp_path / "wide.zarr", num_episodes=3, obs_dim=7)
    res = run_cli(
        "fit", "stage2", "--data.path", str(other), "--model.stage1_ckpt", str(stage1_ckpt),
        "--trainer.fast_dev_run", "true", "--trainer.default_root_dir", str(tmp_path / "x"), *HORIZONS,
    )  # fmt: skip
    assert res.returncode == 2
    err = res.stderr.strip().splitlines()[-1]
    assert "obs_dim=5" in err and "obs_dim=7" in err and str(stage1_ckpt) in err and "wide.zarr" in err


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.ckpt"
    torch.save({"mepoly_il": {"policy": "mepoly"}, "state_dict": {}, "payload": Evil()}, path)
    with pytest.raises(UserError, match="refused"):
        load_policy(path)
    assert not marker.exists()


@pytest.mark.slow
def test_ddp_two_cpu_processes(dataset, tmp_path):
    res = run_cli(
        "fit", "stage1", "--config", "configs/stage1/cpu.yaml", "--data.path", str(dataset),
        "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
        "--trainer.max_steps", "2", "--trainer.default_root_dir", str(tmp_path),
        "--model.latent_plot_samples", "64", *TINY,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Starting with 2 processes" in res.stdout + res.stderr
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2 and ckpt["mepoly_il"]["stage"] == 1
