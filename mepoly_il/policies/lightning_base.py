"""The Lightning plumbing shared by every policy's training module (MePoly stage 1/2, DP).

:class:`PolicyModule` holds ``self.policy`` (a :class:`~mepoly_il.policies.base.BasePolicy`) and owns:

* the checkpoint block ``ckpt["mepoly_il"]`` (format version, policy kind, ``policy_config`` primitives that rebuild
  the network, ``hparams``, dataset provenance; see :mod:`mepoly_il.policies`). ``ckpt["hyper_parameters"]`` is
  dropped: LightningCLI re-parses it *over* the command line on ``--ckpt_path`` resume (Lightning PR #21455), so a
  ``--model.lr`` given with ``--ckpt_path`` would silently lose; the run's ``config.yaml`` and
  ``mepoly_il.hparams`` keep it instead;
* the run layout (:func:`~mepoly_il.policies.run_layout.arrange_run_outputs`) and the dataset's bounds and
  provenance at ``setup("fit")``;
* EMA sync: ``EMAWeightAveraging`` deep-copies the module in its own ``setup()``, which runs *before* ours, so the
  copy is refreshed after the normalizers are set (an EMA model that has not been updated yet must not act with
  identity normalizers);
* the per-step LR schedule (linear warm-up, then cosine decay to 0 at the last step, or constant);
* exact resume: N steps, then ``--ckpt_path last.ckpt`` up to 2N steps, ends with the weights and metrics of 2N
  uninterrupted steps, bit for bit on CPU. Three pieces make it so: ``ckpt["mepoly_il_rng"]`` holds the torch
  (CPU and CUDA), numpy and ``random`` states, restored at ``on_train_start``; validation leaves those states as
  it found them (a resume skips the validation that followed the save); the DataModule's batch order is a pure
  function of (seed, epoch) and it checkpoints how many batches were taken (see ``DemoDataModule``). And a
  ``last.ckpt`` written when training ends keeps the *trained* weights as the ones to resume from:
  ``EMAWeightAveraging.on_train_end`` has already copied the average into the module by then, so Lightning
  would otherwise resume a finished run from its EMA weights.

Subclasses set ``kind`` / ``stage``, build ``self.policy`` and keep what differs: losses, optimiser groups,
validation metrics, and :meth:`_on_fit_data` for what they take from the dataset.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, is_dataclass
from typing import Any

import lightning as L
import numpy as np
import torch

from mepoly_il.errors import UserError
from mepoly_il.policies import CHECKPOINT_FORMAT_VERSION
from mepoly_il.policies.base import BasePolicy, PolicyShape
from mepoly_il.policies.run_layout import arrange_run_outputs
from mepoly_il.utils import to_primitive

LR_SCHEDULES = ("cosine", "constant")
#: ``ckpt[RNG_KEY]``: the random-number states at the save, for exact resume (see the module docstring).
RNG_KEY = "mepoly_il_rng"


def _rng_state() -> dict[str, Any]:
    """Every random-number state a training step draws from, as tensors and primitives (``weights_only`` loads)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },  # fmt: skip
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "python_gauss": random.getstate()[2],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    npst = state["numpy"]
    np.random.set_state(
        (npst["kind"], npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"], npst["gauss"])
    )
    random.setstate((state["python_version"], tuple(state["python"]), state.get("python_gauss")))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def lr_factor(
    step: int, warmup_steps: int, total_steps: int, schedule: str = "cosine", from_zero: bool = False
) -> float:
    """LR multiplier at optimizer step ``step``: linear warm-up over ``warmup_steps``, then ``schedule``.

    ``from_zero`` starts the warm-up at 0 (step / warmup, diffusers' cosine schedule, used by DP) instead of
    1 / warmup ((step + 1) / warmup, MePoly's); after the warm-up both decay as 0.5 (1 + cos(pi * progress)).
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step if from_zero else step + 1) / warmup_steps
    if schedule == "constant" or total_steps <= warmup_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def check_lr_schedule(name: str, value: str) -> None:
    if value not in LR_SCHEDULES:
        raise UserError(f"{name}={value!r}: choose one of {list(LR_SCHEDULES)}")


def as_config(value: Any, cls: type) -> Any:
    """A module's ``policy`` argument as the config dataclass ``cls`` (Python callers may pass a dict)."""
    return value if isinstance(value, cls) else cls(**dict(value or {}))


def data_shape(data: dict[str, Any]) -> dict[str, int]:
    """The five :class:`PolicyShape` fields that a parsed ``data`` section gives (what ``fit`` links into
    ``model.policy``); reads only the dataset's metadata."""
    from mepoly_il.data.datamodule import DemoDataModule

    dm = DemoDataModule(**{k: v for k, v in data.items() if v is not None})
    return {k: int(getattr(dm, k)) for k in PolicyShape.SHAPE_FIELDS}


class PolicyModule(L.LightningModule):
    """Base of the policy training modules: checkpoint block, run layout, EMA sync, LR schedule."""

    policy: BasePolicy
    #: ``ckpt["mepoly_il"]["policy"]``: the :data:`~mepoly_il.policies.POLICY_LOADERS` key, None if it cannot act.
    kind: str | None = None

    # -- data ------------------------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if stage != "fit":
            return
        arrange_run_outputs(self.trainer)
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None:
            raise UserError(f"`fit` of {type(self).__name__} needs a DemoDataModule (--data.path DATASET.zarr)")
        # On resume the checkpoint restores the same buffers right after this.
        self._on_fit_data(dm)
        self._sync_average_models()

    def _on_fit_data(self, dm) -> None:
        """Take what the policy needs from the DataModule (default: its normalizer bounds)."""
        self.policy.set_normalizers(dm.obs_bounds, dm.act_bounds)

    def _sync_average_models(self) -> None:
        from lightning.pytorch.callbacks import WeightAveraging

        for cb in self.trainer.callbacks:
            avg = getattr(cb, "_average_model", None) if isinstance(cb, WeightAveraging) else None
            if avg is not None:
                avg.module.load_state_dict(self.state_dict())

    def _dataset_meta(self) -> dict[str, Any]:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        return to_primitive(dict(getattr(dm, "meta", {}) or {}))

    # -- optimisation ----------------------------------------------------------------------------------------------
    def _with_schedule(
        self, optimizer: torch.optim.Optimizer, warmup_steps: int, schedule: str = "cosine", from_zero: bool = False
    ) -> dict[str, Any]:
        """``optimizer`` with a per-step LambdaLR over the trainer's total steps."""
        total = int(self.trainer.estimated_stepping_batches) if self._trainer is not None else 0
        if from_zero:  # diffusers' convention: the warm-up ends one step before the last
            warmup_steps = min(warmup_steps, max(total - 1, 0))
        sched = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step, warmup_steps, total, schedule, from_zero)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # -- checkpoint ------------------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        hparams = {k: asdict(v) if is_dataclass(v) else v for k, v in self.hparams.items() if not k.startswith("_")}
        checkpoint.pop("hyper_parameters", None)  # see the module docstring: resume must not override the CLI
        checkpoint["mepoly_il"] = {
            "format_version": CHECKPOINT_FORMAT_VERSION,
            "policy": self.kind,
            "policy_config": to_primitive(self.policy.config()),
            "hparams": to_primitive(hparams),
            "dataset": self._dataset_meta(),
            **self._extra_meta(),
        }

        checkpoint[RNG_KEY] = _rng_state()
        trained = getattr(self, "_trained_state", None)
        if "current_model_state" in checkpoint and trained is not None and trained[0] == self.trainer.global_step:
            checkpoint["current_model_state"] = trained[1]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get(RNG_KEY)
        if state is None or self._trainer is None:
            return
        # Set at on_train_start: the sanity-check validation, which runs between the restore and the first
        # step, draws from the same generators.
        self._resume_rng = state

    def on_train_start(self) -> None:
        state = getattr(self, "_resume_rng", None)
        if state is not None:
            _set_rng_state(state)
            self._resume_rng = None
            self._check_log_step = True

    def on_train_epoch_start(self) -> None:
        if not getattr(self, "_check_log_step", False):
            return
        # A checkpoint written as an epoch ended makes Lightning (2.6) close that epoch again on resume, without a
        # batch, and count one more optimised batch: every later metric would be logged one step late. Checked at
        # the next epoch's start, before any callback logs (LearningRateMonitor logs at batch start). The count of
        # optimised batches is the optimizer step count (one optimizer, automatic optimization).
        loop = self.trainer.fit_loop.epoch_loop
        if self.automatic_optimization and getattr(loop, "_batches_that_stepped", None) != self.trainer.global_step:
            loop._batches_that_stepped = self.trainer.global_step

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._check_log_step = False  # the first resumed batch ran: the count is right from here on
        # Runs after the EMA update. The average of a frozen parameter drifts from it by rounding, and a checkpoint
        # (stage 2 writes its frozen weights exactly) would reset that drift on resume: keep them equal instead.
        from lightning.pytorch.callbacks import WeightAveraging

        for cb in self.trainer.callbacks:
            avg = getattr(cb, "_average_model", None) if isinstance(cb, WeightAveraging) else None
            if avg is not None:
                with torch.no_grad():
                    for mine, theirs in zip(self.parameters(), avg.module.parameters(), strict=True):
                        if not mine.requires_grad:
                            theirs.copy_(mine)

    def on_validation_start(self) -> None:
        # Validation runs between training steps; the steps' random numbers must not depend on it (a resume skips
        # the validation that followed its checkpoint, and the sanity check runs only at the start of a fit).
        self._rng_before_validation = _rng_state()

    def on_validation_end(self) -> None:
        state = getattr(self, "_rng_before_validation", None)
        if state is not None:
            _set_rng_state(state)
            self._rng_before_validation = None

    def on_train_epoch_end(self) -> None:
        # When training ends here, EMAWeightAveraging.on_train_end copies the average into the module before the
        # final last.ckpt is written: keep the trained weights for that checkpoint's ``current_model_state``.
        from lightning.pytorch.callbacks import WeightAveraging

        trainer = self.trainer
        epochs_done = trainer.fit_loop.epoch_progress.current.processed
        ending = (
            (trainer.max_steps != -1 and trainer.global_step >= trainer.max_steps)
            or (trainer.max_epochs not in (None, -1) and epochs_done >= trainer.max_epochs)
            or trainer.should_stop
        )
        if ending and any(isinstance(cb, WeightAveraging) for cb in trainer.callbacks):
            self._trained_state = (trainer.global_step, {k: v.detach().clone() for k, v in self.state_dict().items()})

    def _extra_meta(self) -> dict[str, Any]:
        """More entries for ``ckpt["mepoly_il"]`` (e.g. MePoly's stage and its stage-1 provenance)."""
        return {}


def fused_adamw(module: torch.nn.Module) -> dict[str, bool]:
    """``torch.optim.AdamW`` keyword arguments for the fused kernel where torch has one (CPU, CUDA): one kernel
    over all parameters instead of a Python loop of small ops per parameter tensor, the same update."""
    first = next(module.parameters(), None)
    return {"fused": True} if first is not None and first.device.type in ("cpu", "cuda") else {}
