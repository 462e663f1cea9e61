"""Diffusion Policy's settings, each declared once: what :class:`~.policy.DiffusionPolicy` takes, what
``fit dp`` configures under ``model.policy`` and what a checkpoint stores (``policy_config``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from mepoly_il.errors import UserError
from mepoly_il.policies.base import PolicyShape

INFERENCE_KINDS = ("ddpm", "ddim")
BETA_SCHEDULES = ("squaredcos_cap_v2", "linear", "scaled_linear")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


@dataclass
class DiffusionConfig(PolicyShape):
    """Conditional 1-D UNet denoiser eps(a_t, t | obs history), its DDPM training schedule and its sampler.

    Args:
        down_dims: UNet widths per level, the size knob; T must be divisible by ``2 ** (len(down_dims) - 1)``.
            Parameters for obs_dim 35, act_dim 4, To 2: [24,48,96] 0.76M, [32,64,128] 1.23M, [64,128,256] 4.34M
            (ManiSkill's baseline), [112,224,448] 12.57M (~MePoly's paper scale). ``fit dp --print_config`` prints
            the count.
        diffusion_step_embed_dim: width of the diffusion-step embedding (ManiSkill baseline: 64).
        kernel_size: 1-D convolution kernel (baseline: 5).
        n_groups: GroupNorm groups; must divide every width in down_dims (baseline: 8).
        num_train_timesteps: DDPM noise levels N (baseline: 100).
        beta_schedule: diffusers noise schedule: ``"squaredcos_cap_v2"``, ``"linear"`` or ``"scaled_linear"``.
        clip_sample: clip denoised actions to the normalized box [-1, 1] while sampling.
        prediction_type: what the UNet predicts: ``"epsilon"``, ``"sample"`` or ``"v_prediction"``.
        inference: sampler used when acting: ``"ddpm"`` (ancestral, all N steps) or ``"ddim"`` (deterministic).
        num_inference_steps: denoising steps per chunk: N for DDPM, any k in [1, N] for DDIM.
    """

    down_dims: list[int] = field(default_factory=lambda: [64, 128, 256])
    diffusion_step_embed_dim: int = 64
    kernel_size: int = 5
    n_groups: int = 8
    num_train_timesteps: int = 100
    beta_schedule: str = "squaredcos_cap_v2"
    clip_sample: bool = True
    prediction_type: str = "epsilon"
    inference: str = "ddpm"
    num_inference_steps: int = 100

    def __post_init__(self) -> None:
        super().__post_init__()
        p = self.prefix
        dims = self.down_dims = [int(d) for d in self.down_dims]
        if not dims or any(d < 1 for d in dims):
            raise UserError(f"{p}down_dims={dims}: give one positive width per UNet level, e.g. [64, 128, 256]")
        multiple = 2 ** (len(dims) - 1)
        if self.pred_horizon is not None and self.pred_horizon % multiple:
            raise UserError(
                f"data.pred_horizon={self.pred_horizon} is not divisible by {multiple} = 2**(len({p}down_dims)-1) "
                f"(down_dims={dims} halves the chunk {len(dims) - 1} times); use a pred_horizon that is a multiple "
                f"of {multiple} or fewer UNet levels"
            )
        if any(d % self.n_groups for d in dims):
            raise UserError(
                f"{p}down_dims={dims}: every width must be divisible by {p}n_groups={self.n_groups} (GroupNorm)"
            )
        for name in ("diffusion_step_embed_dim", "kernel_size", "n_groups", "num_train_timesteps"):
            if int(getattr(self, name)) < 1:
                raise UserError(f"{p}{name}={getattr(self, name)}: must be >= 1")
        if self.beta_schedule not in BETA_SCHEDULES:
            raise UserError(f"{p}beta_schedule={self.beta_schedule!r}: choose one of {list(BETA_SCHEDULES)}")
        if self.prediction_type not in PREDICTION_TYPES:
            raise UserError(f"{p}prediction_type={self.prediction_type!r}: choose one of {list(PREDICTION_TYPES)}")
        if self.inference not in INFERENCE_KINDS:
            raise UserError(f"{p}inference={self.inference!r}: choose one of {list(INFERENCE_KINDS)}")
        n, k = int(self.num_train_timesteps), int(self.num_inference_steps)
        if not 1 <= k <= n:
            raise UserError(
                f"{p}num_inference_steps={k} must be in [1, {p}num_train_timesteps={n}]; for DDIM pick k <= {n} "
                "(e.g. 10)"
            )
        if self.inference == "ddpm" and k != n:
            raise UserError(
                f"{p}num_inference_steps={k} with inference='ddpm': DDPM ancestral sampling runs every trained step "
                f"({n}); set num_inference_steps={n} or use inference='ddim' for fewer steps"
            )
