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

    def __post_init__(self) -> None:
        check_flag("order", self.order, self.order >= 1, "the polynomial degree must be >= 1")
        for name in ("nodes", "sample_nodes"):
            v = getattr(self, name)
            check_flag(name, v, v is None or v >= 2, "a quadrature grid needs >= 2 nodes per dimension")
        for name in ("components", "fpo_pairs", "flow_steps"):
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
        return {}


@dataclass
class EnvConfig:
    """Environment settings (the bandit reads sigma, Smooth World max_steps)."""

    sigma: float = SIGMA_CODE
    """bandit reward width sigma of MePoly paper Eq. 15 (the authors' code: 0.1; the paper's text: 0.05)"""
    max_steps: int = MAX_STEPS
    """Smooth World time limit in steps (truncation, not termination)"""

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
