"""What every simulator-side module of the demo pipeline shares: backend, replay limit, per-process set-up."""

from __future__ import annotations

import os

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
