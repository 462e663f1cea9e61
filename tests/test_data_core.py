"""Zarr layout, stats, windows and the DemoDataModule on synthetic data (no simulator)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
import zarr

from mepoly_il.data.datamodule import DemoDataModule
from mepoly_il.data.normalize import Normalizer, minmax_bounds
from mepoly_il.data.stats import STAT_KEYS, compute_stats
from mepoly_il.data.synthetic import make_synthetic_dataset
from mepoly_il.data.windows import check_horizons, gather_indices, split_episodes, window_starts
from mepoly_il.data.zarr_io import Episode, load_arrays, read_info, write_dataset
from mepoly_il.errors import UserError

PROV = {
    "env_id": "Test-v0",
    "obs_mode": "state",
    "control_mode": "pd_ee_delta_pos",
    "sim_backend": "physx_cpu",
    "control_freq": 20,
    "max_episode_steps": 50,
    "source_file": "x.h5",
    "source_sha256": "0" * 64,
}


# Synthetic-v0 is not a registered task, so its horizons are given explicitly.
H = {"obs_horizon": 2, "act_horizon": 8, "pred_horizon": 16}


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("syn") / "syn.zarr", num_episodes=8, seed=3)


def _episodes(lengths, ds=3, da=2, seed=0):
    rng = np.random.default_rng(seed)
    return [
        Episode(
            state=rng.normal(size=(n, ds)).astype(np.float32),
            action=rng.normal(size=(n, da)).astype(np.float32),
            seed=100 + i,
        )
        for i, n in enumerate(lengths)
    ]


# -- layout ---------------------------------------------------------------------------------------------------------
def test_layout_is_zarr2_consolidated_with_provenance_and_stats(tmp_path):
    eps = _episodes([5, 7, 3])
    out = write_dataset(tmp_path / "d.zarr", eps, PROV)
    assert (out / ".zgroup").exists() and (out / ".zmetadata").exists()
    zarray = json.loads((out / "data" / "action" / ".zarray").read_text())
    assert zarray["zarr_format"] == 2 and zarray["shape"] == [15, 2] and zarray["compressor"]["id"] == "blosc"
    ends_meta = json.loads((out / "meta" / "episode_ends" / ".zarray").read_text())
    assert ends_meta["compressor"] is None and ends_meta["dtype"] == "<i8"
    consolidated = json.loads((out / ".zmetadata").read_text())["metadata"]
    assert "data/state/.zarray" in consolidated and "meta/episode_seed/.zarray" in consolidated
    info = read_info(out)
    assert info.provenance["format_version"] == 1 and info.provenance["env_id"] == "Test-v0"
    assert (info.obs_dim, info.act_dim, info.num_frames, info.num_episodes) == (3, 2, 15, 3)
    for key in ("action", "state"):
        assert set(STAT_KEYS) <= set(info.stats[key])
        assert info.stats[key]["count"] == [15]
    arrays = load_arrays(out)
    np.testing.assert_array_equal(arrays.episode_ends, [5, 12, 15])
    np.testing.assert_array_equal(arrays.episode_seed, [100, 101, 102])
    for i, ep in enumerate(eps):
        s, a = arrays.episode(i)
        np.testing.assert_array_equal(s, ep.state)
        np.testing.assert_array_equal(a, ep.action)


def test_replay_buffer_convention_reader(tmp_path):
    """A reader written only from the diffusion_policy ReplayBuffer convention (data/<key> concatenated along time,
    meta/episode_ends exclusive cumulative ends, every data array as long as the last end) gets the episodes back."""
    eps = _episodes([4, 9, 6, 2], ds=5, da=3, seed=1)
    out = write_dataset(tmp_path / "rb.zarr", eps, PROV)
    root = zarr.open_consolidated(str(out), mode="r", zarr_format=2)
    data = {k: v[:] for k, v in root["data"].arrays()}
    meta = {k: v[:] for k, v in root["meta"].arrays()}
    ends = meta["episode_ends"]
    assert set(data) == {"action", "state"}
    assert all(v.shape[0] == ends[-1] for v in data.values())  # ReplayBuffer.__init__'s assertion
    starts = np.concatenate([[0], ends[:-1]])
    for i, (b, e) in enumerate(zip(starts, ends)):
        np.testing.assert_array_equal(data["state"][b:e], eps[i].state)
        np.testing.assert_array_equal(data["action"][b:e], eps[i].action)


def test_stats_match_numpy():
    x = np.random.default_rng(0).normal(size=(1000, 4))
    st = compute_stats(x)
    np.testing.assert_allclose(st["mean"], x.mean(0))
    np.testing.assert_allclose(st["std"], x.std(0))
    np.testing.assert_allclose(st["q01"], np.quantile(x, 0.01, axis=0))
    assert np.all(np.asarray(st["q01"]) > np.asarray(st["min"]))
    assert np.all(np.asarray(st["q99"]) < np.asarray(st["max"]))


# -- bad input ------------------------------------------------------------------------------------------------------
def test_write_rejects_nan_zero_length_and_existing(tmp_path):
    eps = _episodes([5, 6])
    eps[1].action[3, 0] = np.nan
    with pytest.raises(UserError, match="episode 1 .*NaN/inf actions at step 3"):
        write_dataset(tmp_path / "a.zarr", eps, PROV, source="demo.h5")
    eps = _episodes([5, 6])
    eps[0].state[2, 1] = np.inf
    with pytest.raises(UserError, match="NaN/inf states"):
        write_dataset(tmp_path / "a.zarr", eps, PROV)
    with pytest.raises(UserError, match="zero length"):
        write_dataset(tmp_path / "a.zarr", _episodes([5, 0]), PROV)
    assert not (tmp_path / "a.zarr").exists()
    write_dataset(tmp_path / "a.zarr", _episodes([5]), PROV)
    with pytest.raises(UserError, match="already exists; pass --overwrite"):
        write_dataset(tmp_path / "a.zarr", _episodes([5]), PROV)
    write_dataset(tmp_path / "a.zarr", _episodes([6]), PROV, overwrite=True)
    assert read_info(tmp_path / "a.zarr").num_frames == 6


def test_arrays_disagreeing_in_length_are_refused(tmp_path):
    out = write_dataset(tmp_path / "b.zarr", _episodes([5, 6]), PROV)
    root = zarr.open_group(str(out), mode="r+")
    root["data/state"].resize((10, 3))
    zarr.consolidate_metadata(str(out))
    with pytest.raises(UserError, match=r"b\.zarr: arrays disagree in length.*--overwrite"):
        read_info(out)
    with pytest.raises(UserError, match="arrays disagree in length"):
        DemoDataModule(str(out))
    out2 = write_dataset(tmp_path / "c.zarr", _episodes([5, 6]), PROV)
    root = zarr.open_group(str(out2), mode="r+")
    root["meta/episode_ends"][:] = np.asarray([5, 12])
    with pytest.raises(UserError, match=r"episode_ends ends at 12, data/\* has 11 rows"):
        load_arrays(out2)


def test_not_a_dataset_message(tmp_path):
    for bad in (tmp_path / "missing.zarr", tmp_path):
        with pytest.raises(UserError, match=r"not a mepoly-il zarr dataset .*`mepoly-il data prepare`"):
            DemoDataModule(str(bad))
    (tmp_path / "file.zarr").write_text("x")
    with pytest.raises(UserError, match=r"file\.zarr: not a mepoly-il zarr dataset"):
        read_info(tmp_path / "file.zarr")


# -- windows ---------------------------------------------------------------------------------------------------------
def _naive_windows(ends, episodes, to, t, pad_after):
    out = []
    begins = np.concatenate([[0], ends[:-1]])
    for e in episodes:
        b, n = begins[e], ends[e] - begins[e]
        for s in range(-(to - 1), n - t + pad_after + 1):
            pos = np.arange(s, s + t)
            out.append((b + np.clip(pos, 0, n - 1), (pos < 0) | (pos >= n)))
    return out


@pytest.mark.parametrize("to,t,pad_after", [(2, 16, None), (1, 4, None), (3, 8, 7 - 1), (2, 16, 0)])
def test_windows_match_naive_loop(to, t, pad_after):
    ends = np.cumsum([3, 20, 7, 1, 16])
    eps = np.array([0, 1, 3, 4])
    starts, begin, end = window_starts(ends, eps, to, t, pad_after)
    idx, pad = gather_indices(starts, begin, end, t)
    pa = t - to if pad_after is None else pad_after
    ref = _naive_windows(ends, eps, to, t, pa)
    assert len(ref) == len(starts)
    for k, (ri, rp) in enumerate(ref):
        np.testing.assert_array_equal(idx[k], ri)
        np.testing.assert_array_equal(pad[k], rp)


def test_default_padding_gives_one_window_per_step():
    lengths = np.array([3, 20, 7, 1])
    starts, begin, end = window_starts(np.cumsum(lengths), np.arange(4), 2, 16)
    assert len(starts) == lengths.sum()
    obs_idx, obs_pad = gather_indices(starts, begin, end, 2)
    # the current observation (last of the obs window) visits every row exactly once and is never padding
    np.testing.assert_array_equal(np.sort(obs_idx[:, -1]), np.arange(lengths.sum()))
    assert not obs_pad[:, -1].any()


def test_split_by_whole_episodes():
    tr, va = split_episodes(10, 0.2, seed=0)
    assert len(va) == 2 and len(tr) == 8 and not set(tr) & set(va)
    tr, va = split_episodes(2, 0.01, seed=0)
    assert len(tr) == 1 and len(va) == 1
    tr, va = split_episodes(5, 0.99 - 0.0, seed=0)
    assert len(tr) >= 1
    tr, va = split_episodes(5, 0.0, seed=0)
    assert len(va) == 0 and len(tr) == 5
    assert not np.array_equal(split_episodes(20, 0.3, 0)[1], split_episodes(20, 0.3, 1)[1])


def test_horizon_validation():
    check_horizons(2, 8, 16)
    check_horizons(2, 15, 16)
    with pytest.raises(UserError, match="obs_horizon \\+ act_horizon - 1 <= pred_horizon"):
        check_horizons(2, 16, 16)
    with pytest.raises(UserError, match=">= 1"):
        check_horizons(0, 1, 4)


# -- DataModule ------------------------------------------------------------------------------------------------------
def test_datamodule_metadata_before_setup(syn):
    dm = DemoDataModule(str(syn), batch_size=32, **H)
    assert (dm.obs_dim, dm.act_dim) == (5, 3)
    assert dm.train_set is None  # nothing loaded yet
    assert dm.meta["env_id"] == "Synthetic-v0" and dm.meta["control_mode"] == "pd_ee_delta_pos"
    assert dm.meta["episode_seeds"] == list(range(8))
    for key in (
        "obs_mode",
        "sim_backend",
        "control_freq",
        "max_episode_steps",
        "source_file",
        "source_sha256",
        "format_version",
    ):
        assert key in dm.meta
    info = read_info(syn)
    lo, hi = minmax_bounds(info.stats["state"]["min"], info.stats["state"]["max"], 0.02)
    np.testing.assert_array_equal(dm.obs_bounds[0], lo)
    np.testing.assert_array_equal(dm.obs_bounds[1], hi)
    assert dm.act_bounds[0].dtype == np.float32 and dm.act_bounds[0].shape == (3,)
    with pytest.raises(UserError, match="pred_horizon"):
        DemoDataModule(str(syn), obs_horizon=2, act_horizon=8, pred_horizon=8)


def test_datamodule_batches_normalized_and_faithful(syn):
    dm = DemoDataModule(str(syn), obs_horizon=2, act_horizon=4, pred_horizon=8, batch_size=16, val_ratio=0.25)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["obs"].shape == (16, 2, 5) and batch["obs"].dtype == torch.float32
    assert batch["action"].shape == (16, 8, 3) and batch["action"].dtype == torch.float32
    assert batch["obs_is_pad"].shape == (16, 2) and batch["obs_is_pad"].dtype == torch.bool
    assert batch["action_is_pad"].shape == (16, 8) and batch["action_is_pad"].dtype == torch.bool
    assert batch["obs"].abs().max() <= 1.0 and batch["action"].abs().max() <= 1.0
    # the margin keeps data strictly inside: the extremes map to about +-1/(1+2*margin)
    all_obs = torch.from_numpy(dm.train_set.state)
    assert 0.9 < all_obs.abs().max() < 0.99

    # unnormalizing with the policy's Normalizer gives back the raw dataset rows
    arrays = load_arrays(syn)
    norm = Normalizer(3)
    norm.set_bounds(*dm.act_bounds)
    ds = dm.train_set
    k = 5
    sample = ds[k]
    idx, _ = gather_indices(ds.starts[[k]], ds.begin[[k]], ds.end[[k]], 8)
    raw = torch.from_numpy(arrays.action[idx[0]])
    torch.testing.assert_close(norm.unnormalize(sample["action"]), raw, atol=1e-5, rtol=1e-5)

    # whole-episode split: train and val windows never share an episode
    assert not set(dm.train_episodes) & set(dm.val_episodes) and len(dm.val_episodes) == 2
    assert set(np.unique(ds.begin)).isdisjoint(set(np.unique(dm.val_set.begin)))
    n_val = sum(b["obs"].shape[0] for b in dm.val_dataloader())
    assert n_val == len(dm.val_set) == int(arrays.lengths[dm.val_episodes].sum())


def test_datamodule_no_val_and_max_episodes(syn):
    dm = DemoDataModule(str(syn), val_ratio=0.0, max_episodes=3, batch_size=8, **H)
    dm.setup("fit")
    assert dm.val_dataloader() == []
    arrays = load_arrays(syn)
    assert len(dm.train_set) == int(arrays.lengths[:3].sum())
    assert dm.meta["num_episodes_used"] == 3


def test_batch_gather_is_fast(tmp_path):
    path = make_synthetic_dataset(tmp_path / "big.zarr", num_episodes=200, length=(60, 80), seed=1)
    dm = DemoDataModule(str(path), batch_size=1024, val_ratio=0.0, **H)
    dm.setup("fit")
    it = iter(dm.train_dataloader())
    next(it)
    t0 = time.perf_counter()
    n = 0
    for batch in it:
        n += 1
        assert batch["action"].shape[0] == 1024
    per_batch = (time.perf_counter() - t0) / max(n, 1)
    assert n >= 10 and per_batch < 0.05, per_batch  # a numpy gather per batch, not 1024 __getitem__ calls


@pytest.mark.parametrize("val_ratio", [0.25, 0.0])
def test_lightning_cli_links_dims(syn, tmp_path, monkeypatch, val_ratio):
    """LightningCLI can build the DataModule from arguments and link its dims into a model."""
    from lightning.pytorch import LightningModule
    from lightning.pytorch.cli import LightningCLI

    class Tiny(LightningModule):
        def __init__(
            self,
            obs_dim: int = 1,
            act_dim: int = 1,
            obs_horizon: int = 1,
            act_horizon: int = 1,
            pred_horizon: int = 1,
            hidden: int = 8,
        ) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.net = torch.nn.Linear(obs_dim * obs_horizon, act_dim * pred_horizon)

        def training_step(self, batch, _):
            pred = self.net(batch["obs"].flatten(1)).view_as(batch["action"])
            return torch.nn.functional.mse_loss(pred, batch["action"])

        def validation_step(self, batch, _):
            self.log("val_loss", self.training_step(batch, _))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    class CLI(LightningCLI):
        def add_arguments_to_parser(self, parser):
            for key in ("obs_horizon", "act_horizon", "pred_horizon", "obs_dim", "act_dim"):
                parser.link_arguments(f"data.{key}", f"model.{key}", apply_on="instantiate")

    monkeypatch.setattr("sys.argv", ["mepoly-il"])
    cli = CLI(
        Tiny,
        DemoDataModule,
        run=False,
        args=[
            f"--data.path={syn}",
            "--data.obs_horizon=2",
            "--data.act_horizon=8",
            "--data.pred_horizon=12",
            f"--data.val_ratio={val_ratio}",
            "--data.batch_size=16",
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=3",
            "--trainer.logger=false",
            "--trainer.enable_checkpointing=false",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            f"--trainer.default_root_dir={tmp_path}",
        ],
    )
    assert (cli.model.hparams.obs_dim, cli.model.hparams.act_dim) == (5, 3)
    assert cli.model.hparams.pred_horizon == 12
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.global_step == 3
    assert ("val_loss" in cli.trainer.callback_metrics) == (val_ratio > 0)


def test_datamodule_with_loader_workers(syn):
    dm = DemoDataModule(str(syn), batch_size=16, val_ratio=0.0, num_workers=1, **H)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    single = DemoDataModule(str(syn), batch_size=16, val_ratio=0.0, **H)
    single.setup("fit")
    reference = list(single.train_dataloader())
    assert len(batches) == len(reference) > 1
    torch.testing.assert_close(batches[0]["action"], reference[0]["action"])
