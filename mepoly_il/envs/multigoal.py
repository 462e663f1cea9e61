"""The S2AC paper's multi-goal point mass (§4.2, Fig. 5), batched in numpy.

A 2-D point starts at the origin and moves by its action (a velocity in ``[-1, 1]^2``, clipped), positions are
clipped to ``[-7, 7]^2``. Three goals: G1 = (5, 0) on the right, G2 = (-4, 3) and G3 = (-4, -3) on the left. The
reward of a step is ``-30 ||a||^2 - min_g ||s' - g||^2``, plus 10 when the nearest goal is within 0.5, which also
ends the episode; otherwise episodes are cut after 30 steps. All goals pay the same, but two of them lie on the
left, so a maximum-entropy policy should send more than a third of its episodes there, and more as the
temperature grows (the paper's claim).

:class:`VecMultiGoal` follows the PPO/SAC env contract (same-step autoreset, ``info["final_obs"]``,
``info["episode_done"]``, ``info["episode_return"]``) and adds ``info["episode_goal"]`` (index of the goal reached,
-1 for a timeout) and ``info["episode_length"]``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

GOALS = np.array([[5.0, 0.0], [-4.0, 3.0], [-4.0, -3.0]])  # G1, G2, G3
BOUND = 7.0
GOAL_RADIUS = 0.5
GOAL_REWARD = 10.0
ACTION_COST = 30.0
MAX_STEPS = 30


class VecMultiGoal:
    """``num_envs`` point masses stepped together; obs = position ``(N, 2)``."""

    obs_dim = 2
    act_dim = 2

    def __init__(self, num_envs: int, max_steps: int = MAX_STEPS, goals: np.ndarray = GOALS):
        self.num_envs = int(num_envs)
        self.max_steps = int(max_steps)
        self.goals = np.asarray(goals, dtype=np.float64)
        self.pos = np.zeros((self.num_envs, 2))
        self.t = np.zeros(self.num_envs, dtype=np.int64)
        self.ret = np.zeros(self.num_envs)

    def reset(self, seed: int | None = None) -> np.ndarray:
        """Deterministic start at the origin (``seed`` is accepted for the contract and unused)."""
        self.pos[:] = 0.0
        self.t[:] = 0
        self.ret[:] = 0.0
        return self.pos.astype(np.float32)

    def step(self, actions: np.ndarray):
        a = np.clip(np.asarray(actions, dtype=np.float64).reshape(self.num_envs, 2), -1.0, 1.0)
        self.pos = np.clip(self.pos + a, -BOUND, BOUND)
        dist = np.linalg.norm(self.pos[:, None, :] - self.goals[None], axis=-1)  # (N, G)
        dmin, nearest = dist.min(1), dist.argmin(1)
        term = dmin < GOAL_RADIUS
        reward = -ACTION_COST * (a**2).sum(1) - dmin**2 + GOAL_REWARD * term
        self.t += 1
        self.ret += reward
        trunc = (self.t >= self.max_steps) & ~term
        done = term | trunc
        info = {
            "final_obs": self.pos.astype(np.float32),
            "episode_done": done,
            "episode_return": self.ret.astype(np.float32),
            "episode_goal": np.where(term, nearest, -1),
            "episode_length": self.t.copy(),
        }
        if done.any():
            self.pos[done], self.t[done], self.ret[done] = 0.0, 0, 0.0
        return self.pos.astype(np.float32), reward.astype(np.float32), term, trunc, info


def goal_shares(act_fn: Callable[[np.ndarray], np.ndarray], episodes: int, num_envs: int = 50) -> dict:
    """Run ``episodes`` test episodes with ``act_fn(obs (N, 2)) -> actions (N, 2)``.

    Returns ``shares`` (G + 1,): fraction of episodes ending at each goal, last entry = timeouts; ``hits`` the
    counts; ``mean_return``.
    """
    env = VecMultiGoal(num_envs)
    obs = env.reset()
    goals, rets = [], []
    while len(goals) < episodes:
        obs, _, _, _, info = env.step(act_fn(obs))
        done = info["episode_done"]
        goals.extend(info["episode_goal"][done].tolist())
        rets.extend(info["episode_return"][done].tolist())
    g = np.asarray(goals[:episodes])
    hits = np.array([(g == i).sum() for i in range(len(env.goals))] + [(g < 0).sum()])
    return {"hits": hits, "shares": hits / episodes, "mean_return": float(np.mean(rets[:episodes]))}
