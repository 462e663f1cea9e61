"""The policy protocol shared by MePoly and Diffusion Policy (LeRobot-style).

Timing, with To = obs_horizon, Ta = act_horizon, T = pred_horizon (diffusion_policy convention)::

    step:        t-To+1 ... t-1  t   t+1 ... t+Ta-1 ... t-To+T
    obs used:    |------ To -----|
    predicted:   |----------------------- T ------------------|
    executed:                    |---- Ta ----|

The predicted chunk starts at the first observation of the history; the executed slice is
``chunk[:, To-1 : To-1+Ta]``. Hence ``To + Ta - 1 <= T``.

Observations in and actions out are in the environment's own units: the normalizers are buffers inside the policy,
so a checkpoint is self-contained.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import torch
from einops import rearrange
from torch import nn

from mepoly_il.data.normalize import Normalizer


def check_horizons(obs_horizon: int, act_horizon: int, pred_horizon: int) -> None:
    """Validate To/Ta/T; raises ValueError naming the values and the rule."""
    if min(obs_horizon, act_horizon, pred_horizon) < 1:
        raise ValueError(f"horizons must be >= 1, got obs={obs_horizon} act={act_horizon} pred={pred_horizon}")
    if obs_horizon + act_horizon - 1 > pred_horizon:
        raise ValueError(
            f"need obs_horizon + act_horizon - 1 <= pred_horizon, got {obs_horizon} + {act_horizon} - 1 > "
            f"{pred_horizon}; lower act_horizon or raise pred_horizon"
        )


class BasePolicy(nn.Module):
    """Action-chunking policy with observation and action queues.

    Subclasses implement :meth:`generate` (normalized obs history -> normalized action chunk of length T).
    ``meta`` carries provenance (env_id, control_mode, dataset episode seeds, ...) from the checkpoint.
    """

    def __init__(self, obs_dim: int, act_dim: int, obs_horizon: int, act_horizon: int, pred_horizon: int) -> None:
        super().__init__()
        check_horizons(obs_horizon, act_horizon, pred_horizon)
        self.obs_dim, self.act_dim = int(obs_dim), int(act_dim)
        self.obs_horizon, self.act_horizon, self.pred_horizon = int(obs_horizon), int(act_horizon), int(pred_horizon)
        self.obs_normalizer = Normalizer(obs_dim)
        self.act_normalizer = Normalizer(act_dim)
        self.meta: dict[str, Any] = {}
        self._obs_queue: deque[torch.Tensor] = deque(maxlen=self.obs_horizon)
        self._action_queue: deque[torch.Tensor] = deque(maxlen=self.act_horizon)

    # -- to implement --------------------------------------------------------------------------------------------
    def generate(self, obs_norm: torch.Tensor) -> torch.Tensor:
        """(B, To, Ds) normalized observations -> (B, T, Da) normalized actions."""
        raise NotImplementedError

    # -- protocol ------------------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.obs_normalizer.lo.device

    def reset(self) -> None:
        """Clear the queues; call at every episode start."""
        self._obs_queue.clear()
        self._action_queue.clear()

    @torch.no_grad()
    def predict_action_chunk(self, obs_history: torch.Tensor) -> torch.Tensor:
        """(B, To, Ds) raw observations -> (B, Ta, Da) raw actions to execute next."""
        if obs_history.ndim != 3 or obs_history.shape[1:] != (self.obs_horizon, self.obs_dim):
            raise ValueError(
                f"obs_history must be (B, {self.obs_horizon}, {self.obs_dim}), got {tuple(obs_history.shape)}"
            )
        obs_norm = self.obs_normalizer.normalize(obs_history.to(self.device, torch.float32))
        chunk = self.generate(obs_norm)  # (B, T, Da) normalized
        start = self.obs_horizon - 1
        executed = chunk[:, start : start + self.act_horizon]
        return self.act_normalizer.unnormalize(executed.clamp(-1.0, 1.0))

    @torch.no_grad()
    def select_action(self, obs: torch.Tensor) -> torch.Tensor:
        """(B, Ds) raw observation -> (B, Da) raw action. Re-plans every ``act_horizon`` calls.

        The observation queue is filled with copies of the first observation after :meth:`reset`.
        """
        obs = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        if obs.ndim != 2 or obs.shape[-1] != self.obs_dim:
            raise ValueError(f"select_action expects (B, {self.obs_dim}) observations, got {tuple(obs.shape)}")
        if not self._obs_queue:
            self._obs_queue.extend([obs] * self.obs_horizon)
        else:
            self._obs_queue.append(obs)
        if not self._action_queue:
            history = torch.stack(list(self._obs_queue), dim=1)  # (B, To, Ds)
            chunk = self.predict_action_chunk(history)  # (B, Ta, Da)
            self._action_queue.extend(rearrange(chunk, "b t d -> t b d").unbind(0))
        return self._action_queue.popleft()

    def set_normalizers(self, obs_bounds: tuple, act_bounds: tuple) -> None:
        """Copy dataset bounds ``(lo, hi)`` into the buffers (called once at the start of training)."""
        self.obs_normalizer.set_bounds(*obs_bounds)
        self.act_normalizer.set_bounds(*act_bounds)
