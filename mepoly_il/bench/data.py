"""`mepoly-il bench data`: demo generation and conversion throughput, per number of workers, side by side.

For each ``--workers`` value it runs the real pipeline (``generate`` then ``convert`` to pd_ee_delta_pos + state)
on ``--num-demos`` demos from seed 0, and reports demos/s for each step, where the time goes (worker start-up,
motion planning + stepping, recording, scene reset, replay, writing), and two projections for 1000 demos (goal:
generate + convert 1000 PushCube demos in <= 180 s on 2 cores): one from the measured wall times (which, on a shared
machine, mostly measure the other load) and one from the workers' CPU seconds, assuming ``workers`` idle cores.

    mepoly-il bench data                                   # PushCube-v1, 100 demos, workers 1 and 2
    mepoly-il bench data --num-demos 20 --workers 2        # quick
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

GOAL_DEMOS, GOAL_SECONDS = 1000, 180.0


def _run(env_id: str, n: int, workers: int, root: Path, quiet: bool) -> dict:
    from mepoly_il.data.maniskill import convert, generate

    t0 = time.perf_counter()
    gen = generate(env_id, n, root / f"raw_w{workers}", seed=0, workers=workers, show_progress=not quiet)
    t1 = time.perf_counter()
    conv = convert(gen.h5, root / f"w{workers}.zarr", workers=workers, show_progress=not quiet)
    t2 = time.perf_counter()
    gen_s, conv_s = t1 - t0, t2 - t1
    # Start-up costs are paid once per run; the per-demo rate of the loops is what scales to 1000 demos.
    gen_fixed = gen.timings.get("start_workers", 0.0) + gen.timings.get("close_workers", 0.0)
    conv_fixed = conv.timings.get("start_workers", 0.0) + conv.timings.get("close_workers", 0.0)
    gen_per_demo = (gen_s - gen_fixed) / n
    conv_per_demo = (conv_s - conv_fixed) / n
    projected = gen_fixed + conv_fixed + GOAL_DEMOS * (gen_per_demo + conv_per_demo)
    # Wall times on a shared machine mostly measure the other load; the workers' CPU seconds much less so.
    # Projection for `workers` idle cores: start-up CPU plus per-demo CPU, spread over the workers.
    cpu_gen = gen.timings.get("workers_cpu", 0.0) / n
    cpu_conv = conv.timings.get("workers_cpu", 0.0) / n
    init_cpu = gen.timings.get("workers_init_cpu", 0.0) + conv.timings.get("workers_init_cpu", 0.0)
    projected_cpu = (init_cpu + GOAL_DEMOS * (cpu_gen + cpu_conv)) / workers
    return {
        "workers": workers,
        "num_demos": n,
        "generate_s": gen_s,
        "convert_s": conv_s,
        "generate_demos_per_s": n / gen_s,
        "convert_demos_per_s": n / conv_s,
        "seeds_tried": len(gen.seeds) + len(gen.failed_seeds),
        "kept_after_convert": conv.num_kept,
        "mean_length": sum(gen.lengths) / len(gen.lengths),
        "generate_timings": gen.timings,
        "convert_timings": conv.timings,
        "projected_1000_s": projected,
        "cpu_s_per_demo": {"generate": cpu_gen, "convert": cpu_conv},
        "workers_init_cpu_s": init_cpu,
        "projected_1000_idle_cores_s": projected_cpu,
    }


def benchmark(
    *,
    env_id: str = "PushCube-v1",
    num_demos: int = 100,
    workers: Sequence[int] = (1, 2),
    out: str = "bench_data.json",
    keep: str | None = None,
    quiet: bool = False,
) -> int:
    """Generate + convert ``num_demos`` demos once per worker count, print the table and write the JSON.

    Args:
        env_id: ManiSkill task whose demos are generated
        num_demos: demos per run, from seed 0
        workers: worker counts to compare, one run each
        out: JSON output path
        keep: keep the generated files in this directory (default: a temp dir)
        quiet: no progress bars
    """
    rows = []
    with tempfile.TemporaryDirectory(prefix="mepoly-bench-data-") as tmp:
        root = Path(keep) if keep else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        for w in workers:
            rows.append(_run(env_id, num_demos, w, root, quiet))

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\n{env_id}, {num_demos} demos from seed 0, cpu_count={os.cpu_count()}, load average now {load}")
    print(
        f"{'workers':>7} {'gen s':>7} {'gen demos/s':>11} {'conv s':>7} {'conv demos/s':>12} "
        f"{'CPU s/demo gen+conv':>20} {'1000 demos: wall proj.':>22} {'idle-core proj.':>16}"
    )
    for r in rows:
        cpu = r["cpu_s_per_demo"]
        print(
            f"{r['workers']:>7} {r['generate_s']:>7.1f} {r['generate_demos_per_s']:>11.2f} {r['convert_s']:>7.1f} "
            f"{r['convert_demos_per_s']:>12.2f} {cpu['generate']:>9.3f} + {cpu['convert']:<8.3f} "
            f"{r['projected_1000_s']:>20.0f} s {r['projected_1000_idle_cores_s']:>14.0f} s"
        )
    print("\nwhere the time goes (seconds; workers_* are summed over workers, *_cpu are CPU seconds):")
    for r in rows:
        g = {k: round(v, 1) for k, v in r["generate_timings"].items()}
        c = {k: round(v, 1) for k, v in r["convert_timings"].items()}
        print(f"  workers={r['workers']}  generate {g}")
        print(f"  workers={r['workers']}  convert  {c}")
    best = min(rows, key=lambda r: r["projected_1000_idle_cores_s"])
    verdict = "meets" if best["projected_1000_idle_cores_s"] <= GOAL_SECONDS else "misses"
    print(
        f"\ngoal: {GOAL_DEMOS} demos generated + converted in <= {GOAL_SECONDS:.0f} s on 2 cores. Projection from CPU "
        f"seconds (idle cores): {best['projected_1000_idle_cores_s']:.0f} s with {best['workers']} workers "
        f"({verdict} it); from wall time at this load: {min(r['projected_1000_s'] for r in rows):.0f} s"
    )
    result = {
        "bench": "data",
        "env_id": env_id,
        "num_demos": num_demos,
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "python": sys.version.split()[0]},
        "load_avg_at_end": os.getloadavg(),
        "rows": rows,
        "goal": {
            "demos": GOAL_DEMOS,
            "seconds": GOAL_SECONDS,
            "best_idle_core_projection_s": best["projected_1000_idle_cores_s"],
            "best_wall_projection_s": min(r["projected_1000_s"] for r in rows),
        },
    }
    from mepoly_il.utils import write_json_atomic

    write_json_atomic(out, result)
    print(f"wrote {out}", file=sys.stderr)
    return 0
