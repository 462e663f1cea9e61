"""RL run settings besides PPO's own (:class:`mepoly_il.rl.ppo.PPOConfig`): the policy head, the environment, and
the per-environment presets behind the published runs in eval/rl/.

Every field name is unique across these dataclasses, PPOConfig and the evaluation settings
(:class:`mepoly_il.eval.rl_eval.RLEvalConfig`), so one flat dict of ``field -> value`` (a preset, a command line)
addresses any of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mepoly_il.envs.bandit import SIGMA_CODE
from mepoly_il.envs.smoothworld import MAX_STEPS
from mepoly_il.errors import UserError

#: Heads that PPO trains (names of :func:`mepoly_il.rl.heads.make_head`).
PPO_HEADS = ("gaussian", "gmm", "mepoly", "fpo")


def check_flag(name: str, value, ok: bool, why: str) -> None:
    """Raise a one-line UserError naming the flag when ``ok`` is false."""
    if not ok:
        raise UserError(f"--{name.replace('_', '-')} {value}: {why}")


@dataclass
class HeadConfig:
    """Policy-head settings (each head reads only its own fields).

    :meth:`head_kwargs` turns them into the keyword arguments of :func:`mepoly_il.rl.heads.make_head`.
    """

    order: int = 14
    """MePoly total degree K of the polynomial"""
    basis: Literal["legendre", "monomial"] = "legendre"
    """MePoly polynomial basis"""
    lambda_clip: float | None = None
    """MePoly soft clip of the natural parameters (null or <= 0: none)"""
    quadrature: Literal["auto", "gauss", "trapezoid"] = "auto"
    """MePoly rule for the log-partition integral"""
    nodes: int | None = None
    """MePoly quadrature nodes per dimension (null: the family's default)"""
    sample_nodes: int | None = None
    """MePoly sampler grid nodes per dimension (null: the quadrature grid)"""
    components: int = 4
    """GMM components"""
    fpo_pairs: int = 32
    """FPO (eps, t) pairs per action (the authors used 50 / 2000)"""
    flow_steps: int = 10
    """FPO Euler steps"""
    latents: int = 5
    """RPG latent-conditioned policy (head rpg): categorical latent classes"""
    latent_hidden: int = 64
    """RPG latent-conditioned policy (head rpg): width of its policy and posterior MLPs"""

    def __post_init__(self) -> None:
        check_flag("order", self.order, self.order >= 1, "the polynomial degree must be >= 1")
        for name in ("nodes", "sample_nodes"):
            v = getattr(self, name)
            check_flag(name, v, v is None or v >= 2, "a quadrature grid needs >= 2 nodes per dimension")
        for name in ("components", "fpo_pairs", "flow_steps", "latents", "latent_hidden"):
            check_flag(name, getattr(self, name), getattr(self, name) >= 1, "must be >= 1")
        if self.lambda_clip is not None and self.lambda_clip <= 0:
            self.lambda_clip = None

    def head_kwargs(self, head: str) -> dict:
        """Keyword arguments of ``make_head(head, ...)`` (also saved as ``head_kwargs`` in a run's config.json)."""
        if head == "mepoly":
            family = {"quadrature": self.quadrature}
            if self.sample_nodes is not None:
                family["sample_nodes"] = self.sample_nodes
            if self.nodes is not None:
                family["nodes"] = self.nodes
            return {"order": self.order, "basis": self.basis, "lambda_clip": self.lambda_clip, "family_kwargs": family}
        if head == "gmm":
            return {"num_components": self.components}
        if head == "fpo":
            return {"num_pairs": self.fpo_pairs, "flow_steps": self.flow_steps}
        if head == "rpg":
            return {"num_latents": self.latents, "hidden": self.latent_hidden}
        return {}


@dataclass
class EnvConfig:
    """Environment settings (the bandit reads sigma, Smooth World and multi-goal max_steps)."""

    sigma: float = SIGMA_CODE
    """bandit reward width sigma of MePoly paper Eq. 15 (the authors' code: 0.1; the paper's text: 0.05)"""
    max_steps: int = MAX_STEPS
    """Smooth World / multi-goal time limit in steps (truncation, not termination)"""

    def __post_init__(self) -> None:
        check_flag("sigma", self.sigma, self.sigma > 0, "the reward width must be > 0")
        check_flag("max_steps", self.max_steps, self.max_steps >= 1, "must be >= 1")


# Presets: the settings of the published runs in eval/rl/, by env kind, then Smooth World layout, then head. Later
# entries win; values the user passes explicitly win over all of them. Fields not named keep their dataclass default.
# Smooth World CPU budget: 30 iterations x 2048 steps = 61,440 env steps per run (the authors ran 1M-12M on a GPU).
# The authors' MePoly entropy coefficients per layout (0.10 / 0.05) are used for every head with a density on the box.
RL_PRESETS: dict[str, dict[str, object]] = {
    "bandit": {
        "num_envs": 1024,
        "num_steps": 1,
        "iterations": 100,
        "lr": 1e-4,
        "gamma": 1.0,
        "gae_lambda": 1.0,
        "update_epochs": 10,
        "ent_coef": 0.2,
        "order": 14,
        "lambda_clip": None,
    },
    "smoothworld": {
        "num_envs": 128,
        "num_steps": 16,
        "iterations": 30,
        "lr": 3e-4,
        "gamma": 0.99,
        "gae_lambda": 0.98,
        "update_epochs": 4,
        "ent_coef": 0.10,
        "order": 5,
        "lambda_clip": 5.0,
        # K=5 conditionals are smooth and Smooth World samples once per env step: a coarser sampler grid suffices
        "sample_nodes": 65,
    },
}
LAYOUT_PRESETS: dict[str, dict[str, object]] = {
    "tree_in_the_middle": {"ent_coef": 0.05},
    "cshape": {"ent_coef": 0.05},
}
HEAD_PRESETS: dict[str, dict[str, object]] = {
    "fpo": {"ent_coef": 0.0},  # FPO has no entropy estimate
}


def preset(kind: str, task: str, head: str) -> dict[str, object]:
    """Flat ``field -> value`` preset for one run: env kind, then layout (Smooth World), then head."""
    out = dict(RL_PRESETS[kind])
    if kind == "smoothworld":
        out.update(LAYOUT_PRESETS.get(task, {}))
    out.update(HEAD_PRESETS.get(head, {}))
    return out


# ------------------------------------------------------------------------------------------------ SAC, S2AC, RPG
#: Heads SAC trains, with the actor-gradient estimator each takes unless --estimator says otherwise (the estimator
#: table of :mod:`mepoly_il.rl.sac`).
SAC_HEADS: dict[str, str] = {"gaussian": "rp", "gmm": "mrp", "mepoly": "quadrature"}


@dataclass
class S2ACConfig:
    """The SVGD actor of :class:`mepoly_il.rl.s2ac.SVGDActor` (its temperature is SAC's fixed ``alpha``)."""

    particles: int = 10
    """SVGD particles per state"""
    svgd_steps: int = 5
    """SVGD steps L per action"""
    svgd_step_size: float = 0.1
    """SVGD step size eps"""
    svgd_drive: Literal["grad_q_over_alpha", "grad_q"] = "grad_q_over_alpha"
    """what moves the particles: grad Q / alpha (the paper's target exp(Q / alpha)) or grad Q (the authors' code)"""
    init_std: float = 0.5
    """std of the initial particles N(0, init_std^2) (particle version)"""
    amortised: bool = False
    """S2AC(phi, theta): learn the initial distribution N(mu(s), std(s)^2) through the SVGD chain"""
    actor_hidden: int = 64
    """amortised initial-distribution MLP width"""
    train_selection: Literal["random", "softmax", "max"] = "random"
    """which particle acts while training"""
    eval_selection: Literal["random", "softmax", "max"] = "softmax"
    """which particle acts at evaluation (softmax over Q: the S2AC authors' test-time choice)"""

    def __post_init__(self) -> None:
        check_flag("particles", self.particles, self.particles >= 2, "SVGD needs >= 2 interacting particles")
        check_flag("svgd_steps", self.svgd_steps, self.svgd_steps >= 0, "must be >= 0")
        for name in ("svgd_step_size", "init_std"):
            check_flag(name, getattr(self, name), getattr(self, name) > 0, "must be > 0")
        check_flag("actor_hidden", self.actor_hidden, self.actor_hidden >= 1, "must be >= 1")


# Off-policy presets: untuned CPU starting points (budgets small enough for a 2-core machine), not the budgets of
# a published table. Same precedence as the PPO presets: env kind, then head, then what the user passes.
SAC_PRESETS: dict[str, dict[str, object]] = {
    "bandit": {
        "num_envs": 64,
        "total_steps": 32_768,
        "learning_starts": 2_048,
        "batch_size": 256,
        "hidden": 64,
        "log_every": 2_048,
        "order": 8,
        "quad_nodes": 16,
    },
    "smoothworld": {
        "num_envs": 16,
        "total_steps": 61_440,
        "learning_starts": 2_048,
        "hidden": 64,
        "log_every": 2_048,
        "order": 5,
        "lambda_clip": 5.0,
        "sample_nodes": 65,
        "quad_nodes": 16,
    },
    "multigoal": {
        "num_envs": 10,
        "total_steps": 30_000,
        "learning_starts": 1_000,
        "hidden": 64,
        "log_every": 1_000,
        "max_steps": 30,
        "order": 6,
        "lambda_clip": 5.0,
        "quad_nodes": 16,
    },
    # the mixture paper's classic-control setting (§5.3): fixed temperature, small networks; budget ours
    "mountaincar-sparse": {
        "num_envs": 4,
        "total_steps": 20_000,
        "learning_starts": 2_000,
        "hidden": 64,
        "log_every": 5_000,
        "max_steps": 999,
        "autotune": False,
        "alpha": 0.1,
        "components": 5,
        "order": 8,
        "lambda_clip": 5.0,
        "quad_nodes": 24,
        "eval_episodes": 50,
    },
}
# -1 per step: the paper's unshaped reward, at the env-step budget of the lab setup it cites (GreedyAC, 100 000)
SAC_PRESETS["mountaincar-minus1"] = {**SAC_PRESETS["mountaincar-sparse"], "total_steps": 100_000, "log_every": 10_000}
#: SACConfig fields of the head actors that the SVGD actor does not read (not offered as `rl s2ac` flags).
S2AC_UNUSED = frozenset({"estimator", "lr_samples", "quad_nodes"})
#: S2AC: the temperature is fixed (as in the paper and the authors' code); head fields do not exist for it.
S2AC_PRESET: dict[str, object] = {"autotune": False, "alpha": 1.0}
#: RPG's latent-conditioned policy trained by PPO on the project's envs (our variant): no entropy estimate.
RPG_PPO_PRESET: dict[str, object] = {"ent_coef": 0.0}


def sac_preset(kind: str, head: str | None) -> dict[str, object]:
    """Flat ``field -> value`` preset of one `rl sac` (``head`` given) or `rl s2ac` (``head`` None) run."""
    out = dict(SAC_PRESETS[kind])
    if head is None:
        out = {k: v for k, v in out.items() if k not in _HEAD_FIELDS and k not in S2AC_UNUSED}
        out.update(S2AC_PRESET)
    else:
        out["estimator"] = SAC_HEADS[head]
    return out


_HEAD_FIELDS = frozenset(HeadConfig.__dataclass_fields__)
