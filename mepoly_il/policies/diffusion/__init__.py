"""Diffusion Policy baseline: FiLM UNet (:mod:`.unet`), policy (:mod:`.policy`), Lightning module (:mod:`.lightning`).

The Lightning module is not imported here so that loading a policy for evaluation does not import Lightning.
"""

from mepoly_il.policies.diffusion.policy import DiffusionPolicy, policy_from_checkpoint
from mepoly_il.policies.diffusion.unet import ConditionalUnet1D

__all__ = ["ConditionalUnet1D", "DiffusionPolicy", "policy_from_checkpoint"]
