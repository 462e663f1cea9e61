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

from typing import Any

import torch
from einops import rearrange
from torch import nn

from mepoly_il.errors import UserError
from mepoly_il.policies.base import BasePolicy
from mepoly_il.policies.mepoly.config import MePolyConfig
from mepoly_il.policies.mepoly.modules import (
    MLP,
    ActionEncoder,
    LatentHeads,
    ObsEncoder,
    TrajectoryDecoder,
    count_parameters,
)
from mepoly_il.policies.mepoly.priors import make_prior, to_box


class MePolyPolicy(BasePolicy):
    """Latent-action policy of MePoly (paper §4.2, Appendix A), built from a :class:`MePolyConfig`.

    ``MePolyPolicy(config)``, or ``MePolyPolicy(obs_dim, act_dim, obs_horizon, ..., d_model=64, ...)`` with the
    config's fields as arguments (same order and names). ``prior=None`` builds the VAE only (stage 1).
    """

    config_class = MePolyConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        config = self.config_from_args(args, kwargs)
        obs_dim, act_dim, obs_horizon, act_horizon, pred_horizon = config.shape()
        super().__init__(obs_dim, act_dim, obs_horizon, act_horizon, pred_horizon)
        self.policy_config = c = config
        self.latent_dim = int(c.latent_dim)
        self.sample_mode = c.sample_mode
        self.action_encoder = ActionEncoder(
            act_dim, pred_horizon, c.d_model, c.enc_layers, c.n_heads, c.ff_dim, c.dropout
        )
        self.latent_heads = LatentHeads(c.d_model, c.latent_dim, c.min_posterior_std)
        self.obs_encoder = ObsEncoder(obs_dim, obs_horizon, c.d_model, c.obs_layers, c.n_heads, c.ff_dim, c.dropout)
        self.decoder = TrajectoryDecoder(
            act_dim, pred_horizon, c.d_model, c.dec_layers, c.n_heads, c.ff_dim, c.latent_dim, c.dropout,
            c.latent_embed,
        )  # fmt: skip
        #: Set by stage 2: the action encoder and latent heads stay in eval mode whatever ``train()`` is called
        #: with (evaluation code restores the mode with ``policy.train(was_training)``, which recurses here).
        self.frozen_encoder = False
        self.prior: nn.Module | None = None
        self.prior_net: MLP | None = None
        if c.prior is not None:
            self.prior = make_prior(c.prior, c.latent_dim, c.poly_order, c.poly_basis, c.poly_clip, c.gmm_components)
            self.prior_net = MLP(obs_dim * obs_horizon, list(c.prior_hidden), self.prior.num_params)

    # -- configuration ---------------------------------------------------------------------------------------
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

    def train(self, mode: bool = True) -> MePolyPolicy:
        super().train(mode)
        if self.frozen_encoder:
            self.action_encoder.eval()
            self.latent_heads.eval()
        return self

    # -- building blocks (normalized units) ------------------------------------------------------------------
    def encode(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, Da) normalized action chunk -> q(z | tau) as (mu, logvar), each (B, dz)."""
        return self.latent_heads(self.action_encoder(actions))

    def memory(self, obs: torch.Tensor) -> torch.Tensor:
        """(B, To, Ds) normalized observations -> (B, To, d) decoder memory."""
        return self.obs_encoder(obs)

    def decode(self, z: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """z (B, dz), memory (B, To, d) -> (B, T, Da) normalized actions (z ignored with ``fixed_latent``)."""
        if self.policy_config.fixed_latent:
            z = torch.zeros_like(z)
        return self.decoder(z, memory)

    def prior_dist(self, obs: torch.Tensor):
        """(B, To, Ds) normalized observations -> pi(z | s), a batch of B distributions on [-1, 1]^dz."""
        if self.prior is None or self.prior_net is None:
            raise RuntimeError("this MePolyPolicy has no prior (stage-1 VAE only); train stage 2 first")
        params = self.prior_net(rearrange(obs, "b t d -> b (t d)"))
        # Under bf16 autocast the MLP emits bf16; the family's quadrature needs float32 natural parameters.
        return self.prior(params.float())

    def generate(self, obs_norm: torch.Tensor) -> torch.Tensor:
        """(B, To, Ds) normalized observations -> (B, T, Da) normalized actions, z from the prior."""
        dist = self.prior_dist(obs_norm)
        z = dist.sample() if self.sample_mode == "sample" else dist.mode
        return self.decode(to_box(z.to(obs_norm.dtype)), self.memory(obs_norm))


def policy_from_checkpoint(ckpt: dict[str, Any]) -> MePolyPolicy:
    """Rebuild a stage-2 :class:`MePolyPolicy` from a checkpoint dict read by ``read_checkpoint``.

    See :meth:`BasePolicy.from_checkpoint`; stage-1 checkpoints (no prior) are refused.
    """
    info = ckpt.get("mepoly_il", {})
    if info.get("stage") == 1 or info.get("policy") is None:
        raise UserError(
            "this is a MePoly stage-1 checkpoint (VAE only, no latent prior); it cannot act. Train stage 2 "
            "with `mepoly-il fit stage2 --model.stage1_ckpt <this file>` and load its checkpoint instead"
        )
    return MePolyPolicy.from_checkpoint(ckpt)
