"""Diffusion Policy (Chi et al., 2023) behind the shared policy protocol, with diffusers noise schedulers.

Actions are always denoised in the normalized box [-1, 1] (DDPM's ``clip_sample`` clips to it). Observations are
normalized only when the training config says so; otherwise the observation normalizer keeps its identity bounds
([-1, 1] -> [-1, 1]) and the network sees raw observations, as in ManiSkill's baseline.

The schedulers are rebuilt from primitive settings (never pickled), so a checkpoint holds only tensors and plain
values.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler
from einops import rearrange

from mepoly_il.errors import UserError
from mepoly_il.policies.base import BasePolicy
from mepoly_il.policies.diffusion.unet import ConditionalUnet1D

INFERENCE_KINDS = ("ddpm", "ddim")
BETA_SCHEDULES = ("squaredcos_cap_v2", "linear", "scaled_linear")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


class DiffusionPolicy(BasePolicy):
    """Conditional 1-D UNet denoiser eps(a_t, t | obs history) with DDPM training and DDPM/DDIM sampling.

    Args:
        obs_dim, act_dim, obs_horizon, act_horizon, pred_horizon: Ds, Da, To, Ta, T (see :mod:`..base`).
        down_dims: UNet widths per level (the size knob); T must be divisible by ``2 ** (len(down_dims) - 1)``.
        diffusion_step_embed_dim, kernel_size, n_groups: UNet details (ManiSkill baseline: 64, 5, 8).
        num_train_timesteps, beta_schedule, clip_sample, prediction_type: the diffusers noise schedule.
        inference: "ddpm" (ancestral sampling) or "ddim" (deterministic, eta = 0).
        num_inference_steps: denoising steps per chunk; DDPM uses all of them (must equal num_train_timesteps to
            match the baseline), DDIM any k in [1, num_train_timesteps].
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        obs_horizon: int,
        act_horizon: int,
        pred_horizon: int,
        down_dims: Sequence[int] = (64, 128, 256),
        diffusion_step_embed_dim: int = 64,
        kernel_size: int = 5,
        n_groups: int = 8,
        num_train_timesteps: int = 100,
        beta_schedule: str = "squaredcos_cap_v2",
        clip_sample: bool = True,
        prediction_type: str = "epsilon",
        inference: str = "ddpm",
        num_inference_steps: int = 100,
    ) -> None:
        super().__init__(obs_dim, act_dim, obs_horizon, act_horizon, pred_horizon)
        validate_config(pred_horizon, down_dims, n_groups, num_train_timesteps, inference, num_inference_steps)
        self.unet = ConditionalUnet1D(
            act_dim=act_dim,
            cond_dim=obs_horizon * obs_dim,
            down_dims=down_dims,
            diffusion_step_embed_dim=diffusion_step_embed_dim,
            kernel_size=kernel_size,
            n_groups=n_groups,
        )
        if beta_schedule not in BETA_SCHEDULES:
            raise UserError(f"model.beta_schedule={beta_schedule!r}: choose one of {list(BETA_SCHEDULES)}")
        if prediction_type not in PREDICTION_TYPES:
            raise UserError(f"model.prediction_type={prediction_type!r}: choose one of {list(PREDICTION_TYPES)}")
        self.schedule_kwargs: dict[str, Any] = dict(
            num_train_timesteps=int(num_train_timesteps),
            beta_schedule=str(beta_schedule),
            clip_sample=bool(clip_sample),
            prediction_type=str(prediction_type),
        )
        self.train_scheduler = DDPMScheduler(**self.schedule_kwargs)
        self.set_inference(inference, num_inference_steps)

    def set_inference(self, inference: str, num_inference_steps: int) -> None:
        """Switch the sampler ("ddpm" | "ddim") and its number of denoising steps; no retraining needed."""
        validate_config(
            self.pred_horizon,
            self.unet.down_dims,
            None,
            self.schedule_kwargs["num_train_timesteps"],
            inference,
            num_inference_steps,
        )
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


def validate_config(
    pred_horizon: int,
    down_dims: Sequence[int],
    n_groups: int | None,
    num_train_timesteps: int,
    inference: str,
    num_inference_steps: int,
) -> None:
    """Fail early, with the value and the fix, on settings that would otherwise crash deep inside the UNet."""
    dims = list(down_dims)
    if not dims or any(int(d) < 1 for d in dims):
        raise UserError(f"model.down_dims={dims}: give one positive width per UNet level, e.g. [64, 128, 256]")
    multiple = 2 ** (len(dims) - 1)
    if pred_horizon % multiple:
        raise UserError(
            f"data.pred_horizon={pred_horizon} is not divisible by {multiple} = 2**(len(model.down_dims)-1) "
            f"(down_dims={dims} halves the chunk {len(dims) - 1} times); use a pred_horizon that is a multiple "
            f"of {multiple} or fewer UNet levels"
        )
    if n_groups is not None and any(int(d) % n_groups for d in dims):
        raise UserError(
            f"model.down_dims={dims}: every width must be divisible by model.n_groups={n_groups} (GroupNorm)"
        )
    if inference not in INFERENCE_KINDS:
        raise UserError(f"model.inference={inference!r}: choose one of {list(INFERENCE_KINDS)}")
    if not 1 <= int(num_inference_steps) <= int(num_train_timesteps):
        raise UserError(
            f"model.num_inference_steps={num_inference_steps} must be in [1, model.num_train_timesteps="
            f"{num_train_timesteps}]; for DDIM pick k <= {num_train_timesteps} (e.g. 10)"
        )
    if inference == "ddpm" and int(num_inference_steps) != int(num_train_timesteps):
        raise UserError(
            f"model.num_inference_steps={num_inference_steps} with inference='ddpm': DDPM ancestral sampling runs "
            f"every trained step ({num_train_timesteps}); set num_inference_steps={num_train_timesteps} or use "
            "inference='ddim' for fewer steps"
        )


def policy_kwargs(hparams: dict[str, Any]) -> dict[str, Any]:
    """The subset of saved hyperparameters that :class:`DiffusionPolicy` takes."""
    names = set(inspect.signature(DiffusionPolicy.__init__).parameters) - {"self"}
    return {k: v for k, v in hparams.items() if k in names}


def policy_from_checkpoint(ckpt: dict[str, Any]) -> DiffusionPolicy:
    """Rebuild a :class:`DiffusionPolicy` from a checkpoint dict: ``mepoly_il.policy_config`` + ``policy.`` weights."""
    from mepoly_il.policies import policy_state_dict

    info = ckpt.get("mepoly_il") or {}
    hp = dict(info.get("policy_config") or ckpt.get("hyper_parameters") or {})
    missing = [k for k in ("obs_dim", "act_dim", "obs_horizon", "act_horizon", "pred_horizon") if k not in hp]
    if missing:
        raise UserError(f"checkpoint has no {missing} in mepoly_il.policy_config; it was not written by `fit dp`")
    policy = DiffusionPolicy(**policy_kwargs(hp))
    try:
        policy.load_state_dict(policy_state_dict(ckpt), strict=True)
    except RuntimeError as err:
        raise UserError(f"checkpoint weights do not match its policy_config: {str(err).splitlines()[0]}") from None
    return policy
