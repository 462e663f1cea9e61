"""`mepoly-il bench NAME [ARGS]`: performance benchmarks.

Each benchmark is a module ``mepoly_il.bench.<name>`` whose ``benchmark(**options)`` measures ratios against a
baseline in the same run, prints a table and writes JSON. This module builds each one's command line from that
function: the flags, their defaults and their help come from its signature and docstring (``--num-demos`` for
``num_demos``); :data:`FLAGS` only adds what a signature cannot say (choices, list arity, metavars).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import typing

BENCHES = {
    "poly": "polynomial core vs the paper's reference quadrature (time, accuracy)",
    "data": "demo generation and conversion throughput",
    "train": "training steps/s: MePoly stage 1 + 2 vs Diffusion Policy",
    "latency": "action-chunk latency: MePoly vs DP (DDPM / DDIM)",
    "eval": "rollout env steps/s with a policy vs raw simulator stepping",
    "rl": "PPO iteration time per head; MePoly cost vs order and grid",
}

#: Extra argparse settings per benchmark and parameter (everything else is read from ``benchmark``'s signature; a
#: ``Literal[...]`` annotation gives the choices). A callable value is called with the benchmark's module.
FLAGS: dict[str, dict[str, dict]] = {
    "latency": {
        "scale": {"choices": lambda module: sorted(module.MEPOLY_SCALES)},
        "horizons": {"nargs": 3, "metavar": ("TO", "TA", "T")},
    },
}
#: Parameters that are not flags: the CLI fills them in.
_NOT_FLAGS = {"command"}


def _flag_kind(annotation) -> tuple[type, bool, list | None]:
    """(argparse type, takes several values, choices) of a parameter annotation such as ``int``, ``int | None``,
    ``Sequence[int]``, ``tuple[int, int, int]`` or ``Literal["a", "b"]``."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return type(args[0]), False, list(args)
    if origin in (list, tuple) or (origin is not None and getattr(origin, "__name__", "") == "Sequence"):
        return args[0], True, None
    if args:  # X | None
        return _flag_kind(args[0])
    return annotation, False, None


def build_parser(name: str, fn) -> argparse.ArgumentParser:
    """An argparse parser for ``fn`` (keyword-only parameters with defaults, documented in an ``Args:`` block)."""
    import docstring_parser

    doc = docstring_parser.parse(fn.__doc__ or "")
    helps = {p.arg_name: (p.description or "").replace("\n", " ") for p in doc.params}
    module = inspect.getmodule(fn)
    p = argparse.ArgumentParser(
        prog=f"mepoly-il bench {name}",
        description=module.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    hints = typing.get_type_hints(fn)
    for param in inspect.signature(fn).parameters.values():
        if param.name in _NOT_FLAGS:
            continue
        flag = "--" + param.name.replace("_", "-")
        kw = {"dest": param.name, "default": param.default, "help": helps.get(param.name, "")}
        typ, several, choices = _flag_kind(hints[param.name])
        if typ is bool:
            kw["action"] = "store_true"
        else:
            kw["type"] = typ
            if several:
                kw["nargs"] = "+"
                kw["default"] = list(param.default)
            if choices:
                kw["choices"] = choices
        for key, value in FLAGS.get(name, {}).get(param.name, {}).items():
            kw[key] = value(module) if callable(value) else value
        if kw["default"] is not None and kw.get("action") != "store_true":
            kw["help"] += f" (default: {' '.join(map(str, kw['default'])) if several else kw['default']})"
        p.add_argument(flag, **kw)
    return p


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
    module = importlib.import_module(f"mepoly_il.bench.{name}")
    fn = module.benchmark
    kwargs = vars(build_parser(name, fn).parse_args(argv[1:]))
    if "command" in inspect.signature(fn).parameters:
        kwargs["command"] = f"mepoly-il bench {name} " + " ".join(argv[1:])
    return int(fn(**kwargs) or 0)
