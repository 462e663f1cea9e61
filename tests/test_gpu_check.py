"""eval/gpu_check.py in its dry mode: the same core comparison, training steps and rollout on CPU, tiny sizes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "eval" / "gpu_check.py"


def _load():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.sim
@pytest.mark.slow
def test_gpu_check_dry_runs_every_part(tmp_path, capsys):
    out = tmp_path / "gc.json"
    assert _load().main(["--dry", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    core = res["core"]
    assert core["ok"] and core["max_abs_log_z"] <= res["tolerances"]["log_z"]
    assert set(res["train"]["rows"]) == {"dp", "stage1", "stage2"}
    assert all(r["steps_per_s"] > 0 for r in res["train"]["rows"].values())
    ev = res["eval"]
    assert ev["sim_backend"] == "physx_cpu" and ev["env_steps"] == ev["episodes"] * ev["max_episode_steps"]
    assert "| core cpu vs CPU float64 |" in capsys.readouterr().out


def test_gpu_check_without_cuda_refuses_in_one_line(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    assert _load().main(["--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no CUDA device is visible") and err.count("\n") == 1
    assert not (tmp_path / "x.json").exists()
