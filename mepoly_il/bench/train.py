"""`mepoly-il bench train`: training wall time per step, Diffusion Policy vs MePoly stage 1 + stage 2, side by side.

Each model is built from its own YAML (``configs/{dp,stage1,stage2}/{cpu,paper}.yaml``, plus a per-task file
``<ENV>[-cpu].yaml`` beside it where one exists: model section and batch size) with the task's widths and horizons
from :mod:`mepoly_il.tasks`, and trained by a real Lightning ``Trainer`` (forward, backward, optimizer, LR schedule,
EMA update) on a synthetic dataset with the task's dimensions; a callback times every training step. Stage 2 starts
from the stage-1 checkpoint written in the same run. Goal: stage 1 + stage 2 per step no slower than DP
per step, i.e. MePoly's two stages together cost no more than DP at the same step budget.

    mepoly-il bench train --scale cpu          # the cpu.yaml configs (default)
    mepoly-il bench train --scale paper        # the paper-scale configs (slow on CPU: batch 1024)
    mepoly-il bench train --quick              # smoke test: batch 32, 3 timed steps
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Literal

import torch

from mepoly_il.bench.machine import machine_info
from mepoly_il.errors import UserError

REPO = Path(__file__).resolve().parents[2]


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``, section by section (how LightningCLI applies a second --config)."""
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _config(kind: str, env_id: str, scale: str, config_dir: Path) -> tuple[Path, dict[str, Any]]:
    """The ``kind`` config at ``scale`` with the task's own file (``<env_id>[-cpu].yaml``) on top when present."""
    import yaml

    path = config_dir / kind / f"{scale}.yaml"
    if not path.is_file():
        raise UserError(f"{path}: config not found; bench train reads configs/{kind}/{scale}.yaml (--scale {scale})")
    cfg = yaml.safe_load(path.read_text()) or {}
    task_file = config_dir / kind / (f"{env_id}-cpu.yaml" if scale == "cpu" else f"{env_id}.yaml")
    if task_file.is_file():
        cfg = _merge(cfg, yaml.safe_load(task_file.read_text()) or {})
    return path, cfg


class StepTimer:
    """Lightning callback: wall seconds of each training step (batch start -> batch end, EMA update included)."""

    def __new__(cls, *args, **kwargs):  # built lazily so importing this module does not import Lightning
        import lightning.pytorch as pl

        class _Timer(pl.Callback):
            def __init__(self) -> None:
                self.times: list[float] = []
                self._t0 = 0.0

            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                self._t0 = time.perf_counter()

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                self.times.append(time.perf_counter() - self._t0)

        return _Timer()


def _fit(module, data_cfg: dict[str, Any], dataset: Path, steps: int, batch_size: int | None, root: Path):
    """Train ``module`` for ``steps`` steps; returns the per-step times."""
    import lightning.pytorch as pl

    from mepoly_il.data.datamodule import DemoDataModule
    from mepoly_il.policies.ema import EMAWeightAveraging

    data = {k: v for k, v in data_cfg.items() if k in ("obs_horizon", "act_horizon", "pred_horizon", "batch_size")}
    if batch_size:
        data["batch_size"] = batch_size
    dm = DemoDataModule(str(dataset), val_ratio=0.0, **data)
    timer = StepTimer()
    trainer = pl.Trainer(
        max_steps=steps,
        accelerator="auto",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        default_root_dir=str(root),
        # the same EMA cost for every model; the timer runs last so that it includes the EMA update
        callbacks=[EMAWeightAveraging(decay=0.999), timer],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, dm)
    return trainer, dm, timer.times


def _horizons(data_cfg: dict[str, Any]) -> dict[str, int]:
    """Horizons a config sets explicitly (they override the task's, as ``--data.*_horizon`` does)."""
    return {k: v for k, v in data_cfg.items() if k in ("obs_horizon", "act_horizon", "pred_horizon") and v is not None}


def _with_task(data_cfg: dict[str, Any], task) -> dict[str, Any]:
    """The data section with the task's horizons filled in (the synthetic dataset has no registered task)."""
    return {**data_cfg, **task.horizons(), **_horizons(data_cfg)}


def run(env_id: str, scale: str, steps: int, warmup: int, batch_size: int | None, config_dir: Path) -> dict[str, Any]:
    """Time DP, stage 1 and stage 2; returns the JSON-ready result."""
    from mepoly_il.data.synthetic import make_synthetic_dataset
    from mepoly_il.policies.diffusion.lightning import DiffusionModule
    from mepoly_il.policies.mepoly.lightning import Stage1Module, Stage2Module
    from mepoly_il.tasks import get_task

    task = get_task(env_id)
    obs_dim, act_dim = task.obs_dim, task.act_dim
    cfgs = {kind: _config(kind, env_id, scale, config_dir) for kind in ("dp", "stage1", "stage2")}
    total = warmup + steps
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="mepoly-bench-train-") as tmp:
        tmp = Path(tmp)
        # Enough windows for one batch of the largest configured size without repeats.
        largest = max(batch_size or c[1]["data"]["batch_size"] for c in cfgs.values())
        n_eps = max(16, int(1.3 * largest / 60) + 2)
        dataset = make_synthetic_dataset(
            tmp / "bench.zarr", num_episodes=n_eps, obs_dim=obs_dim, act_dim=act_dim, length=(70, 90)
        )

        def model_args(cfg: dict[str, Any], **extra: Any) -> dict[str, Any]:
            """The module's arguments: the YAML's model section, with the shape `fit` would link into the policy."""
            shape = {"obs_dim": obs_dim, "act_dim": act_dim, **task.horizons(), **_horizons(cfg.get("data", {}))}
            model = {**cfg.get("model", {}), **extra}
            return {**model, "policy": {**(model.get("policy") or {}), **shape}}

        def record(name, path, module, times, batch):
            timed = times[warmup:]
            params = sum(p.numel() for p in module.parameters())
            trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
            cfg = cfgs[name][1]
            rows[name] = {
                "config": str(path.relative_to(config_dir.parent) if path.is_relative_to(config_dir.parent) else path),
                "batch_size": batch,
                "params": params,
                "trainable_params": trainable,
                "median_s_per_step": statistics.median(timed),
                "mean_s_per_step": statistics.fmean(timed),
                "steps_per_s": 1.0 / statistics.median(timed),
                "timed_steps": len(timed),
                "config_max_steps": int(cfg.get("trainer", {}).get("max_steps", 0) or 0),
            }

        # -- DP
        path, cfg = cfgs["dp"]
        torch.manual_seed(0)
        dp = DiffusionModule(**model_args(cfg))
        _, dm, times = _fit(dp, _with_task(cfg["data"], task), dataset, total, batch_size, tmp / "dp")
        record("dp", path, dp, times, dm.batch_size)
        # -- stage 1
        path, cfg = cfgs["stage1"]
        torch.manual_seed(0)
        s1 = Stage1Module(**model_args(cfg, latent_plot_samples=0))
        trainer, dm, times = _fit(s1, _with_task(cfg["data"], task), dataset, total, batch_size, tmp / "s1")
        record("stage1", path, s1, times, dm.batch_size)
        stage1_ckpt = tmp / "stage1.ckpt"
        trainer.save_checkpoint(stage1_ckpt)
        # -- stage 2
        path, cfg = cfgs["stage2"]
        torch.manual_seed(0)
        s2 = Stage2Module(**model_args(cfg, stage1_ckpt=str(stage1_ckpt)))
        _, dm, times = _fit(s2, _with_task(cfg["data"], task), dataset, total, batch_size, tmp / "s2")
        record("stage2", path, s2, times, dm.batch_size)

    t = {k: v["median_s_per_step"] for k, v in rows.items()}
    budget = {k: v["config_max_steps"] for k, v in rows.items()}
    ratio_same_steps = (t["stage1"] + t["stage2"]) / t["dp"]
    est = {k: t[k] * budget[k] for k in rows}
    return {
        "benchmark": "train",
        "what": "Lightning training step wall time (forward, backward, AdamW, LR schedule, EMA), synthetic data",
        "env_id": env_id,
        "scale": scale,
        "obs_dim": obs_dim,
        "act_dim": act_dim,
        "warmup_steps_untimed": warmup,
        "rows": rows,
        "ratio_stage1_plus_stage2_over_dp_per_step": ratio_same_steps,
        "goal_met_per_step": ratio_same_steps <= 1.0,
        "estimated_config_budget_s": est,
        "ratio_config_budget": (est["stage1"] + est["stage2"]) / est["dp"] if est["dp"] else None,
        "machine": machine_info(),
    }


def format_table(result: dict[str, Any]) -> str:
    lines = [
        f"{result['env_id']}, scale={result['scale']}, threads={result['machine']['torch_threads']}",
        "",
        "| model | batch | params (trainable) | median s/step | steps/s | config steps | est. config time |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in result["rows"].items():
        est = result["estimated_config_budget_s"][name]
        lines.append(
            f"| {name} | {r['batch_size']} | {r['params']:,} ({r['trainable_params']:,}) | "
            f"{r['median_s_per_step']:.4f} | {r['steps_per_s']:.1f} | {r['config_max_steps']} | {est / 60:.1f} min |"
        )
    ratio = result["ratio_stage1_plus_stage2_over_dp_per_step"]
    lines += [
        "",
        f"(stage1 + stage2) / DP per step: {ratio:.3f}; goal <= 1: {'meets' if ratio <= 1 else 'MISSES'}",
    ]
    if result["ratio_config_budget"] is not None:
        lines.append(f"(stage1 + stage2) / DP at the configs' max_steps: {result['ratio_config_budget']:.3f}")
    return "\n".join(lines)


def benchmark(
    *,
    scale: Literal["cpu", "paper"] = "cpu",
    env: str = "PushCube-v1",
    steps: int = 20,
    warmup: int = 3,
    batch_size: int | None = None,
    config_dir: str | None = None,
    threads: int | None = None,
    quick: bool = False,
    out: str = "bench_train.json",
    command: str = "mepoly-il bench train",
) -> int:
    """Time training steps of DP, stage 1 and stage 2, print the table and write the JSON.

    Args:
        scale: cpu or paper: configs/{dp,stage1,stage2}/{cpu,paper}.yaml (plus a per-task file where one exists)
        env: task whose configs and dimensions are used
        steps: timed training steps per model
        warmup: untimed steps first (allocator, first-call overheads)
        batch_size: override every config's data.batch_size
        config_dir: folder with dp/, stage1/, stage2/ configs (default: the repo's)
        threads: torch intra-op threads (default: torch's choice)
        quick: smoke test: cpu configs, batch 32, 3 timed steps
        out: JSON output path
        command: the command line recorded in the JSON
    """
    if quick:
        scale, steps, warmup, batch_size = "cpu", 3, 1, batch_size or 32
    if steps < 1 or warmup < 0:
        raise UserError(f"--steps {steps} / --warmup {warmup}: need steps >= 1 and warmup >= 0")
    if threads:
        torch.set_num_threads(threads)
    config_dir = Path(config_dir) if config_dir else REPO / "configs"
    if not config_dir.is_dir():
        config_dir = Path.cwd() / "configs"
    result = run(env, scale, steps, warmup, batch_size, config_dir)
    result["command"] = command
    print(format_table(result))
    from mepoly_il.utils import write_json_atomic

    write_json_atomic(out, result)
    print(f"\nwrote {out}", file=sys.stderr)
    return 0
