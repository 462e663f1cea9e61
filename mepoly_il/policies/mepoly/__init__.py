"""MePoly for imitation learning: trajectory VAE + polynomial latent prior (paper §4.2, Appendix A).

``policy.MePolyPolicy`` is the acting policy; ``lightning.Stage1Module`` / ``lightning.Stage2Module`` train it
(``mepoly-il fit stage1`` / ``stage2``). Lightning is imported only by ``lightning.py``.
"""

from mepoly_il.policies.mepoly.policy import MePolyPolicy, policy_from_checkpoint

__all__ = ["MePolyPolicy", "policy_from_checkpoint"]
