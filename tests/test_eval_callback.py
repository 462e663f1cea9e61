"""EvalCallback: which weights it evaluates (EMA vs live), and a real in-process training run with evaluations."""

from __future__ import annotations

import csv
import json

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, EMAWeightAveraging
from lightning.pytorch.loggers import CSVLogger

from mepoly_il.data.datamodule import DemoDataModule
from mepoly_il.data.synthetic import make_synthetic_dataset
from mepoly_il.errors import UserError
from mepoly_il.eval.callback import EvalCallback, averaged_policy
from mepoly_il.policies.diffusion.lightning import DiffusionModule

TINY = {
    "down_dims": [8, 16, 32],
    "diffusion_step_embed_dim": 8,
    "inference": "ddim",
    "num_inference_steps": 2,
}


def _setup(path, obs_dim, act_dim, env_id):
    make_synthetic_dataset(path, num_episodes=3, obs_dim=obs_dim, act_dim=act_dim, env_id=env_id)
    dm = DemoDataModule(str(path), obs_horizon=2, act_horizon=4, pred_horizon=8, batch_size=8, val_ratio=0.0)
    shape = dict(obs_dim=dm.obs_dim, act_dim=dm.act_dim, obs_horizon=2, act_horizon=4, pred_horizon=8)
    model = DiffusionModule({**shape, **TINY}, warmup_steps=1, lr=1e-2)
    return dm, model


def _trainer(tmp_path, callbacks, max_steps):
    return pl.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        logger=CSVLogger(tmp_path, name="csv"),
        limit_val_batches=0,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
    )


class _Probe(Callback):
    """Records what averaged_policy hands out at every step, next to the live and averaged weights."""

    def __init__(self):
        self.seen = {}

    def on_train_batch_end(self, trainer, pl_module, *args):
        policy, kind = averaged_policy(trainer, pl_module)
        live = torch.cat([p.detach().flatten() for p in pl_module.policy.parameters()])
        chosen = torch.cat([p.detach().flatten() for p in policy.parameters()])
        self.seen[trainer.global_step] = (kind, policy is pl_module.policy, torch.equal(live, chosen))


def test_ema_weights_are_evaluated_once_they_exist(tmp_path):
    dm, model = _setup(tmp_path / "syn.zarr", 5, 3, "Synthetic-v0")
    probe = _Probe()
    # EMA starts updating at step index 2; the probe runs after the EMA callback in the same hook.
    ema = EMAWeightAveraging(decay=0.9, update_starting_at_step=2)
    _trainer(tmp_path, [ema, probe], max_steps=5).fit(model, datamodule=dm)
    assert probe.seen[1] == ("live", True, True)  # no EMA update yet: the live policy
    assert probe.seen[2] == ("live", True, True)
    kind, is_live, same = probe.seen[5]
    assert kind == "ema" and not is_live and not same  # a separate, averaged copy with different weights
    # It is the averaged copy's policy, with the trained normalizer bounds (not the identity defaults).
    policy, _ = averaged_policy(_trainer(tmp_path, [ema], 1), model)
    assert policy is ema._average_model.module.policy
    assert not torch.equal(policy.act_normalizer.lo, -torch.ones(3))


def test_callback_rejects_bad_period():
    with pytest.raises(UserError, match="every_n_steps"):
        EvalCallback(every_n_steps=0)


@pytest.mark.sim
def test_eval_callback_in_training_logs_and_writes_rows(tmp_path, monkeypatch):
    # An earlier in-process seed_everything() leaves PL_GLOBAL_SEED behind; this run sets no seed.
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    # PushCube-v1 dimensions (state 35, pd_ee_delta_pos 4) so the tiny DP can act in the real simulator.
    dm, model = _setup(tmp_path / "push.zarr", 35, 4, "PushCube-v1")
    cb = EvalCallback(every_n_steps=2, episodes=2, seed=3, max_episode_steps=8, reconfiguration_freq=0)
    trainer = _trainer(tmp_path, [EMAWeightAveraging(decay=0.9), cb], max_steps=3)
    trainer.fit(model, datamodule=dm)
    # step 2 (period) and step 3 (end of training)
    assert [r["global_step"] for r in cb.history] == [2, 3]
    assert all(r["weights"] == "ema" and r["n_episodes"] == 2 for r in cb.history)
    data = json.loads((tmp_path / "csv" / "version_0" / "eval_during_training.json").read_text())
    assert [r["global_step"] for r in data["rows"]] == [2, 3]
    prov = data["provenance"]
    assert prov["method"] == "dp" and prov["env_id"] == "PushCube-v1" and prov["max_episode_steps"] == 8
    assert prov["seeds"] == [1_030_000, 1_030_001] and prov["train_seed"] is None
    with open(tmp_path / "csv" / "version_0" / "metrics.csv") as f:
        logged = [row for row in csv.DictReader(f) if row.get("eval/success_once")]
    assert [int(r["step"]) for r in logged] == [2, 3]
    assert "eval/success_once" in trainer.callback_metrics
    assert cb._env is None  # envs closed at the end of training
