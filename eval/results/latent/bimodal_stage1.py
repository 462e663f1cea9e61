"""Stage 1 on a synthetic bimodal dataset: does the latent carry the two modes? (cheap CPU measurement)

    PYTHONPATH=. python eval/results/latent/bimodal_stage1.py --steps 300 --seed 0

Trains stage 1 at tiny width with each setting below and prints, on held-out episodes, ``latent_gain``
(reconstruction MSE with codes randomly permuted across the batch minus with the right ones), the code spread /
posterior noise ratio, and the share of decoded chunks near each mode when z is drawn from the aggregate posterior
(z ~ q(z | tau_i) for random training windows i, decoded with unrelated observations).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import lightning as L
import torch

from mepoly_il.data.datamodule import DemoDataModule
from mepoly_il.data.synthetic import make_bimodal_dataset
from mepoly_il.policies.mepoly.lightning import Stage1Module, derangement, latent_diagnostics

SHAPE = dict(obs_dim=5, act_dim=3, obs_horizon=2, act_horizon=4, pred_horizon=8)
NET = dict(d_model=32, n_heads=4, ff_dim=64, enc_layers=1, obs_layers=1, dec_layers=2, dropout=0.0)
SETTINGS = {
    "old default (batch stress on means)": dict(policy={}, module={}),
    "dataset stress": dict(policy={}, module=dict(iso_norm="dataset")),
    "dataset stress + floor 0.05 + embed": dict(
        policy=dict(min_posterior_std=0.05, latent_embed=True), module=dict(iso_norm="dataset")
    ),
    "dataset stress + floor + embed + recon sum": dict(
        policy=dict(min_posterior_std=0.05, latent_embed=True), module=dict(iso_norm="dataset", recon_reduction="sum")
    ),
}


@torch.no_grad()
def measure(module: Stage1Module, dm: DemoDataModule, seed: int) -> dict[str, float]:
    policy = module.policy.eval()
    val = dm.val_set[list(range(len(dm.val_set)))]
    mu, logvar = policy.encode(val["action"])
    memory = policy.memory(val["obs"])
    recon = (policy.decode(mu, memory) - val["action"]).pow(2).mean()
    perm = derangement(len(mu), seed)
    shuffled = (policy.decode(mu[perm], memory) - val["action"]).pow(2).mean()
    diag = {k: float(v) for k, v in latent_diagnostics(mu, logvar).items()}
    # Mode centroids from the data: split the training chunks by the sign of their projection on the main axis.
    train = dm.train_set[list(range(len(dm.train_set)))]
    flat = train["action"].flatten(1)
    axis = torch.linalg.svd(flat - flat.mean(0), full_matrices=False).Vh[0]
    side = (flat - flat.mean(0)) @ axis > 0
    c_pos, c_neg = flat[side].mean(0), flat[~side].mean(0)
    sep = float((c_pos - c_neg).norm())
    gen = torch.Generator().manual_seed(seed)
    n = 2000
    i = torch.randint(len(flat), (n,), generator=gen)
    j = torch.randint(len(flat), (n,), generator=gen)
    mu_t, logvar_t = policy.encode(train["action"][i])
    z = mu_t + torch.randn(mu_t.shape, generator=gen) * (0.5 * logvar_t).exp()
    chunks = policy.decode(z, policy.memory(train["obs"][j])).flatten(1)
    d_pos, d_neg = (chunks - c_pos).norm(dim=1), (chunks - c_neg).norm(dim=1)
    near = 0.25 * sep  # "near a mode": within a quarter of the distance between the two modes
    return {
        "recon": float(recon),
        "latent_gain": float(shuffled - recon),
        **diag,
        "share_mode_a": float((d_pos < near).float().mean()),
        "share_mode_b": float((d_neg < near).float().mean()),
        "share_between": float(((d_pos >= near) & (d_neg >= near)).float().mean()),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="*", type=int, help="indices of SETTINGS to run (default: all)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    path, _ = make_bimodal_dataset(tmp / "bimodal.zarr", num_episodes=24, length=24, seed=args.seed)
    results = {}
    for k, (name, setting) in enumerate(SETTINGS.items()):
        if args.only and k not in args.only:
            continue
        L.seed_everything(args.seed, verbose=False)
        dm = DemoDataModule(str(path), batch_size=64, val_ratio=0.25, obs_horizon=2, act_horizon=4, pred_horizon=8)
        module = Stage1Module(
            {**SHAPE, **NET, **setting["policy"]}, lr=1e-3, warmup_steps=20, latent_plot_samples=0,
            **setting["module"],
        )  # fmt: skip
        trainer = L.Trainer(
            max_steps=args.steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp), limit_val_batches=0,
            num_sanity_val_steps=0,
        )  # fmt: skip
        trainer.fit(module, dm)
        results[name] = measure(module, dm, args.seed)
        print(name, json.dumps({k: round(v, 4) for k, v in results[name].items()}), flush=True)


if __name__ == "__main__":
    main()
