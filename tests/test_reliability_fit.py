"""`fit` that loses nothing: exact resume, run folders that never mix two runs, bad checkpoints and configs refused
in one line before anything is written, polynomial sizes checked before anything is allocated."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mepoly_il.data.datamodule import DemoDataModule
from mepoly_il.data.synthetic import make_synthetic_dataset
from mepoly_il.errors import UserError
from mepoly_il.policies import poly_size_problem
from mepoly_il.policies.mepoly.config import MePolyConfig

REPO = Path(__file__).resolve().parents[1]
HORIZONS = ["--data.obs_horizon", "2", "--data.act_horizon", "8", "--data.pred_horizon", "16"]
TINY = ["--model.policy.d_model", "16", "--model.policy.ff_dim", "32", "--model.policy.enc_layers", "1",
        "--model.policy.obs_layers", "1", "--model.policy.dec_layers", "1", *HORIZONS]  # fmt: skip


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("fit") / "d.zarr", num_episodes=6, length=(20, 26))


def _fit(kind: str, dataset: Path, root: Path, steps: int, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    argv = _fit_argv(kind, dataset, root, steps, *extra)
    return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def _fit_argv(kind: str, dataset: Path, root: Path, steps: int, *extra: str) -> list[str]:
    """A tiny ``fit {kind}`` run on ``dataset`` with two batches per epoch, so that runs stop at epoch ends or in
    the middle of one, where Lightning's own bookkeeping differs. The same optimisation for any max_steps
    (constant LR after the warm-up; DP's cosine schedule spans max_steps, so its runs keep one max_steps)."""
    dm = DemoDataModule(path=str(dataset), obs_horizon=2, act_horizon=8, pred_horizon=16, val_ratio=0.2)
    dm.setup("fit")
    model = {
        "stage1": [*TINY, "--model.warmup_steps", "2", "--model.lr_schedule", "constant"],
        "stage2": ["--model.policy.prior_hidden", "[16]", "--model.policy.poly_order", "4", *HORIZONS,
                   "--model.warmup_steps", "2", "--model.lr_schedule", "constant"],
        "dp": ["--model.policy.down_dims", "[16, 32]", "--model.policy.diffusion_step_embed_dim", "16",
               "--model.warmup_steps", "2", *HORIZONS],
    }[kind]  # fmt: skip
    return [
        sys.executable, "-m", "mepoly_il", "fit", kind, "--config", f"configs/{kind}/cpu.yaml",
        "--data.path", str(dataset), *model,
        "--data.batch_size", str(len(dm.train_set) // 2), "--data.val_ratio", "0.2",
        "--trainer.default_root_dir", str(root), "--trainer.max_steps", str(steps),
        "--trainer.val_check_interval", "2", "--trainer.log_every_n_steps", "1", *extra,
    ]  # fmt: skip


def _metrics(root: Path, versions: list[Path] | None = None) -> dict[tuple[int, str], str]:
    """(step, name) -> logged value over the metrics.csv of every (or the given) version of a run folder (a resumed
    run adds a version)."""
    out: dict[tuple[int, str], str] = {}
    for path in sorted(v / "metrics.csv" for v in versions or root.glob("lightning_logs/version_*")):
        with path.open() as f:
            for row in csv.DictReader(f):
                for name, value in row.items():
                    if name not in ("epoch", "step") and value != "":  # Lightning's epoch count differs on resume
                        key = (int(row["step"]), name)
                        assert out.setdefault(key, value) == value, f"{path}: {key} logged twice, differently"
    return out


def _weights_diff(a: Path, b: Path) -> float:
    """Largest absolute difference of the saved (EMA) and current weights of two checkpoints."""
    ca, cb = (torch.load(p, map_location="cpu", weights_only=True) for p in (a, b))
    assert ca["global_step"] == cb["global_step"]
    diff = 0.0
    for key in ("state_dict", "current_model_state"):
        assert ca[key].keys() == cb[key].keys()
        diff = max(diff, *((ca[key][k].float() - cb[key][k].float()).abs().max().item() for k in ca[key]))
    return diff


def _assert_resumes_exactly(kind: str, dataset: Path, whole: Path, tmp: Path, stop: int, steps: int, *extra: str):
    """``stop`` steps, then ``--ckpt_path last.ckpt`` up to ``steps``: the weights and every logged metric equal
    those of the uninterrupted run in ``whole``."""
    half = _fit(kind, dataset, tmp / "half", stop, *extra)
    assert half.returncode == 0, half.stderr[-3000:]
    last = tmp / "half" / "checkpoints" / "last.ckpt"
    resumed = _fit(kind, dataset, tmp / "half", steps, *extra, "--ckpt_path", str(last))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "dataloader is not resumable" not in resumed.stderr
    diff = _weights_diff(whole / "checkpoints" / "last.ckpt", last)
    assert diff == 0.0, f"{kind}: resumed weights differ by up to {diff:.3g}"
    a, b = _metrics(whole), _metrics(tmp / "half")
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))[:10]
    assert a == b, [(k, a[k], b[k]) for k in a if a[k] != b[k]][:10]


@pytest.fixture(scope="module")
def stage1_whole(dataset, tmp_path_factory) -> Path:
    """An uninterrupted 8-step stage-1 run, started with --overwrite over an earlier run's files."""
    root = tmp_path_factory.mktemp("stage1") / "whole"
    old = root / "checkpoints" / "step=0000030.ckpt"  # an earlier run in the same folder
    old.parent.mkdir(parents=True)
    old.write_bytes(b"old run")
    res = _fit("stage1", dataset, root, 8, "--overwrite")
    assert res.returncode == 0, res.stderr[-3000:]
    assert not old.exists() and not list(root.glob(".overwritten-*"))
    return root


def test_stage1_resume_mid_epoch_is_bit_exact(dataset, stage1_whole, tmp_path):
    _assert_resumes_exactly("stage1", dataset, stage1_whole, tmp_path, 3, 8)
    assert "mepoly_il_rng" in torch.load(tmp_path / "half" / "checkpoints" / "last.ckpt", weights_only=True)


@pytest.mark.slow
def test_stage2_resume_at_epoch_end_is_bit_exact(dataset, stage1_whole, tmp_path):
    s1 = ["--model.stage1_ckpt", str(stage1_whole / "checkpoints" / "last.ckpt")]
    whole = _fit("stage2", dataset, tmp_path / "whole", 8, *s1)
    assert whole.returncode == 0, whole.stderr[-3000:]
    _assert_resumes_exactly("stage2", dataset, tmp_path / "whole", tmp_path, 4, 8, *s1)


def _checkpoint_every(tmp: Path, steps: int, ema_decay: float) -> list[str]:
    """``--config`` of a callback list that also writes ``step=N.ckpt`` and ``last.ckpt`` every ``steps`` steps."""
    path = tmp / f"every{steps}.yaml"
    path.write_text(
        "trainer:\n  callbacks:\n"
        "    - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n"
        "      init_args: {filename: 'step={step:07d}', auto_insert_metric_name: false, save_top_k: -1,\n"
        f"                  every_n_train_steps: {steps}, save_last: true, enable_version_counter: false}}\n"
        "    - class_path: lightning.pytorch.callbacks.EMAWeightAveraging\n"
        f"      init_args: {{decay: {ema_decay}}}\n"
        "    - class_path: lightning.pytorch.callbacks.LearningRateMonitor\n"
        "      init_args: {logging_interval: step}\n"
    )
    return ["--config", str(path)]


@pytest.mark.slow
def test_dp_resume_from_a_mid_run_checkpoint_is_bit_exact(dataset, tmp_path):
    """DP's cosine LR spans max_steps, so the interruption is a checkpoint that the 8-step run itself wrote after
    step 4 (before that step's validation, which a resume skips)."""
    every2 = _checkpoint_every(tmp_path, 2, 0.999)
    whole = _fit("dp", dataset, tmp_path / "whole", 8, *every2)
    assert whole.returncode == 0, whole.stderr[-3000:]
    step4 = tmp_path / "whole" / "checkpoints" / "step=0000004.ckpt"
    resumed = _fit("dp", dataset, tmp_path / "resumed", 8, *every2, "--ckpt_path", str(step4))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    diff = _weights_diff(
        tmp_path / "whole" / "checkpoints" / "last.ckpt", tmp_path / "resumed" / "checkpoints" / "last.ckpt"
    )
    assert diff == 0.0, f"dp: resumed weights differ by up to {diff:.3g}"
    a, b = _metrics(tmp_path / "whole"), _metrics(tmp_path / "resumed")
    after = {k: v for k, v in a.items() if k[0] >= 4}
    assert b == after, sorted(set(b) ^ set(after))[:10] or [(k, after[k], b[k]) for k in b if b[k] != after[k]][:10]


@pytest.mark.slow
def test_fit_killed_then_resumed_equals_the_uninterrupted_run(dataset, tmp_path):
    """SIGKILL a stage-1 fit after its first periodic checkpoint, rerun it with --ckpt_path last.ckpt: the final
    weights and the metrics logged after the resume point equal the uninterrupted run's; no temporary file left."""
    every4 = _checkpoint_every(tmp_path, 4, 0.995)
    whole = _fit("stage1", dataset, tmp_path / "whole", 40, *every4)
    assert whole.returncode == 0, whole.stderr[-3000:]
    root = tmp_path / "killed"
    argv = _fit_argv("stage1", dataset, root, 40, *every4)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    last = root / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None and not last.exists():
        time.sleep(0.01)
    assert proc.poll() is None, "the fit finished (or failed) before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
    assert 4 <= killed_at < 40
    resumed = _fit("stage1", dataset, root, 40, *every4, "--ckpt_path", str(last))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    diff = _weights_diff(tmp_path / "whole" / "checkpoints" / "last.ckpt", last)
    assert diff == 0.0, f"killed at step {killed_at} and resumed: weights differ by up to {diff:.3g}"
    a = _metrics(tmp_path / "whole")
    versions = sorted(root.glob("lightning_logs/version_*"))
    b = _metrics(root, versions[-1:])  # the killed run's own metrics.csv may be cut short
    assert b == {k: v for k, v in a.items() if k[0] >= killed_at}
    assert sorted(p.name for p in (root / "checkpoints").iterdir() if not p.name.endswith(".ckpt")) == []


def test_overwrite_replaces_an_earlier_run_and_resume_in_place_is_allowed(dataset, tmp_path):
    root = tmp_path / "run"
    first = _fit("stage1", dataset, root, 2)
    assert first.returncode == 0, first.stderr[-3000:]
    (root / "checkpoints" / "step=0000900.ckpt").write_bytes((root / "checkpoints" / "last.ckpt").read_bytes())
    refused = _fit("stage1", dataset, root, 2)
    assert refused.returncode == 2 and "already holds the checkpoints of another run" in refused.stderr
    assert not (root / "lightning_logs" / "version_1").exists()  # refused before the Trainer made folders
    again = _fit("stage1", dataset, root, 2, "--overwrite")
    assert again.returncode == 0, again.stderr[-3000:]
    assert sorted(p.name for p in (root / "checkpoints").iterdir()) == ["last.ckpt"]
    assert sorted(p.name for p in (root / "lightning_logs").iterdir()) == ["version_0"]


def test_polynomial_size_is_checked_before_building():
    assert poly_size_problem(3, 8) is None  # the paper's setting
    problem = poly_size_problem(3, 200)
    assert "1,373,700 features" in problem and "use poly_order <= 21" in problem
    assert poly_size_problem(3, 21) is None and poly_size_problem(3, 22) is not None
    shape = dict(obs_dim=5, act_dim=3, obs_horizon=2, act_horizon=8, pred_horizon=16)
    with pytest.raises(UserError, match=r"poly_order 200 with latent_dim 3 .* use poly_order <= 21"):
        MePolyConfig(**shape, latent_dim=3, poly_order=200)
    assert MePolyConfig(**shape, latent_dim=3, poly_order=20).poly_order == 20


def test_epoch_batch_sampler_is_a_stream_resumable_at_any_batch():
    from mepoly_il.data.datamodule import EpochBatchSampler

    whole = EpochBatchSampler(10, 3, True, seed=5)
    stream = [b.tolist() for _ in range(3) for b in whole]  # three epochs of 3 batches, iterated plainly
    assert len(whole) == 3 and len(stream) == 9
    assert stream[:3] != stream[3:6]  # each epoch its own order
    for taken in range(9):  # a new sampler that starts where a consumer stopped gives the rest of that epoch
        again = EpochBatchSampler(10, 3, True, seed=5, start=lambda taken=taken: taken)
        assert [b.tolist() for b in again] == stream[taken : (taken // 3 + 1) * 3]
    rounded = EpochBatchSampler(10, 3, True, seed=5, start=lambda: 4, whole_epochs=True)
    assert [b.tolist() for b in rounded] == stream[3:6]
    other = EpochBatchSampler(10, 3, True, seed=6)
    assert [b.tolist() for b in other] != stream[:3]
