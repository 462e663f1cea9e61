"""A tiny, valid, learnable dataset for tests: no simulator needed.

Each episode is a smooth closed-loop system: the action is a fixed smooth function of the state,
``a_t = tanh(W s_t)`` (so a policy can fit it exactly), and the state drifts with the action plus a little noise.
Actions stay in (-1, 1), states stay O(1).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mepoly_il.data.zarr_io import Episode, write_dataset


def make_synthetic_dataset(
    path: str | os.PathLike,
    num_episodes: int = 8,
    obs_dim: int = 5,
    act_dim: int = 3,
    length: tuple[int, int] = (20, 30),
    seed: int = 0,
    env_id: str = "Synthetic-v0",
    overwrite: bool = True,
) -> Path:
    """Write ``num_episodes`` episodes with lengths uniform in ``[length[0], length[1]]`` to ``path``; return it.

    States are (L, obs_dim), actions (L, act_dim); episode seeds are 0..num_episodes-1.
    """
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(act_dim, obs_dim)) * (1.0 / np.sqrt(obs_dim))
    b = rng.normal(size=(obs_dim, act_dim)) * 0.1
    episodes = []
    for i in range(num_episodes):
        n = int(rng.integers(length[0], length[1] + 1))
        s = rng.uniform(-1.0, 1.0, size=obs_dim)
        states, actions = [], []
        for _ in range(n):
            a = np.tanh(w @ s)
            states.append(s.copy())
            actions.append(a)
            s = 0.92 * s + b @ a + 0.02 * rng.normal(size=obs_dim)
        episodes.append(Episode(state=np.stack(states), action=np.stack(actions), seed=i))
    return write_dataset(path, episodes, _provenance(env_id, length[1], "synthetic"), overwrite=overwrite)


def _provenance(env_id: str, max_episode_steps: int, source_file: str) -> dict:
    """What a synthetic dataset says about where it came from (no simulator: ``sim_backend`` "none")."""
    return {
        "source": "synthetic",
        "env_id": env_id,
        "obs_mode": "state",
        "control_mode": "pd_ee_delta_pos",
        "sim_backend": "none",
        "control_freq": 20,
        "max_episode_steps": int(max_episode_steps),
        "source_file": source_file,
        "source_sha256": "",
    }


def make_bimodal_dataset(
    path: str | os.PathLike,
    num_episodes: int = 16,
    obs_dim: int = 5,
    act_dim: int = 3,
    length: int = 24,
    seed: int = 0,
    env_id: str = "SyntheticBimodal-v0",
    overwrite: bool = True,
) -> tuple[Path, np.ndarray]:
    """Two opposite action modes that the observation cannot tell apart; returns (path, mode of each episode).

    Each episode draws a mode m = +1 or -1 (balanced, random order) and acts ``a_t = m * 0.6 * d + noise`` with one
    fixed unit direction d; its states drift on their own, independent of m, so no policy can infer the mode from
    the observation and averaging the two gives the wrong action 0. Modes are (num_episodes,) in {-1, +1}.
    """
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=act_dim)
    direction /= np.linalg.norm(direction)
    modes = rng.permutation(np.resize([1.0, -1.0], num_episodes))
    episodes = []
    for i, m in enumerate(modes):
        s = rng.uniform(-1.0, 1.0, size=obs_dim)
        states, actions = [], []
        for _ in range(length):
            states.append(s.copy())
            actions.append(m * 0.6 * direction + 0.02 * rng.normal(size=act_dim))
            s = 0.9 * s + 0.1 * rng.normal(size=obs_dim)
        episodes.append(Episode(state=np.stack(states), action=np.stack(actions), seed=i))
    provenance = _provenance(env_id, length, "synthetic-bimodal")
    return write_dataset(path, episodes, provenance, overwrite=overwrite), modes
