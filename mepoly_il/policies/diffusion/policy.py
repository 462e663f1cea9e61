"""Diffusion Policy (Chi et al., 2023) behind the shared policy protocol, with diffusers noise schedulers.

Actions are always denoised in the normalized box [-1, 1] (DDPM's ``clip_sample`` clips to it). Observations are
normalized only when the training config says so; otherwise the observation normalizer keeps its identity bounds
([-1, 1] -> [-1, 1]) and the network sees raw observations, as in ManiSkill's baseline.

The schedulers are rebuilt from primitive settings (never pickled), so a checkpoint holds only tensors and plain
values.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler
from einops import rearrange

from mepoly_il.policies.base import BasePolicy
from mepoly_il.policies.diffusion.config import DiffusionConfig
from mepoly_il.policies.diffusion.unet import ConditionalUnet1D


class DiffusionPolicy(BasePolicy):
    """Conditional 1-D UNet denoiser eps(a_t, t | obs history) with DDPM training and DDPM/DDIM sampling.

    ``DiffusionPolicy(config)``, or ``DiffusionPolicy(obs_dim, act_dim, obs_horizon, ..., down_dims=[...], ...)``
    with the :class:`DiffusionConfig` fields as arguments (same order and names).
    """

    config_class = DiffusionConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        config = self.config_from_args(args, kwargs)
        obs_dim, act_dim, obs_horizon, act_horizon, pred_horizon = config.shape()
        super().__init__(obs_dim, act_dim, obs_horizon, act_horizon, pred_horizon)
        self.policy_config = c = config
        self.unet = ConditionalUnet1D(
            act_dim=act_dim,
            cond_dim=obs_horizon * obs_dim,
            down_dims=c.down_dims,
            diffusion_step_embed_dim=c.diffusion_step_embed_dim,
            kernel_size=c.kernel_size,
            n_groups=c.n_groups,
        )
        self.schedule_kwargs: dict[str, Any] = dict(
            num_train_timesteps=int(c.num_train_timesteps),
            beta_schedule=str(c.beta_schedule),
            clip_sample=bool(c.clip_sample),
            prediction_type=str(c.prediction_type),
        )
        self.train_scheduler = DDPMScheduler(**self.schedule_kwargs)
        self.set_inference(c.inference, c.num_inference_steps)

    def set_inference(self, inference: str, num_inference_steps: int) -> None:
        """Switch the sampler ("ddpm" | "ddim") and its number of denoising steps; no retraining needed."""
        self.policy_config = replace(self.policy_config, inference=inference, num_inference_steps=num_inference_steps)
        self.inference, self.num_inference_steps = inference, int(num_inference_steps)
        if inference == "ddpm":
            self.sampler = DDPMScheduler(**self.schedule_kwargs)
        else:
            # "trailing" spacing starts at the noisiest trained step (t = N-1) and ends by jumping to t = 0, which
            # keeps few-step DDIM faithful to the training noise levels (Lin et al., 2024).
            self.sampler = DDIMScheduler(**self.schedule_kwargs, timestep_spacing="trailing")
        self.sampler.set_timesteps(self.num_inference_steps)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.unet.parameters())

    def _cond(self, obs_norm: torch.Tensor) -> torch.Tensor:
        return rearrange(obs_norm, "b to ds -> b (to ds)")

    def compute_loss(self, obs_norm: torch.Tensor, action_norm: torch.Tensor) -> torch.Tensor:
        """Denoising loss: obs (B, To, Ds) and actions (B, T, Da), both as the network sees them -> scalar MSE.

        Padded steps are kept in the loss, as in Diffusion Policy: the DataModule pads by repeating edge values, so
        "stay where you are" after the episode end is a real target.
        """
        noise = torch.randn_like(action_norm)
        t = torch.randint(
            0, self.schedule_kwargs["num_train_timesteps"], (action_norm.shape[0],), device=action_norm.device
        )
        noisy = self.train_scheduler.add_noise(action_norm, noise, t)
        pred = self.unet(noisy, t, self._cond(obs_norm))
        if self.schedule_kwargs["prediction_type"] == "epsilon":
            target = noise
        elif self.schedule_kwargs["prediction_type"] == "sample":
            target = action_norm
        else:
            target = self.train_scheduler.get_velocity(action_norm, noise, t)
        return F.mse_loss(pred, target)

    @torch.no_grad()
    def generate(self, obs_norm: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, To, Ds) normalized observations -> (B, T, Da) normalized action chunk after the full reverse chain."""
        cond = self._cond(obs_norm)
        x = torch.randn(obs_norm.shape[0], self.pred_horizon, self.act_dim, device=obs_norm.device, generator=generator)
        for t in self.sampler.timesteps:
            eps = self.unet(x, t.to(x.device), cond)
            x = self.sampler.step(eps, int(t), x, generator=generator).prev_sample
        return x

    def extra_repr(self) -> str:
        return f"inference={self.inference}, steps={self.num_inference_steps}, params={self.num_parameters():,}"


def policy_from_checkpoint(ckpt: dict[str, Any]) -> DiffusionPolicy:
    """Rebuild a :class:`DiffusionPolicy` from a checkpoint dict (see :meth:`BasePolicy.from_checkpoint`)."""
    return DiffusionPolicy.from_checkpoint(ckpt)
