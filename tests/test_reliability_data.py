"""Nothing lost, corrupt data detected: output-path checks, atomic replace under kill -9, dataset checksums and
provenance, LeRobot export stats, eval cache key and seed range. No simulator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from mepoly_il.data.datamodule import DemoDataModule
from mepoly_il.data.inspect import format_summary, summarize
from mepoly_il.data.lerobot_export import export_lerobot
from mepoly_il.data.stats import QUANTILES
from mepoly_il.data.synthetic import make_synthetic_dataset
from mepoly_il.data.zarr_io import Episode, load_arrays, read_info, write_dataset
from mepoly_il.errors import UserError
from mepoly_il.eval.rollout import MAX_ENV_SEED, cache_matches, eval_seeds
from mepoly_il.utils import atomic_path, check_output, clean_stale_tmp

REPO = Path(__file__).resolve().parents[1]


# -- check_output ------------------------------------------------------------------------------------------------------
def test_check_output_refuses_overlap_existing_and_unwritable(tmp_path):
    src = tmp_path / "d.zarr"
    src.mkdir()
    for out, msg in (
        (src, "is the input"),
        (tmp_path, "contains the input"),
        (src / "sub" / "x", "lies inside the input"),
        (tmp_path / "." / "d.zarr", "is the input"),  # spelled differently, same place
    ):
        with pytest.raises(UserError, match=msg):
            check_output(out, [src], overwrite=True)
    (tmp_path / "exists").mkdir()
    with pytest.raises(UserError, match="already exists; pass --overwrite"):
        check_output(tmp_path / "exists", [src])
    with pytest.raises(UserError, match="existing directory"):
        check_output(tmp_path / "exists", [src], overwrite=True, kind="file", option="--plot")
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match="existing file"):
        check_output(tmp_path / "f", [], overwrite=True, kind="dir")
    with pytest.raises(UserError, match="is not a directory"):
        check_output(tmp_path / "f" / "out", [])
    assert check_output(tmp_path / "new" / "deeper" / "out.zarr", [src]) == tmp_path / "new" / "deeper" / "out.zarr"
    assert not (tmp_path / "new").exists()  # checking creates nothing
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.zarr", "exists", "f"]


def test_check_output_refuses_a_read_only_location(tmp_path):
    if Path("/proc").is_dir():  # unwritable even for root; chmod would not stop root
        with pytest.raises(UserError, match="cannot write in /proc"):
            check_output("/proc/mepoly-out.zarr", [])


# -- atomic replace ----------------------------------------------------------------------------------------------------
# Runs atomic_path in a child that writes a new output, then dies (os._exit, like kill -9: no finally, no cleanup)
# just before its KILL_AT-th filesystem step after the write (swap / rename / delete).
KILL_SCRIPT = """
import os, shutil, sys
from pathlib import Path
import mepoly_il.utils as u

target, kill_at, use_exchange = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
if not use_exchange:
    u._exchange = lambda a, b: False
steps = {"n": 0}

def step(fn):
    def wrapped(*args, **kwargs):
        steps["n"] += 1
        if steps["n"] == kill_at:
            os._exit(9)
        return fn(*args, **kwargs)
    return wrapped

with u.atomic_path(target, overwrite=True) as tmp:
    tmp.mkdir()
    for i in range(3):
        (tmp / f"part{i}").write_text("new")
    u._exchange, u.os.rename, u.shutil.rmtree = step(u._exchange), step(os.rename), step(shutil.rmtree)
"""


def _content(path: Path) -> str | None:
    """'old' / 'new' when ``path`` holds one complete output, None when missing; fails on a mixture."""
    if not path.exists():
        return None
    parts = {p.name: p.read_text() for p in path.iterdir()}
    assert sorted(parts) == ["part0", "part1", "part2"], parts
    (value,) = set(parts.values())
    return value


def _write_old(target: Path) -> None:
    target.mkdir()
    for i in range(3):
        (target / f"part{i}").write_text("old")


# What the final path holds right after a kill before step 1, 2, 3, 4 (None: the run was not killed).
# swap: 1 swap, 2 delete old.  rename-aside: 1 swap (unsupported), 2 old aside, 3 new in, 4 delete old.
EXPECTED = {True: ["old", "new", None, None], False: ["old", "old", "missing", "new"]}


def _exchange_supported(where: Path) -> bool:
    import mepoly_il.utils as u

    a, b = where / "xa", where / "xb"
    a.write_text("a")
    b.write_text("b")
    return u._exchange(a, b) and a.read_text() == "b"


@pytest.mark.parametrize("use_exchange", [True, False], ids=["swap", "rename-aside"])
def test_atomic_replace_survives_kill_at_every_step(tmp_path, use_exchange):
    if use_exchange and not _exchange_supported(tmp_path):
        pytest.skip("no atomic rename-exchange on this OS/filesystem (the rename-aside case covers it)")
    (tmp_path / ".tmp-other").mkdir()  # not ours: must survive every cleanup
    (tmp_path / ".tmp-out-zarr-notours").mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    seen = []
    for kill_at in (1, 2, 3, 4):
        target = tmp_path / f"k{kill_at}" / "out.zarr"
        target.parent.mkdir()
        _write_old(target)
        cmd = [sys.executable, "-c", KILL_SCRIPT, str(target), str(kill_at), str(int(use_exchange))]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        stale = [p for p in target.parent.iterdir() if p.name.startswith(".tmp-")]
        if proc.returncode == 9:
            seen.append(_content(target) or "missing")
            assert stale, "a killed run leaves its temporary sibling"
        else:
            assert proc.returncode == 0, proc.stderr
            assert _content(target) == "new" and not stale
            seen.append(None)
        clean_stale_tmp(target)  # what the next run for this target does first
        assert _content(target) in ("old", "new")  # an old output moved aside is back
        assert not [p for p in target.parent.iterdir() if p.name.startswith(".tmp-")]
        with atomic_path(target, overwrite=True) as tmp:  # and the rerun completes
            tmp.mkdir()
            for i in range(3):
                (tmp / f"part{i}").write_text("new")
        assert _content(target) == "new"
    assert seen == EXPECTED[use_exchange]
    assert (tmp_path / ".tmp-other").is_dir() and (tmp_path / ".tmp-out-zarr-notours").is_dir()


def test_atomic_replace_puts_old_back_when_the_rename_fails(tmp_path, monkeypatch):
    import mepoly_il.utils as u

    target = tmp_path / "out.zarr"
    _write_old(target)
    monkeypatch.setattr(u, "_exchange", lambda a, b: False)
    real_rename = os.rename

    def rename(src, dst):
        if Path(src).name == "out.zarr" and Path(src).parent.name.startswith(".tmp-"):
            raise OSError(28, "No space left on device")  # the new one cannot be renamed in
        return real_rename(src, dst)

    monkeypatch.setattr(u.os, "rename", rename)
    with pytest.raises(OSError, match="No space"), atomic_path(target, overwrite=True) as tmp:
        tmp.mkdir()
        for i in range(3):
            (tmp / f"part{i}").write_text("new")
    assert _content(target) == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.zarr"]


def test_atomic_path_never_swaps_a_directory_for_a_file(tmp_path):
    target = tmp_path / "plot.png"
    _write_old(target)
    msg = "existing directory; refusing to replace it with a file"
    with pytest.raises(UserError, match=msg), atomic_path(target, overwrite=True) as tmp:
        tmp.write_bytes(b"png")
    assert _content(target) == "old"


def test_stale_tmp_cleanup_only_touches_its_own_names(tmp_path):
    target = tmp_path / "d.zarr"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    ours_dead = tmp_path / f".tmp-d.zarr.{dead_pid}.abcd_123"
    ours_alive = tmp_path / f".tmp-d.zarr.{os.getpid()}.abcd_123"  # a concurrent writer: left alone
    legacy_old = tmp_path / ".tmp-d.zarr-k2j4h5g6"
    legacy_new = tmp_path / ".tmp-d.zarr-zzzzzzzz"
    other_target = tmp_path / f".tmp-d.zarr2.{dead_pid}.abcd_123"
    for p in (ours_dead, ours_alive, legacy_old, legacy_new, other_target):
        p.mkdir()
    two_hours_ago = time.time() - 7200
    os.utime(legacy_old, (two_hours_ago, two_hours_ago))
    assert sorted(clean_stale_tmp(target)) == sorted([ours_dead, legacy_old])
    assert ours_alive.is_dir() and legacy_new.is_dir() and other_target.is_dir()


# -- dataset integrity -------------------------------------------------------------------------------------------------
@pytest.fixture
def ds(tmp_path):
    return make_synthetic_dataset(tmp_path / "d.zarr", num_episodes=6, length=(10, 14))


def test_missing_chunk_stops_training_setup(ds):
    (ds / "data" / "action" / "0.0").unlink()
    dm = DemoDataModule(str(ds), obs_horizon=2, act_horizon=2, pred_horizon=4, batch_size=4)
    with pytest.raises(UserError, match="corrupt dataset: 1 of 1 chunk files of data/action are missing"):
        dm.setup("fit")


def test_all_zero_chunks_are_written_so_missing_means_damage(tmp_path):
    eps = [Episode(state=np.zeros((5, 2)), action=np.zeros((5, 1)), seed=0)]
    prov = {k: "x" for k in ("env_id", "obs_mode", "sim_backend", "source_file", "source_sha256")}
    prov.update(control_mode="pd_ee_delta_pos", control_freq=20, max_episode_steps=5)
    path = write_dataset(tmp_path / "z.zarr", eps, prov)
    assert (path / "meta" / "episode_seed" / "0").is_file()  # seed 0 equals zarr's fill value
    assert load_arrays(path).num_episodes == 1


def test_overwrite_replaces_only_a_dataset(tmp_path, ds):
    other = tmp_path / "photos"
    other.mkdir()
    (other / "a.jpg").write_bytes(b"jpg")
    eps = [Episode(state=np.ones((4, 2)), action=np.ones((4, 1)), seed=0)]
    prov = dict(read_info(ds).provenance)
    with pytest.raises(UserError, match="is not a zarr dataset, so it is not replaced"):
        write_dataset(other, eps, prov, overwrite=True)
    assert (other / "a.jpg").read_bytes() == b"jpg"
    write_dataset(ds, eps, prov, overwrite=True)  # an earlier dataset is replaced
    assert load_arrays(ds).num_episodes == 1


def test_legacy_dataset_loads_with_one_warning(ds, capsys):
    root = zarr.open_group(str(ds), mode="r+")
    del root.attrs["checksums"]
    zarr.consolidate_metadata(str(ds))
    capsys.readouterr()
    load_arrays(ds)
    load_arrays(ds)
    err = capsys.readouterr().err
    assert err.count("written without checksums") == 1


def test_provenance_has_versions_time_command_and_no_absolute_path(tmp_path):
    eps = [Episode(state=np.ones((4, 2)), action=np.ones((4, 1)) * 0.5, seed=3)]
    prov = {"env_id": "PushCube-v1", "obs_mode": "state", "control_mode": "pd_ee_delta_pos", "sim_backend": "cpu"}
    prov.update(control_freq=20, max_episode_steps=100, source_file=str(tmp_path / "raw" / "t.h5"), source_sha256="")
    info = read_info(write_dataset(tmp_path / "p.zarr", eps, prov))
    p = info.provenance
    assert p["source_file"] == "t.h5"
    assert {"mepoly_il", "torch", "numpy", "zarr"} <= set(p["versions"])
    assert p["created_utc"].endswith("+00:00") and p["command"]
    assert set(info.stats["action"]) >= set(QUANTILES)


def test_inspect_rows_fit_120_columns(tmp_path):
    path = make_synthetic_dataset(tmp_path / "wide.zarr", num_episodes=3, obs_dim=48, act_dim=7, length=(6, 8))
    lines = format_summary(summarize(path)).splitlines()
    stats_rows = lines[lines.index("action stats") :]
    assert len(stats_rows) == 2 + 7 + 2 + 48
    assert max(len(line) for line in stats_rows) <= 120


def test_checksum_cost_is_small(tmp_path):
    """100 PickCube-sized demos (100 x 100 steps, 42 + 4 dims): verifying adds little to a load."""
    rng = np.random.default_rng(0)
    eps = [Episode(state=rng.normal(size=(100, 42)), action=rng.uniform(-1, 1, (100, 4)), seed=i) for i in range(100)]
    prov = {"env_id": "PickCube-v1", "obs_mode": "state", "control_mode": "pd_ee_delta_pos", "sim_backend": "cpu"}
    prov.update(control_freq=20, max_episode_steps=100, source_file="t.h5", source_sha256="")
    path = write_dataset(tmp_path / "big.zarr", eps, prov)
    load_arrays(path)
    t0 = time.perf_counter()
    load_arrays(path)
    assert time.perf_counter() - t0 < 5.0  # ~0.05 s unloaded; generous for a shared 2-core machine


# -- LeRobot export ----------------------------------------------------------------------------------------------------
def test_lerobot_export_has_all_quantiles_and_per_episode_stats_for_every_feature(ds, tmp_path):
    import pyarrow.parquet as pq

    out = export_lerobot(ds, tmp_path / "le")
    info = json.loads((out / "meta/info.json").read_text())
    stats = json.loads((out / "meta/stats.json").read_text())
    names = {"min", "max", "mean", "std", "count", *QUANTILES}
    assert set(stats) == set(info["features"])
    for feature, st in stats.items():
        assert set(st) == names, feature
        dim = info["features"][feature]["shape"][0]
        assert all(len(st[k]) == dim for k in names - {"count"})
        q = np.asarray([st[k] for k in ("min", "q01", "q10", "q50", "q90", "q99", "max")])
        assert (np.diff(q, axis=0) >= -1e-9).all(), feature  # ordered like quantiles must be
    episodes = pq.read_table(out / "meta/episodes/chunk-000/file-000.parquet").to_pandas()
    for feature in info["features"]:
        for name in names:
            assert f"stats/{feature}/{name}" in episodes.columns
    arrays = load_arrays(ds)
    ep0 = arrays.episode(0)[1]
    np.testing.assert_allclose(episodes["stats/action/q50"][0], np.quantile(ep0.astype(np.float64), 0.5, axis=0))
    assert list(episodes["stats/frame_index/max"][0]) == [len(ep0) - 1]
    assert [c[0] for c in episodes["stats/episode_index/count"]] == list(arrays.lengths)


# -- eval ----------------------------------------------------------------------------------------------------------
def test_eval_cache_key_includes_num_envs():
    settings = {"eval_seed_block": 0, "seeds": [1, 2], "num_envs": 1, "video_episodes": 0}
    old = {"provenance": {"checkpoint_sha256": "abc", **settings}}
    assert cache_matches(old, "abc", settings)
    assert cache_matches(old, "abc", {**settings, "video_episodes": 2})
    assert not cache_matches(old, "abc", {**settings, "num_envs": 4})
    assert not cache_matches(old, "abd", settings)


def test_eval_seed_range_is_what_maniskill_accepts():
    seeds = eval_seeds(429396, 100)
    assert seeds[-1] <= MAX_ENV_SEED
    np.random.RandomState(seeds[-1])  # what ManiSkill does with each reset seed
    with pytest.raises(UserError, match="use a seed block <= 429396"):
        eval_seeds(429397, 100)
    with pytest.raises(UserError, match="beyond ManiSkill's limit"):
        eval_seeds(429396, 100, num_envs=8000)  # the padded last batch would overflow
