"""Evaluation of a trained RL policy: bandit samples and Smooth World episodes, scored by
:mod:`mepoly_il.eval.rl_metrics`.

Seeds: a run with training seed ``s`` seeds torch, numpy and its environments with ``s`` itself. Evaluation draws
from ``RL_EVAL_SEED_OFFSET + s`` (policy sampling) and ``RL_EVAL_START_SEED_OFFSET + s`` (Smooth World's uniform
starts), so as long as training seeds stay below :data:`RL_EVAL_SEED_OFFSET` (the CLI enforces it) no evaluation
stream repeats a training stream of any run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mepoly_il.rl.config import HeadConfig, check_flag

#: torch seed of evaluation sampling = RL_EVAL_SEED_OFFSET + training seed; training seeds must stay below it.
RL_EVAL_SEED_OFFSET = 10_000
#: numpy seed of Smooth World's uniform evaluation starts = RL_EVAL_START_SEED_OFFSET + training seed.
RL_EVAL_START_SEED_OFFSET = 20_000
#: Samples drawn at the eval start to measure the within-policy spread of directions (8 sectors of 45 degrees).
START_ACTION_SAMPLES = 4096


@dataclass
class RLEvalConfig:
    """Evaluation budget."""

    eval_samples: int = 4096
    """bandit: policy samples scored against the target cloud"""
    eval_episodes: int = 200
    """Smooth World: episodes from the fixed eval start, and as many from uniform starts; multi-goal: test
    episodes (the per-goal shares need >= 100)"""

    def __post_init__(self) -> None:
        check_flag("eval_samples", self.eval_samples, self.eval_samples >= 1, "must be >= 1")
        check_flag("eval_episodes", self.eval_episodes, self.eval_episodes >= 1, "must be >= 1")


class SelectedActions:
    """An actor without a head (the S2AC sampler) seen as the head methods evaluation calls: ``act(obs (B, D)) ->
    ((B, d), {})`` and ``sample(obs (B, D), n) -> (n, B, d)``, both the actor's evaluation choice
    (``act_eval``), with no entropy."""

    exact_entropy = False

    def __init__(self, actor):
        self.actor = actor

    def act(self, obs: torch.Tensor) -> tuple[torch.Tensor, dict]:
        return self.actor.act_eval(obs).detach(), {}

    def sample(self, obs: torch.Tensor, n: int) -> torch.Tensor:
        b = obs.shape[0]
        return self.act(obs.repeat(n, 1))[0].reshape(n, b, -1)


class EvalView:
    """What the ``eval_*`` functions read from a trained agent: its ``head``."""

    def __init__(self, actor):
        self.head = actor.head if hasattr(actor, "head") else SelectedActions(actor)


def variant_name(head: str, head_cfg: HeadConfig) -> str:
    """Run-group name of the reports: the head name, or ``mepoly-K<order>-<basis>`` for MePoly."""
    return f"mepoly-K{head_cfg.order}-{head_cfg.basis}" if head == "mepoly" else head


def eval_bandit(agent, btask, envs, n: int, seed: int) -> tuple[dict, dict[str, np.ndarray]]:
    """Score ``n`` policy samples at the (constant) bandit observation. Returns (metrics, arrays): arrays hold
    ``actions`` (n, 2) and ``target_points`` (P, 2)."""
    from mepoly_il.eval.rl_metrics import bandit_metrics

    torch.manual_seed(RL_EVAL_SEED_OFFSET + seed)
    head = agent.head
    obs = torch.zeros(1, envs.obs_dim)
    actions = head.sample(obs, n)[:, 0].numpy()
    m = bandit_metrics(actions, btask.target, envs.reward_fn.points, btask.sample_target, btask.sigma, seed=seed)
    if head.exact_entropy:
        with torch.no_grad():
            m["entropy_exact"] = float(head.entropy(obs)[0])
    m["sigma"] = btask.sigma
    return m, {"actions": actions.astype("float32"), "target_points": envs.reward_fn.points.astype("float32")}


def eval_smoothworld(agent, envs, episodes: int, seed: int, max_steps: int) -> tuple[dict, dict[str, np.ndarray]]:
    """Roll ``episodes`` episodes from the layout's eval start and as many from uniform starts (acting by sampling
    the policy). Returns (metrics, arrays): trajectories (episodes, max_steps + 1, 2), outcomes, lengths, route
    classes, and ``START_ACTION_SAMPLES`` actions sampled at the eval start."""
    from mepoly_il.envs.smoothworld import (
        DEATH_REWARD,
        GOAL_REWARD,
        SHORTEST_STEPS,
        rollout_episodes,
        sample_starts,
        to_obs,
    )
    from mepoly_il.eval.rl_metrics import mode_stats, smoothworld_metrics

    torch.manual_seed(RL_EVAL_SEED_OFFSET + seed)
    layout = envs.layout
    head = agent.head

    def act_fn(o):
        with torch.no_grad():
            return head.act(torch.as_tensor(o))[0].numpy()

    starts = np.repeat(np.asarray(layout.eval_start, dtype=np.float64)[None], episodes, 0)
    fixed = rollout_episodes(layout, act_fn, starts, max_steps)
    rng = np.random.default_rng(RL_EVAL_START_SEED_OFFSET + seed)
    uniform = rollout_episodes(layout, act_fn, sample_starts(layout, episodes, rng), max_steps)
    m = {"eval_start": list(layout.eval_start)}
    m.update(smoothworld_metrics(fixed, layout.classes, SHORTEST_STEPS.get(layout.name)))
    um = smoothworld_metrics(uniform, layout.classes, None)
    m["uniform_start"] = {k: um[k] for k in ("success_rate", "death_rate", "timeout_rate")}
    # the undiscounted return of an episode is GOAL_REWARD, DEATH_REWARD or 0
    m["uniform_start"]["return_mean"] = GOAL_REWARD * um["success_rate"] + DEATH_REWARD * um["death_rate"]
    # within-policy multimodality at the eval start: share of sampled actions per 8 direction sectors
    with torch.no_grad():
        a = head.sample(torch.as_tensor(to_obs(starts[:1])), START_ACTION_SAMPLES)[:, 0].numpy()
    ang = np.arctan2(a[:, 1], a[:, 0])
    sector = ((ang + np.pi / 8) // (np.pi / 4)).astype(int) % 8
    ms = mode_stats(sector, 8)
    m["start_action_sectors"] = ms["class_counts"]
    m["start_action_sector_entropy_norm"] = ms["mode_entropy_norm"]
    arrays = {
        "traj": fixed["traj"],
        "outcome": fixed["outcome"],
        "length": fixed["length"],
        "cls": fixed["cls"],
        "uniform_traj": uniform["traj"],
        "uniform_outcome": uniform["outcome"],
        "start_actions": a.astype("float32"),
    }
    return m, arrays


def eval_multigoal(agent, episodes: int, seed: int, max_steps: int) -> tuple[dict, dict[str, np.ndarray]]:
    """Run ``episodes`` test episodes of the multi-goal point mass from the origin (one env per episode), acting by
    ``agent.head.act``.

    Metrics: per-goal hit counts and shares (``goal_names``: G1 right, G2 / G3 left; last entry timeouts), the
    share of the two left goals, success / timeout rates, mean return, and the mode statistics over the goals
    reached. Arrays: per-episode ``goal`` (-1 timeout), ``return``, ``length`` and ``traj`` (episodes,
    max_steps + 1, 2), NaN after the episode ends."""
    from mepoly_il.envs.multigoal import VecMultiGoal
    from mepoly_il.eval.rl_metrics import mode_stats

    torch.manual_seed(RL_EVAL_SEED_OFFSET + seed)
    # one env per episode and only its first episode: taking the first N episodes to finish would favour short ones
    env = VecMultiGoal(episodes, max_steps=max_steps)
    n_goals = len(env.goals)
    obs = env.reset()
    traj = np.full((episodes, max_steps + 1, 2), np.nan, dtype=np.float32)
    traj[:, 0] = obs
    goal = np.full(episodes, -2)
    ret, length = np.zeros(episodes, dtype=np.float32), np.zeros(episodes, dtype=np.int64)
    running = np.ones(episodes, dtype=bool)
    for t in range(1, max_steps + 1):
        with torch.no_grad():
            a = agent.head.act(torch.as_tensor(obs))[0].numpy()
        obs, _, _, _, info = env.step(a)
        traj[running, t] = info["final_obs"][running]
        done = running & info["episode_done"]
        goal[done], ret[done], length[done] = info["episode_goal"][done], info["episode_return"][done], t
        running &= ~done
        if not running.any():
            break
    assert not running.any(), "every episode ends by the time limit"
    hits = [int((goal == g).sum()) for g in range(n_goals)] + [int((goal < 0).sum())]
    ms = mode_stats(goal[goal >= 0], n_goals)
    m = {
        "goal_names": [f"G{g + 1}" for g in range(n_goals)] + ["timeout"],
        "goal_hits": hits,
        "goal_shares": [h / episodes for h in hits],
        "left_goals_share": sum(hits[1:n_goals]) / episodes,
        "success_rate": float((goal >= 0).mean()),
        "timeout_rate": float((goal < 0).mean()),
        "return_mean": float(ret.mean()),
        "eval_episodes": int(episodes),
        "mode_entropy_norm": ms["mode_entropy_norm"],
        "num_modes_10pct": ms["num_modes_10pct"],
    }
    arrays = {"goal": goal, "return": ret, "length": length, "traj": traj}
    return m, arrays


def eval_mountaincar(agent, episodes: int, seed: int, max_steps: int) -> tuple[dict, dict[str, np.ndarray]]:
    """Run ``episodes`` test episodes of MountainCar (one env per episode, starts drawn with numpy seed
    ``RL_EVAL_START_SEED_OFFSET + seed``), acting by ``agent.head.act``; the reward does not enter the metrics.

    Metrics: ``success_rate`` (share of episodes that reach the goal), ``steps_to_goal_mean`` over
    the successes, and ``first_push_left_share``: the share of episodes whose first action pushes left (< 0), the
    direction choice that makes the start state bimodal. Arrays: per-episode ``success``, ``length``,
    ``first_action``."""
    from mepoly_il.envs.mountaincar import VecMountainCar

    torch.manual_seed(RL_EVAL_SEED_OFFSET + seed)
    env = VecMountainCar(episodes, max_steps=max_steps, seed=RL_EVAL_START_SEED_OFFSET + seed)
    obs = env.reset(seed=RL_EVAL_START_SEED_OFFSET + seed)
    success = np.zeros(episodes, dtype=bool)
    length = np.zeros(episodes, dtype=np.int64)
    first = np.zeros(episodes, dtype=np.float32)
    running = np.ones(episodes, dtype=bool)
    for t in range(1, max_steps + 1):
        with torch.no_grad():
            a = agent.head.act(torch.as_tensor(obs))[0].numpy()
        if t == 1:
            first = a[:, 0].astype(np.float32)
        obs, _, term, _, info = env.step(a)
        done = running & info["episode_done"]
        success[done], length[done] = term[done], t
        running &= ~done
        if not running.any():
            break
    m = {
        "success_rate": float(success.mean()),
        "steps_to_goal_mean": float(length[success].mean()) if success.any() else float("nan"),
        "first_push_left_share": float((first < 0).mean()),
        "eval_episodes": int(episodes),
    }
    return m, {"success": success, "length": length, "first_action": first}


def eval_toy1d(policy, samples: int, seed: int) -> tuple[dict, dict[str, np.ndarray]]:
    """Score ``samples`` actions of an RPG toy-bandit policy (``sample(obs (1, 1), n) -> (n, 1, 1)``): expected
    reward and the share of samples paid more than the local peak's 0.5 (only the global peak pays more)."""
    from mepoly_il.rl.rpg import toy_reward

    torch.manual_seed(RL_EVAL_SEED_OFFSET + seed)
    a = policy.sample(torch.zeros(1, 1), samples)[:, 0, 0]
    r = toy_reward(a)
    m = {"reward_mean": float(r.mean()), "global_peak_share": float((r > 0.5).float().mean())}
    return m, {"actions": a.numpy().astype("float32"), "rewards": r.numpy().astype("float32")}
