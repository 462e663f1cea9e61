"""Lightning modules of MePoly's two training stages (paper §4.2 and Appendix A).

* :class:`Stage1Module` (``mepoly-il fit stage1``) trains the trajectory VAE::

      L = ||tau - D(z, s)||^2 + beta_iso * L_iso(tau, z) + beta_box * ||ReLU(|z| - box_delta)||^2
          + beta_kl * KL(q(z | tau) || N(0, prior_sigma^2 I))

* :class:`Stage2Module` (``mepoly-il fit stage2 --model.stage1_ckpt PATH``) trains the latent prior::

      L = -log pi(z_gt | s) - alpha * H(pi(. | s)) + gamma * ||tau - D(z_gt, s)||^2

  with z_gt ~ q(z | tau) from the frozen encoder, clamped into the box. The action encoder and latent heads
  are frozen; the observation encoder and decoder keep training at ``lr_decoder`` (one AdamW, two parameter
  groups) with their gradient norm clipped to ``decoder_grad_clip``.

Both hold ``self.policy`` (a :class:`MePolyPolicy`), so checkpoints carry ``policy.*`` weights. The network's
settings are ``model.policy`` (stage 1: :class:`MePolyVAEConfig`; stage 2: :class:`MePolyPriorConfig`, the VAE
coming from the stage-1 checkpoint); the loss weights and optimiser settings are the modules' own arguments.
Checkpoint block, EMA sync, run layout and LR schedule: :class:`~mepoly_il.policies.lightning_base.PolicyModule`;
stage-1 checkpoints say ``"policy": None`` (they cannot act).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from mepoly_il.errors import UserError
from mepoly_il.policies.lightning_base import PolicyModule, as_config, check_lr_schedule, data_shape, fused_adamw
from mepoly_il.policies.mepoly.config import MePolyConfig, MePolyPriorConfig, MePolyVAEConfig
from mepoly_il.policies.mepoly.policy import MePolyPolicy
from mepoly_il.policies.mepoly.priors import to_box
from mepoly_il.utils import to_primitive


def mds_stress(traj: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """MDS-style stress: MSE between the normalized pairwise-distance matrices of trajectories and latents.

    traj (B, T, Da) and z (B, dz). Each matrix is divided by its mean off-diagonal entry, so the term compares
    shapes of the two point clouds, not their scales. Returns a scalar (0 for B < 2).
    """
    b = traj.shape[0]
    if b < 2:
        return traj.new_zeros(())
    off = ~torch.eye(b, dtype=torch.bool, device=traj.device)
    d_tau = torch.cdist(rearrange(traj, "b t d -> b (t d)"), rearrange(traj, "b t d -> b (t d)"))[off]
    d_z = torch.cdist(z, z)[off]
    d_tau = d_tau / d_tau.mean().clamp_min(1e-8)
    d_z = d_z / d_z.mean().clamp_min(1e-8)
    return F.mse_loss(d_z, d_tau)


def fixed_scale_stress(traj: torch.Tensor, z: torch.Tensor, ref: float, scale: float) -> torch.Tensor:
    """Stress with fixed scales: MSE between latent distances and ``scale * d_tau / ref``.

    traj (B, T, Da), z (B, dz); ``ref`` is one dataset constant (the mean pairwise trajectory distance), so a
    typical pair of windows should sit ``scale`` apart in z. Unlike :func:`mds_stress` it sees the size of the latent
    cloud (a non-zero radial gradient). Returns a scalar (0 for B < 2).
    """
    b = traj.shape[0]
    if b < 2:
        return traj.new_zeros(())
    off = ~torch.eye(b, dtype=torch.bool, device=traj.device)
    flat = rearrange(traj, "b t d -> b (t d)")
    d_tau = torch.cdist(flat, flat)[off] * (scale / ref)
    return F.mse_loss(torch.cdist(z, z)[off], d_tau)


def mean_pairwise_distance(actions: torch.Tensor, pairs: int = 20000, seed: int = 0) -> float:
    """Mean Euclidean distance between random pairs of windows (N, T, Da) -> float (the fixed stress's ``ref``)."""
    gen = torch.Generator().manual_seed(seed)
    flat = rearrange(actions, "n t d -> n (t d)").double()
    i = torch.randint(len(flat), (pairs,), generator=gen)
    j = (i + torch.randint(1, len(flat), (pairs,), generator=gen)) % len(flat)  # never a window with itself
    return float((flat[i] - flat[j]).norm(dim=-1).mean())


def derangement(n: int, seed: int) -> torch.Tensor:
    """A random permutation of range(n) without fixed points (n >= 2): a random cycle through all indices."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    perm = torch.empty(n, dtype=torch.long)
    perm[order] = order.roll(-1)
    return perm


def gaussian_entropy(logvar: torch.Tensor) -> torch.Tensor:
    """Differential entropy (nats) of N(mu, exp(logvar)) on R^dz (not truncated to the box): (B, dz) -> (B,)."""
    return 0.5 * (logvar + math.log(2 * math.pi * math.e)).sum(-1)


def latent_diagnostics(mu: torch.Tensor, logvar: torch.Tensor) -> dict[str, torch.Tensor]:
    """Posterior noise (mean std of q) vs code spread (std of the means across the batch, averaged over dz).

    A ratio spread / noise well below 1 means the codes of different windows overlap: the decoder cannot tell them
    apart and learns to ignore z.
    """
    noise = (0.5 * logvar).exp().mean()
    spread = mu.std(dim=0).mean() if mu.shape[0] > 1 else mu.new_zeros(())
    return {"posterior_noise": noise, "code_spread": spread, "spread_noise_ratio": spread / noise.clamp_min(1e-8)}


def kl_to_isotropic(mu: torch.Tensor, logvar: torch.Tensor, sigma0: float) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, sigma0^2 I)), summed over dz and averaged over the batch."""
    var0 = sigma0**2
    kl = 0.5 * ((logvar.exp() + mu**2) / var0 - 1.0 - logvar + math.log(var0))
    return kl.sum(-1).mean()


class _MePolyModule(PolicyModule):
    policy: MePolyPolicy
    stage: int

    #: validation metrics copied into ``ckpt["mepoly_il"]["diagnostics"]`` (the latest validation's values)
    diagnostic_keys: tuple[str, ...] = ()

    def _extra_meta(self) -> dict[str, Any]:
        return {"stage": self.stage, "diagnostics": self._diagnostics()}

    def _diagnostics(self) -> dict[str, float]:
        metrics = self.trainer.callback_metrics if self._trainer is not None else {}
        return {k: float(metrics[f"val/{k}"]) for k in self.diagnostic_keys if f"val/{k}" in metrics}

    def _schedule(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        return self._with_schedule(optimizer, self.hparams.warmup_steps, self.hparams.lr_schedule)


class Stage1Module(_MePolyModule):
    """Stage 1: trajectory VAE with MDS stress, box and KL regularizers.

    Args:
        policy: the VAE's settings (:class:`MePolyVAEConfig`); its widths and horizons come from the dataset.
        beta_iso: weight of the MDS stress between trajectory and latent pairwise distances.
        iso_latent: which code the stress sees during training: ``"mean"`` (the posterior mean; default) or
            ``"sample"`` (the reparameterized sample, the paper's L(tau, z)). See ``val/latent_gain`` (reconstruction
            loss with the codes randomly permuted across the batch minus with the right ones): about 0 means the
            decoder ignores z.
        iso_norm: how the stress fixes scales: ``"batch"`` (default; each batch's two distance matrices divided by
            their own means, :func:`mds_stress`, blind to the latent's size) or ``"dataset"`` (trajectory distances
            divided by one constant of the training set, latent distances kept as they are,
            :func:`fixed_scale_stress`).
        iso_scale: with ``iso_norm="dataset"``: target latent distance of an average pair of windows. Uniform
            codes filling [-box_delta, box_delta]^3 are about 0.66 * 2 * box_delta apart on average.
        recon_reduction: ``"mean"`` over the T*Da action entries (default) or ``"sum"`` over them (the paper's
            ||tau - D||^2; stronger against the other terms by T*Da); both average over the batch.
        beta_box: weight of ``||ReLU(|z| - box_delta)||^2`` (keeps z inside the prior's box [-1, 1]^dz).
        box_delta: threshold of the box penalty; below 1 so that most codes, noise included, stay in the box.
        beta_kl: weight of KL(q(z | tau) || N(0, prior_sigma^2 I)).
        prior_sigma: std of the fixed Gaussian prior of the KL term.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup_steps: linear LR warm-up steps.
        lr_schedule: ``"cosine"`` (decay to 0 at the last step) or ``"constant"`` after warm-up.
        latent_plot_samples: training windows encoded for the latent pair-plot PNG at the end (0 disables it).
    """

    stage = 1

    def __init__(
        self,
        policy: MePolyVAEConfig = MePolyVAEConfig(),  # noqa: B008 (jsonargparse shows the default's fields)
        beta_iso: float = 0.1,
        iso_latent: str = "mean",
        iso_norm: str = "batch",
        iso_scale: float = 0.8,
        recon_reduction: str = "mean",
        beta_box: float = 1.0,
        box_delta: float = 0.8,
        beta_kl: float = 1e-4,
        prior_sigma: float = 0.5,
        lr: float = 1e-4,
        weight_decay: float = 1e-6,
        warmup_steps: int = 500,
        lr_schedule: str = "cosine",
        latent_plot_samples: int = 4096,
    ) -> None:
        super().__init__()
        policy = as_config(policy, MePolyVAEConfig)
        check_lr_schedule("model.lr_schedule", lr_schedule)
        if iso_latent not in ("mean", "sample"):
            raise UserError(f"model.iso_latent must be 'mean' or 'sample', got {iso_latent!r}")
        if iso_norm not in ("batch", "dataset"):
            raise UserError(f"model.iso_norm must be 'batch' or 'dataset', got {iso_norm!r}")
        if not iso_scale > 0:
            raise UserError(f"model.iso_scale must be > 0 (target latent distance of an average pair), got {iso_scale}")
        if recon_reduction not in ("mean", "sum"):
            raise UserError(f"model.recon_reduction must be 'mean' or 'sum', got {recon_reduction!r}")
        if not 0.0 < box_delta <= 1.0:
            raise UserError(f"model.box_delta must be in (0, 1], got {box_delta}")
        if prior_sigma <= 0:
            raise UserError(f"model.prior_sigma must be > 0, got {prior_sigma}")
        self.save_hyperparameters()
        self.hparams.policy = policy
        self.policy = MePolyPolicy(MePolyConfig.from_stages(policy, None))
        # Mean pairwise distance of training windows (iso_norm="dataset"); recomputed at every fit setup from the
        # same seeded sample, hence not saved.
        self.register_buffer("iso_ref", torch.zeros(()), persistent=False)

    diagnostic_keys = ("latent_gain", "recon", "posterior_noise", "code_spread", "spread_noise_ratio")

    def _on_fit_data(self, dm) -> None:
        super()._on_fit_data(dm)
        if self.hparams.iso_norm == "dataset":
            if dm.train_set is None:
                dm.setup("fit")
            ds = dm.train_set
            gen = np.random.default_rng(0)
            idx = np.sort(gen.choice(len(ds), size=min(len(ds), 8192), replace=False))
            self.iso_ref.fill_(mean_pairwise_distance(torch.as_tensor(ds[idx]["action"])))

    def _sync_average_models(self) -> None:
        super()._sync_average_models()
        # iso_ref is not in the state dict, so the EMA copy (which validates and is saved) gets it here.
        for cb in self.trainer.callbacks:
            avg = getattr(cb, "_average_model", None)
            if avg is not None and hasattr(avg.module, "iso_ref"):
                avg.module.iso_ref.fill_(float(self.iso_ref))

    @classmethod
    def count_parameters(cls, model: dict[str, Any], data: dict[str, Any]) -> str:
        """One line with the parameter count of the configured network (used by ``--print_config``)."""
        vae = MePolyVAEConfig(**{**(model.get("policy") or {}), **data_shape(data)})
        counts = MePolyPolicy(MePolyConfig.from_stages(vae, None)).num_parameters()
        return f"MePoly stage 1: {counts['total']:,} parameters ({_fmt_counts(counts)})"

    def _recon(self, pred: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        err = (pred.float() - action).pow(2)
        return err.mean() if self.hparams.recon_reduction == "mean" else err.sum((1, 2)).mean()

    def _stress(self, action: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        if self.hparams.iso_norm == "batch":
            return mds_stress(action, z)
        if not float(self.iso_ref) > 0:
            raise RuntimeError("iso_norm='dataset' needs iso_ref (set at fit setup from the training windows)")
        return fixed_scale_stress(action, z, float(self.iso_ref), self.hparams.iso_scale)

    def _losses(self, batch: dict[str, torch.Tensor], sample: bool, seed: int = 0) -> dict[str, torch.Tensor]:
        hp = self.hparams
        obs, action = batch["obs"], batch["action"]
        mu, logvar = self.policy.encode(action)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if sample else mu
        memory = self.policy.memory(obs)
        recon = self._recon(self.policy.decode(z, memory), action)
        # iso_latent="mean": stress on the code means. It is scale-free, so the means may shrink below the posterior
        # noise and the decoder then ignores z (seen on PushCube: spread 0.03 vs noise 0.24, val/latent_gain ~ 0).
        # iso_latent="sample": stress on the sampled code, as the paper writes L(tau, z); low stress then needs means
        # spread well beyond the noise, i.e. an informative latent (PushCube: noise 0.03, spread 0.77, latent_gain
        # 18% of recon), but the stage-2 prior becomes very peaked and its quadrature refines to many more nodes.
        iso = self._stress(action, z if hp.iso_latent == "sample" else mu)
        box = F.relu(z.abs() - hp.box_delta).pow(2).sum(-1).mean()
        kl = kl_to_isotropic(mu, logvar, hp.prior_sigma)
        loss = recon + hp.beta_iso * iso + hp.beta_box * box + hp.beta_kl * kl
        out = {
            "loss": loss,
            "recon": recon,
            "iso": iso,
            "box": box,
            "kl": kl,
            "frac_outside_box": (z.abs() > 1.0).any(-1).float().mean(),
            "mu_abs_max": mu.abs().max(),
            **latent_diagnostics(mu, logvar),
        }
        if not sample and z.shape[0] > 1:
            # Latent usage: how much worse reconstruction gets when each window gets another window's code.
            # About 0 means the decoder ignores z (posterior collapse); the prior then has nothing to model. The
            # partner is random (a seeded derangement): consecutive validation windows are time-neighbours of one
            # episode with nearly the same code, so pairing each with the next would bias the gain towards 0.
            perm = derangement(z.shape[0], seed).to(z.device)
            out["latent_gain"] = self._recon(self.policy.decode(z[perm], memory), action) - recon
        return out

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        out = self._losses(batch, sample=True)
        self.log_dict({f"train/{k}": v.detach() for k, v in out.items()}, prog_bar=False)
        self.log("recon", out["recon"].detach(), prog_bar=True, logger=False)
        return out["loss"]

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        out = self._losses(batch, sample=False, seed=batch_idx)
        self.log_dict({f"val/{k}": v for k, v in out.items()}, sync_dist=True)

    def configure_optimizers(self):
        opt = torch.optim.AdamW(
            self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay, **fused_adamw(self)
        )
        return self._schedule(opt)

    def on_train_end(self) -> None:
        # Runs after EMAWeightAveraging.on_train_end, so the plot shows the EMA encoder that stage 2 will use.
        if self.hparams.latent_plot_samples <= 0:
            return
        out_dir = Path(self.trainer.log_dir or self.trainer.default_root_dir)  # a collective under DDP: all ranks
        dm = getattr(self.trainer, "datamodule", None)
        if self.trainer.is_global_zero and dm is not None and getattr(dm, "train_set", None) is not None:
            self._plot_latents(dm, out_dir)

    @torch.no_grad()
    def _plot_latents(self, dm, out_dir: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from mepoly_il.utils import atomic_path

        was_training = self.policy.training
        self.policy.eval()
        ds = dm.train_set
        rng = np.random.default_rng(0)
        n = min(len(ds), int(self.hparams.latent_plot_samples))
        idx = np.sort(rng.choice(len(ds), size=n, replace=False))
        mus = []
        for chunk in np.array_split(idx, max(1, n // 512)):
            batch = ds[chunk]
            mus.append(self.policy.encode(batch["action"].to(self.device))[0].cpu())
        mu = torch.cat(mus).numpy()
        self.policy.train(was_training)
        dz = mu.shape[1]
        fig, axes = plt.subplots(dz, dz, figsize=(2.6 * dz, 2.6 * dz), squeeze=False)
        for i in range(dz):
            for j in range(dz):
                ax = axes[i][j]
                if i == j:
                    ax.hist(mu[:, i], bins=60, range=(-1.2, 1.2), color="tab:blue")
                else:
                    ax.scatter(mu[:, j], mu[:, i], s=1, alpha=0.3)
                    ax.set_xlim(-1.2, 1.2)
                    ax.set_ylim(-1.2, 1.2)
                    ax.add_patch(plt.Rectangle((-1, -1), 2, 2, fill=False, ls="--", color="k", lw=0.7))
                if i == dz - 1:
                    ax.set_xlabel(f"z{j}")
                if j == 0:
                    ax.set_ylabel(f"z{i}")
        outside = float((np.abs(mu) > 1.0).any(-1).mean())
        fig.suptitle(f"stage-1 latent means of {n} training windows ({outside:.1%} outside the box)")
        fig.tight_layout()
        with atomic_path(out_dir / "latents.png", overwrite=True) as tmp:
            fig.savefig(tmp, dpi=90, format="png")
        plt.close(fig)


def _fmt_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in counts.items() if k != "total")


def _load_stage1(path: str) -> dict[str, Any]:
    from mepoly_il.policies import read_checkpoint

    if not path:
        raise UserError("model.stage1_ckpt is required: pass --model.stage1_ckpt PATH/TO/stage1/last.ckpt")
    if not Path(path).is_file():
        raise UserError(
            f"model.stage1_ckpt {path}: file not found; train stage 1 first "
            "(`mepoly-il fit stage1 --config ...`) and pass its last.ckpt"
        )
    ckpt = read_checkpoint(path)
    info = ckpt["mepoly_il"]
    if info.get("stage") != 1 or not isinstance(info.get("policy_config"), dict):
        raise UserError(
            f"model.stage1_ckpt {path}: not a MePoly stage-1 checkpoint (stage={info.get('stage')!r}, "
            f"policy={info.get('policy')!r}); pass a checkpoint written by `mepoly-il fit stage1`"
        )
    return ckpt


class Stage2Module(_MePolyModule):
    """Stage 2: polynomial (or Gaussian / GMM) latent prior, with a continued low-LR decoder update.

    Args:
        stage1_ckpt: checkpoint written by ``mepoly-il fit stage1`` (its EMA weights and normalizers are loaded;
            its VAE settings are reused).
        policy: the prior's settings (:class:`MePolyPriorConfig`). Its widths and horizons come from the dataset
            and must match stage 1's, except act_horizon (it only sets how many actions run per plan).
        alpha: entropy-bonus weight.
        gamma: weight of the reconstruction-consistency term ||tau - D(z_gt, s)||^2 (mean over elements).
        target: ``"sample"`` (z_gt ~ q(z | tau), the paper) or ``"mean"`` (z_gt = mu).
        lr_prior: AdamW learning rate of the prior network.
        lr_decoder: AdamW learning rate of the observation encoder and decoder (0 freezes them).
        weight_decay: AdamW weight decay (both groups).
        decoder_grad_clip: max gradient norm of the observation-encoder + decoder group (0 disables).
        warmup_steps: linear LR warm-up steps.
        lr_schedule: ``"cosine"`` or ``"constant"`` after warm-up.
    """

    stage = 2
    kind = "mepoly"

    def __init__(
        self,
        stage1_ckpt: str,
        policy: MePolyPriorConfig = MePolyPriorConfig(),  # noqa: B008 (jsonargparse shows the default's fields)
        alpha: float = 0.01,
        gamma: float = 1.0,
        target: str = "sample",
        lr_prior: float = 1e-3,
        lr_decoder: float = 3e-5,
        weight_decay: float = 1e-6,
        decoder_grad_clip: float = 1.0,
        warmup_steps: int = 200,
        lr_schedule: str = "cosine",
    ) -> None:
        super().__init__()
        policy = as_config(policy, MePolyPriorConfig)
        if policy.prior is None:
            raise UserError("model.policy.prior is null: stage 2 trains a prior; choose polynomial, gaussian or gmm")
        if target not in ("sample", "mean"):
            raise UserError(f"model.target must be 'sample' or 'mean', got {target!r}")
        check_lr_schedule("model.lr_schedule", lr_schedule)
        self.save_hyperparameters()
        self.hparams.policy = policy
        ckpt = _load_stage1(stage1_ckpt)
        self._stage1_cfg = MePolyConfig.from_dict(ckpt["mepoly_il"]["policy_config"], where=f"{stage1_ckpt}")
        self.policy = MePolyPolicy(MePolyConfig.from_stages(self._stage1_cfg, policy))
        from mepoly_il.policies import policy_state_dict

        missing, unexpected = self.policy.load_state_dict(policy_state_dict(ckpt), strict=False)
        bad_missing = [k for k in missing if not k.startswith(("prior.", "prior_net."))]
        if bad_missing or unexpected:
            raise UserError(
                f"model.stage1_ckpt {stage1_ckpt}: weights do not match its own policy_config "
                f"(missing {bad_missing[:3]}, unexpected {list(unexpected)[:3]}); "
                "the file is damaged or foreign"
            )
        from mepoly_il.utils import sha256_file

        self._stage1_meta = {"path": str(stage1_ckpt), "sha256": sha256_file(stage1_ckpt),
                             "dataset": ckpt["mepoly_il"].get("dataset", {})}  # fmt: skip
        for module in (self.policy.action_encoder, self.policy.latent_heads):
            module.requires_grad_(False)
        self.policy.frozen_encoder = True  # eval mode for them from now on, also in the EMA copy and rollouts
        self.policy.train(self.policy.training)
        # EMAWeightAveraging computes decay * x + (1 - decay) * x, which is x only up to rounding; the frozen
        # weights are written back from this copy at the end and into every checkpoint, so they stay
        # bit-identical.
        self._frozen = {
            k: v.detach().clone()
            for k, v in self.policy.state_dict().items()
            if k.startswith(("action_encoder.", "latent_heads."))
        }

    def _restore_frozen(self) -> None:
        with torch.no_grad():
            for name, tensor in (*self.policy.named_parameters(), *self.policy.named_buffers()):
                if name in self._frozen:
                    tensor.copy_(self._frozen[name])

    def on_train_end(self) -> None:
        self._restore_frozen()  # runs after EMAWeightAveraging has copied the averaged weights in

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        for key in ("state_dict", "current_model_state"):
            if key in checkpoint:
                for name, value in self._frozen.items():
                    checkpoint[key]["policy." + name] = value.clone()

    @classmethod
    def count_parameters(cls, model: dict[str, Any], data: dict[str, Any]) -> str:
        """One line with the parameter count of the stage-2 policy (VAE + prior), for ``--print_config``."""
        s1 = _load_stage1(model.get("stage1_ckpt") or "")["mepoly_il"]["policy_config"]
        prior = MePolyPriorConfig(**(model.get("policy") or {}))
        counts = MePolyPolicy(MePolyConfig.from_stages(MePolyConfig.from_dict(s1), prior)).num_parameters()
        return f"MePoly stage 2: {counts['total']:,} parameters ({_fmt_counts(counts)})"

    def _on_fit_data(self, dm) -> None:
        """Check the dataset against stage 1 (the normalizers came with the stage-1 weights)."""
        path = getattr(dm, "path", "--data.path")
        ckpt_path = self.hparams.stage1_ckpt
        for key in ("obs_dim", "act_dim", "obs_horizon", "pred_horizon"):
            theirs, ours = getattr(self._stage1_cfg, key), getattr(dm, key)
            if int(theirs) != int(ours):
                raise UserError(
                    f"stage-1 checkpoint {ckpt_path} has {key}={theirs} but the dataset "
                    f"{path} gives {key}={ours}; train stage 2 on the stage-1 dataset with the same horizons"
                )
        for name, bounds, norm in (
            ("observation", dm.obs_bounds, self.policy.obs_normalizer),
            ("action", dm.act_bounds, self.policy.act_normalizer),
        ):
            lo, hi = (torch.as_tensor(np.asarray(b, dtype=np.float32)) for b in bounds)
            if not (torch.allclose(lo, norm.lo.cpu(), atol=1e-5) and torch.allclose(hi, norm.hi.cpu(), atol=1e-5)):
                raise UserError(
                    f"the dataset {path} normalizes {name}s differently from the stage-1 checkpoint "
                    f"{ckpt_path} (different data or data.norm_margin); use the stage-1 dataset and settings"
                )

    def _targets(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(z_gt (B, dz) in the box, float32; share of codes clamped; q's logvar (B, dz))."""
        with torch.no_grad():
            mu, logvar = (t.float() for t in self.policy.encode(action))
            z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if self.hparams.target == "sample" else mu
            # The prior lives on the box; stage 1's box penalty keeps nearly all codes inside; clamp the rest.
            return to_box(z), (z.abs() > 1.0).any(-1).float().mean(), logvar

    diagnostic_keys = ("nll", "entropy", "posterior_entropy", "entropy_gap", "action_mse_mode", "action_mse_sample")

    def _losses(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        hp = self.hparams
        obs, action = batch["obs"], batch["action"]
        z_gt, clipped, logvar = self._targets(action)
        dist = self.policy.prior_dist(obs)
        nll = -dist.log_prob(z_gt).mean()
        entropy = dist.entropy().mean()
        recon = F.mse_loss(self.policy.decode(z_gt, self.policy.memory(obs)).float(), action)
        loss = nll - hp.alpha * entropy + hp.gamma * recon
        # The prior's entropy against the entropy of q's noise alone (plain Gaussian, not truncated to the box:
        # exact while q's std is small against the box): a prior much wider than the noise spreads over several
        # codes, i.e. it models modes; about equal means it is as sharp as the targets allow.
        posterior_entropy = gaussian_entropy(logvar).mean()
        return {"loss": loss, "nll": nll, "entropy": entropy, "recon": recon, "frac_targets_clamped": clipped,
                "posterior_entropy": posterior_entropy, "entropy_gap": entropy - posterior_entropy}  # fmt: skip

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        out = self._losses(batch)
        self.log_dict({f"train/{k}": v.detach() for k, v in out.items()})
        self.log("nll", out["nll"].detach(), prog_bar=True, logger=False)
        return out["loss"]

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        out = self._losses(batch)
        # What the policy would do, against the demonstration: actions decoded from the prior's mode and from one
        # sample of it (acting samples unless sample_mode="mode"); the sample is seeded by the batch index.
        obs, action = batch["obs"], batch["action"]
        dist, memory = self.policy.prior_dist(obs), self.policy.memory(obs)
        out["action_mse_mode"] = F.mse_loss(self.policy.decode(to_box(dist.mode), memory).float(), action)
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(batch_idx)
            z = dist.sample()
        out["action_mse_sample"] = F.mse_loss(self.policy.decode(to_box(z), memory).float(), action)
        self.log_dict({f"val/{k}": v for k, v in out.items()}, sync_dist=True)

    def _groups(self) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
        prior = [p for m in (self.policy.prior_net, self.policy.prior) for p in m.parameters() if p.requires_grad]
        decoder = [p for m in (self.policy.obs_encoder, self.policy.decoder) for p in m.parameters()]
        return prior, decoder

    def configure_optimizers(self):
        hp = self.hparams
        prior, decoder = self._groups()
        groups = [{"params": prior, "lr": hp.lr_prior, "name": "prior"}]
        if hp.lr_decoder > 0:
            groups.append({"params": decoder, "lr": hp.lr_decoder, "name": "decoder"})
        else:
            for p in decoder:
                p.requires_grad_(False)
        opt = torch.optim.AdamW(groups, weight_decay=hp.weight_decay, **fused_adamw(self))
        return self._schedule(opt)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        clip = self.hparams.decoder_grad_clip
        if clip > 0 and self.hparams.lr_decoder > 0:
            norm = torch.nn.utils.clip_grad_norm_(self._groups()[1], clip)
            self.log("train/decoder_grad_norm", norm)

    def _extra_meta(self) -> dict[str, Any]:
        return {**super()._extra_meta(), "stage1": to_primitive(self._stage1_meta)}
