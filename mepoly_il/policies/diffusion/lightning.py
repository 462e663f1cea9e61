"""`mepoly-il fit dp`: the Diffusion Policy baseline as a LightningModule.

Training mirrors ManiSkill's state DP baseline (``examples/baselines/diffusion_policy/train.py``): DDPM with 100
``squaredcos_cap_v2`` steps, epsilon prediction, AdamW(1e-4, betas (0.95, 0.999), wd 1e-6), cosine schedule with 500
warmup steps stepped every batch, EMA weights for evaluation (``EMAWeightAveraging`` in the YAML). Differences are
config choices: observation normalization (``normalize_obs``) and the sampler used at evaluation.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from diffusers.optimization import get_scheduler

from mepoly_il.data.normalize import Normalizer
from mepoly_il.errors import UserError
from mepoly_il.policies import CHECKPOINT_FORMAT_VERSION
from mepoly_il.policies.diffusion.policy import DiffusionPolicy, policy_kwargs
from mepoly_il.policies.run_layout import arrange_run_outputs
from mepoly_il.utils import to_primitive as _primitive


class DiffusionModule(pl.LightningModule):
    """Trains a :class:`DiffusionPolicy` on DemoDataModule batches.

    Args:
        obs_dim, act_dim: linked from the dataset (``data.path``); not set in the YAML.
        obs_horizon, act_horizon, pred_horizon: linked from ``data.*``; ManiSkill uses 2 / 8 / 16 (PushT act 1).
        down_dims: UNet widths per level, the size knob. Parameters for obs_dim 35 (PushCube), act_dim 4,
            To 2: [24,48,96] 0.76M (CPU configs, ~MePoly CPU scale 0.66M), [32,64,128] 1.23M, [64,128,256] 4.34M
            (ManiSkill's baseline), [96,192,384] 9.35M, [112,224,448] 12.57M (paper configs, ~MePoly's 13.2M),
            [128,256,512] 16.27M. ``mepoly-il fit dp --print_config`` prints the count to stderr.
        diffusion_step_embed_dim, kernel_size, n_groups: UNet details.
        num_train_timesteps, beta_schedule, clip_sample, prediction_type: DDPM training schedule.
        inference, num_inference_steps: sampler stored with the checkpoint ("ddpm" with all steps, or "ddim" k).
        normalize_obs: min-max normalize observations to [-1, 1] (True, the default) or feed them raw like
            ManiSkill's baseline (False). Default chosen by measurement: on 60 PushCube motion-planning demos the
            held-out denoising loss after 1500 steps was 0.048 normalized vs 0.163 raw (configs/dp/*-cpu.yaml).
        lr, betas, weight_decay: AdamW.
        warmup_steps: linear warmup before the cosine decay over ``trainer.max_steps``.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        obs_horizon: int = 2,
        act_horizon: int = 8,
        pred_horizon: int = 16,
        down_dims: list[int] = (64, 128, 256),  # type: ignore[assignment]
        diffusion_step_embed_dim: int = 64,
        kernel_size: int = 5,
        n_groups: int = 8,
        num_train_timesteps: int = 100,
        beta_schedule: str = "squaredcos_cap_v2",
        clip_sample: bool = True,
        prediction_type: str = "epsilon",
        inference: str = "ddpm",
        num_inference_steps: int = 100,
        normalize_obs: bool = True,
        lr: float = 1e-4,
        betas: Sequence[float] = (0.95, 0.999),
        weight_decay: float = 1e-6,
        warmup_steps: int = 500,
    ) -> None:
        super().__init__()
        # Primitives only: the checkpoint must load with torch.load(weights_only=True).
        down_dims = [int(d) for d in down_dims]
        betas = [float(b) for b in betas]
        self.save_hyperparameters()
        self.policy = DiffusionPolicy(
            obs_dim,
            act_dim,
            obs_horizon,
            act_horizon,
            pred_horizon,
            down_dims=down_dims,
            diffusion_step_embed_dim=diffusion_step_embed_dim,
            kernel_size=kernel_size,
            n_groups=n_groups,
            num_train_timesteps=num_train_timesteps,
            beta_schedule=beta_schedule,
            clip_sample=clip_sample,
            prediction_type=prediction_type,
            inference=inference,
            num_inference_steps=num_inference_steps,
        )
        # The DataModule always hands out normalized observations; with normalize_obs=False the module maps them
        # back to raw units with the dataset bounds kept here (outside the policy, which then sees raw values).
        self.data_obs_normalizer = Normalizer(obs_dim)
        self._dataset_meta: dict[str, Any] = {}

    @classmethod
    def count_parameters(cls, model_kwargs: dict[str, Any], data_kwargs: dict[str, Any]) -> str:
        """One line with the parameter count for a parsed config (used by ``--print_config``)."""
        from mepoly_il.data.datamodule import DemoDataModule

        dm = DemoDataModule(**data_kwargs)
        kwargs = {k: v for k, v in model_kwargs.items() if k not in ("obs_dim", "act_dim")}
        model = cls(obs_dim=dm.obs_dim, act_dim=dm.act_dim, **kwargs)
        return (
            f"DP parameters: {model.policy.num_parameters():,} (down_dims={list(model.hparams.down_dims)}, "
            f"obs_dim={dm.obs_dim}, act_dim={dm.act_dim})"
        )

    # -- setup ---------------------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if stage != "fit":
            return
        arrange_run_outputs(self.trainer)
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None:
            raise UserError("`fit dp` needs a DemoDataModule (--data.path DATASET.zarr)")
        obs_lo, obs_hi = (np.asarray(b, dtype=np.float32) for b in dm.obs_bounds)
        self.data_obs_normalizer.set_bounds(obs_lo, obs_hi)
        if self.hparams.normalize_obs:
            obs_bounds = (obs_lo, obs_hi)
        else:
            obs_bounds = (-np.ones(self.hparams.obs_dim, np.float32), np.ones(self.hparams.obs_dim, np.float32))
        self.policy.set_normalizers(obs_bounds, dm.act_bounds)
        self._dataset_meta = _primitive(dict(dm.meta))
        # EMAWeightAveraging deep-copies the module in its own setup(), which runs before this one: refresh the copy
        # so that a checkpoint written before the first EMA update still carries the dataset bounds. This runs
        # before a --ckpt_path restore, so a resumed run keeps its restored EMA weights.
        from lightning.pytorch.callbacks import WeightAveraging

        for cb in self.trainer.callbacks:
            avg = getattr(cb, "_average_model", None) if isinstance(cb, WeightAveraging) else None
            if avg is not None:
                avg.module.load_state_dict(self.state_dict())

    def on_fit_start(self) -> None:
        if self.trainer.is_global_zero:
            print(
                f"DP parameters: {self.policy.num_parameters():,} (down_dims={list(self.hparams.down_dims)}, "
                f"normalize_obs={self.hparams.normalize_obs})",
                file=sys.stderr,
            )

    # -- steps ---------------------------------------------------------------------------------------------------
    def _net_obs(self, obs: torch.Tensor) -> torch.Tensor:
        """Batch observations (normalized by the DataModule) -> what the policy's network sees."""
        return obs if self.hparams.normalize_obs else self.data_obs_normalizer.unnormalize(obs)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.policy.compute_loss(self._net_obs(batch["obs"]), batch["action"])
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["action"].shape[0])
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        # Fixed noise per batch so that validation losses are comparable across checkpoints.
        state = torch.random.get_rng_state()
        torch.manual_seed(1000 + batch_idx)
        try:
            loss = self.policy.compute_loss(self._net_obs(batch["obs"]), batch["action"])
        finally:
            torch.random.set_rng_state(state)
        self.log("val/loss", loss, prog_bar=True, batch_size=batch["action"].shape[0])
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        optimizer = torch.optim.AdamW(
            self.policy.parameters(), lr=hp.lr, betas=tuple(hp.betas), weight_decay=hp.weight_decay
        )
        total = int(self.trainer.estimated_stepping_batches) if self.trainer else 1
        scheduler = get_scheduler(
            "cosine", optimizer, num_warmup_steps=min(hp.warmup_steps, max(total - 1, 0)), num_training_steps=total
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- checkpoint ----------------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        meta = self._dataset_meta
        if not meta:
            dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
            meta = _primitive(dict(dm.meta)) if dm is not None else {}
        hparams = _primitive(dict(self.hparams))
        # Like MePoly's modules: keep hyper_parameters out of the file, because LightningCLI re-parses them *over*
        # the command line on --ckpt_path (Lightning PR #21455). The policy is rebuilt from policy_config.
        checkpoint.pop("hyper_parameters", None)
        checkpoint["mepoly_il"] = {
            "format_version": CHECKPOINT_FORMAT_VERSION,
            "policy": "dp",
            "policy_config": policy_kwargs(hparams),
            "hparams": hparams,
            "dataset": meta,
        }
