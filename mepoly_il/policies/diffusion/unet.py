"""1-D temporal UNet with FiLM conditioning, the noise-prediction network of Diffusion Policy.

The design follows Chi et al. (2023) and ManiSkill's state baseline: the action chunk (B, T, Da) is treated as a
1-D signal with Da channels; every residual block is modulated (scale and shift, "FiLM") by one global condition
vector = [diffusion-step embedding, flattened observation history]. Down-sampling halves T at every level but the
last, so T must be divisible by ``2 ** (len(down_dims) - 1)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from einops import rearrange
from torch import nn


class SinusoidalStepEmbedding(nn.Module):
    """Transformer-style sinusoidal features of a (possibly fractional) step index: (B,) -> (B, dim)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"diffusion_step_embed_dim must be even, got {dim}")
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(torch.arange(half, device=t.device, dtype=torch.float32) * (-math.log(10000.0) / (half - 1)))
        angles = t.float()[:, None] * freqs[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=-1)


class ConvNormAct(nn.Sequential):
    """Conv1d -> GroupNorm -> Mish, length preserving. (B, Cin, T) -> (B, Cout, T)."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, n_groups: int) -> None:
        super().__init__(
            nn.Conv1d(c_in, c_out, kernel_size, padding=kernel_size // 2),
            nn.GroupNorm(n_groups, c_out),
            nn.Mish(),
        )


class FiLMResBlock(nn.Module):
    """Two conv blocks; the condition rescales and shifts the features between them; 1x1 conv on the skip path.

    (B, Cin, T), (B, Dc) -> (B, Cout, T).
    """

    def __init__(self, c_in: int, c_out: int, cond_dim: int, kernel_size: int, n_groups: int) -> None:
        super().__init__()
        self.block1 = ConvNormAct(c_in, c_out, kernel_size, n_groups)
        self.block2 = ConvNormAct(c_out, c_out, kernel_size, n_groups)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * c_out))
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.block1(x)
        scale, shift = rearrange(self.film(cond), "b (two c) -> two b c 1", two=2)
        h = self.block2(scale * h + shift)
        return h + self.skip(x)


class ConditionalUnet1D(nn.Module):
    """Noise predictor eps(x_t, t | obs).

    Args:
        act_dim: Da, channels of the denoised signal.
        cond_dim: size of the global condition (To * Ds for a flattened observation history).
        down_dims: channel width per level; the size knob (parameters grow ~quadratically with the widths).
        diffusion_step_embed_dim: width of the sinusoidal step embedding.
        kernel_size, n_groups: conv kernel and GroupNorm groups (every width must be divisible by n_groups).
    """

    def __init__(
        self,
        act_dim: int,
        cond_dim: int,
        down_dims: Sequence[int] = (64, 128, 256),
        diffusion_step_embed_dim: int = 64,
        kernel_size: int = 5,
        n_groups: int = 8,
    ) -> None:
        super().__init__()
        dims = [int(d) for d in down_dims]
        if not dims:
            raise ValueError("down_dims must name at least one level, e.g. [64, 128, 256]")
        bad = [d for d in dims if d % n_groups]
        if bad:
            raise ValueError(f"every down_dims entry must be divisible by n_groups={n_groups}; got {bad}")
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd to keep the length, got {kernel_size}")
        self.down_dims = dims
        e = diffusion_step_embed_dim
        self.step_encoder = nn.Sequential(
            SinusoidalStepEmbedding(e), nn.Linear(e, 4 * e), nn.Mish(), nn.Linear(4 * e, e)
        )
        c = e + cond_dim
        block = lambda a, b: FiLMResBlock(a, b, c, kernel_size, n_groups)

        widths = [act_dim, *dims]
        self.down = nn.ModuleList()
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            last = i == len(dims) - 1
            resample = nn.Identity() if last else nn.Conv1d(b, b, 3, stride=2, padding=1)
            self.down.append(nn.ModuleList([block(a, b), block(b, b), resample]))
        self.mid = nn.ModuleList([block(dims[-1], dims[-1]), block(dims[-1], dims[-1])])
        # Up path: one level per down level except the last; each block sees [features, skip] at the same length.
        self.up = nn.ModuleList()
        for a, b in reversed(list(zip(dims[:-1], dims[1:]))):
            self.up.append(
                nn.ModuleList([block(2 * b, a), block(a, a), nn.ConvTranspose1d(a, a, 4, stride=2, padding=1)])
            )
        self.head = nn.Sequential(ConvNormAct(dims[0], dims[0], kernel_size, n_groups), nn.Conv1d(dims[0], act_dim, 1))

    @property
    def length_multiple(self) -> int:
        """The chunk length T must be a multiple of this (one halving per level except the last)."""
        return 2 ** (len(self.down_dims) - 1)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | int, global_cond: torch.Tensor) -> torch.Tensor:
        """sample (B, T, Da), timestep (B,) or scalar, global_cond (B, Dc) -> predicted noise (B, T, Da)."""
        x = rearrange(sample, "b t d -> b d t")
        t = torch.as_tensor(timestep, device=sample.device)
        if t.ndim == 0:
            t = t.expand(sample.shape[0])
        cond = torch.cat([self.step_encoder(t), global_cond], dim=-1)
        skips = []
        for res1, res2, downsample in self.down:
            x = res2(res1(x, cond), cond)
            skips.append(x)
            x = downsample(x)
        for res in self.mid:
            x = res(x, cond)
        # As in the reference design, the up path consumes the skips from the deepest level upwards; the top-level
        # skip (full length) is left unused, and the head works on the up-sampled features.
        for res1, res2, upsample in self.up:
            x = torch.cat([x, skips.pop()], dim=1)
            x = upsample(res2(res1(x, cond), cond))
        return rearrange(self.head(x), "b d t -> b t d")
