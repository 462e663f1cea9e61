"""End to end through the command line: a tiny trained policy evaluated in the real simulator (CPU).

`mepoly-il fit dp` (with the EvalCallback added on the command line) -> `mepoly-il eval run` (2 episodes, 1 video)
-> `mepoly-il eval summary`; plus the refusal of evaluation seeds that are demonstration seeds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import imageio.v2 as imageio
import pytest
import torch

from mepoly_il.cli import main as cli_main
from mepoly_il.data.synthetic import make_synthetic_dataset
from mepoly_il.utils import sha256_file

pytestmark = [pytest.mark.sim, pytest.mark.slow]

MEPOLY_IL = [sys.executable, "-m", "mepoly_il"]
# reconfiguration_freq 0: same initial states on these tasks, 0.17 s less per episode.
EVAL_RUN = [
    "eval",
    "run",
    "run",
    "--episodes",
    "2",
    "--max-episode-steps",
    "10",
    "--out",
    "ev",
    "--reconfiguration-freq",
    "0",
]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _run(args: list[str], cwd: Path, expect: int = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run([*MEPOLY_IL, *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)
    tail = f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert proc.returncode == expect, f"{args[:2]} exited {proc.returncode}\n{tail}"
    return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A DP trained for 4 steps on 3 synthetic episodes with PushCube-v1's dimensions (state 35, action 4)."""
    work = tmp_path_factory.mktemp("e2e")
    make_synthetic_dataset(work / "push.zarr", num_episodes=3, obs_dim=35, act_dim=4, env_id="PushCube-v1")
    _run(
        [
            "fit",
            "dp",
            "--data.path",
            "push.zarr",
            "--data.batch_size",
            "16",
            "--data.val_ratio",
            "0",
            "--data.act_horizon",
            "4",
            "--data.pred_horizon",
            "8",
            "--model.policy.down_dims",
            "[8,16,32]",
            "--model.policy.diffusion_step_embed_dim",
            "8",
            "--model.policy.inference",
            "ddim",
            "--model.policy.num_inference_steps",
            "4",
            "--model.warmup_steps",
            "1",
            "--seed_everything",
            "5",
            "--trainer.max_steps",
            "4",
            "--trainer.default_root_dir",
            "run",
            "--trainer.accelerator",
            "cpu",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
            "--trainer.callbacks.every_n_train_steps",
            "2",
            "--trainer.callbacks.save_top_k",
            "-1",
            "--trainer.callbacks.save_last",
            "true",
            "--trainer.callbacks+=lightning.pytorch.callbacks.EMAWeightAveraging",
            "--trainer.callbacks+=mepoly_il.eval.callback.EvalCallback",
            "--trainer.callbacks.every_n_steps",
            "2",
            "--trainer.callbacks.episodes",
            "2",
            "--trainer.callbacks.max_episode_steps",
            "10",
            "--trainer.callbacks.reconfiguration_freq",
            "0",
        ],
        cwd=work,
    )
    return work


def test_training_time_evaluations_from_the_cli(trained):
    (log,) = list((trained / "run").rglob("eval_during_training.json"))
    data = json.loads(log.read_text())
    assert [r["global_step"] for r in data["rows"]] == [2, 4]
    assert data["provenance"]["train_seed"] == 5 and data["provenance"]["method"] == "dp"
    assert all(r["weights"] == "ema" for r in data["rows"])


def test_eval_run_writes_eval_info_and_video(trained, capsys):
    _run(EVAL_RUN, cwd=trained)
    infos = sorted((trained / "ev").rglob("eval_info.json"))
    # step 2, step 4; last.ckpt duplicates step 4 and is skipped
    steps = [json.loads(p.read_text())["provenance"]["global_step"] for p in infos]
    assert sorted(steps) == [2, 4] and len(infos) == 2
    info = json.loads(infos[0].read_text())
    rows = info["per_episode"]
    assert [r["seed"] for r in rows] == [1_000_000, 1_000_001]
    assert all(r["episode_len"] == 10 and r["success_once"] >= r["success_at_end"] for r in rows)
    agg, prov = info["aggregated"], info["provenance"]
    assert agg["n_episodes"] == 2 and agg["success_once"] == sum(r["success_once"] for r in rows) / 2
    assert prov["checkpoint_sha256"] == sha256_file(trained / prov["checkpoint"])
    assert prov["env_id"] == "PushCube-v1" and prov["control_mode"] == "pd_ee_delta_pos"
    assert prov["sim_backend"] == "physx_cpu" and prov["train_seed"] == 5 and prov["policy"] == "dp"
    assert prov["config"]["policy"]["down_dims"] == [8, 16, 32] and prov["code_version"]["mepoly_il"]
    assert info["video_paths"] == []
    # Re-running with the same settings reuses the results instead of re-rolling.
    again = _run(EVAL_RUN, cwd=trained)
    assert again.stdout.count("cached") == 2

    # summaries in-process (no simulator involved): training log in run/, checkpoint evaluations in ev/
    dirs = [str(trained / "run"), str(trained / "ev")]
    assert cli_main(["eval", "summary", *dirs, "--out", str(trained / "sum")]) == 0
    assert "| PushCube-v1 | dp | 1 |" in capsys.readouterr().out
    data = json.loads((trained / "sum" / "summary.json").read_text())
    assert data["groups"][0]["per_seed"][0]["source"] == "training"  # the callback's log wins in auto mode
    assert cli_main(["eval", "summary", *dirs, "--out", str(trained / "sum2"), "--source", "checkpoints"]) == 0
    data = json.loads((trained / "sum2" / "summary.json").read_text())
    assert data["groups"][0]["per_seed"][0]["n_points"] == 2


def test_eval_video(trained):
    ckpt = next((trained / "run").rglob("last.ckpt"))
    _run(
        ["eval", "run", str(ckpt), "--episodes", "1", "--max-episode-steps", "4", "--video", "1", "--out", "vid"],
        cwd=trained,
    )
    info = json.loads((trained / "vid" / "last" / "eval_info.json").read_text())
    (video,) = info["video_paths"]
    assert video == "videos/episode_0000_seed1000000.mp4"
    frames = imageio.mimread(trained / "vid" / "last" / video)
    assert len(frames) == 5 and frames[0].shape == (128, 128, 3)  # reset frame + 4 steps
    assert max(float(f.std()) for f in frames) > 1.0  # a rendered scene, not a blank image


def test_eval_refuses_demo_seeds(trained):
    src = next((trained / "run").rglob("last.ckpt"))
    ckpt = torch.load(src, map_location="cpu", weights_only=True)
    ckpt["mepoly_il"]["dataset"]["episode_seeds"] = [0, 1, 1_000_001]
    torch.save(ckpt, trained / "leaky.ckpt")
    proc = _run(["eval", "run", "leaky.ckpt", "--episodes", "2"], cwd=trained, expect=2)
    assert "1 evaluation seed(s) are demonstration seeds" in proc.stderr and "1000001" in proc.stderr
    assert not (trained / "eval").exists()  # nothing written


def test_eval_killed_then_rerun_equals_the_uninterrupted_run(trained):
    """SIGKILL `eval run` after its first checkpoint's results are written; the same command again completes the
    rest, and every result equals an uninterrupted run's, with no temporary or half-written file left behind."""
    import signal
    import time

    args = [*EVAL_RUN[:3], "--episodes", "4", *EVAL_RUN[5:]]
    killed_args = [a if a != "ev" else "ev_killed" for a in args]
    proc = subprocess.Popen(
        [*MEPOLY_IL, *killed_args],
        cwd=trained,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if list((trained / "ev_killed").rglob("eval_info.json")):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "eval run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    out = trained / "ev_killed"
    assert len(list(out.rglob("eval_info.json"))) == 1  # one checkpoint done, the other interrupted
    for info in out.rglob("eval_info.json"):
        json.loads(info.read_text())  # complete, parseable
    again = _run(killed_args, cwd=trained)
    assert again.stdout.count("cached") == 1  # the finished checkpoint is reused, the other one is evaluated
    _run([a if a != "ev" else "ev_full" for a in args], cwd=trained)

    def results(root: Path) -> dict[int, list]:
        infos = [json.loads(p.read_text()) for p in root.rglob("eval_info.json")]
        return {i["provenance"]["global_step"]: i["per_episode"] for i in infos}

    assert results(out) == results(trained / "ev_full") and len(results(out)) == 2
    assert not [p for p in out.rglob("*") if p.name.startswith(".tmp")]
