"""`mepoly-il bench latency`: action-chunk latency of MePoly vs Diffusion Policy (DDPM-100 and DDIM-k), side by side.

All policies are built directly with random weights and identity normalizers (latency does not depend on training),
at matched parameter counts: MePoly at the chosen scale, DP's UNet widths picked to come closest to MePoly's total.
Each policy is warmed up, then ``predict_action_chunk`` is timed ``--repeats`` times per batch size, round-robin
across the policies so that load changes on a shared machine hit all of them alike; the table shows medians and
the ratios MePoly / DP. Goals (this project's targets for the paper's low-latency claim, §3.2): MePoly <= 1/50 of
DDPM-100 and <= 1/5 of DDIM-10.

A second table times a *trained* MePoly checkpoint at batch 1 on observation histories of several kinds: windows
from the dataset it was trained on (in range) and out-of-range ones (all zeros, every state shifted by +3 and -3
standard deviations of the dataset's states). Out-of-range inputs make the prior peaked, which costs more quadrature.
Each history is timed ``--input-calls`` times in separate sweeps and its latency is the median of its calls; the
table gives the median and worst history per kind, the slowest single call (machine jitter included), how the
sampler handled the rows (base grid, zoomed box, refined grid), and the worst history over all kinds against the
in-range median (goal: at most 2x). Without ``--checkpoint``, the frozen test checkpoint (tests/data/frozen) and the
synthetic dataset it was trained on are used.

    mepoly-il bench latency                         # paper scale, batch 1 and 10, CPU (+ CUDA if present)
    mepoly-il bench latency --scale cpu --checkpoint demo_out/il/stage2/checkpoints/last.ckpt \
        --data demo_out/il/PushCube-v1.zarr         # + a trained CPU-scale checkpoint on its own data
    mepoly-il bench latency --quick                 # tiny models, a smoke test (< 30 s)
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from mepoly_il.bench.machine import machine_info
from mepoly_il.errors import UserError
from mepoly_il.policies.base import BasePolicy
from mepoly_il.policies.diffusion.policy import DiffusionPolicy
from mepoly_il.policies.diffusion.unet import ConditionalUnet1D

#: Goals: MePoly latency as a fraction of each DP variant's.
GOALS = {"ddpm": 1 / 50, "ddim": 1 / 5}
#: Goal for the trained checkpoint: worst case over all input kinds at most this times the in-range median.
WORST_OVER_MEDIAN = 2.0
FROZEN = Path(__file__).resolve().parents[2] / "tests" / "data" / "frozen" / "mepoly_stage2.ckpt"

#: MePoly sizes when no config is found. "paper": the constructor defaults (paper Appendix A); "quick": tiny.
MEPOLY_SCALES: dict[str, dict[str, Any]] = {
    "paper": {},
    "cpu": {"d_model": 64, "ff_dim": 256},
    "quick": {"d_model": 32, "ff_dim": 64, "enc_layers": 1, "obs_layers": 1, "dec_layers": 1, "prior_hidden": [32]},
}
CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


def mepoly_size(scale: str, env_id: str = "PushCube-v1") -> tuple[dict[str, Any], str]:
    """MePolyPolicy kwargs for ``scale``: ``model.policy`` of configs/stage1 + stage2/{cpu,paper}.yaml when present,
    else defaults (``env_id`` is kept for callers; the configs hold no task facts).

    Returns (kwargs, where they came from)."""
    import dataclasses

    import yaml

    from mepoly_il.policies.mepoly.config import MePolyConfig

    if scale == "quick":
        return dict(MEPOLY_SCALES["quick"]), "built-in quick size"
    names = {f.name for f in dataclasses.fields(MePolyConfig)} - set(MePolyConfig.SHAPE_FIELDS)
    kwargs: dict[str, Any] = {}
    found = []
    for stage in ("stage1", "stage2"):
        path = CONFIG_DIR / stage / f"{scale}.yaml"
        if path.is_file():
            policy = ((yaml.safe_load(path.read_text()) or {}).get("model", {}) or {}).get("policy", {}) or {}
            kwargs.update({k: v for k, v in policy.items() if k in names})
            found.append(str(path.relative_to(CONFIG_DIR.parent)))
    if not found:
        return dict(MEPOLY_SCALES[scale]), f"built-in {scale} size (no MePoly configs found)"
    return kwargs, " + ".join(found)


def dp_params(down_dims: list[int], obs_dim: int, act_dim: int, obs_horizon: int, embed: int = 64) -> int:
    """Parameters of DP's UNet for the given widths (no policy construction, no schedulers)."""
    unet = ConditionalUnet1D(act_dim, obs_horizon * obs_dim, down_dims, diffusion_step_embed_dim=embed)
    return sum(p.numel() for p in unet.parameters())


def match_dp_down_dims(target: int, obs_dim: int, act_dim: int, obs_horizon: int, levels: int = 3) -> list[int]:
    """UNet widths ``[w, 2w, 4w, ...]`` (w a multiple of 8, for GroupNorm) whose parameter count is closest to
    ``target``. The count grows ~quadratically in w, so a scan over w is short."""
    best, best_err = [8 * 2**i for i in range(levels)], float("inf")
    for w in range(8, 1025, 8):
        dims = [w * 2**i for i in range(levels)]
        n = dp_params(dims, obs_dim, act_dim, obs_horizon)
        if abs(n - target) < best_err:
            best, best_err = dims, abs(n - target)
        if n > target:
            break
    return best


def build_policies(
    obs_dim: int, act_dim: int, horizons: tuple[int, int, int], scale: str, ddim_steps: int, seed: int = 0
) -> tuple[dict[str, BasePolicy], dict[str, Any]]:
    """MePoly + DP (DDPM-100, DDIM-k) with random weights at matched sizes; returns (policies, size info)."""
    from mepoly_il.policies.mepoly.policy import MePolyPolicy

    To, Ta, T = horizons
    torch.manual_seed(seed)
    size, source = mepoly_size(scale)
    mepoly = MePolyPolicy(obs_dim, act_dim, To, Ta, T, **size)
    counts = mepoly.num_parameters()
    # The action encoder and posterior heads only train; acting uses the rest.
    acting = counts["total"] - counts["action_encoder"] - counts["latent_heads"]
    down = match_dp_down_dims(counts["total"], obs_dim, act_dim, To)
    ddpm = DiffusionPolicy(obs_dim, act_dim, To, Ta, T, down_dims=down, inference="ddpm", num_inference_steps=100)
    ddim = DiffusionPolicy(obs_dim, act_dim, To, Ta, T, down_dims=down, inference="ddim", num_inference_steps=1)
    ddim.load_state_dict(ddpm.state_dict())
    ddim.set_inference("ddim", ddim_steps)
    policies = {"mepoly": mepoly, "dp-ddpm100": ddpm, f"dp-ddim{ddim_steps}": ddim}
    sizes = {
        "mepoly_total": counts["total"],
        "mepoly_acting": acting,
        "dp": ddpm.num_parameters(),
        "dp_down_dims": down,
        "mepoly_config": mepoly.config(),
        "mepoly_config_source": source,
    }
    return policies, sizes


def time_interleaved(
    policies: dict[str, BasePolicy], obs: torch.Tensor, warmup: dict[str, int], repeats: dict[str, int]
) -> dict[str, list[float]]:
    """Seconds per ``predict_action_chunk(obs)`` for every policy, timed round-robin (one call of each in turn) so
    that a change in machine load during the run hits all policies alike and the ratios stay fair."""
    sync = torch.cuda.synchronize if obs.device.type == "cuda" else (lambda: None)
    for name, policy in policies.items():
        for _ in range(warmup[name]):
            policy.predict_action_chunk(obs)
    sync()
    times: dict[str, list[float]] = {name: [] for name in policies}
    for i in range(max(repeats.values())):
        for name, policy in policies.items():
            if i >= repeats[name]:
                continue
            t0 = time.perf_counter()
            policy.predict_action_chunk(obs)
            sync()
            times[name].append(time.perf_counter() - t0)
    return times


def run(
    batches: list[int],
    ddim_steps: int,
    devices: list[str],
    scale: str,
    obs_dim: int,
    act_dim: int,
    horizons: tuple[int, int, int],
    warmup: int,
    repeats: int,
    ddpm_repeats: int,
) -> dict[str, Any]:
    """Measure every (device, policy, batch); returns the JSON-ready result."""
    policies, sizes = build_policies(obs_dim, act_dim, horizons, scale, ddim_steps)
    rows: list[dict[str, Any]] = []
    ratios: dict[str, float] = {}
    ddim_name = f"dp-ddim{ddim_steps}"
    warm = {n: (min(warmup, 1) if n == "dp-ddpm100" else warmup) for n in policies}
    reps = {n: (ddpm_repeats if n == "dp-ddpm100" else repeats) for n in policies}
    for device in devices:
        for policy in policies.values():
            policy.to(device).eval()
        for b in batches:
            obs = torch.randn(b, horizons[0], obs_dim, device=device)
            for name, t in time_interleaved(policies, obs, warm, reps).items():
                rows.append(
                    {
                        "device": device,
                        "policy": name,
                        "batch": b,
                        "median_ms": 1e3 * statistics.median(t),
                        "min_ms": 1e3 * min(t),
                        "max_ms": 1e3 * max(t),
                        "repeats": len(t),
                    }
                )
        for policy in policies.values():
            policy.to("cpu")
        for b in batches:
            med = {r["policy"]: r["median_ms"] for r in rows if r["device"] == device and r["batch"] == b}
            ratios[f"{device}/b{b}/mepoly_over_ddpm100"] = med["mepoly"] / med["dp-ddpm100"]
            ratios[f"{device}/b{b}/mepoly_over_{ddim_name.removeprefix('dp-')}"] = med["mepoly"] / med[ddim_name]
    goals_met = {k: v <= (GOALS["ddpm"] if "ddpm" in k else GOALS["ddim"]) for k, v in ratios.items()}
    return {
        "benchmark": "latency",
        "what": "predict_action_chunk wall time (normalize -> generate -> slice -> unnormalize), random weights",
        "scale": scale,
        "obs_dim": obs_dim,
        "act_dim": act_dim,
        "horizons": {"obs": horizons[0], "act": horizons[1], "pred": horizons[2]},
        "ddim_steps": ddim_steps,
        "params": sizes,
        "machine": machine_info(),
        "rows": rows,
        "ratios": ratios,
        "goals": {"mepoly_over_ddpm100_max": GOALS["ddpm"], "mepoly_over_ddim_max": GOALS["ddim"]},
        "goals_met": goals_met,
    }


def input_histories(data: Path, obs_horizon: int, count: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """``count`` observation histories ``(count, To, Ds)`` per kind: dataset windows ("data", within one
    episode), all zeros, and the same windows shifted by +3 / -3 standard deviations of the dataset's states."""
    import numpy as np

    from mepoly_il.data.zarr_io import load_arrays

    arrays = load_arrays(data)
    starts = np.concatenate([[0], arrays.episode_ends[:-1]])
    ok = [t for a, b in zip(starts, arrays.episode_ends, strict=True) for t in range(int(a), int(b) - obs_horizon + 1)]
    if not ok:
        raise UserError(f"--data {data}: no episode has {obs_horizon} steps (the checkpoint's obs_horizon)")
    picks = np.random.default_rng(seed).choice(ok, size=count, replace=len(ok) < count)
    real = torch.from_numpy(np.stack([arrays.state[t : t + obs_horizon] for t in picks])).float()
    std = torch.from_numpy(arrays.state.std(0)).float()
    return {"data": real, "zeros": torch.zeros_like(real), "+3std": real + 3 * std, "-3std": real - 3 * std}


def input_dependence(checkpoint: Path, data: Path, count: int, warmup: int, calls: int = 5) -> dict[str, Any]:
    """Batch-1 latency of a trained MePoly checkpoint per input kind.

    Each history is timed ``calls`` times, in ``calls`` sweeps over all histories with the kinds round-robin, so
    that a slower stretch of a shared machine (seconds long on a VM) hits every kind alike and at most one call of
    a history. A history's latency is the median of its calls: the worst case over inputs then measures what the
    input costs rather than the call the machine stalled. The slowest single call (that jitter included) is
    reported as well."""
    from mepoly_il.policies import load_policy

    policy = load_policy(checkpoint)
    if not hasattr(policy, "prior_dist"):
        raise UserError(f"--checkpoint {checkpoint}: not a MePoly stage-2 checkpoint (this table times MePoly)")
    if policy.obs_dim != load_shape(data):
        raise UserError(
            f"--data {data}: states have {load_shape(data)} dims, the checkpoint expects {policy.obs_dim}; "
            f"pass the dataset the checkpoint was trained on"
        )
    policy.eval()
    kinds = input_histories(data, policy.obs_horizon, count)
    rows_used: dict[str, dict[str, int]] = {}
    with torch.no_grad():
        for name, obs in kinds.items():
            used = {"base": 0, "zoomed": 0, "refined": 0}
            for i in range(len(obs)):  # how the sampler handled each input (untimed)
                dist = policy.prior_dist(policy.obs_normalizer.normalize(obs[i : i + 1])).base
                dist.sample()
                for k, v in getattr(dist, "sampler_rows", {"base": 1}).items():
                    used[k] += v
            rows_used[name] = used
        for obs in kinds.values():
            for i in range(min(warmup, len(obs))):
                policy.predict_action_chunk(obs[i : i + 1])
    per_call: dict[str, list[list[float]]] = {name: [[] for _ in range(count)] for name in kinds}
    for _ in range(calls):  # a history's calls are spread over the whole run, not back to back
        for i in range(count):
            for name, obs in kinds.items():
                t0 = time.perf_counter()
                policy.predict_action_chunk(obs[i : i + 1])
                per_call[name][i].append(time.perf_counter() - t0)
    rows = []
    for name, calls_of in per_call.items():
        t = [statistics.median(c) for c in calls_of]  # one latency per input history
        rows.append(
            {
                "kind": name,
                "median_ms": 1e3 * statistics.median(t),
                "p90_ms": 1e3 * sorted(t)[int(0.9 * (len(t) - 1))],
                "max_ms": 1e3 * max(t),
                "max_call_ms": 1e3 * max(max(c) for c in calls_of),
                "inputs": len(t),
                "calls_per_input": calls,
                "sampler_rows": rows_used[name],
            }
        )
    median = rows[0]["median_ms"]
    worst = max(r["max_ms"] for r in rows)
    worst_call = max(r["max_call_ms"] for r in rows)
    return {
        "checkpoint": str(checkpoint),
        "data": str(data),
        "policy_config": policy.policy_config.to_dict(),
        "rows": rows,
        "in_range_median_ms": median,
        "worst_ms": worst,
        "worst_over_median": worst / median,
        "worst_call_ms": worst_call,
        "worst_call_over_median": worst_call / median,
        "goal_worst_over_median_max": WORST_OVER_MEDIAN,
        "goal_met": worst / median <= WORST_OVER_MEDIAN,
    }


def load_shape(data: Path) -> int:
    """State width of a dataset."""
    from mepoly_il.data.zarr_io import read_info

    return int(read_info(data).obs_dim)


def format_table(result: dict[str, Any]) -> str:
    """Markdown table of medians plus the ratio lines."""
    p = result["params"]
    lines = [
        f"parameters: MePoly {p['mepoly_total']:,} (acting {p['mepoly_acting']:,}), "
        f"DP {p['dp']:,} (down_dims {p['dp_down_dims']}); scale={result['scale']} ({p['mepoly_config_source']}), "
        f"threads={result['machine']['torch_threads']}",
        "",
        "| device | policy | batch | median ms | min ms | max ms | n |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['device']} | {r['policy']} | {r['batch']} | {r['median_ms']:.2f} | {r['min_ms']:.2f} | "
            f"{r['max_ms']:.2f} | {r['repeats']} |"
        )
    lines.append("")
    for k, v in result["ratios"].items():
        goal = result["goals"]["mepoly_over_ddpm100_max" if "ddpm" in k else "mepoly_over_ddim_max"]
        ok = "meets" if result["goals_met"][k] else "MISSES"
        lines.append(f"{k}: {v:.4f} (1/{1 / v:.0f}); goal <= 1/{1 / goal:.0f}: {ok}")
    dep = result.get("input_dependence")
    if dep:
        lines += [
            "",
            f"trained checkpoint {dep['checkpoint']} on {dep['data']}, batch 1, cpu:",
            "",
            f"each history timed {dep['rows'][0]['calls_per_input']} times, its latency the median of its calls; "
            "the columns are over histories, except the slowest single call",
            "",
            "| inputs | median ms | p90 ms | max ms | slowest call ms | n | sampler rows (base/zoomed/refined) |",
            "|---|---:|---:|---:|---:|---:|---|",
        ]
        for r in dep["rows"]:
            u = r["sampler_rows"]
            lines.append(
                f"| {r['kind']} | {r['median_ms']:.2f} | {r['p90_ms']:.2f} | {r['max_ms']:.2f} | "
                f"{r['max_call_ms']:.2f} | {r['inputs']} | "
                f"{u.get('base', 0)}/{u.get('zoomed', 0)}/{u.get('refined', 0)} |"
            )
        ok = "meets" if dep["goal_met"] else "MISSES"
        lines.append(
            f"\nworst {dep['worst_ms']:.2f} ms = {dep['worst_over_median']:.2f} x the in-range median; "
            f"goal <= {dep['goal_worst_over_median_max']:g}x: {ok}\nslowest single call {dep['worst_call_ms']:.2f} ms "
            f"= {dep['worst_call_over_median']:.2f} x (OS jitter included)"
        )
    return "\n".join(lines)


def benchmark(
    *,
    batch: Sequence[int] = (1, 10),
    ddim_steps: int = 10,
    device: Literal["auto", "cpu", "cuda"] = "auto",
    scale: str = "paper",
    obs_dim: int = 35,
    act_dim: int = 4,
    horizons: tuple[int, int, int] = (2, 8, 16),
    warmup: int = 3,
    repeats: int = 20,
    ddpm_repeats: int = 5,
    threads: int | None = None,
    checkpoint: str | None = None,
    data: str | None = None,
    inputs: int = 32,
    input_calls: int = 5,
    quick: bool = False,
    out: str = "bench_latency.json",
    command: str = "mepoly-il bench latency",
) -> int:
    """Time every policy's ``predict_action_chunk``, print the table and write the JSON.

    Args:
        batch: batch sizes to time
        ddim_steps: k for the DP-DDIMk row
        device: auto (CPU, plus CUDA when available), cpu or cuda
        scale: MePoly size (DP is matched)
        obs_dim: observation width (PushCube-v1 state: 35)
        act_dim: action width (pd_ee_delta_pos: 4)
        horizons: obs, action and prediction horizons (To, Ta, T)
        warmup: untimed calls before timing (DDPM-100: 1)
        repeats: timed calls per MePoly/DDIM row
        ddpm_repeats: timed calls per DDPM-100 row (slow)
        threads: torch intra-op threads (default: torch's choice)
        checkpoint: trained MePoly stage-2 checkpoint for the input-dependence table (default: the frozen test
            checkpoint with its synthetic dataset)
        data: dataset (.zarr) the checkpoint was trained on: in-range histories and the states' spread
        inputs: observation histories per input kind (batch 1 each)
        input_calls: timed calls per history; a history's latency is the median of its calls
        quick: tiny models, batch 1, few repeats (smoke test)
        out: JSON output path
        command: the command line recorded in the JSON
    """
    batch = list(batch)
    if quick:
        scale, batch, repeats, ddpm_repeats, warmup = "quick", [1], 3, 1, 1
    if min(batch) < 1:
        raise UserError(f"--batch {batch}: batch sizes must be >= 1")
    if not 1 <= ddim_steps <= 100:
        raise UserError(f"--ddim-steps {ddim_steps}: must be in [1, 100] (DP trains with 100 steps)")
    if (checkpoint is None) != (data is None):
        raise UserError("--checkpoint and --data go together: the trained checkpoint and the dataset it learned from")
    if inputs < 1:
        raise UserError(f"--inputs {inputs}: need at least 1 history per input kind")
    if input_calls < 1:
        raise UserError(f"--input-calls {input_calls}: need at least 1 timed call per history")
    for flag, path in (("--checkpoint", checkpoint), ("--data", data)):
        if path is not None and not Path(path).exists():
            raise UserError(f"{flag} {path}: no such file or directory")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is visible; use --device cpu")
    devices = ["cpu", "cuda"] if device == "auto" and torch.cuda.is_available() else [device]
    devices = ["cpu"] if devices == ["auto"] else devices
    if threads:
        torch.set_num_threads(threads)
    try:
        from mepoly_il.policies.mepoly.policy import MePolyPolicy  # noqa: F401
    except ImportError as err:
        raise UserError(f"MePoly policy is not importable ({err}); this benchmark compares MePoly with DP") from None
    result = run(
        batch,
        ddim_steps,
        devices,
        scale,
        obs_dim,
        act_dim,
        tuple(horizons),
        warmup,
        repeats,
        ddpm_repeats,
    )
    result["input_dependence"] = _trained(
        checkpoint, data, 4 if quick else inputs, 1 if quick else warmup, 2 if quick else input_calls
    )
    result["command"] = command
    print(format_table(result))
    from mepoly_il.utils import write_json_atomic

    write_json_atomic(out, result)
    print(f"\nwrote {out}", file=sys.stderr)
    return 0


def _trained(checkpoint: str | None, data: str | None, inputs: int, warmup: int, calls: int) -> dict[str, Any] | None:
    """The input-dependence table for ``checkpoint``, or for the frozen test checkpoint when none is given (then on
    the synthetic dataset it was trained on, rebuilt in a temporary folder); None when neither is available."""
    if checkpoint is not None and data is not None:
        return input_dependence(Path(checkpoint), Path(data), inputs, warmup, calls)
    if not FROZEN.is_file():
        return None
    import tempfile

    from mepoly_il.data.synthetic import make_synthetic_dataset

    with tempfile.TemporaryDirectory() as tmp:
        # the frozen checkpoints were trained on this deterministic dataset (tests/test_policies_compat.py)
        path = make_synthetic_dataset(Path(tmp) / "syn.zarr", num_episodes=6, obs_dim=5, act_dim=3)
        return input_dependence(FROZEN, path, inputs, warmup, calls)
