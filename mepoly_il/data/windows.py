"""Training windows over concatenated episodes: index arrays, edge padding and ``is_pad`` masks.

With To = obs_horizon and T = pred_horizon, a window starting at episode step ``s`` holds observations
``state[s : s+To]`` and actions ``action[s : s+T]``; positions outside the episode repeat the nearest edge row
(diffusion_policy's SequenceSampler) and are flagged in ``*_is_pad`` (LeRobot). Starts run over
``[-pad_before, L - T + pad_after]`` with ``pad_before = To - 1``.

We use ManiSkill's DP baseline choice ``pad_after = T - To`` (the original diffusion_policy used ``Ta - 1``): then
every step ``t`` of an episode is the *current* observation (last of the obs window, ``t = s + To - 1``) of exactly
one window, so an episode of length L gives exactly L windows, and the executed slice ``[To-1, To-1+Ta)`` of the
last window starts at the last real action. Short episodes never vanish from the training set.

Everything is vectorized: a batch is one numpy gather with precomputed offsets.
"""

from __future__ import annotations

import numpy as np

from mepoly_il.errors import UserError


def check_horizons(obs_horizon: int, act_horizon: int, pred_horizon: int) -> None:
    """Raise UserError unless all horizons are >= 1 and ``obs_horizon + act_horizon - 1 <= pred_horizon``."""
    if min(obs_horizon, act_horizon, pred_horizon) < 1:
        raise UserError(
            f"horizons must be >= 1, got obs_horizon={obs_horizon} act_horizon={act_horizon} "
            f"pred_horizon={pred_horizon}; set positive values in the data: section"
        )
    if obs_horizon + act_horizon - 1 > pred_horizon:
        raise UserError(
            f"horizons need obs_horizon + act_horizon - 1 <= pred_horizon, got {obs_horizon} + {act_horizon} - 1 > "
            f"{pred_horizon}; lower data.act_horizon or raise data.pred_horizon"
        )


def default_pad_after(obs_horizon: int, pred_horizon: int) -> int:
    """ManiSkill DP baseline padding: ``T - To`` (one window per episode step)."""
    return pred_horizon - obs_horizon


def window_starts(
    episode_ends: np.ndarray,
    episodes: np.ndarray,
    obs_horizon: int,
    pred_horizon: int,
    pad_after: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All windows of the selected episodes.

    Args:
        episode_ends: (N,) exclusive cumulative ends of all episodes.
        episodes: (M,) indices of the episodes to cut (e.g. the training split).
    Returns:
        ``starts`` (W,) absolute start row of each window (may lie before its episode's first row),
        ``begin`` (W,) and ``end`` (W,) the row range [begin, end) of the window's episode.
    """
    ends = np.asarray(episode_ends, dtype=np.int64)
    begins_all = np.concatenate([[0], ends[:-1]])
    episodes = np.asarray(episodes, dtype=np.int64)
    pad_before = obs_horizon - 1
    pad_after = default_pad_after(obs_horizon, pred_horizon) if pad_after is None else int(pad_after)
    pad_after = min(max(pad_after, 0), pred_horizon - 1)
    begin = begins_all[episodes]
    end = ends[episodes]
    lengths = end - begin
    counts = np.maximum(lengths - pred_horizon + pad_after + pad_before + 1, 0)
    # starts = begin - pad_before + k for k in [0, count): one repeat + one ragged arange, no Python loop.
    ep_of_window = np.repeat(np.arange(len(episodes)), counts)
    first = np.cumsum(counts) - counts
    k = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(first, counts)
    starts = begin[ep_of_window] - pad_before + k
    return starts, begin[ep_of_window], end[ep_of_window]


def gather_indices(
    starts: np.ndarray, begin: np.ndarray, end: np.ndarray, length: int
) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (B, length), clipped to each episode (edge replication), and ``is_pad`` (B, length) bool."""
    idx = starts[:, None] + np.arange(length, dtype=np.int64)[None, :]
    is_pad = (idx < begin[:, None]) | (idx >= end[:, None])
    idx = np.clip(idx, begin[:, None], end[:, None] - 1)
    return idx, is_pad


def split_episodes(num_episodes: int, val_ratio: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split episode indices into (train, val) sorted arrays; whole episodes only.

    With ``val_ratio > 0`` and at least 2 episodes each side gets at least one episode (diffusion_policy's
    ``get_val_mask``); ``val_ratio == 0`` or a single episode gives an empty validation split.
    """
    if not 0.0 <= val_ratio < 1.0:
        raise UserError(f"val_ratio must be in [0, 1), got {val_ratio}; set data.val_ratio e.g. to 0.1")
    all_eps = np.arange(num_episodes)
    if val_ratio == 0.0 or num_episodes < 2:
        return all_eps, all_eps[:0]
    n_val = min(max(1, round(num_episodes * val_ratio)), num_episodes - 1)
    rng = np.random.default_rng(seed)
    val = np.sort(rng.choice(num_episodes, size=n_val, replace=False))
    train = np.setdiff1d(all_eps, val)
    return train, val
