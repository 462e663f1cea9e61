"""`mepoly-il fit {stage1,stage2,dp} [LightningCLI args]`: training through LightningCLI.

The dataset (``--data.path``) fixes the observation/action dimensions, which are linked into the model when both are
instantiated; horizons are declared once under ``data`` and linked into the model at parse time.
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
            for key in ("obs_horizon", "act_horizon", "pred_horizon"):
                parser.link_arguments(f"data.{key}", f"model.{key}")
            parser.link_arguments("data.obs_dim", "model.obs_dim", apply_on="instantiate")
            parser.link_arguments("data.act_dim", "model.act_dim", apply_on="instantiate")

    # LightningCLI reads sys.argv; rewrite it so `--help` shows the right program name and no warning fires.
    sys.argv = [f"mepoly-il fit {stage}", "fit", *argv[1:]]
    _CLI(
        model_cls,
        DemoDataModule,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"fit": {"default_env": False}},
    )
    return 0
