"""eval/**/*.sh: valid bash; eval/table1*.sh: the command sequence they would run (DRY_RUN, nothing executed)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script, scale", [("table1.sh", "paper"), ("table1_cpu.sh", "cpu")])
def test_table1_scripts_dry_run(script, scale, tmp_path):
    path = REPO / "eval" / script
    subprocess.run(["bash", "-n", str(path)], check=True)
    env = {**os.environ, "DRY_RUN": "1", "SEEDS": "0 1 2", "TASKS": "PushCube-v1 StackCube-v1"}
    proc = subprocess.run(["bash", str(path)], cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    cmds = [line[2:] for line in proc.stdout.splitlines() if line.startswith("+ ")]
    fits = [c for c in cmds if " fit " in c]
    assert len(fits) == 2 * 3 * 3  # tasks x seeds x (stage1, stage2, dp)
    for task in ("PushCube-v1", "StackCube-v1"):
        assert f"mepoly-il data prepare --env-id {task} --num-demos 100 --out datasets/{task}.zarr" in cmds
        for seed in (0, 1, 2):
            root = f"seed{seed} --seed_everything {seed}"
            s1, s2, dp = (c for c in fits if f"/{task}/seed{seed} " in c)
            assert s1.startswith(f"mepoly-il fit stage1 --config configs/stage1/{scale}.yaml") and root in s1
            assert f"configs/stage2/{scale}.yaml" in s2 and "--model.stage1_ckpt" in s2
            assert f"/stage1/{task}/seed{seed}/" in s2 and "EvalCallback" in s2 and root in s2
            assert f"configs/dp/{scale}.yaml" in dp and "EvalCallback" in dp and root in dp
            assert "EvalCallback" not in s1  # stage 1 cannot act
    assert cmds[-1].startswith("mepoly-il eval summary") and "--source training" in cmds[-1]


def test_table1_cpu_passes_stage1_options_and_stackcube_dp_acts_with_ddim(tmp_path):
    env = {
        **os.environ,
        "DRY_RUN": "1",
        "SEEDS": "0",
        "TASKS": "StackCube-v1",
        "STAGE1_ARGS": "--model.iso_norm batch --model.recon_reduction mean",
    }
    path = REPO / "eval" / "table1_cpu.sh"
    proc = subprocess.run(["bash", str(path)], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    cmds = [line[2:] for line in proc.stdout.splitlines() if line.startswith("+ ")]
    (s1,) = (c for c in cmds if " fit stage1 " in c)
    (s2,) = (c for c in cmds if " fit stage2 " in c)
    (dp,) = (c for c in cmds if " fit dp " in c)
    assert s1.endswith("--model.iso_norm batch --model.recon_reduction mean") and "iso_norm" not in s2
    assert "--config configs/dp/cpu.yaml --config configs/dp/StackCube-v1-cpu.yaml" in dp
    task_cfg = (REPO / "configs" / "dp" / "StackCube-v1-cpu.yaml").read_text()
    assert "inference: ddim" in task_cfg and "num_inference_steps: 10" in task_cfg


@pytest.mark.parametrize("path", sorted((REPO / "eval").rglob("*.sh")), ids=lambda p: str(p.relative_to(REPO)))
def test_every_eval_script_is_valid_bash(path):
    """The experiment scripts (most run for hours and are not executed in tests) at least parse."""
    proc = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
