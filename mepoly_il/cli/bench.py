"""`mepoly-il bench NAME [ARGS]`: performance benchmarks.

Each benchmark is a module ``mepoly_il.bench.<name>`` with ``main(argv) -> int`` that measures ratios against a
baseline in the same run, prints a table and writes JSON.
"""

from __future__ import annotations

import importlib
import importlib.util

BENCHES = {
    "poly": "polynomial core vs the paper's reference quadrature (time, accuracy)",
    "data": "demo generation and conversion throughput",
    "train": "training steps/s: MePoly stage 1 + 2 vs Diffusion Policy",
    "latency": "action-chunk latency: MePoly vs DP (DDPM / DDIM)",
    "eval": "rollout env steps/s with a policy vs raw simulator stepping",
    "rl": "PPO iteration time per head; MePoly cost vs order and grid",
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: mepoly-il bench NAME [ARGS...]   (mepoly-il bench NAME --help)\n\nbenchmarks:")
        for name, desc in BENCHES.items():
            built = importlib.util.find_spec(f"mepoly_il.bench.{name}") is not None
            print(f"  {name:<8} {desc}{'' if built else '  [not built yet]'}")
        return 0
    name = argv[0]
    if name not in BENCHES:
        from mepoly_il.errors import UserError

        raise UserError(f"unknown benchmark {name!r}; choose one of: {', '.join(BENCHES)}")
    if importlib.util.find_spec(f"mepoly_il.bench.{name}") is None:
        from mepoly_il.errors import UserError

        raise UserError(f"benchmark {name!r} is not built yet in this version")
    return int(importlib.import_module(f"mepoly_il.bench.{name}").main(argv[1:]) or 0)
