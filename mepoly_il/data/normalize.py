"""Min-max normalization to [-1, 1], shared by the DataModule and by every policy.

The DataModule computes the bounds once from the dataset stats (:func:`minmax_bounds`) and the policy stores the very
same bounds as buffers (:class:`Normalizer`), so a checkpoint is self-contained and training and acting cannot drift.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

#: Relative margin added on each side of [min, max] so that the data maps strictly inside [-1, 1]. The polynomial
#: density lives on the closed box and DDPM's clip_sample clips to it; a margin keeps demos off the exact edge.
DEFAULT_MARGIN = 0.02
#: Ranges narrower than this are treated as constant (e.g. a gripper that never moves) and mapped to 0.
MIN_RANGE = 1e-4


def minmax_bounds(
    vmin: Sequence[float] | np.ndarray, vmax: Sequence[float] | np.ndarray, margin: float = DEFAULT_MARGIN
) -> tuple[np.ndarray, np.ndarray]:
    """Widen ``[vmin, vmax]`` by ``margin * range`` on each side. Returns float32 arrays ``(lo, hi)`` of shape (D,)."""
    vmin = np.asarray(vmin, dtype=np.float64)
    vmax = np.asarray(vmax, dtype=np.float64)
    rng = np.maximum(vmax - vmin, 0.0)
    pad = margin * rng
    lo, hi = vmin - pad, vmax + pad
    const = rng < MIN_RANGE
    # A constant dimension gets a unit-width window centred on its value, so it normalizes to 0 and unnormalizes back.
    lo = np.where(const, vmin - 0.5, lo)
    hi = np.where(const, vmin + 0.5, hi)
    return lo.astype(np.float32), hi.astype(np.float32)


class Normalizer(nn.Module):
    """Affine map of the last dimension between environment units and [-1, 1].

    Buffers ``lo`` and ``hi`` of shape (D,) are part of the state dict. Defaults to the identity on [-1, 1].
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = int(dim)
        self.register_buffer("lo", -torch.ones(self.dim))
        self.register_buffer("hi", torch.ones(self.dim))

    @torch.no_grad()
    def set_bounds(self, lo: Sequence[float] | np.ndarray, hi: Sequence[float] | np.ndarray) -> None:
        lo_t = torch.as_tensor(np.asarray(lo, dtype=np.float32), device=self.lo.device)
        hi_t = torch.as_tensor(np.asarray(hi, dtype=np.float32), device=self.hi.device)
        if lo_t.shape != (self.dim,) or hi_t.shape != (self.dim,):
            raise ValueError(f"normalizer bounds must have shape ({self.dim},), got {tuple(lo_t.shape)}")
        if not bool((hi_t > lo_t).all()):
            raise ValueError("normalizer bounds need hi > lo in every dimension")
        self.lo.copy_(lo_t)
        self.hi.copy_(hi_t)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """(..., D) environment units -> (..., D) in [-1, 1] for data inside the bounds."""
        return 2.0 * (x - self.lo) / (self.hi - self.lo) - 1.0

    def unnormalize(self, y: torch.Tensor) -> torch.Tensor:
        """(..., D) in [-1, 1] -> (..., D) environment units."""
        return (y + 1.0) * 0.5 * (self.hi - self.lo) + self.lo

    def extra_repr(self) -> str:
        return f"dim={self.dim}"
