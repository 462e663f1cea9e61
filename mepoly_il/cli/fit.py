"""`mepoly-il fit {stage1,stage2,dp} [LightningCLI args]`: training through LightningCLI.

The dataset (``--data.path``) fixes the policy's shape: ``data.obs_dim``, ``data.act_dim`` and the three horizons
(from the dataset's task in :mod:`mepoly_il.tasks` unless ``--data.*_horizon`` overrides them) are linked into
``model.policy`` when the DataModule is built, so configs hold no task facts.
"""

from __future__ import annotations

import importlib
import sys

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


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: mepoly-il fit {stage1,stage2,dp} --config FILE [--section.key value ...]\n")
        for name, (_, desc) in MODELS.items():
            print(f"  {name:<7} {desc}")
        print("\nextra flags: --print_config, --ckpt_path PATH (resume), --trainer.fast_dev_run true")
        return 0
    stage = argv[0]
    if stage not in MODELS:
        from mepoly_il.errors import UserError

        raise UserError(f"unknown fit target {stage!r}; choose one of: {', '.join(MODELS)}")
    from lightning.pytorch.cli import LightningCLI

    from mepoly_il.data.datamodule import DemoDataModule

    model_cls = _load(MODELS[stage][0])

    class _CLI(LightningCLI):
        def add_arguments_to_parser(self, parser) -> None:  # noqa: D401
            from mepoly_il.policies.base import PolicyShape

            for key in PolicyShape.SHAPE_FIELDS:
                parser.link_arguments(f"data.{key}", f"model.policy.{key}", apply_on="instantiate")

        def before_instantiate_classes(self) -> None:
            # The configs hold no task facts, so no per-task output folder either: default to
            # checkpoints/<stage>/<dataset name> rather than Lightning's current directory.
            cfg = self.config[self.subcommand] if self.subcommand else self.config
            if cfg.trainer.default_root_dir is None and cfg.data.path:
                from pathlib import Path

                cfg.trainer.default_root_dir = str(Path("checkpoints") / stage / Path(cfg.data.path).stem)
                print(f"# trainer.default_root_dir: {cfg.trainer.default_root_dir}", file=sys.stderr)

        def parse_arguments(self, parser, args) -> None:
            # --print_config exits inside parsing; first report the model size to stderr (stdout stays valid YAML)
            # for models that can count their parameters from a parsed config (classmethod count_parameters).
            argv = list(sys.argv[1:] if args is None else args)
            if hasattr(model_cls, "count_parameters") and any(a.split("=")[0] == "--print_config" for a in argv):
                _print_parameter_count(parser, [a for a in argv if a.split("=")[0] != "--print_config"], model_cls)
            super().parse_arguments(parser, args)

    # The arguments go to LightningCLI explicitly and sys.argv stays as launched: DDP's launcher starts every
    # extra rank by re-running sys.argv, which must be the same `mepoly-il fit <stage> ...` command.
    import warnings

    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    _CLI(
        model_cls,
        DemoDataModule,
        args=["fit", *argv[1:]],
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"prog": f"mepoly-il fit {stage}", "fit": {"default_env": False}},
    )
    return 0
