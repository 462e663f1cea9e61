"""What every simulator-side module of the demo pipeline shares: backend, replay limit, per-process set-up."""

from __future__ import annotations

import os

from mepoly_il.errors import UserError

#: Demos are recorded and replayed on the CPU simulator (its results do not depend on the GPU).
SIM_BACKEND = "physx_cpu"
#: Replays must never be cut by the registered (RL) time limit; demos can be longer than it.
REPLAY_MAX_STEPS = 100_000


def quiet_worker_setup() -> None:
    """One simulator per core: keep torch/BLAS single-threaded."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)


def to_np(x):
    """A torch tensor (any device) or array-like -> numpy (arrays pass through)."""
    return x.cpu().numpy() if hasattr(x, "cpu") else x


def check_expert_env(env, solver: str, env_id: str, control_mode: str) -> None:
    """A scripted expert's env must be ``env_id`` in ``control_mode`` with one sub-env; one-line UserError if not."""
    u = env.unwrapped
    if u.spec is None or u.spec.id != env_id:
        name = u.spec.id if u.spec is not None else type(u).__name__
        raise UserError(f"{solver}: env {name} is not {env_id}; make the env with gym.make('{env_id}', ...)")
    if u.control_mode != control_mode:
        raise UserError(
            f"{solver}: env control_mode {u.control_mode!r} is not supported; make it with "
            f"control_mode='{control_mode}' (the mode the task's IL configs use)"
        )
    if u.num_envs != 1:
        raise UserError(f"{solver}: env has num_envs={u.num_envs}; the expert drives one env (num_envs=1)")
