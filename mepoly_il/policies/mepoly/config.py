"""MePoly's settings, each declared once (paper §4.2, Appendix A).

:class:`MePolyConfig` is the whole policy: what :class:`~mepoly_il.policies.mepoly.policy.MePolyPolicy` takes and
what a checkpoint stores (``ckpt["mepoly_il"]["policy_config"]``, primitives). It is the union of the two stages'
parts, which are what the two ``fit`` commands configure under ``model.policy``:

* :class:`MePolyVAEConfig` (``fit stage1``): the trajectory VAE (latent size, Transformer sizes);
* :class:`MePolyPriorConfig` (``fit stage2``): the latent prior pi(z | s) and how the policy picks z; the VAE comes
  from the stage-1 checkpoint.

Both carry the dataset's widths and horizons (:class:`~mepoly_il.policies.base.PolicyShape`), filled by ``fit``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mepoly_il.errors import UserError
from mepoly_il.policies.base import PolicyShape
from mepoly_il.policies.mepoly.priors import PRIOR_KINDS

SAMPLE_MODES = ("sample", "mode")
POLY_BASES = ("legendre",)


@dataclass
class MePolyVAEConfig(PolicyShape):
    """The trajectory VAE: action encoder q(z | tau), observation encoder and decoder D(z, s) (stage 1).

    Args:
        latent_dim: dz, dimension of the latent trajectory code (paper: 3).
        d_model: Transformer width (paper: 256).
        n_heads: attention heads in every Transformer (paper: 4); must divide d_model.
        ff_dim: hidden width of every feed-forward sub-layer (2048, PyTorch's default).
        enc_layers: action-encoder depth (paper: 3).
        obs_layers: observation-encoder depth (paper: 2).
        dec_layers: decoder blocks (paper: 4).
        dropout: dropout inside the Transformers (off when acting: policies act in eval mode).
        min_posterior_std: floor on the std of q(z | tau): the encoder's variance is ``var + floor^2``, so no code
            is sharper than the floor (0: no floor, as before). Bounds how peaked the stage-2 prior must become.
        latent_embed: embed z with one Linear(dz, d_model) before every AdaLN's SiLU (False: SiLU on the raw z,
            whose slope is about 13x smaller at z = -1 than at z = +1, hiding the negative half of each axis).
        fixed_latent: decode every chunk with z = 0 (training and acting), so the decoder is a deterministic
            observation-to-chunk regressor trained by MSE: the unimodal baseline of an ablation, not MePoly.
    """

    latent_dim: int = 3
    d_model: int = 256
    n_heads: int = 4
    ff_dim: int = 2048
    enc_layers: int = 3
    obs_layers: int = 2
    dec_layers: int = 4
    dropout: float = 0.1
    min_posterior_std: float = 0.0
    latent_embed: bool = False
    fixed_latent: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("latent_dim", "d_model", "n_heads", "ff_dim", "enc_layers", "obs_layers", "dec_layers"):
            if int(getattr(self, name)) < 1:
                raise UserError(f"{self.prefix}{name}={getattr(self, name)}: must be >= 1")
        if self.d_model % self.n_heads:
            raise UserError(
                f"{self.prefix}d_model={self.d_model} is not divisible by {self.prefix}n_heads={self.n_heads}; "
                "pick a width that is a multiple of the head count"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"{self.prefix}dropout={self.dropout}: must be in [0, 1)")
        if not 0.0 <= self.min_posterior_std < 1.0:
            raise UserError(
                f"{self.prefix}min_posterior_std={self.min_posterior_std}: must be in [0, 1) (the latent box is "
                "[-1, 1]; 0 disables the floor)"
            )
        self.latent_embed = bool(self.latent_embed)
        self.fixed_latent = bool(self.fixed_latent)


@dataclass
class MePolyPriorConfig(PolicyShape):
    """The latent prior pi(z | s) on the box [-1, 1]^dz and how the policy draws z from it (stage 2).

    Args:
        prior: prior family: ``"polynomial"`` (the paper's), ``"gaussian"`` or ``"gmm"`` (ablations); ``None``
            only in a stage-1 (VAE-only) policy, which cannot act.
        prior_hidden: hidden widths of the prior MLP on the flattened observation history (paper: [256, 256]).
        poly_order: total-degree order K of the polynomial family.
        poly_basis: polynomial basis (``"legendre"``).
        poly_clip: elementwise soft clip of the natural parameters (0 disables it).
        gmm_components: mixture components of ``prior="gmm"``.
        sample_mode: when acting, ``"sample"`` draws z ~ pi(z | s), ``"mode"`` takes the prior's mode.
    """

    prior: str | None = "polynomial"
    prior_hidden: list[int] = field(default_factory=lambda: [256, 256])
    poly_order: int = 8
    poly_basis: str = "legendre"
    poly_clip: float = 5.0
    gmm_components: int = 4
    sample_mode: str = "sample"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.prior_hidden = [int(h) for h in self.prior_hidden]
        if self.prior is not None and self.prior not in PRIOR_KINDS:
            raise UserError(f"{self.prefix}prior={self.prior!r}: choose one of {list(PRIOR_KINDS)}")
        if any(h < 1 for h in self.prior_hidden):
            raise UserError(f"{self.prefix}prior_hidden={self.prior_hidden}: widths must be >= 1")
        if int(self.poly_order) < 1:
            raise UserError(f"{self.prefix}poly_order={self.poly_order}: must be >= 1 (the paper uses 8)")
        if self.poly_basis not in POLY_BASES:
            raise UserError(f"{self.prefix}poly_basis={self.poly_basis!r}: choose one of {list(POLY_BASES)}")
        if self.poly_clip < 0:
            raise UserError(f"{self.prefix}poly_clip={self.poly_clip}: must be >= 0 (0 disables the clip)")
        if int(self.gmm_components) < 1:
            raise UserError(f"{self.prefix}gmm_components={self.gmm_components}: must be >= 1")
        if self.sample_mode not in SAMPLE_MODES:
            raise UserError(f"{self.prefix}sample_mode={self.sample_mode!r}: choose one of {list(SAMPLE_MODES)}")
        if self.prior == "polynomial" and isinstance(getattr(self, "latent_dim", None), int):
            # checked before anything is built: a too-large family would allocate for minutes, then fail
            from mepoly_il.policies import poly_size_problem

            problem = poly_size_problem(self.latent_dim, int(self.poly_order))
            if problem:
                raise UserError(f"{self.prefix}{problem}")


@dataclass
class MePolyConfig(MePolyPriorConfig, MePolyVAEConfig):
    """The whole MePoly policy: shape, VAE and prior settings (fields of both parts, in that order)."""

    prefix = ""

    @classmethod
    def from_stages(cls, vae: MePolyVAEConfig, prior: MePolyPriorConfig | None) -> MePolyConfig:
        """The policy of stage 1's ``vae`` with stage 2's ``prior`` (``None``: VAE only).

        The widths and horizons are the VAE's (its networks are sized by them), except ``act_horizon``, which the
        prior's part may change when set: it only says how many of the T decoded actions run per plan.
        """
        values = vae.to_dict()
        if prior is None:
            values["prior"] = None
        else:
            values.update({k: v for k, v in prior.to_dict().items() if k not in PolicyShape.SHAPE_FIELDS})
            if prior.act_horizon is not None:
                values["act_horizon"] = prior.act_horizon
        return cls.from_dict(values)
