"""mepoly-il: polynomial exponential-family policies for imitation learning and RL."""

__version__ = "0.1.0"
