"""`mepoly-il` command line: the only place that wires commands to code.

Each command group lives in its own module (``mepoly_il/cli/<group>.py``) exposing ``main(argv) -> int``; modules are
imported lazily so ``mepoly-il --help`` stays fast and a broken optional dependency only affects its own group.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from mepoly_il import __version__

GROUPS: dict[str, tuple[str, str]] = {
    "data": ("mepoly_il.cli.data", "ManiSkill demos -> zarr datasets: generate, convert, prepare, inspect, export"),
    "fit": ("mepoly_il.cli.fit", "train with LightningCLI: stage1 (VAE), stage2 (polynomial prior), dp (baseline)"),
    "eval": ("mepoly_il.cli.eval", "roll policies out in ManiSkill; summarize peak success across seeds"),
    "rl": ("mepoly_il.cli.rl", "PPO, SAC (Gaussian/mixture-MRP/MePoly), S2AC, RPG: bandits, Smooth World, multi-goal"),
    "bench": ("mepoly_il.cli.bench", "performance benchmarks (ratios against a baseline in the same run)"),
    "demo": ("mepoly_il.cli.demo", "the main job behind `make demo`"),
}


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one :class:`UserError` line (the CLI prints ``error: ...``, exit 2),
    naming the problem and where the usage is, instead of the usage block followed by the error."""

    def error(self, message: str):  # noqa: D102 (argparse's hook)
        from mepoly_il.errors import UserError

        raise UserError(f"{message} (see `{self.prog} --help`)")


def _usage() -> str:
    lines = [
        f"mepoly-il {__version__}",
        "",
        "usage: mepoly-il GROUP [COMMAND] [ARGS...]   (mepoly-il GROUP --help for details)",
        "",
        "command groups:",
    ]
    lines += [f"  {name:<7} {desc}" for name, (_, desc) in GROUPS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from mepoly_il.errors import UserError

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        print(__version__)
        return 0
    group = argv[0]
    if group not in GROUPS:
        print(f"mepoly-il: error: unknown command group {group!r}; choose one of: {', '.join(GROUPS)}", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(GROUPS[group][0])
        return int(module.main(argv[1:]) or 0)
    except UserError as err:
        print(f"mepoly-il {group}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mepoly-il: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
