"""Rollouts in the real ManiSkill simulator (CPU) with small hand-written BasePolicy subclasses."""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch

from mepoly_il.envs.maniskill import EvalEnvSpec, make_eval_env
from mepoly_il.errors import UserError
from mepoly_il.eval.rollout import env_spec_for, eval_seeds, evaluate_policy, run_episodes
from mepoly_il.policies.base import BasePolicy

pytestmark = pytest.mark.sim

PUSHCUBE = {"env_id": "PushCube-v1", "control_mode": "pd_ee_delta_pos", "obs_mode": "state"}
STEPS = 30


class ScriptedPusher(BasePolicy):
    """Closed-loop PushCube pusher on the flat state (tcp 18:21, goal 25:28, cube 28:31); To = Ta = T = 1.

    Identity normalizers, so ``generate`` sees raw observations and returns raw pd_ee_delta_pos actions. It pushes
    through the goal, so some episodes succeed once and not at the end: both metrics get exercised.
    """

    def __init__(self) -> None:
        super().__init__(obs_dim=35, act_dim=4, obs_horizon=1, act_horizon=1, pred_horizon=1)
        self.pushing: torch.Tensor | None = None
        self.calls = 0

    def reset(self) -> None:
        super().reset()
        self.pushing = None

    def generate(self, obs_norm: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        obs = obs_norm[:, -1]
        tcp, goal, cube = obs[:, 18:21], obs[:, 25:28], obs[:, 28:31]
        behind = cube.clone()
        behind[:, 0] -= 0.05
        behind[:, 2] = 0.02
        dist = (tcp[:, :2] - behind[:, :2]).norm(dim=-1)
        aligned = (dist < 0.015) & (tcp[:, 2] < 0.035)
        self.pushing = aligned if self.pushing is None else self.pushing | aligned
        push = goal.clone()
        push[:, 2] = 0.02
        above = behind.clone()
        above[:, 2] = 0.08
        target = torch.where(self.pushing[:, None], push, torch.where((dist > 0.02)[:, None], above, behind))
        arm = ((target - tcp) / 0.05).clamp(-1, 1)
        return torch.cat([arm, -torch.ones_like(arm[:, :1])], dim=-1)[:, None]  # (B, 1, 4)


def test_rollout_metrics_match_the_maniskill_wrapper():
    policy = ScriptedPusher()
    spec = env_spec_for(PUSHCUBE, max_episode_steps=STEPS)
    seeds = eval_seeds(0, 2)
    assert gc.get_freeze_count() == 0
    with make_eval_env(spec, num_envs=1) as env:
        # in-process, the env keeps ManiSkill's per-rebuild collections short by freezing what exists (see close())
        assert gc.get_freeze_count() > 0
        assert env.control_mode == "pd_ee_delta_pos" and (env.obs_dim, env.act_dim) == (35, 4)
        result = run_episodes(policy, env, seeds)
        assert policy.calls == 2 * STEPS  # Ta = 1: one chunk per step, queues cleared between episodes
        # Independent reference: step the same envs by hand and read CPUGymWrapper's own episode metrics.
        reference = []
        for seed in seeds:
            obs = env.reset([seed])
            policy.reset()
            for _ in range(STEPS):
                out = env.step(policy.select_action(obs))
                obs = out.obs
            ep = out.info["episode"]
            reference.append((bool(ep["success_once"][0]), bool(ep["success_at_end"][0]), float(ep["return"][0])))
            assert out.truncated.all()
    assert gc.get_freeze_count() == 0  # close() thawed this process's objects
    rows = result.rows
    assert [r["seed"] for r in rows] == seeds and [r["episode"] for r in rows] == [0, 1]
    assert all(r["episode_len"] == STEPS for r in rows)
    assert [(r["success_once"], r["success_at_end"], r["return"]) for r in rows] == reference
    assert any(r["success_once"] for r in rows), "the scripted pusher should reach the goal at least once"
    for r in rows:
        # Sparse reward = success indicator, so the return counts successful steps.
        if r["success_once"]:
            assert r["first_success_step"] >= 1 and r["first_success_step"] <= STEPS and r["return"] >= 1
        else:
            assert r["first_success_step"] is None and r["return"] == 0
        assert r["success_once"] >= r["success_at_end"]
    assert result.env_steps == 2 * STEPS


def test_evaluate_policy_is_reproducible_and_aggregates():
    class Noisy(ScriptedPusher):
        # Random perturbations drawn from torch's global RNG: the evaluator must seed them.
        def __init__(self):
            super().__init__()
            self.trace = []

        def generate(self, obs_norm):
            chunk = (super().generate(obs_norm) + 0.3 * torch.randn(obs_norm.shape[0], 1, 4)).clamp(-1, 1)
            self.trace.append(chunk)
            return chunk

    spec = env_spec_for(PUSHCUBE, max_episode_steps=12, reconfiguration_freq=0)
    seeds = eval_seeds(1, 2)
    a, b = Noisy(), Noisy()
    with make_eval_env(spec, num_envs=1) as env:
        first = evaluate_policy(a, spec, seeds, env=env)
        torch.manual_seed(123)  # a different global RNG state must not change the result
        state = torch.random.get_rng_state()
        second = evaluate_policy(b, spec, seeds, env=env)
        assert torch.equal(torch.random.get_rng_state(), state)  # and the caller's RNG stream is left untouched
    assert len(a.trace) == 24 and all(torch.equal(x, y) for x, y in zip(a.trace, b.trace))
    assert first["per_episode"] == second["per_episode"]
    agg = first["aggregated"]
    assert agg["n_episodes"] == 2
    assert agg["success_once"] == pytest.approx(np.mean([r["success_once"] for r in first["per_episode"]]))
    assert agg["env_steps"] == 24 and agg["sec"] >= agg["policy_sec"]


def test_policy_env_dimension_mismatch_is_a_user_error():
    spec = EvalEnvSpec(
        env_id="PushCube-v1", control_mode="pd_joint_delta_pos", max_episode_steps=5, reconfiguration_freq=0
    )
    with make_eval_env(spec, num_envs=1) as env:
        assert env.act_dim == 8
        with pytest.raises(UserError, match="policy dims obs=35 act=4 do not match PushCube-v1"):
            run_episodes(ScriptedPusher(), env, [1_000_000])


def test_unknown_env_and_bad_settings_are_user_errors():
    with pytest.raises(UserError, match="not registered"):
        make_eval_env(EvalEnvSpec(env_id="NoSuchTask-v9", control_mode="pd_ee_delta_pos", max_episode_steps=5))
    with pytest.raises(UserError, match="only 'state'"):
        make_eval_env(EvalEnvSpec(env_id="PushCube-v1", control_mode="x", max_episode_steps=5, obs_mode="rgb"))
    with pytest.raises(UserError, match="physx_cuda needs a CUDA device"):
        if torch.cuda.is_available():
            pytest.skip("CUDA present")
        env_spec_for(PUSHCUBE, sim_backend="physx_cuda")
    assert env_spec_for(PUSHCUBE).max_episode_steps == 100  # per-task protocol default
    assert env_spec_for({**PUSHCUBE, "env_id": "StackCube-v1"}).max_episode_steps == 200


@pytest.mark.parametrize("kind", ["mepoly", "dp"])
def test_real_policy_classes_act_in_the_simulator(kind):
    """The project's own MePoly and DP policies (random weights, small) drive the evaluator end to end."""
    from mepoly_il.policies.diffusion.policy import DiffusionPolicy
    from mepoly_il.policies.mepoly.policy import MePolyPolicy

    if kind == "mepoly":
        policy = MePolyPolicy(35, 4, 2, 4, 8, d_model=32, n_heads=2, ff_dim=64, prior_hidden=[32])
    else:
        policy = DiffusionPolicy(35, 4, 2, 4, 8, down_dims=[8, 16, 32], inference="ddim", num_inference_steps=2)
    spec = env_spec_for(PUSHCUBE, max_episode_steps=8, reconfiguration_freq=0)
    result = evaluate_policy(policy, spec, eval_seeds(0, 1))
    assert result["aggregated"]["n_episodes"] == 1 and result["aggregated"]["env_steps"] == 8
    assert result["aggregated"]["policy_sec"] > 0


def test_bench_eval_quick(tmp_path, capsys):
    import json

    from mepoly_il.cli.bench import main as bench_main

    assert (
        bench_main(
            [
                "eval",
                "--quick",
                "--max-episode-steps",
                "8",
                "--reconfiguration-freq",
                "0",
                "--out",
                str(tmp_path / "b.json"),
            ]
        )
        == 0
    )
    out = json.loads((tmp_path / "b.json").read_text())
    names = [r["name"] for r in out["rows"]]
    assert names == ["raw (random actions)", "raw (linear's actions replayed)", "linear"]
    assert all(r["steps"] == 8 and r["steps_per_sec"] > 0 for r in out["rows"])
    raw, replay, linear = out["rows"]
    assert linear["ratio"] == pytest.approx(linear["steps_per_sec"] / raw["steps_per_sec"], rel=0.01)
    assert linear["ratio_vs_replay"] == pytest.approx(linear["steps_per_sec"] / replay["steps_per_sec"], rel=0.01)
    ee = out["ee_controller"]
    assert ee["fast_path_applies"] and ee["identical_observations"] and ee["steps"] == 8
    assert ee["speedup"] == pytest.approx(ee["fast_steps_per_sec"] / ee["maniskill_steps_per_sec"], rel=0.01)
    printed = capsys.readouterr().out
    assert "| linear |" in printed and "ManiSkill's own" in printed


@pytest.mark.slow
def test_process_vectorized_envs_give_identical_episodes():
    """AsyncVectorEnv workers (forkserver) with a partial last batch reproduce the single-env episodes exactly."""
    spec = env_spec_for(PUSHCUBE, max_episode_steps=16, reconfiguration_freq=0)
    seeds = eval_seeds(0, 3)
    single = evaluate_policy(ScriptedPusher(), spec, seeds, num_envs=1)
    vector = evaluate_policy(ScriptedPusher(), spec, seeds, num_envs=2)  # batches [2, 1 (+1 spare)]
    assert [r["seed"] for r in vector["per_episode"]] == seeds
    assert vector["per_episode"] == single["per_episode"]
    assert vector["aggregated"]["env_steps"] == 2 * 2 * 16  # the spare env's steps are run, not reported
