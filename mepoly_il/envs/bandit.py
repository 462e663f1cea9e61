"""The MePoly bandit: one dummy state, a 2-D action in [-1, 1]^2, reward = Gaussian kernel of the distance to
the nearest point of a target cloud (MePoly paper §5.2, Eq. 15).

``r(a) = exp(-d(a)^2 / (2 sigma^2))`` with ``d(a) = min_i ||clip(a) - x_i||`` over ``num_points`` target
points drawn once from :data:`mepoly_il.envs.targets.TARGETS` with ``cloud_seed`` (the authors reseed the
cloud with the run seed, so every seed sees a slightly different cloud; we do the same by default). The
paper's text says ``sigma = 0.05``, the authors' code uses ``0.1``: both are supported through ``sigma`` and
every result records which one it used.

:class:`VecBandit` evaluates a whole batch of one-step episodes at once (KD-tree nearest neighbour) and is
what the trainer uses; :class:`BanditEnv` is the single-episode gymnasium view of the same task.
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np
from scipy.spatial import cKDTree

from mepoly_il.envs.targets import TARGETS

SIGMA_CODE = 0.1  # the authors' code (bandit/utils/bandit.py)
SIGMA_PAPER = 0.05  # the paper's text (§5.2)


@dataclass(frozen=True)
class BanditTask:
    """A fixed target cloud and its reward kernel."""

    target: str = "lemniscate"
    sigma: float = SIGMA_CODE
    num_points: int = 4096
    noise: float = 0.03
    cloud_seed: int = 0

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"unknown bandit target {self.target!r}; choose one of {sorted(TARGETS)}")
        if not self.sigma > 0:
            raise ValueError(f"sigma must be > 0, got {self.sigma}")
        if self.num_points < 1:
            raise ValueError(f"num_points must be >= 1, got {self.num_points}")

    def sample_target(self, n: int, seed: int) -> np.ndarray:
        """Fresh points of the same generator -> (n, 2) float64."""
        return TARGETS[self.target](n, np.random.default_rng(seed), noise=self.noise)


class BanditReward:
    """Reward of a batch of actions against one target cloud."""

    def __init__(self, task: BanditTask):
        self.task = task
        self.points = task.sample_target(task.num_points, task.cloud_seed)  # (P, 2)
        self._tree = cKDTree(self.points)

    def distance(self, actions: np.ndarray) -> np.ndarray:
        """Nearest-target distance of clipped actions: (N, 2) -> (N,)."""
        a = np.clip(np.asarray(actions, dtype=np.float64).reshape(-1, 2), -1.0, 1.0)
        d, _ = self._tree.query(a, k=1)
        return d

    def __call__(self, actions: np.ndarray) -> np.ndarray:
        """(N, 2) actions -> (N,) rewards in (0, 1]."""
        d = self.distance(actions)
        return np.exp(-(d**2) / (2.0 * self.task.sigma**2))


class VecBandit:
    """``num_envs`` parallel one-step episodes. Every step terminates every env; obs is the constant zero
    state.

    Same calling convention as :class:`mepoly_il.envs.smoothworld.VecSmoothWorld`: ``reset(seed) -> obs (N,
    1)``, ``step(actions (N, 2)) -> (obs, reward, terminated, truncated, info)`` with same-step autoreset.
    """

    obs_dim = 1
    act_dim = 2

    def __init__(self, task: BanditTask, num_envs: int):
        self.task = task
        self.num_envs = int(num_envs)
        self.reward_fn = BanditReward(task)

    def reset(self, seed: int | None = None) -> np.ndarray:
        return np.zeros((self.num_envs, 1), dtype=np.float32)

    def step(self, actions: np.ndarray):
        r = self.reward_fn(actions).astype(np.float32)
        obs = np.zeros((self.num_envs, 1), dtype=np.float32)
        term = np.ones(self.num_envs, dtype=bool)
        trunc = np.zeros(self.num_envs, dtype=bool)
        return obs, r, term, trunc, {"episode_return": r.copy(), "episode_done": term.copy()}


class BanditEnv(gym.Env):
    """Single-episode gymnasium view: one step per episode, reward in (0, 1], always terminated."""

    metadata = {"render_modes": []}

    def __init__(
        self,
        target: str = "lemniscate",
        sigma: float = SIGMA_CODE,
        num_points: int = 4096,
        noise: float = 0.03,
        cloud_seed: int = 0,
    ):
        self.task = BanditTask(target, sigma, num_points, noise, cloud_seed)
        self.reward_fn = BanditReward(self.task)
        self.observation_space = gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        return np.zeros(1, dtype=np.float32), {}

    def step(self, action):
        r = float(self.reward_fn(np.asarray(action).reshape(1, 2))[0])
        return np.zeros(1, dtype=np.float32), r, True, False, {}
