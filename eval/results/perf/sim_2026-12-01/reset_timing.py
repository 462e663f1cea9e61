"""Milliseconds per ``env.reset`` with a scene rebuild (``reconfigure``), with and without freezing the GC first.

Usage: OMP_NUM_THREADS=1 python reset_timing.py [ENV_ID] [CONTROL_MODE]
ManiSkill ends every rebuild in a full ``gc.collect()``; the first number is what that costs in a process holding
torch and the simulator, the second what is left once the objects that exist are frozen (what the evaluation
envs do since 2026-12-01, see ``mepoly_il/envs/maniskill.py``). Ten resets each, plain resets for reference.
"""

from __future__ import annotations

import gc
import sys
import time

from mepoly_il.envs.maniskill import import_maniskill


def per_reset_ms(env, reconfigure: bool, n: int = 10) -> float:
    options = {"reconfigure": True} if reconfigure else {}
    t = time.perf_counter()
    for seed in range(n):
        env.reset(seed=seed, options=options)
    return (time.perf_counter() - t) / n * 1e3


def main(env_id: str = "PushCube-v1", control_mode: str = "pd_ee_delta_pos") -> None:
    gym = import_maniskill()
    env = gym.make(env_id, obs_mode="state", control_mode=control_mode, sim_backend="physx_cpu", reward_mode="sparse")
    env.reset(seed=0)
    print(f"{env_id}: rebuild, GC not frozen {per_reset_ms(env, True):.1f} ms")
    gc.collect()
    gc.freeze()
    print(f"{env_id}: rebuild, GC frozen     {per_reset_ms(env, True):.1f} ms")
    print(f"{env_id}: plain reset           {per_reset_ms(env, False):.1f} ms")
    gc.unfreeze()
    env.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
