"""The MePoly policy: trajectory VAE (encoder, decoder) + latent prior pi(z | s) + normalizers.

Acting (see :mod:`mepoly_il.policies.base` for the To/Ta/T timing)::

    obs history (B, To, Ds) --normalize--> memory M(s) (B, To, d)
    prior net(flatten(s)) -> params -> pi(z | s) on [-1, 1]^dz -> z (sample or mode)
    decoder(z, M(s)) -> chunk (B, T, Da) normalized -> executed slice [To-1 : To-1+Ta] -> unnormalize

Python API (benchmarks, notebooks)::

    policy = MePolyPolicy(obs_dim=25, act_dim=4, obs_horizon=2, act_horizon=8, pred_horizon=16)
    policy.eval(); policy.predict_action_chunk(torch.zeros(10, 2, 25))   # (10, 8, 4)
    policy.num_parameters()                                              # per component + "total"
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from einops import rearrange
from torch import nn

from mepoly_il.errors import UserError
from mepoly_il.policies.base import BasePolicy
from mepoly_il.policies.mepoly.modules import (
    MLP,
    ActionEncoder,
    LatentHeads,
    ObsEncoder,
    TrajectoryDecoder,
    count_parameters,
)
from mepoly_il.policies.mepoly.priors import PRIOR_KINDS, make_prior, to_box

SAMPLE_MODES = ("sample", "mode")


class MePolyPolicy(BasePolicy):
    """Latent-action policy of MePoly (paper §4.2, Appendix A).

    Args:
        obs_dim, act_dim: observation and action widths (from the dataset).
        obs_horizon, act_horizon, pred_horizon: To, Ta, T.
        latent_dim: dz, the dimension of the latent trajectory code (paper: 3).
        d_model: Transformer width (paper: 256).
        n_heads: attention heads in every Transformer (paper: 4).
        ff_dim: hidden width of every feed-forward sub-layer (2048, PyTorch's default).
        enc_layers, obs_layers, dec_layers: depths of the action encoder (3), obs encoder (2), decoder (4).
        dropout: dropout inside the Transformers (off when acting, since policies act in eval mode).
        prior: latent prior family, one of ``"polynomial"``, ``"gaussian"``, ``"gmm"``; ``None`` builds
            the VAE only (stage 1).
        prior_hidden: hidden widths of the prior MLP on the flattened observation history (paper: [256, 256]).
        poly_order, poly_basis, poly_clip: polynomial family order K, basis, and natural-parameter clip.
        gmm_components: number of mixture components for ``prior="gmm"``.
        sample_mode: ``"sample"`` draws z ~ pi(z | s) when acting; ``"mode"`` uses the prior's mode.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        obs_horizon: int,
        act_horizon: int,
        pred_horizon: int,
        latent_dim: int = 3,
        d_model: int = 256,
        n_heads: int = 4,
        ff_dim: int = 2048,
        enc_layers: int = 3,
        obs_layers: int = 2,
        dec_layers: int = 4,
        dropout: float = 0.1,
        prior: str | None = "polynomial",
        prior_hidden: Sequence[int] = (256, 256),
        poly_order: int = 8,
        poly_basis: str = "legendre",
        poly_clip: float = 5.0,
        gmm_components: int = 4,
        sample_mode: str = "sample",
    ) -> None:
        super().__init__(obs_dim, act_dim, obs_horizon, act_horizon, pred_horizon)
        if prior is not None and prior not in PRIOR_KINDS:
            raise ValueError(f"prior must be one of {PRIOR_KINDS} or None, got {prior!r}")
        if sample_mode not in SAMPLE_MODES:
            raise ValueError(f"sample_mode must be one of {SAMPLE_MODES}, got {sample_mode!r}")
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self._config = dict(
            obs_dim=int(obs_dim),
            act_dim=int(act_dim),
            obs_horizon=int(obs_horizon),
            act_horizon=int(act_horizon),
            pred_horizon=int(pred_horizon),
            latent_dim=int(latent_dim),
            d_model=int(d_model),
            n_heads=int(n_heads),
            ff_dim=int(ff_dim),
            enc_layers=int(enc_layers),
            obs_layers=int(obs_layers),
            dec_layers=int(dec_layers),
            dropout=float(dropout),
            prior=prior,
            prior_hidden=[int(h) for h in prior_hidden],
            poly_order=int(poly_order),
            poly_basis=str(poly_basis),
            poly_clip=float(poly_clip),
            gmm_components=int(gmm_components),
            sample_mode=sample_mode,
        )
        self.latent_dim = int(latent_dim)
        self.sample_mode = sample_mode
        self.action_encoder = ActionEncoder(act_dim, pred_horizon, d_model, enc_layers, n_heads, ff_dim, dropout)
        self.latent_heads = LatentHeads(d_model, latent_dim)
        self.obs_encoder = ObsEncoder(obs_dim, obs_horizon, d_model, obs_layers, n_heads, ff_dim, dropout)
        self.decoder = TrajectoryDecoder(
            act_dim, pred_horizon, d_model, dec_layers, n_heads, ff_dim, latent_dim, dropout
        )
        self.prior: nn.Module | None = None
        self.prior_net: MLP | None = None
        if prior is not None:
            self.prior = make_prior(prior, latent_dim, poly_order, poly_basis, poly_clip, gmm_components)
            self.prior_net = MLP(obs_dim * obs_horizon, list(prior_hidden), self.prior.num_params)

    # -- configuration ---------------------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """Constructor arguments as JSON/pickle-safe primitives (what checkpoints store)."""
        return dict(self._config)

    def num_parameters(self) -> dict[str, int]:
        """Parameter counts per component and ``"total"``."""
        parts = {
            "action_encoder": self.action_encoder,
            "latent_heads": self.latent_heads,
            "obs_encoder": self.obs_encoder,
            "decoder": self.decoder,
        }
        if self.prior_net is not None:
            parts["prior_net"] = self.prior_net
        counts = {name: count_parameters(m) for name, m in parts.items()}
        counts["total"] = count_parameters(self)
        return counts

    # -- building blocks (normalized units) ------------------------------------------------------------------
    def encode(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, Da) normalized action chunk -> q(z | tau) as (mu, logvar), each (B, dz)."""
        return self.latent_heads(self.action_encoder(actions))

    def memory(self, obs: torch.Tensor) -> torch.Tensor:
        """(B, To, Ds) normalized observations -> (B, To, d) decoder memory."""
        return self.obs_encoder(obs)

    def decode(self, z: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """z (B, dz), memory (B, To, d) -> (B, T, Da) normalized actions."""
        return self.decoder(z, memory)

    def prior_dist(self, obs: torch.Tensor):
        """(B, To, Ds) normalized observations -> pi(z | s), a batch of B distributions on [-1, 1]^dz."""
        if self.prior is None or self.prior_net is None:
            raise RuntimeError("this MePolyPolicy has no prior (stage-1 VAE only); train stage 2 first")
        return self.prior(self.prior_net(rearrange(obs, "b t d -> b (t d)")))

    def generate(self, obs_norm: torch.Tensor) -> torch.Tensor:
        """(B, To, Ds) normalized observations -> (B, T, Da) normalized actions, z from the prior."""
        dist = self.prior_dist(obs_norm)
        z = dist.sample() if self.sample_mode == "sample" else dist.mode
        return self.decode(to_box(z.to(obs_norm.dtype)), self.memory(obs_norm))


def policy_from_checkpoint(ckpt: dict[str, Any]) -> MePolyPolicy:
    """Rebuild a stage-2 :class:`MePolyPolicy` from a checkpoint dict read by ``read_checkpoint``.

    The constructor arguments come from ``ckpt["mepoly_il"]["policy_config"]`` (primitives only) and the
    weights (EMA weights when the EMA callback ran) from the ``policy.`` slice of ``ckpt["state_dict"]``,
    loaded strictly.
    """
    from mepoly_il.policies import policy_state_dict

    info = ckpt.get("mepoly_il", {})
    if info.get("stage") == 1 or info.get("policy") is None:
        raise UserError(
            "this is a MePoly stage-1 checkpoint (VAE only, no latent prior); it cannot act. Train stage 2 "
            "with `mepoly-il fit stage2 --model.stage1_ckpt <this file>` and load its checkpoint instead"
        )
    cfg = info.get("policy_config")
    if not isinstance(cfg, dict):
        raise UserError("checkpoint has no mepoly_il.policy_config; it was not written by mepoly-il fit stage2")
    try:
        policy = MePolyPolicy(**cfg)
    except (TypeError, ValueError) as err:
        raise UserError(f"checkpoint policy_config does not build a MePolyPolicy: {err}") from None
    try:
        policy.load_state_dict(policy_state_dict(ckpt), strict=True)
    except RuntimeError as err:
        raise UserError(f"checkpoint weights do not match its policy_config: {str(err).splitlines()[0]}") from None
    return policy
