"""Open-loop replay of an action sequence from a seed: checks that stored demos reproduce in the simulator."""

from __future__ import annotations

import numpy as np

from mepoly_il.data.maniskill.sim import REPLAY_MAX_STEPS, SIM_BACKEND, quiet_worker_setup, to_np
from mepoly_il.envs.maniskill import import_maniskill


def replay_open_loop(
    env_id: str, control_mode: str, seed: int, actions: np.ndarray, obs_mode: str = "state"
) -> tuple[np.ndarray, bool]:
    """Reset ``env_id`` with ``seed`` and execute ``actions`` (L, Da) blindly.

    Returns the visited states (L+1, Ds) (first = reset observation) and whether the episode succeeded at the end.
    """
    quiet_worker_setup()
    gym = import_maniskill()
    env = gym.make(
        env_id,
        obs_mode=obs_mode,
        control_mode=control_mode,
        sim_backend=SIM_BACKEND,
        reward_mode="sparse",
        max_episode_steps=REPLAY_MAX_STEPS,
    )
    try:
        obs, _ = env.reset(seed=int(seed))
        states = [np.asarray(to_np(obs), dtype=np.float32).reshape(-1)]
        info: dict = {}
        for a in actions:
            obs, _, _, _, info = env.step(np.asarray(a, dtype=np.float32))
            states.append(np.asarray(to_np(obs), dtype=np.float32).reshape(-1))
        success = bool(np.asarray(to_np(info.get("success", False))).reshape(-1)[0])
    finally:
        env.close()
    return np.stack(states), success
