"""Tiny-budget runs of `mepoly-il rl sac | s2ac | rpg`: the files `rl report` reads, one report over PPO and SAC
runs, one-line errors, and the field docs in --help."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from mepoly_il.cli import main as cli_main
from mepoly_il.cli.rl import main as rl_main

# 4 vectorised steps of 32 envs: 2 of random actions, then 2 gradient steps
SAC_BANDIT = [
    "--total-steps",
    "128",
    "--num-envs",
    "32",
    "--learning-starts",
    "64",
    "--batch-size",
    "32",
    "--log-every",
    "64",
    "--hidden",
    "16",
    "--eval-samples",
    "256",
    "--quiet",
]
MULTIGOAL = [
    "--total-steps",
    "60",
    "--num-envs",
    "10",
    "--learning-starts",
    "30",
    "--batch-size",
    "16",
    "--log-every",
    "30",
    "--hidden",
    "16",
    "--eval-episodes",
    "100",
    "--quiet",
]


def _files(out) -> dict:
    """Assert the files of a finished run (those `rl ppo` writes); return its metrics."""
    for name in ("config.json", "metrics.json", "progress.csv", "samples.npz", "checkpoints/final.pt"):
        assert (out / name).is_file(), name
    with open(out / "progress.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and "env_steps" in rows[0] and "episode_return" in rows[0]
    m = json.loads((out / "metrics.json").read_text())
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["env"] == m["env"] and cfg["seed"] == m["seed"] and cfg["method"] == m["method"]
    return m


@pytest.mark.parametrize(
    "head, extra, estimator",
    [("gaussian", [], "rp"), ("gmm", [], "mrp"), ("gmm", ["--estimator", "lr"], "lr"), ("mepoly", [], "quadrature")],
)
def test_sac_bandit_heads(tmp_path, head, extra, estimator):
    out = tmp_path / "run"
    args = ["sac", "--env", "bandit-lemniscate", "--head", head, "--seed", "2", "--out", str(out), *SAC_BANDIT]
    assert rl_main([*args, "--order", "4", *extra]) == 0
    m = _files(out)
    assert m["method"] == "sac" and m["head"] == head and m["seed"] == 2 and m["env_steps"] == 128
    suffix = "mepoly-K4-legendre" if head == "mepoly" else head
    assert m["variant"] == f"sac-{suffix}-{estimator}"
    assert json.loads((out / "config.json").read_text())["sac"]["estimator"] == estimator
    assert 0.0 < m["reward_mean"] <= 1.0 and m["num_samples"] == 256
    assert ("entropy_exact" in m) == (head == "mepoly")
    z = np.load(out / "samples.npz")
    assert z["actions"].shape == (256, 2) and np.abs(z["actions"]).max() <= 1.0


def test_sac_multigoal_goal_shares(tmp_path):
    out = tmp_path / "mg"
    assert rl_main(["sac", "--env", "multigoal", "--head", "gaussian", "--out", str(out), *MULTIGOAL]) == 0
    m = _files(out)
    assert m["goal_names"] == ["G1", "G2", "G3", "timeout"] and sum(m["goal_hits"]) == 100
    assert sum(m["goal_shares"]) == pytest.approx(1.0)
    assert m["left_goals_share"] == pytest.approx(m["goal_shares"][1] + m["goal_shares"][2])
    assert m["success_rate"] == pytest.approx(1.0 - m["timeout_rate"])
    z = np.load(out / "samples.npz")
    assert z["goal"].shape == (100,) and ((z["goal"] >= -1) & (z["goal"] <= 2)).all()
    assert z["traj"].shape == (100, 31, 2) and np.allclose(z["traj"][:, 0], 0.0)
    # an episode's recorded path ends where its goal (or the time limit) ended it
    for g, length, tr in zip(z["goal"], z["length"], z["traj"]):
        assert not np.isnan(tr[length]).any() and np.isnan(tr[length + 1 :]).all()
        if g >= 0:
            assert np.linalg.norm(tr[length] - [[5, 0], [-4, 3], [-4, -3]][g]) < 0.5


def test_eval_multigoal_scripted_policy():
    """A policy that walks right at full speed hits G1 = (5, 0) on step 5; one going up times out."""
    import torch

    from mepoly_il.eval.rl_eval import EvalView, eval_multigoal

    class Walk:
        def __init__(self, direction):
            self.direction = torch.tensor(direction)

        def act_eval(self, obs):
            return self.direction.expand(obs.shape[0], 2)

    m, z = eval_multigoal(EvalView(Walk([1.0, 0.0])), 120, seed=0, max_steps=30)
    assert m["goal_hits"] == [120, 0, 0, 0] and m["left_goals_share"] == 0.0 and (z["length"] == 5).all()
    assert np.allclose(z["traj"][0, :6, 0], np.arange(6)) and np.isnan(z["traj"][:, 6:]).all()
    # per step: action cost 30 * |a|^2 and the squared distance to the nearest goal; +10 on arrival
    d2 = [min((x - 5) ** 2, (x + 4) ** 2 + 9) for x in range(1, 6)]
    assert m["return_mean"] == pytest.approx(-30 * 5 - sum(d2) + 10, rel=1e-5)
    m, z = eval_multigoal(EvalView(Walk([0.0, 1.0])), 7, seed=0, max_steps=12)
    assert m["goal_hits"] == [0, 0, 0, 7] and m["success_rate"] == 0.0 and (z["length"] == 12).all()


@pytest.mark.parametrize(("amortised", "drive"), [(False, "grad_q_over_alpha"), (True, "grad_q")])
def test_s2ac_multigoal(tmp_path, amortised, drive):
    out = tmp_path / "s2ac"
    args = ["s2ac", "--env", "multigoal", "--out", str(out), *MULTIGOAL, "--particles", "4", "--svgd-steps", "2"]
    assert rl_main([*args, "--amortised", str(amortised).lower(), "--alpha", "0.5", "--svgd-drive", drive]) == 0
    m = _files(out)
    name = ("s2ac-amortised" if amortised else "s2ac") + ("-gradq" if drive == "grad_q" else "")
    assert m["variant"] == name + "-a0.5" and sum(m["goal_hits"]) == 100
    assert m["final_alpha"] == pytest.approx(0.5)  # fixed temperature
    config = json.loads((out / "config.json").read_text())
    assert config["sac"]["autotune"] is False and config["s2ac"]["svgd_drive"] == drive


def test_s2ac_smoothworld(tmp_path):
    out = tmp_path / "sw"
    args = ["s2ac", "--env", "smoothworld-two-slits", "--out", str(out), "--total-steps", "32", "--num-envs", "8"]
    args += ["--learning-starts", "16", "--batch-size", "8", "--log-every", "16", "--hidden", "16", "--quiet"]
    assert rl_main([*args, "--particles", "3", "--svgd-steps", "1", "--eval-episodes", "3", "--max-steps", "6"]) == 0
    m = _files(out)
    assert m["episodes"] == 3 and m["class_names"] == ["upper_slit", "lower_slit"]
    assert np.load(out / "samples.npz")["traj"].shape == (3, 7, 2)


def test_rpg_toy1d_and_bandit(tmp_path):
    toy = tmp_path / "toy"
    assert rl_main(["rpg", "--env", "toy1d", "--steps", "40", "--log-every", "20", "--quiet", "--out", str(toy)]) == 0
    m = _files(toy)
    assert m["variant"] == "rpg" and m["env_steps"] == 40 * 256
    assert 0.0 <= m["reward_mean"] <= 1.1 and 0.0 <= m["global_peak_share"] <= 1.0
    z = np.load(toy / "samples.npz")
    assert z["actions"].shape == (4096,) and np.allclose(z["rewards"].mean(), m["reward_mean"], atol=1e-6)

    bandit = tmp_path / "bandit"
    args = ["rpg", "--env", "bandit-two-moons", "--out", str(bandit), "--iterations", "2", "--num-envs", "64"]
    assert rl_main([*args, "--num-minibatches", "2", "--update-epochs", "2", "--eval-samples", "256", "--quiet"]) == 0
    m = _files(bandit)
    assert m["variant"] == "rpg-latent-ppo" and m["method"] == "rpg" and m["env_steps"] == 128
    cfg = json.loads((bandit / "config.json").read_text())
    assert cfg["head_kwargs"] == {"num_latents": 5, "hidden": 64} and cfg["ppo"]["ent_coef"] == 0.0


def test_report_tables_ppo_and_sac_together(tmp_path):
    root = tmp_path / "runs"
    ppo = ["ppo", "--env", "bandit-lemniscate", "--head", "gaussian", "--out", str(root / "ppo"), "--quiet"]
    assert rl_main([*ppo, "--iterations", "2", "--num-envs", "64", "--eval-samples", "256"]) == 0
    sac = ["sac", "--env", "bandit-lemniscate", "--head", "gaussian", "--out", str(root / "sac"), *SAC_BANDIT]
    assert rl_main(sac) == 0
    assert rl_main(["sac", "--env", "multigoal", "--head", "gmm", "--out", str(root / "mg"), *MULTIGOAL]) == 0
    rep = tmp_path / "report"
    assert rl_main(["report", str(root), "--out", str(rep)]) == 0
    # one bandit table, both methods' rows under the same env heading
    table = (rep / "bandit.md").read_text().split("### bandit-lemniscate")[1]
    rows = [line.split(" | ")[0] for line in table.splitlines() if line.startswith("| ") and " | 1 | " in line]
    assert rows == ["| gaussian", "| sac-gaussian-rp"]
    mg = (rep / "multigoal.md").read_text()
    assert "| multigoal | sac-gmm-mrp | 1 |" in mg and "hits of 100 episodes" in mg
    assert len((rep / "runs.csv").read_text().strip().splitlines()) == 4


@pytest.mark.parametrize(
    "args, needle",
    [
        (["sac", "--env", "multigoal", "--head", "gmm", "--estimator", "quadrature"], "needs the mepoly head"),
        (["sac", "--env", "multigoal", "--head", "fpo"], "invalid choice"),
        (["sac", "--env", "toy1d", "--head", "gmm"], "unknown environment"),
        (["sac", "--env", "multigoal", "--head", "gmm", "--total-steps", "0"], "total_steps=0"),
        (["sac", "--env", "multigoal", "--head", "gmm", "--seed", "10000"], "--seed 10000"),
        (["s2ac", "--env", "multigoal", "--particles", "1"], "--particles 1"),
        (["s2ac", "--env", "multigoal", "--autotune", "true"], "fixed temperature"),
        (["s2ac", "--env", "bandit-lemniscate", "--eval-selection", "best"], "eval_selection"),
        (["s2ac", "--env", "multigoal", "--estimator", "lr"], "unrecognized arguments"),
        (["rpg", "--env", "multigoal"], "unknown environment"),
        (["rpg", "--env", "toy1d", "--decay", "2"], "decay=2.0"),
        (["rpg", "--env", "toy1d", "--ent-coef", "0.1"], "unrecognized arguments"),
    ],
)
def test_bad_flags_one_line_exit_2(tmp_path, capsys, args, needle):
    out = tmp_path / "x"
    assert cli_main(["rl", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("mepoly-il rl: error:") and needle in err, err
    assert not out.exists()


def test_existing_out_refused(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert cli_main(["rl", "rpg", "--env", "toy1d", "--steps", "2", "--quiet", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err and (out / "keep.txt").exists()


@pytest.mark.parametrize(
    "args, docs",
    [
        (["sac"], ["Polyak rate of the target critics", "MePoly total degree K", "policy samples scored"]),
        (["s2ac"], ["SVGD particles per state", "which particle acts at evaluation", "Polyak rate"]),
        (["rpg"], ["latent classes", "discount", "policy samples scored"]),
        (["rpg", "--env", "toy1d"], ["reward weight", "per-step factor on w_info"]),
    ],
)
def test_help_shows_field_docs(capsys, args, docs):
    with pytest.raises(SystemExit) as e:
        cli_main(["rl", *args, "--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for d in docs:
        assert d in text, d


@pytest.mark.parametrize("env", ["mountaincar-sparse", "mountaincar-minus1"])
def test_sac_mountaincar(tmp_path, env):
    """Both MountainCar rewards run through `rl sac` at a fixed temperature, with their own test-episode metrics
    and a table in `rl report`."""
    out = tmp_path / "mc"
    steps = 64 if env == "mountaincar-sparse" else 320  # 320: every env finishes one 40-step training episode
    args = ["sac", "--env", env, "--head", "gmm", "--out", str(out), "--total-steps", str(steps)]
    args += ["--num-envs", "8", "--learning-starts", "32", "--batch-size", "16", "--log-every", "32", "--quiet"]
    assert rl_main([*args, "--hidden", "16", "--eval-episodes", "6", "--max-steps", "40"]) == 0
    m = _files(out)
    assert m["variant"] == "sac-gmm-mrp-a0.1" and m["env_steps"] == steps  # the preset's fixed alpha and estimator
    assert m["success_rate"] == 0.0 and m["eval_episodes"] == 6  # 40 steps cannot reach the goal
    assert 0.0 <= m["first_push_left_share"] <= 1.0
    z = np.load(out / "samples.npz")
    assert (z["length"] == 40).all() and z["first_action"].shape == (6,)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["sac"]["autotune"] is False and cfg["head_kwargs"]["num_components"] == 5
    assert rl_main(["report", str(tmp_path), "--out", str(tmp_path / "rep")]) == 0
    table = (tmp_path / "rep" / "mountaincar.md").read_text()
    assert f"| {env} | sac-gmm-mrp-a0.1 | 1 |" in table
    if env == "mountaincar-minus1":  # -1 per step: the 40-step training episodes return -40
        assert m["final_train_return"] == -40.0
