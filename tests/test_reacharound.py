"""ReachAround-v1: the package's bimodal task (env, scripted expert, mode labels in datasets and evaluations)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mepoly_il.cli import main as cli_main
from mepoly_il.eval.rollout import aggregate_rows, format_modes, mode_counts
from mepoly_il.policies.base import BasePolicy
from mepoly_il.tasks import get_task, load_mode_fn

ENV_ID = "ReachAround-v1"


def _states(tcp_xy: list[tuple[float, float]], pillar_xy=(0.04, 0.0)) -> np.ndarray:
    """(T, 34) state observations with the given TCP path (z = 0.06) and a fixed pillar."""
    from mepoly_il.envs.maniskill_reacharound import OBS_DIM, PILLAR_POS, TCP_POS

    states = np.zeros((len(tcp_xy), OBS_DIM), dtype=np.float32)
    states[:, TCP_POS] = [(x, y, 0.06) for x, y in tcp_xy]
    states[:, PILLAR_POS] = (*pillar_xy, 0.07)
    return states


def test_passing_side_reads_the_side_from_the_path():
    fn = load_mode_fn(get_task(ENV_ID))
    around = [(-0.05, 0.0), (-0.04, 0.1), (0.0, 0.21), (0.08, 0.21), (0.13, 0.0)]
    assert fn(_states(around)) == "left"
    assert fn(_states([(x, -y) for x, y in around])) == "right"
    # stopped in front of the pillar, pushed into it, or never moved: no side
    assert fn(_states([(-0.05, 0.0), (-0.01, 0.0), (-0.01, 0.0)])) == "none"
    assert fn(_states([(-0.05, 0.0), (0.03, 0.02), (0.05, 0.03)])) == "none"
    # relative to the pillar, not to y = 0
    assert fn(_states([(-0.05, 0.1), (0.04, 0.1), (0.13, 0.1)], pillar_xy=(0.04, 0.2))) == "right"
    with pytest.raises(ValueError, match="34"):
        fn(np.zeros((5, 10)))


def test_mode_counts_share_of_successes():
    rows = [
        {"success_once": True, "success_at_end": True, "return": 1.0, "mode": "left"},
        {"success_once": True, "success_at_end": False, "return": 1.0, "mode": "left"},
        {"success_once": True, "success_at_end": True, "return": 1.0, "mode": "right"},
        {"success_once": False, "success_at_end": False, "return": 0.0, "mode": "none"},
    ]
    counts = mode_counts(rows)
    assert counts["left"] == {"episodes": 2, "successes": 2, "success_share": pytest.approx(2 / 3)}
    assert counts["right"]["success_share"] == pytest.approx(1 / 3)
    assert counts["none"] == {"episodes": 1, "successes": 0, "success_share": 0.0}
    agg = aggregate_rows(rows)
    assert agg["modes"] == counts and agg["success_once"] == 0.75
    assert format_modes(agg) == (
        "modes (successes/episodes): left 2/2 (67% of successes), none 0/1 (0% of successes), "
        "right 1/1 (33% of successes)"
    )
    failed = mode_counts([{**rows[3]}])
    assert failed["none"]["success_share"] is None
    assert "modes" not in aggregate_rows([{k: v for k, v in r.items() if k != "mode"} for r in rows])


# -- the simulator ---------------------------------------------------------------------------------------------------
def _env():
    from mepoly_il.envs.maniskill import import_maniskill

    gym = import_maniskill()
    return gym.make(
        ENV_ID, obs_mode="state", control_mode="pd_ee_delta_pos", sim_backend="physx_cpu", max_episode_steps=40
    )


@pytest.mark.sim
def test_expert_goes_around_on_both_sides_and_the_average_path_fails():
    from mepoly_il.data.maniskill_reacharound import demo_side, solve_reacharound
    from mepoly_il.envs.maniskill_reacharound import GOAL_POS, TCP_POS, passing_side

    seeds = list(range(6))
    sides = [demo_side(s) for s in seeds]
    assert set(sides) == {"left", "right"}, sides  # these seeds hold both modes
    env = _env()
    try:
        for seed, side in zip(seeds, sides):
            states = []
            original_step = env.step

            def recording_step(action, _step=original_step, _states=states):
                out = _step(action)
                _states.append(np.asarray(out[0]).reshape(-1))
                return out

            env.step = recording_step
            res = solve_reacharound(env, seed=seed)
            env.step = original_step
            info = res[-1]
            assert bool(info["success"]) and not bool(info["touched"]), (seed, side)
            assert int(info["elapsed_steps"]) < 25
            assert passing_side(np.stack(states)) == side
        # the straight line to the goal (the average of the two sides) runs into the pillar
        for seed in seeds[:2]:
            obs, _ = env.reset(seed=seed)
            obs = np.asarray(obs).reshape(-1)
            traj = [obs]
            for _ in range(40):
                arm = np.clip(10 * (obs[GOAL_POS] - obs[TCP_POS]), -1, 1)
                obs, _, _, _, info = env.step(np.concatenate([arm, [1.0]]).astype(np.float32))
                obs = np.asarray(obs).reshape(-1)
                traj.append(obs)
            assert bool(info["touched"]) and not bool(info["success"])
            assert passing_side(np.stack(traj)) == "none"
    finally:
        env.close()


@pytest.mark.sim
def test_prepare_stores_mode_labels(tmp_path, capsys):
    from mepoly_il.data.maniskill_reacharound import demo_side
    from mepoly_il.data.zarr_io import episode_modes, episode_seeds, read_info

    out = tmp_path / "ra.zarr"
    assert cli_main(["data", "prepare", "--env-id", ENV_ID, "--num-demos", "4", "--out", str(out)]) == 0
    seeds = episode_seeds(out)
    modes = episode_modes(out)
    assert modes == [demo_side(s) for s in seeds]
    assert read_info(out).provenance["mode_fn"] == get_task(ENV_ID).mode_fn
    capsys.readouterr()
    assert cli_main(["data", "inspect", str(out)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("modes"))
    for mode in set(modes):
        assert f"{mode} {modes.count(mode)}" in line


class SideTaker(BasePolicy):
    """Goes around the pillar, on the left in its 1st, 3rd, ... episode and on the right in the others (To = Ta =
    T = 1, identity normalizers: raw observations in, raw pd_ee_delta_pos actions out)."""

    def __init__(self) -> None:
        super().__init__(obs_dim=34, act_dim=4, obs_horizon=1, act_horizon=1, pred_horizon=1)
        self.stage: torch.Tensor | None = None
        self.episodes = 0

    def reset(self) -> None:
        super().reset()
        if self.stage is not None:  # the evaluator also resets before the first step and after the last
            self.episodes += 1
        self.stage = None

    def generate(self, obs_norm: torch.Tensor) -> torch.Tensor:
        obs = obs_norm[:, -1]
        tcp, goal, pillar = obs[:, 18:21], obs[:, 25:28], obs[:, 28:31]
        n = len(obs)
        sign = torch.full((n,), 1.0 if self.episodes % 2 == 0 else -1.0)
        if self.stage is None:
            self.stage = torch.zeros(n, dtype=torch.long)
        via = torch.stack(
            [
                torch.stack([pillar[:, 0] - 0.08, pillar[:, 1] + 0.21 * sign, goal[:, 2]], -1),
                torch.stack([pillar[:, 0] + 0.06, pillar[:, 1] + 0.21 * sign, goal[:, 2]], -1),
                goal,
            ],
            1,
        )  # (B, 3, 3)
        target = via[torch.arange(n), self.stage]
        near = (target[:, :2] - tcp[:, :2]).norm(dim=-1) < 0.03
        self.stage = torch.where(near & (self.stage < 2), self.stage + 1, self.stage)
        target = via[torch.arange(n), self.stage]
        arm = (10 * (target - tcp)).clamp(-1, 1)
        return torch.cat([arm, torch.ones_like(arm[:, :1])], -1)[:, None]


@pytest.mark.sim
def test_evaluation_labels_each_rollout_from_its_trajectory():
    from mepoly_il.envs.maniskill import make_eval_env
    from mepoly_il.eval.rollout import env_spec_for, eval_seeds, run_episodes

    meta = {"env_id": ENV_ID, "control_mode": "pd_ee_delta_pos", "obs_mode": "state"}
    spec = env_spec_for(meta, max_episode_steps=30)
    with make_eval_env(spec, num_envs=1) as env:
        result = run_episodes(SideTaker(), env, eval_seeds(0, 3))
    assert [r["mode"] for r in result.rows] == ["left", "right", "left"]
    assert all(r["success_once"] for r in result.rows)
    agg = aggregate_rows(result.rows)
    assert agg["modes"] == {
        "left": {"episodes": 2, "successes": 2, "success_share": pytest.approx(2 / 3)},
        "right": {"episodes": 1, "successes": 1, "success_share": pytest.approx(1 / 3)},
    }


def test_mode_fn_names_are_checked():
    from mepoly_il.errors import UserError
    from mepoly_il.tasks import TaskSpec

    with pytest.raises(UserError, match="mode_fn"):
        TaskSpec("X-v0", None, max_episode_steps=5, obs_dim=2, act_dim=1, mode_fn="no_colon")
    with pytest.raises(UserError, match="cannot import"):
        load_mode_fn(TaskSpec("X-v0", None, max_episode_steps=5, obs_dim=2, act_dim=1, mode_fn="nope_mod:f"))
    with pytest.raises(UserError, match="no function"):
        load_mode_fn(TaskSpec("X-v0", None, max_episode_steps=5, obs_dim=2, act_dim=1, mode_fn="mepoly_il.tasks:f"))
    assert load_mode_fn(get_task("PushCube-v1")) is None


def test_multimodal_script_dry_run():
    import os
    import subprocess
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    script = repo / "eval" / "multimodal_cpu.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    env = {**os.environ, "DRY_RUN": "1", "RUNS": "r"}
    proc = subprocess.run(["bash", str(script)], cwd=repo, env=env, capture_output=True, text=True, check=True)
    cmds = [line[2:] for line in proc.stdout.splitlines() if line.startswith("+ ")]
    fits = [c for c in cmds if " fit " in c]
    assert len(fits) == 3 * 7  # seeds x (3 MePoly variants x 2 stages + DP)
    for c in fits:
        kind = c.split()[2]
        assert f"--config configs/{kind}/cpu.yaml --config configs/{kind}/{ENV_ID}-cpu.yaml" in c
    s1 = {
        m: [c for c in fits if f"stage1_{m}/" in c and " stage1 " in c]
        for m in ("mepoly_new", "mepoly_old", "regressor")
    }
    assert all(len(v) == 3 for v in s1.values())
    assert all("--model.iso_norm dataset" in c and "--model.policy.latent_embed true" in c for c in s1["mepoly_new"])
    assert all("--model.iso_norm batch" in c and "fixed_latent" not in c for c in s1["mepoly_old"])
    assert all("--model.iso_norm batch" in c and "--model.policy.fixed_latent true" in c for c in s1["regressor"])
    finals = [c for c in cmds if c.startswith("mepoly-il eval run")]
    assert len(finals) == 12 and all("--episodes 100" in c and "/final_eval" in c for c in finals)
    assert "write_mode_table" in cmds[-1]


def test_mode_table_from_eval_infos(tmp_path):
    import json

    from mepoly_il.eval.aggregate import write_mode_table

    def rows(succ_left, succ_right, n=4):
        return [
            {"success_once": i < k, "success_at_end": i < k, "return": 0.0, "mode": m}
            for m, k in (("left", succ_left), ("right", succ_right))
            for i in range(n)
        ]

    for seed, (left, right) in enumerate(((4, 2), (3, 0))):
        path = tmp_path / "runs" / "m" / ENV_ID / f"seed{seed}" / "final_eval" / "last" / "eval_info.json"
        path.parent.mkdir(parents=True)
        prov = {"method": "mepoly", "env_id": ENV_ID, "global_step": 300, "train_seed": seed}
        path.write_text(json.dumps({"aggregated": aggregate_rows(rows(left, right)), "provenance": prov}))
    out = write_mode_table(tmp_path / "runs", ["m"], tmp_path / "modes.md")
    lines = out.read_text().splitlines()
    assert lines[0] == "| runs | seed | success_once | episodes | left: succ/eps (share) | right: succ/eps (share) |"
    assert lines[2] == "| m | 0 | 0.75 | 8 | 4/4 (67%) | 2/4 (33%) |"
    assert lines[3] == "| m | 1 | 0.38 | 8 | 3/4 (100%) | 0/4 (0%) |"
    assert json.loads(out.with_suffix(".json").read_text())["m"][1]["train_seed"] == 1


def test_multimodal_script_budget_overrides():
    import os
    import subprocess
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    script = repo / "eval" / "multimodal_cpu.sh"

    def fits(**extra):
        env = {**os.environ, "DRY_RUN": "1", "RUNS": "r", "SEEDS": "0", "METHODS": "mepoly_new dp", **extra}
        proc = subprocess.run(["bash", str(script)], cwd=repo, env=env, capture_output=True, text=True, check=True)
        return {c.split()[2]: c for c in (line[2:] for line in proc.stdout.splitlines()) if " fit " in c}

    assert not any("max_steps" in c for c in fits().values())  # default: the configs' budgets
    longer = fits(STAGE1_STEPS="1500", STAGE2_STEPS="1000", DP_STEPS="3000")
    assert "--trainer.max_steps 1500" in longer["stage1"]
    assert "--trainer.max_steps 1000" in longer["stage2"]
    assert "--trainer.max_steps 3000" in longer["dp"]
    assert not (Path(repo) / "r").exists()  # a dry run writes no wall-time log
