"""IL policies (MePoly, Diffusion Policy) behind one protocol, and :func:`load_policy`.

Checkpoint contract (every Lightning module in this package writes it):

* the file loads with ``torch.load(path, weights_only=True)``: hyperparameters are primitives, so loading a
  downloaded checkpoint never unpickles arbitrary objects;
* ``ckpt["mepoly_il"]`` = ``{"format_version": 1, "policy": "mepoly" | "dp" | None (stage 1), "dataset":
  {...provenance..., "episode_seeds": [...]}, "policy_config": {...}, "hparams": {...}}``, written by
  :class:`~mepoly_il.policies.lightning_base.PolicyModule`; a newer ``format_version`` is refused on load;
* ``policy_config`` (the policy's config dataclass as primitives: ``MePolyConfig``, ``DiffusionConfig``) rebuilds
  the network; ``ckpt["state_dict"]`` holds the weights to act with (the EMA
  weights when the EMA callback ran), with the policy under the ``policy.`` prefix;
* there is no ``ckpt["hyper_parameters"]``: LightningCLI would re-apply it *over* the command line on ``--ckpt_path``
  resume (Lightning PR #21455), so the modules keep it in ``mepoly_il.hparams`` and the run's ``config.yaml``.
"""

from __future__ import annotations

import importlib
import math
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from mepoly_il.errors import UserError
from mepoly_il.policies.base import BasePolicy

#: The ``ckpt["mepoly_il"]`` layout written by this version (the one place it is declared).
CHECKPOINT_FORMAT_VERSION = 1

#: policy kind -> "module:function" building a BasePolicy from a loaded checkpoint dict.
POLICY_LOADERS = {
    "mepoly": "mepoly_il.policies.mepoly.policy:policy_from_checkpoint",
    "dp": "mepoly_il.policies.diffusion.policy:policy_from_checkpoint",
}


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``); UserError for missing, corrupt or foreign files."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found; pass the path of a .ckpt written by `mepoly-il fit`")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: empty file, not a checkpoint; re-run training or pick another checkpoint")
    if not _is_zip_or_pickle(path):
        raise UserError(f"{path}: not a checkpoint file (neither a zip archive nor a pickle); use a .ckpt from fit")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise UserError(
            f"{path}: refused to load: the checkpoint contains objects other than tensors and primitive values "
            f"({str(err).splitlines()[0][:160]}); only checkpoints written by mepoly-il are accepted"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, KeyError, IndexError, ValueError) as err:
        reason = str(err).splitlines()[0][:160] if str(err) else ""
        raise UserError(
            f"{path}: not a readable checkpoint ({type(err).__name__}: {reason}); "
            "it may be truncated, re-run training or pick another checkpoint"
        ) from None
    if not isinstance(ckpt, dict) or "mepoly_il" not in ckpt or "state_dict" not in ckpt:
        raise UserError(f"{path}: not a mepoly-il policy checkpoint (no 'mepoly_il' section); use a .ckpt from fit")
    version = ckpt["mepoly_il"].get("format_version")
    if not isinstance(version, int) or not 1 <= version <= CHECKPOINT_FORMAT_VERSION:
        raise UserError(
            f"{path}: checkpoint format version {version!r} is not one this mepoly-il reads (1 to "
            f"{CHECKPOINT_FORMAT_VERSION}); it was written by another version, upgrade mepoly-il"
        )
    if not isinstance(ckpt["state_dict"], dict):
        raise UserError(
            f"{path}: not a mepoly-il policy checkpoint (its state_dict is not a dict); use a .ckpt from fit"
        )
    bad = [
        k
        for k, v in ckpt["state_dict"].items()
        if torch.is_tensor(v) and v.is_floating_point() and not v.isfinite().all()
    ]
    if bad:  # acting (or training on) with NaN/inf weights only ever yields NaN actions
        raise UserError(
            f"{path}: {len(bad)} weight tensor(s) hold NaN or inf values (first: {bad[0]}); the run diverged, "
            "use an earlier checkpoint or retrain with a lower learning rate"
        )
    return ckpt


def poly_size_problem(dim: int, order: int) -> str | None:
    """Why a :class:`~mepoly_il.poly.family.PolynomialFamily` of ``dim`` and total degree ``order`` cannot be
    trained (its default quadrature would need more memory per batch row than the family's ``max_grid_bytes``
    budget), or None. Costs nothing: nothing is built.

    The default ("auto") quadrature is a Gauss grid of ``max(12, 2K + 8)`` nodes per dimension when that grid has
    at most ``2**17`` nodes, else QMC, which holds ``qmc_points * qmc_replicates * num_features * (dim + 1)``
    float32 elements per batch row (see ``PolynomialFamily._qmc_stats``).
    """
    import inspect

    from mepoly_il.poly.family import _AUTO_MAX_NODES, PolynomialFamily, default_gauss_nodes

    defaults = {k: v.default for k, v in inspect.signature(PolynomialFamily).parameters.items()}
    budget = defaults["max_grid_bytes"]
    points = defaults["qmc_points"] * defaults["qmc_replicates"]

    def row_bytes(k: int) -> int:
        if default_gauss_nodes(k) ** dim <= _AUTO_MAX_NODES:
            return 0  # a small Gauss grid: always within the budget
        return points * (math.comb(dim + k, dim) - 1) * (dim + 1) * 4

    if row_bytes(order) <= budget:
        return None
    k_max = order
    while k_max > 1 and row_bytes(k_max) > budget:
        k_max -= 1
    return (
        f"poly_order {order} with latent_dim {dim} has {math.comb(dim + order, dim) - 1:,} features and its "
        f"quadrature needs {row_bytes(order) / 2**30:,.1f} GiB per batch row (the polynomial family's budget is "
        f"{budget / 2**20:.0f} MiB per row); use poly_order <= {k_max}"
    )


def _is_zip_or_pickle(path: Path) -> bool:
    """Whether the file starts like what torch.save writes (a zip archive, or a legacy pickle)."""
    with open(path, "rb") as f:
        head = f.read(4)
    return head.startswith(b"PK") or head[:1] == b"\x80"


def policy_state_dict(ckpt: dict[str, Any], prefix: str = "policy.") -> dict[str, torch.Tensor]:
    """The ``policy.``-prefixed slice of a Lightning state dict, prefix stripped."""
    return {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}


def load_policy(path: str | os.PathLike, device: str | torch.device = "cpu") -> BasePolicy:
    """Load any policy checkpoint written by this project, in eval mode, on ``device``."""
    ckpt = read_checkpoint(path)
    info = ckpt["mepoly_il"]
    kind = info.get("policy")
    if kind is None and info.get("stage") == 1:
        raise UserError(
            f"{path}: this is a MePoly stage-1 (VAE) checkpoint, not a policy; train stage 2 on it with "
            "`mepoly-il fit stage2 --model.stage1_ckpt PATH` and load that checkpoint"
        )
    if kind not in POLICY_LOADERS:
        raise UserError(f"{path}: unknown policy kind {kind!r}; expected one of {sorted(POLICY_LOADERS)}")
    module_name, fn_name = POLICY_LOADERS[kind].split(":")
    policy: BasePolicy = getattr(importlib.import_module(module_name), fn_name)(ckpt)
    policy.meta = dict(info)
    policy.meta["checkpoint"] = str(path)
    return policy.to(device).eval()


__all__ = [
    "BasePolicy",
    "load_policy",
    "read_checkpoint",
    "policy_state_dict",
    "poly_size_problem",
    "CHECKPOINT_FORMAT_VERSION",
]
