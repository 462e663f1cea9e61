"""2-iteration smoke runs of `mepoly-il rl ppo` per head and env kind, plus sweep/report and user errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mepoly_il.cli import main as cli_main
from mepoly_il.cli.rl import main as rl_main
from mepoly_il.errors import UserError

BANDIT_SMOKE = [
    "--iterations",
    "2",
    "--num-envs",
    "64",
    "--num-minibatches",
    "2",
    "--update-epochs",
    "2",
    "--eval-samples",
    "256",
    "--order",
    "6",
    "--quiet",
]
SW_SMOKE = [
    "--iterations",
    "2",
    "--num-envs",
    "8",
    "--num-steps",
    "8",
    "--num-minibatches",
    "2",
    "--update-epochs",
    "2",
    "--eval-episodes",
    "4",
    "--max-steps",
    "12",
    "--quiet",
]


@pytest.mark.parametrize("head", ["gaussian", "gmm", "mepoly", "fpo"])
def test_ppo_smoke_bandit(tmp_path, head):
    out = tmp_path / "run"
    assert (
        rl_main(
            [
                "ppo",
                "--env",
                "bandit-two-moons",
                "--head",
                head,
                "--seed",
                "1",
                "--out",
                str(out),
                *BANDIT_SMOKE,
            ]
        )
        == 0
    )
    m = json.loads((out / "metrics.json").read_text())
    assert m["env_steps"] == 128 and m["head"] == head and m["sigma"] == 0.1
    assert 0.0 < m["reward_mean"] <= 1.0 and m["num_samples"] == 256
    assert ("entropy_exact" in m) == (head == "mepoly")
    z = np.load(out / "samples.npz")
    assert z["actions"].shape == (256, 2) and np.abs(z["actions"]).max() <= 1.0
    assert (out / "checkpoints" / "final.pt").exists() and (out / "progress.csv").exists()
    assert any((out / "tb").iterdir())
    assert len((out / "progress.csv").read_text().strip().splitlines()) == 3


@pytest.mark.parametrize("head", ["gaussian", "gmm", "mepoly", "fpo"])
def test_ppo_smoke_smoothworld(tmp_path, head):
    out = tmp_path / "run"
    assert rl_main(["ppo", "--env", "smoothworld-two-slits", "--head", head, "--out", str(out), *SW_SMOKE]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["episodes"] == 4 and m["success_rate"] + m["death_rate"] + m["timeout_rate"] == pytest.approx(1.0)
    assert m["class_names"] == ["upper_slit", "lower_slit"]
    z = np.load(out / "samples.npz")
    assert z["traj"].shape == (4, 13, 2)


def test_every_layout_runs_and_errors_are_one_line(tmp_path, capsys):
    for layout in ("two_walls", "four_walls", "tree_in_the_middle", "cshape", "three_goals"):
        out = tmp_path / layout
        assert (
            rl_main(
                [
                    "ppo",
                    "--env",
                    f"smoothworld-{layout}",
                    "--head",
                    "gaussian",
                    "--out",
                    str(out),
                    *SW_SMOKE,
                    "--iterations",
                    "1",
                ]
            )
            == 0
        )
    with pytest.raises(UserError, match="unknown environment"):
        rl_main(["ppo", "--env", "bandit-spiral", "--head", "gmm", "--out", str(tmp_path / "x")])
    with pytest.raises(UserError, match="already exists"):
        rl_main(["ppo", "--env", "smoothworld-cshape", "--head", "gmm", "--out", str(tmp_path / "cshape")])
    assert (
        cli_main(
            [
                "rl",
                "ppo",
                "--env",
                "smoothworld-cshape",
                "--head",
                "fpo",
                "--out",
                str(tmp_path / "y"),
                "--num-envs",
                "3",
                "--num-steps",
                "5",
                "--num-minibatches",
                "2",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "divisible" in err
    assert not (tmp_path / "y").exists()


def test_sweep_and_report(tmp_path):
    root = tmp_path / "runs"
    assert (
        rl_main(
            [
                "sweep",
                "--envs",
                "bandit-lemniscate",
                "--heads",
                "mepoly",
                "--seeds",
                "0",
                "--out",
                str(root),
                "--variant",
                "mepoly-K6-legendre",
                "--",
                *BANDIT_SMOKE,
            ]
        )
        == 0
    )
    assert (
        rl_main(
            [
                "ppo",
                "--env",
                "smoothworld-two_walls",
                "--head",
                "mepoly",
                "--out",
                str(root / "sw" / "seed0"),
                *SW_SMOKE,
            ]
        )
        == 0
    )
    rep = tmp_path / "report"
    assert rl_main(["report", str(root), "--out", str(rep)]) == 0
    assert "mepoly-K6-legendre" in (rep / "ablation.md").read_text()
    assert "two_walls" in (rep / "smoothworld.md").read_text()
    for png in (
        "bandit_scatter.png",
        "ablation_scatter.png",
        "smoothworld_trajectories.png",
        "learning_curves_bandit.png",
        "learning_curves_smoothworld.png",
    ):
        assert (rep / png).stat().st_size > 1000, png
    assert len((rep / "runs.csv").read_text().strip().splitlines()) == 3


def test_bench_rl_smoke(tmp_path):
    from mepoly_il.cli.bench import main as bench_main

    out = tmp_path / "bench.json"
    assert (
        bench_main(
            [
                "rl",
                "--num-envs",
                "16",
                "--num-steps",
                "8",
                "--iterations",
                "2",
                "--orders",
                "2",
                "--nodes",
                "16",
                "--repeats",
                "1",
                "--rows",
                "32",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    res = json.loads(out.read_text())
    assert [r["head"] for r in res["heads"]] == ["gaussian", "gmm", "mepoly", "fpo"]
    assert all(r["iteration_s"] > 0 for r in res["heads"]) and res["mepoly"][0]["features"] == 5
