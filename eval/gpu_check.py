"""GPU readiness check (<= 8 minutes on one CUDA GPU): the parts of mepoly-il that run differently on a GPU.

1. **core**: the polynomial family (dim 3, order 8) on CUDA in float32 against a float64 CPU reference: log Z and
   entropy, the gradient of ``log Z + entropy`` with respect to the natural parameters, and the moments of CUDA
   samples against the quadrature mean (z-scores).
2. **train**: training steps of Diffusion Policy, MePoly stage 1 and stage 2 at paper scale (configs/*/paper.yaml,
   batch 1024) through the same Lightning code as ``mepoly-il bench train``, with steps/s.
3. **eval**: a MePoly policy (random weights unless ``--checkpoint`` is given) rolled out in ManiSkill's GPU
   simulator (``physx_cuda``) with a few parallel envs, with env steps/s.

``--dry`` runs the same code on CPU with tiny sizes and ``physx_cpu`` (tests run it). Writes a JSON and prints a
table; exit status 1 when a core comparison misses its tolerance.

    python eval/gpu_check.py --out eval/results/gpu_check/gpu_check.json        # on a CUDA machine
    python eval/gpu_check.py --dry --out /tmp/gpu_check_dry.json                # anywhere, ~1 minute on 2 cores
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from mepoly_il.bench.machine import machine_info
from mepoly_il.errors import UserError

#: Tolerances of the CUDA float32 core against the CPU float64 reference (float32 rounding over a 24^3 grid).
TOL = {"log_z": 1e-4, "entropy": 1e-3, "grad_rel": 1e-3, "sample_mean_z": 5.0}


def check_core(device: str, rows: int, samples: int, seed: int = 0) -> dict[str, Any]:
    """Core on ``device`` (float32) against CPU float64: max differences and sample-mean z-scores."""
    from mepoly_il.poly import PolynomialFamily

    fam = PolynomialFamily(dim=3, order=8, clip=5.0, soft_clip=True)
    g = torch.Generator().manual_seed(seed)
    lam = torch.randn(rows, fam.num_features, generator=g, dtype=torch.float64) * 0.5

    def stats(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = x.clone().requires_grad_(True)
        d = fam(x)
        (grad,) = torch.autograd.grad((d.log_partition + d.entropy()).sum(), x)
        return d.log_partition.detach(), d.entropy().detach(), grad, d.mean.detach()

    z_ref, h_ref, g_ref, mean_ref = stats(lam)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    lam_dev = lam.float().to(device)
    stats(lam_dev)  # warm-up (tables, kernels)
    sync()
    t0 = time.perf_counter()
    z, h, grad, _ = stats(lam_dev)
    sync()
    t_stats = time.perf_counter() - t0
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    x = fam(lam_dev).sample((samples,)).double().cpu()  # (samples, rows, 3)
    sync()
    t_sample = time.perf_counter() - t0
    se = x.std(0) / math.sqrt(samples)
    mean_z = ((x.mean(0) - mean_ref) / se.clamp_min(1e-12)).abs()
    out = {
        "device": device,
        "rows": rows,
        "samples_per_row": samples,
        "max_abs_log_z": (z.double().cpu() - z_ref).abs().max().item(),
        "max_abs_entropy": (h.double().cpu() - h_ref).abs().max().item(),
        "max_rel_grad": ((grad.double().cpu() - g_ref).norm(dim=-1) / g_ref.norm(dim=-1).clamp_min(1e-12)).max().item(),
        "max_sample_mean_z": mean_z.max().item(),
        "seconds_log_z_entropy_grad": t_stats,
        "seconds_sample": t_sample,
    }
    out["ok"] = (
        out["max_abs_log_z"] <= TOL["log_z"]
        and out["max_abs_entropy"] <= TOL["entropy"]
        and out["max_rel_grad"] <= TOL["grad_rel"]
        and out["max_sample_mean_z"] <= TOL["sample_mean_z"]
    )
    return out


def check_train(scale: str, steps: int, batch_size: int | None) -> dict[str, Any]:
    """DP, stage 1 and stage 2 training steps (``mepoly_il.bench.train``): steps/s per model."""
    from mepoly_il.bench.train import REPO
    from mepoly_il.bench.train import run as train_run

    res = train_run("PushCube-v1", scale, steps, 1, batch_size, REPO / "configs")
    rows = {
        name: {"batch_size": r["batch_size"], "steps_per_s": r["steps_per_s"], "params": r["params"]}
        for name, r in res["rows"].items()
    }
    return {
        "scale": scale,
        "rows": rows,
        "ratio_stage1_plus_stage2_over_dp": res["ratio_stage1_plus_stage2_over_dp_per_step"],
    }


def check_eval(
    sim_backend: str, num_envs: int, episodes: int, max_steps: int, checkpoint: str | None
) -> dict[str, Any]:
    """Roll a MePoly policy out in ManiSkill with ``num_envs`` parallel envs on ``sim_backend``."""
    from mepoly_il.eval.rollout import env_spec_for, evaluate_policy
    from mepoly_il.tasks import get_task

    device = "cuda" if sim_backend == "physx_cuda" else "cpu"
    if checkpoint:
        from mepoly_il.policies import load_policy

        policy = load_policy(checkpoint, device=device)
        meta = policy.meta["dataset"]
    else:
        from mepoly_il.bench.latency import mepoly_size
        from mepoly_il.policies.mepoly.policy import MePolyPolicy

        task = get_task("PushCube-v1")
        torch.manual_seed(0)
        size, _ = mepoly_size("cpu")
        policy = MePolyPolicy(task.obs_dim, task.act_dim, **task.horizons(), **size).to(device)
        meta = {"env_id": task.env_id, "control_mode": task.control_mode, "obs_mode": "state"}
    spec = env_spec_for(meta, max_episode_steps=max_steps, sim_backend=sim_backend, reconfiguration_freq=0)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = evaluate_policy(policy, spec, seeds=[2_000_000 + i for i in range(episodes)], num_envs=num_envs)
    agg = res["aggregated"]
    return {
        "sim_backend": sim_backend,
        "policy": checkpoint or "MePoly, random weights (PushCube-v1 shapes, cpu scale)",
        "num_envs": num_envs,
        "episodes": episodes,
        "max_episode_steps": max_steps,
        "success_once": agg.get("success_once"),
        "env_steps": agg.get("env_steps"),
        "env_steps_per_sec": agg.get("env_steps_per_sec"),
        "seconds": time.perf_counter() - t0,
    }


def format_table(res: dict[str, Any]) -> str:
    c = res["core"]
    lines = [
        f"gpu_check ({'dry: CPU, tiny sizes' if res['dry'] else res['machine']['cuda']})",
        "",
        "| part | result |",
        "|---|---|",
        f"| core {c['device']} vs CPU float64 | log Z {c['max_abs_log_z']:.1e}, entropy {c['max_abs_entropy']:.1e}, "
        f"grad rel {c['max_rel_grad']:.1e}, sample-mean |z| {c['max_sample_mean_z']:.2f}: "
        f"{'ok' if c['ok'] else 'FAILED'} |",
    ]
    t = res.get("train")
    if t:
        per = ", ".join(f"{k} {v['steps_per_s']:.1f} steps/s (batch {v['batch_size']})" for k, v in t["rows"].items())
        lines.append(
            f"| train ({t['scale']}) | {per}; (stage1+stage2)/DP per step {t['ratio_stage1_plus_stage2_over_dp']:.2f} |"
        )
    e = res.get("eval")
    if e:
        lines.append(
            f"| eval {e['sim_backend']} x{e['num_envs']} | {e['episodes']} episodes of {e['max_episode_steps']} steps, "
            f"{e['env_steps_per_sec']} env steps/s, success_once {e['success_once']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry", action="store_true", help="CPU, tiny sizes, physx_cpu (what the tests run)")
    p.add_argument("--checkpoint", default=None, help="a trained PushCube-v1 checkpoint for the eval part")
    p.add_argument("--num-envs", type=int, default=None, help="parallel envs (default: 16 on GPU, 1 dry)")
    p.add_argument("--skip", nargs="*", default=[], choices=["train", "eval"], help="parts to leave out")
    p.add_argument("--out", default="gpu_check.json", help="JSON output path")
    args = p.parse_args(argv)
    try:
        if not args.dry and not torch.cuda.is_available():
            raise UserError("no CUDA device is visible; run on a GPU machine or pass --dry")
        dry = args.dry
        result: dict[str, Any] = {"dry": dry, "machine": machine_info(), "tolerances": TOL}
        result["core"] = check_core("cpu" if dry else "cuda", rows=4 if dry else 256, samples=500 if dry else 4000)
        if "train" not in args.skip:
            result["train"] = check_train(
                "cpu" if dry else "paper", steps=1 if dry else 10, batch_size=8 if dry else None
            )
        if "eval" not in args.skip:
            result["eval"] = check_eval(
                "physx_cpu" if dry else "physx_cuda",
                num_envs=args.num_envs or (1 if dry else 16),
                episodes=1 if dry else 32,
                max_steps=5 if dry else 100,
                checkpoint=args.checkpoint,
            )
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_table(result))
    from mepoly_il.utils import write_json_atomic

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, result)
    print(f"\nwrote {args.out}", file=sys.stderr)
    return 0 if result["core"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
