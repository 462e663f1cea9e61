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
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import torch
from einops import rearrange
from torch import nn

from mepoly_il.data.normalize import Normalizer
from mepoly_il.errors import UserError


def check_horizons(obs_horizon: int, act_horizon: int, pred_horizon: int) -> None:
    """Validate To/Ta/T; raises ValueError naming the values and the rule."""
    if min(obs_horizon, act_horizon, pred_horizon) < 1:
        raise ValueError(f"horizons must be >= 1, got obs={obs_horizon} act={act_horizon} pred={pred_horizon}")
    if obs_horizon + act_horizon - 1 > pred_horizon:
        raise ValueError(
            f"need obs_horizon + act_horizon - 1 <= pred_horizon, got {obs_horizon} + {act_horizon} - 1 > "
            f"{pred_horizon}; lower act_horizon or raise pred_horizon"
        )


@dataclass
class PolicyShape:
    """What every chunking policy is sized by: the dataset's widths and the To/Ta/T horizons.

    ``mepoly-il fit`` fills all five from the dataset (``data.*``) when the model is built, so configs leave them
    unset (``None``); a policy built from a config needs them all.

    Args:
        obs_dim: Ds, width of one observation.
        act_dim: Da, width of one action.
        obs_horizon: To, observations the policy conditions on.
        act_horizon: Ta, actions executed per plan.
        pred_horizon: T, actions predicted per plan (``To + Ta - 1 <= T``).
    """

    obs_dim: int | None = None
    act_dim: int | None = None
    obs_horizon: int | None = None
    act_horizon: int | None = None
    pred_horizon: int | None = None

    #: how error messages name this config's fields (the CLI's nesting), e.g. ``"model.policy."``
    prefix: ClassVar[str] = "model.policy."
    SHAPE_FIELDS: ClassVar[tuple[str, ...]] = ("obs_dim", "act_dim", "obs_horizon", "act_horizon", "pred_horizon")

    def __post_init__(self) -> None:
        for name in self.SHAPE_FIELDS:
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise UserError(f"{self.prefix}{name}={value}: must be >= 1")
        if None not in (self.obs_horizon, self.act_horizon, self.pred_horizon):
            try:
                check_horizons(self.obs_horizon, self.act_horizon, self.pred_horizon)
            except ValueError as err:
                raise UserError(f"{self.prefix}*_horizon: {err}") from None

    def shape(self) -> tuple[int, int, int, int, int]:
        """(obs_dim, act_dim, To, Ta, T) as ints; UserError when one is unset."""
        missing = [n for n in self.SHAPE_FIELDS if getattr(self, n) is None]
        if missing:
            raise UserError(
                f"{self.prefix}{missing[0]} is not set: pass {', '.join(missing)} (`mepoly-il fit` takes them from "
                "the dataset)"
            )
        return tuple(int(getattr(self, n)) for n in self.SHAPE_FIELDS)  # type: ignore[return-value]

    def to_dict(self) -> dict[str, Any]:
        """The settings as primitives (what checkpoints store)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "policy_config"):
        """Rebuild from :meth:`to_dict` output; UserError naming unknown keys (a newer or foreign config)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(
                f"{where}: unknown {cls.__name__} settings {unknown}; the file was written by another version of "
                "mepoly-il, upgrade it"
            )
        return cls(**values)


class BasePolicy(nn.Module):
    """Action-chunking policy with observation and action queues.

    Subclasses implement :meth:`generate` (normalized obs history -> normalized action chunk of length T) and set
    ``policy_config`` (their config dataclass, a :class:`PolicyShape`). ``meta`` carries provenance (env_id,
    control_mode, dataset episode seeds, ...) from the checkpoint.
    """

    policy_config: PolicyShape | None = None
    #: the config dataclass this policy is built from (set by subclasses)
    config_class: ClassVar[type[PolicyShape]] = PolicyShape

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

    @classmethod
    def config_from_args(cls, args: tuple, kwargs: dict[str, Any]) -> PolicyShape:
        """A subclass constructor's arguments -> its config: ``(config,)`` as is, else the config's fields."""
        if len(args) == 1 and not kwargs and isinstance(args[0], cls.config_class):
            return args[0]
        return cls.config_class(*args, **kwargs)

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any]) -> BasePolicy:
        """Rebuild from a checkpoint dict (``read_checkpoint``): ``mepoly_il.policy_config`` builds the network, the
        ``policy.`` slice of ``state_dict`` (the EMA weights when the EMA callback ran) is loaded strictly."""
        from mepoly_il.policies import policy_state_dict

        values = (ckpt.get("mepoly_il") or {}).get("policy_config")
        if not isinstance(values, dict):
            raise UserError("checkpoint has no mepoly_il.policy_config; it was not written by `mepoly-il fit`")
        policy = cls(cls.config_class.from_dict(values, where="checkpoint mepoly_il.policy_config"))
        try:
            policy.load_state_dict(policy_state_dict(ckpt), strict=True)
        except RuntimeError as err:
            raise UserError(f"checkpoint weights do not match its policy_config: {str(err).splitlines()[0]}") from None
        return policy

    def config(self) -> dict[str, Any]:
        """The policy's settings as primitives (what checkpoints store as ``policy_config``)."""
        if self.policy_config is None:
            raise NotImplementedError(f"{type(self).__name__} has no policy_config")
        return self.policy_config.to_dict()

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
