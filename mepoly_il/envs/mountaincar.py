"""Unshaped MountainCar (the mixture-policy paper's §5.3 / App. E.5 "MountainCar"), batched in numpy.

Dynamics are gymnasium's ``MountainCarContinuous-v0`` (power 0.0015, gravity term 0.0025 cos(3x), speed clipped
to 0.07, position to [-1.2, 0.6], inelastic left wall, goal x >= 0.45 with v >= 0, starts x ~ U(-0.6, -0.4),
v = 0, 999-step limit); ``tests/test_rl_envs.py`` checks them step by step against gymnasium. Neither reward is
gymnasium's shaped one (``-0.1 a^2`` per step, +100 at the goal); both carry no hint of which way to push:

* ``reward="minus1"`` (env ``mountaincar-minus1``): **-1 on every step**, the goal step included, as in the discrete
  MountainCar that the paper adapts to continuous actions (and GreedyAC's continuous variant). Critics that start
  near 0 are then optimistic about unvisited states, which drives exploration.
* ``reward="goal"`` (env ``mountaincar-sparse``): **1 on the step that reaches the goal, else 0**; nothing is
  learned until the goal has been reached once.

(The paper adapts the discrete MountainCar, force 0.001; this module keeps the continuous env's 0.0015.)

Observations are rescaled to [-1, 1] per dimension (position by its range, speed by 0.07), a fixed affine map of
gymnasium's observation, so small networks see inputs of order 1.

:class:`VecMountainCar` follows the PPO/SAC env contract (same-step autoreset, ``info["final_obs"]``,
``info["episode_done"]``, ``info["episode_return"]``) and adds ``info["episode_length"]``.
"""

from __future__ import annotations

import numpy as np

MIN_POS, MAX_POS, MAX_SPEED = -1.2, 0.6, 0.07
GOAL_POS, GOAL_VEL = 0.45, 0.0
POWER, GRAVITY = 0.0015, 0.0025
MAX_STEPS = 999
REWARDS = ("goal", "minus1")


def scale_obs(pos: np.ndarray, vel: np.ndarray) -> np.ndarray:
    """Raw ``(pos, vel)`` -> observation in [-1, 1]^2, float32 ``(N, 2)``."""
    p = 2.0 * (pos - MIN_POS) / (MAX_POS - MIN_POS) - 1.0
    return np.stack([p, vel / MAX_SPEED], -1).astype(np.float32)


class VecMountainCar:
    """``num_envs`` continuous mountain cars stepped together; obs ``(N, 2)``, action ``(N, 1)`` in [-1, 1]."""

    obs_dim = 2
    act_dim = 1

    def __init__(self, num_envs: int, max_steps: int = MAX_STEPS, seed: int = 0, reward: str = "goal"):
        if reward not in REWARDS:
            raise ValueError(f"reward={reward!r}: choose one of {', '.join(REWARDS)}")
        self.num_envs, self.max_steps, self.reward = int(num_envs), int(max_steps), reward
        self.rng = np.random.default_rng(seed)
        self.pos = np.zeros(self.num_envs)
        self.vel = np.zeros(self.num_envs)
        self.t = np.zeros(self.num_envs, dtype=np.int64)
        self.ret = np.zeros(self.num_envs)

    def _start(self, idx: np.ndarray | slice) -> None:
        n = len(self.pos[idx])
        self.pos[idx], self.vel[idx], self.t[idx], self.ret[idx] = self.rng.uniform(-0.6, -0.4, n), 0.0, 0, 0.0

    def reset(self, seed: int | None = None) -> np.ndarray:
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self._start(slice(None))
        return scale_obs(self.pos, self.vel)

    def step(self, actions: np.ndarray):
        force = np.clip(np.asarray(actions, dtype=np.float64).reshape(self.num_envs), -1.0, 1.0)
        self.vel = np.clip(self.vel + force * POWER - GRAVITY * np.cos(3 * self.pos), -MAX_SPEED, MAX_SPEED)
        self.pos = np.clip(self.pos + self.vel, MIN_POS, MAX_POS)
        self.vel[(self.pos == MIN_POS) & (self.vel < 0)] = 0.0
        term = (self.pos >= GOAL_POS) & (self.vel >= GOAL_VEL)
        reward = term.astype(np.float64) if self.reward == "goal" else np.full(self.num_envs, -1.0)
        self.t += 1
        self.ret += reward
        trunc = (self.t >= self.max_steps) & ~term
        done = term | trunc
        info = {
            "final_obs": scale_obs(self.pos, self.vel),
            "episode_done": done,
            "episode_return": self.ret.astype(np.float32),
            "episode_length": self.t.copy(),
        }
        if done.any():
            self._start(done)
        return scale_obs(self.pos, self.vel), reward.astype(np.float32), term, trunc, info
