"""Evaluate the policy in ManiSkill while training: how "peak success during training" is measured.

Add it to a ``fit stage2`` or ``fit dp`` run, e.g.::

    mepoly-il fit dp --config configs/dp/paper.yaml --data.path datasets/PushCube-v1.zarr \\
        --trainer.callbacks+=mepoly_il.eval.callback.EvalCallback \\
        --trainer.callbacks.every_n_steps 5000 --trainer.callbacks.episodes 100 --trainer.callbacks.num_envs 10

Every ``every_n_steps`` optimizer steps (and once at the end of training) the callback rolls the policy out on
``episodes`` episodes with the evaluation seeds of block ``seed`` (see :func:`mepoly_il.eval.rollout.eval_seeds`),
logs ``eval/success_once`` and ``eval/success_at_end`` to every logger, and appends a row to
``<log_dir>/eval_during_training.json``, which ``mepoly-il eval summary`` reads.

When an ``EMAWeightAveraging`` (any ``WeightAveraging``) callback is active, the live module holds the raw weights
during training; the EMA weights live in that callback's ``AveragedModel`` and are what we evaluate, like
ManiSkill's and diffusion_policy's baselines. Before the first EMA update the live weights are used (the row says
which). Runs on global rank 0 only.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from mepoly_il.errors import UserError
from mepoly_il.eval.aggregate import TRAINING_EVAL_NAME, append_training_eval
from mepoly_il.policies.base import BasePolicy


def averaged_policy(trainer: pl.Trainer, pl_module: pl.LightningModule) -> tuple[BasePolicy, str]:
    """(policy to evaluate, "ema" | "live"): the averaged copy's ``.policy`` once it has been updated."""
    from lightning.pytorch.callbacks.weight_averaging import WeightAveraging

    for cb in trainer.callbacks:
        if isinstance(cb, WeightAveraging):
            avg = getattr(cb, "_average_model", None)
            policy = getattr(getattr(avg, "module", None), "policy", None)
            if avg is not None and int(avg.n_averaged.item()) > 0 and isinstance(policy, BasePolicy):
                return policy, "ema"
    return pl_module.policy, "live"


def _policy_kind(pl_module: pl.LightningModule) -> str | None:
    """The checkpoint's ``mepoly_il.policy`` value ("mepoly" / "dp"), read from the module's own save hook."""
    probe: dict[str, Any] = {"state_dict": {}}
    try:
        pl_module.on_save_checkpoint(probe)
        return probe.get("mepoly_il", {}).get("policy")
    except Exception:  # a module with unusual save logic: fall back to its class name
        return type(pl_module).__name__


class EvalCallback(Callback):
    """Roll out the (EMA) policy every ``every_n_steps`` steps and log success.

    Args:
        every_n_steps: evaluation period in optimizer steps (ManiSkill's DP baseline: 5000 of 30000).
        episodes: episodes per evaluation (ManiSkill: 100).
        seed: evaluation seed block (same block for every method so their episodes are identical).
        num_envs: parallel envs (CPU: processes; on 2 cores more than 2 rarely helps).
        max_episode_steps: override of the task's episode limit (``mepoly_il.tasks``).
        sim_backend: physx_cpu (default; same as the demos of the cube tasks), physx_cuda or auto.
        reconfiguration_freq: 1 = protocol (scene rebuilt at every reset); 0 is faster and, for the four tabletop
            tasks, gives the same initial states.
        eval_at_end: also evaluate after the last step if it is not a multiple of ``every_n_steps``.
    """

    def __init__(
        self,
        every_n_steps: int = 5000,
        episodes: int = 100,
        seed: int = 0,
        num_envs: int = 1,
        max_episode_steps: int | None = None,
        sim_backend: str = "physx_cpu",
        reconfiguration_freq: int = 1,
        eval_at_end: bool = True,
    ) -> None:
        super().__init__()
        if every_n_steps < 1:
            raise UserError(f"EvalCallback every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = int(every_n_steps)
        self.episodes = int(episodes)
        self.seed = int(seed)
        self.num_envs = int(num_envs)
        self.max_episode_steps = max_episode_steps
        self.sim_backend = sim_backend
        self.reconfiguration_freq = int(reconfiguration_freq)
        self.eval_at_end = bool(eval_at_end)
        self._env = None
        self._spec = None
        self._seeds: list[int] = []
        self._provenance: dict[str, Any] = {}
        self._last_eval_step = -1
        self.history: list[dict[str, Any]] = []

    # -- set-up ----------------------------------------------------------------------------------------------------
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Validate on every rank (a bad seed block must stop the run before it spends hours training).
        from mepoly_il.eval.rollout import check_seed_overlap, code_version, env_spec_for, eval_seeds

        if not isinstance(getattr(pl_module, "policy", None), BasePolicy):
            raise UserError(f"EvalCallback: {type(pl_module).__name__} has no acting .policy (stage 1 cannot act)")
        kind = _policy_kind(pl_module)
        if kind is None:
            raise UserError("EvalCallback: this module's checkpoints cannot act (stage 1); use it with stage2 or dp")
        dm = getattr(trainer, "datamodule", None)
        meta = dict(getattr(dm, "meta", None) or {})
        if not meta.get("env_id"):
            raise UserError("EvalCallback needs a DemoDataModule whose dataset records env_id (--data.path)")
        self._seeds = eval_seeds(self.seed, self.episodes)
        check_seed_overlap(self._seeds, meta.get("episode_seeds"), f"dataset {meta.get('source_file', '')}".strip())
        self._spec = env_spec_for(meta, self.max_episode_steps, self.sim_backend, self.reconfiguration_freq)
        seed_env = os.environ.get("PL_GLOBAL_SEED")
        self._provenance = {
            "method": kind,
            "env_id": self._spec.env_id,
            "train_seed": int(seed_env) if seed_env not in (None, "") else None,
            "eval_seed_block": self.seed,
            "seeds": self._seeds,
            **{k: v for k, v in self._spec.to_dict().items() if k not in ("render", "render_size", "env_id")},
            "num_envs": self.num_envs,
            "every_n_steps": self.every_n_steps,
            "dataset": {k: v for k, v in meta.items() if k != "episode_seeds"},
            "config": {k: v for k, v in dict(pl_module.hparams).items() if isinstance(v, int | float | str | list)},
            "code_version": code_version(),
        }

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    _log_path: Path | None = None

    # -- evaluation ------------------------------------------------------------------------------------------------
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any, **kwargs: Any) -> None:
        step = trainer.global_step
        if step > 0 and step % self.every_n_steps == 0 and step != self._last_eval_step:
            self.evaluate(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        try:
            if self.eval_at_end and trainer.global_step > 0 and trainer.global_step != self._last_eval_step:
                self.evaluate(trainer, pl_module)
        finally:
            self._close()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._close()

    def _close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None

    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any] | None:
        """Run one evaluation now (rank 0), log it and append it to the JSON log; returns the row."""
        from mepoly_il.envs.maniskill import make_eval_env
        from mepoly_il.eval.rollout import evaluate_policy

        step = trainer.global_step
        self._last_eval_step = step
        if not trainer.is_global_zero:
            return None
        if self._spec is None:
            self.on_fit_start(trainer, pl_module)
        if self._env is None:
            self._env = make_eval_env(self._spec, num_envs=min(self.num_envs, self.episodes))
        policy, weights = averaged_policy(trainer, pl_module)
        t0 = time.perf_counter()
        result = evaluate_policy(policy, self._spec, self._seeds, env=self._env)
        agg = result["aggregated"]
        row = {
            "global_step": int(step),
            "epoch": int(trainer.current_epoch),
            "success_once": agg["success_once"],
            "success_at_end": agg["success_at_end"],
            "return": agg["return"],
            "n_episodes": agg["n_episodes"],
            "weights": weights,
            "sec": round(time.perf_counter() - t0, 3),
        }
        self.history.append(row)
        metrics = {"eval/success_once": row["success_once"], "eval/success_at_end": row["success_at_end"]}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
        # Visible to ModelCheckpoint(monitor="eval/success_once") and to the progress bar.
        for key, value in metrics.items():
            trainer.callback_metrics[key] = torch.tensor(value)
        log_dir = Path(trainer.log_dir or trainer.default_root_dir)
        self._log_path = append_training_eval(log_dir / TRAINING_EVAL_NAME, self._provenance, row)
        print(
            f"[eval] step {step}: success_once {row['success_once']:.3f} success_at_end "
            f"{row['success_at_end']:.3f} ({row['n_episodes']} ep, {weights} weights, {row['sec']:.1f}s)",
            file=sys.stderr,
        )
        return row
