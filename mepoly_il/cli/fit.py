"""`mepoly-il fit {stage1,stage2,dp} [LightningCLI args]`: training through LightningCLI.

The dataset (``--data.path``) fixes the policy's shape: ``data.obs_dim``, ``data.act_dim`` and the three horizons
(from the dataset's task in :mod:`mepoly_il.tasks` unless ``--data.*_horizon`` overrides them) are linked into
``model.policy`` when the DataModule is built, so configs hold no task facts.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import shutil
import sys
import uuid
from pathlib import Path

from mepoly_il.errors import UserError

MODELS = {
    "stage1": ("mepoly_il.policies.mepoly.lightning:Stage1Module", "MePoly stage 1: trajectory VAE"),
    "stage2": ("mepoly_il.policies.mepoly.lightning:Stage2Module", "MePoly stage 2: polynomial latent prior"),
    "dp": ("mepoly_il.policies.diffusion.lightning:DiffusionModule", "Diffusion Policy baseline (diffusers)"),
}


def _load(spec: str):
    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


def _print_parameter_count(parser, argv: list[str], model_cls) -> None:
    """Best effort: parse ``argv`` without --print_config and print ``model_cls.count_parameters(...)`` to stderr."""
    import contextlib
    import io

    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            cfg = parser.parse_args(argv)
            sub = cfg[cfg.subcommand]
            line = model_cls.count_parameters(sub.model.as_dict(), sub.data.as_dict())
        print(f"# {line}", file=sys.stderr)
    except (Exception, SystemExit) as err:  # the real parse below reports config errors properly
        reason = str(err).splitlines()[0][:200] if str(err) else ""
        print(f"# parameter count unavailable ({type(err).__name__}: {reason})", file=sys.stderr)


#: ``--ckpt_path`` values that Lightning resolves itself (no file to check beforehand).
LIGHTNING_CKPT_ALIASES = ("last", "best", "hpc", "registry")
#: The folders a run writes under ``trainer.default_root_dir`` (see policies/run_layout.py).
RUN_SUBDIRS = ("checkpoints", "lightning_logs")


def check_resume_checkpoint(path: str, stage: str) -> None:
    """UserError unless ``path`` is a readable mepoly-il checkpoint of ``stage`` with finite weights."""
    from mepoly_il.policies import read_checkpoint

    info = read_checkpoint(path)["mepoly_il"]  # missing, empty, text, truncated, foreign, NaN, future format
    kind = info.get("policy")
    written_by = "dp" if kind == "dp" else f"stage{info.get('stage')}"
    if written_by != stage:
        raise UserError(
            f"--ckpt_path {path}: a checkpoint of `fit {written_by}`, not of `fit {stage}`; resume it there"
        )


def prepare_run_dir(root: Path, ckpt_path: str | None, overwrite: bool) -> None:
    """Refuse a run folder holding another run's checkpoints, unless resuming from inside it or ``overwrite``.

    With ``overwrite`` the earlier run's ``checkpoints/`` and ``lightning_logs/`` are first renamed aside (one atomic
    rename each) and then deleted, so the new run never sits beside the old one's files.
    """
    old = sorted(p.name for p in (root / "checkpoints").glob("*.ckpt")) if (root / "checkpoints").is_dir() else []
    if not old:
        return
    if ckpt_path is not None:
        ckpt = Path(ckpt_path).resolve() if ckpt_path not in LIGHTNING_CKPT_ALIASES else root.resolve()
        if ckpt == root.resolve() or root.resolve() in ckpt.parents:
            return  # resuming this run, in place
    if not overwrite:
        raise UserError(
            f"--trainer.default_root_dir {root}: already holds the checkpoints of another run ({', '.join(old[:3])}"
            f"{', ...' if len(old) > 3 else ''}); resume it with --ckpt_path {root / 'checkpoints' / 'last.ckpt'}, "
            "pass --overwrite to replace it, or pick a new folder"
        )
    trash = root / f".overwritten-{uuid.uuid4().hex[:8]}"
    trash.mkdir()
    for name in RUN_SUBDIRS:
        if (root / name).exists():
            os.replace(root / name, trash / name)
    shutil.rmtree(trash)
    print(f"# --overwrite: removed the earlier run's {' and '.join(RUN_SUBDIRS)} in {root}", file=sys.stderr)


class _TrainerValueError(Exception):
    """A ValueError raised while the Trainer is built from the command line's settings (a user mistake)."""


class HeldLogs:
    """Hold Lightning's log records (e.g. "Seed set to 0", the accelerator lines) while a run is being set up: a
    setup that fails then prints only its one error line; one that succeeds replays them in order."""

    NAMES = ("lightning.fabric", "lightning.pytorch")

    def __init__(self) -> None:
        self.records: list[logging.LogRecord] = []
        self.saved: list[tuple[logging.Logger, list[logging.Handler], bool]] | None = None

    def start(self) -> None:
        if self.saved is not None:
            return
        held = self.records

        class _Hold(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                held.append(record)

        self.saved = []
        for name in self.NAMES:
            logger = logging.getLogger(name)
            self.saved.append((logger, logger.handlers[:], logger.propagate))
            logger.handlers, logger.propagate = [_Hold()], False

    def stop(self, replay: bool) -> None:
        if self.saved is None:
            return
        for logger, handlers, propagate in self.saved:
            logger.handlers, logger.propagate = handlers, propagate
        self.saved = None
        records, self.records = self.records, []
        for record in records if replay else ():
            logging.getLogger(record.name).handle(record)


def one_line_parse_errors(parse, stage: str) -> None:
    """Run ``parse()``; a config error (jsonargparse prints the usage, then exits 2) becomes one UserError line."""
    buf = io.StringIO()
    try:
        with contextlib.redirect_stderr(buf):
            parse()
    except SystemExit as err:
        if not err.code:  # --help / --print_config: show what they wrote
            sys.stderr.write(buf.getvalue())
            raise
        lines = [ln.strip() for ln in buf.getvalue().splitlines() if ln.strip()]
        errors = [ln for ln in lines if "error:" in ln]
        reason = errors[-1].split("error:", 1)[1].strip() if errors else (lines[-1] if lines else "invalid arguments")
        raise UserError(f"{reason} (see `mepoly-il fit {stage} --help`)") from None
    sys.stderr.write(buf.getvalue())


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: mepoly-il fit {stage1,stage2,dp} --config FILE [--section.key value ...]\n")
        for name, (_, desc) in MODELS.items():
            print(f"  {name:<7} {desc}")
        print(
            "\nextra flags: --print_config, --ckpt_path PATH (resume), --trainer.fast_dev_run true,\n"
            "  --overwrite (replace the checkpoints and logs of an earlier run in --trainer.default_root_dir)"
        )
        return 0
    stage = argv[0]
    if stage not in MODELS:
        raise UserError(f"unknown fit target {stage!r}; choose one of: {', '.join(MODELS)}")
    from lightning.pytorch.cli import LightningCLI

    from mepoly_il.data.datamodule import DemoDataModule

    model_cls = _load(MODELS[stage][0])
    overwrite = "--overwrite" in argv
    argv = [a for a in argv if a != "--overwrite"]
    # LightningCLI reads the checkpoint while parsing (for its hyperparameters): check it before that.
    for i, arg in enumerate(argv):
        value = arg.split("=", 1)[1] if arg.startswith("--ckpt_path=") else None
        if arg == "--ckpt_path" and i + 1 < len(argv):
            value = argv[i + 1]
        if value is not None and value not in LIGHTNING_CKPT_ALIASES and value.lower() not in ("null", "none"):
            check_resume_checkpoint(value, stage)

    held = HeldLogs()

    class _CLI(LightningCLI):
        def _set_seed(self) -> None:
            held.start()  # until the classes are built: a config error is the only line printed
            super()._set_seed()

        def add_arguments_to_parser(self, parser) -> None:  # noqa: D401
            from mepoly_il.policies.base import PolicyShape

            for key in PolicyShape.SHAPE_FIELDS:
                parser.link_arguments(f"data.{key}", f"model.policy.{key}", apply_on="instantiate")

        def before_instantiate_classes(self) -> None:
            try:
                self._check_before_instantiating()
            except BaseException:
                held.stop(replay=False)
                raise

        def _check_before_instantiating(self) -> None:
            # The configs hold no task facts, so no per-task output folder either: default to
            # checkpoints/<stage>/<dataset name> rather than Lightning's current directory.
            cfg = self.config[self.subcommand] if self.subcommand else self.config
            if cfg.trainer.default_root_dir is None and cfg.data.path:
                cfg.trainer.default_root_dir = str(Path("checkpoints") / stage / Path(cfg.data.path).stem)
                print(f"# trainer.default_root_dir: {cfg.trainer.default_root_dir}", file=sys.stderr)
            accelerator = str(cfg.trainer.accelerator)
            if accelerator in ("gpu", "cuda"):
                import torch

                if not torch.cuda.is_available():
                    raise UserError(
                        f"--trainer.accelerator {accelerator}: CUDA is not available on this machine; "
                        "use --trainer.accelerator cpu"
                    )
            # Before the Trainer exists: a refused run must leave no lightning_logs/version_N behind.
            ckpt_path = cfg.get("ckpt_path")
            if ckpt_path is not None and ckpt_path not in LIGHTNING_CKPT_ALIASES:
                check_resume_checkpoint(ckpt_path, stage)
            if cfg.trainer.default_root_dir is not None:
                prepare_run_dir(Path(cfg.trainer.default_root_dir), ckpt_path, overwrite)

        def instantiate_classes(self) -> None:
            # Lightning reports a bad trainer setting (max_steps -5, accelerator gpu without one) as
            # MisconfigurationException while building the Trainer, before anything is written: one line.
            from lightning.fabric.utilities.exceptions import MisconfigurationException

            try:
                super().instantiate_classes()
            except (MisconfigurationException, _TrainerValueError) as err:
                held.stop(replay=False)
                raise UserError(f"{str(err).strip().splitlines()[0]} (see `mepoly-il fit {stage} --help`)") from None
            except BaseException:
                held.stop(replay=False)
                raise
            held.stop(replay=True)

        def instantiate_trainer(self, **kwargs):
            # Lightning reports an unknown accelerator, strategy or precision name as ValueError while building the
            # Trainer (before anything is written); only those are turned into one line.
            try:
                return super().instantiate_trainer(**kwargs)
            except ValueError as err:
                raise _TrainerValueError(str(err)) from None

        def parse_arguments(self, parser, args) -> None:
            # --print_config exits inside parsing; first report the model size to stderr (stdout stays valid YAML)
            # for models that can count their parameters from a parsed config (classmethod count_parameters).
            argv = list(sys.argv[1:] if args is None else args)
            if hasattr(model_cls, "count_parameters") and any(a.split("=")[0] == "--print_config" for a in argv):
                _print_parameter_count(parser, [a for a in argv if a.split("=")[0] != "--print_config"], model_cls)
            one_line_parse_errors(lambda: super(_CLI, self).parse_arguments(parser, args), stage)

    # The arguments go to LightningCLI explicitly and sys.argv stays as launched: DDP's launcher starts every
    # extra rank by re-running sys.argv, which must be the same `mepoly-il fit <stage> ...` command.
    import warnings

    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    try:
        _run_cli(_CLI, model_cls, DemoDataModule, argv, stage)
    finally:
        held.stop(replay=False)  # e.g. --print_config exits before the classes are built
    return 0


def _run_cli(cli_cls, model_cls, datamodule_cls, argv: list[str], stage: str) -> None:
    cli_cls(
        model_cls,
        datamodule_cls,
        args=["fit", *argv[1:]],
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"prog": f"mepoly-il fit {stage}", "fit": {"default_env": False}},
    )
