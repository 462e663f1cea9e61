"""The ManiSkill pipeline on the real simulator (3 PushCube demos), and every bad-input path of `mepoly-il data`."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from mepoly_il.cli import main as cli_main
from mepoly_il.data.datamodule import DemoDataModule
from mepoly_il.data.maniskill import convert, generate, raw_dir_for, read_source, replay_open_loop
from mepoly_il.data.zarr_io import load_arrays, read_info
from mepoly_il.errors import UserError
from mepoly_il.tasks import task_ids
from mepoly_il.utils import sha256_file

ENV = "PushCube-v1"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    """3 motion-planning demos (raw h5 + json) and their converted zarr dataset.

    The raw folder's name contains ".h5": ManiSkill's recorder derives its json path by replacing every ".h5" in the
    h5 path, which once broke generate whenever a temporary folder's random name began with "h5".
    """
    root = tmp_path_factory.mktemp("ms")
    gen = generate(ENV, 3, root / "raw.h5demos", seed=0, workers=1, show_progress=False)
    conv = convert(gen.h5, root / "push.zarr", show_progress=False)
    return gen, conv, root


def _run_cli(argv, capsys):
    code = cli_main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


# -- the happy path ---------------------------------------------------------------------------------------------------
@pytest.mark.sim
def test_generate_writes_maniskill_h5_and_json(demos):
    gen, _, _ = demos
    assert gen.h5.exists() and gen.json.exists()
    meta = json.loads(gen.json.read_text())
    assert meta["env_info"]["env_id"] == ENV
    assert meta["env_info"]["env_kwargs"]["control_mode"] == "pd_joint_pos"
    eps = meta["episodes"]
    assert [e["episode_id"] for e in eps] == [0, 1, 2]
    seeds = [e["episode_seed"] for e in eps]
    assert seeds == gen.seeds and seeds == sorted(seeds) and len(set(seeds)) == 3
    assert all(e["success"] for e in eps)
    with h5py.File(gen.h5, "r") as f:
        for e in eps:
            g = f[f"traj_{e['episode_id']}"]
            assert g["actions"].shape == (e["elapsed_steps"], 8)
            assert g["env_states/actors/cube"].shape[0] == e["elapsed_steps"] + 1
            assert bool(g["success"][-1])
    assert not (gen.h5.parent / ".work").exists()


@pytest.mark.sim
def test_convert_writes_faithful_zarr(demos):
    gen, conv, _ = demos
    assert conv.num_kept == 3 and conv.failed == [] and conv.replayed
    info = read_info(conv.path)
    prov = info.provenance
    assert (info.obs_dim, info.act_dim, info.num_episodes) == (35, 4, 3)
    assert prov["env_id"] == ENV and prov["control_mode"] == "pd_ee_delta_pos" and prov["obs_mode"] == "state"
    assert prov["sim_backend"] == "physx_cpu" and prov["control_freq"] == 20 and prov["max_episode_steps"] == 100
    assert prov["source_sha256"] == sha256_file(gen.h5) and prov["source_file"] == gen.h5.name
    arrays = load_arrays(conv.path)
    assert arrays.episode_seed.tolist() == gen.seeds
    # pd_joint_pos -> pd_ee_delta_pos keeps one action per source step unless clipping forced sub-steps
    assert (arrays.lengths >= np.asarray(gen.lengths)).all()
    assert np.abs(arrays.action[:, :3]).max() <= 1.0


@pytest.mark.sim
def test_stored_actions_replay_open_loop_to_stored_states(demos):
    """Replaying stored actions blindly from the stored seed in a new env reproduces the stored states (the first
    episode and the last one, which was converted on a scene that had already run other episodes)."""
    _, conv, _ = demos
    arrays = load_arrays(conv.path)
    for i in (0, arrays.num_episodes - 1):
        state, action = arrays.episode(i)
        visited, success = replay_open_loop(ENV, "pd_ee_delta_pos", int(arrays.episode_seed[i]), action)
        assert success
        np.testing.assert_allclose(visited[: len(state)], state, atol=1e-4)


@pytest.mark.sim
def test_fast_conversion_matches_maniskill_converter(demos):
    """Our single-env pd_joint_pos -> pd_ee_delta_pos conversion gives the same actions as ManiSkill's
    two-env ``from_pd_joint_pos`` on the same demo."""
    import gymnasium as gym
    import mani_skill.envs  # noqa: F401
    from mani_skill.trajectory.utils.actions.conversion import from_pd_joint_pos

    gen, conv, _ = demos
    with h5py.File(gen.h5, "r") as f:
        ori_actions = f["traj_1/actions"][:]
    seed = gen.seeds[1]
    kw = dict(sim_backend="physx_cpu", reward_mode="sparse", max_episode_steps=10_000)
    env = gym.make(ENV, obs_mode="state", control_mode="pd_ee_delta_pos", **kw)
    ori = gym.make(ENV, obs_mode="none", control_mode="pd_joint_pos", **kw)
    taken = []

    class Tap(gym.Wrapper):
        def step(self, action):
            taken.append(np.asarray(action.cpu().numpy() if hasattr(action, "cpu") else action).reshape(-1))
            return self.env.step(action)

    try:
        env.reset(seed=seed)
        ori.reset(seed=seed)
        info = from_pd_joint_pos("pd_ee_delta_pos", ori_actions, ori, Tap(env))
    finally:
        env.close()
        ori.close()
    assert bool(info["success"])
    _, ours = load_arrays(conv.path).episode(1)
    assert ours.shape == (len(taken), 4)
    np.testing.assert_allclose(ours, np.stack(taken), atol=1e-6)


@pytest.mark.sim
def test_inspect_datamodule_and_export(demos, tmp_path, capsys):
    _, conv, _ = demos
    code, out, _ = _run_cli(["data", "inspect", str(conv.path), "--plot", str(tmp_path / "p.png")], capsys)
    assert code == 0
    assert "episodes       3" in out and "control=pd_ee_delta_pos" in out and "state 35  action 4" in out
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    dm = DemoDataModule(str(conv.path), batch_size=8, val_ratio=0.34)
    assert (dm.obs_dim, dm.act_dim) == (35, 4) and dm.meta["env_id"] == ENV
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["obs"].shape == (8, 2, 35) and batch["action"].shape == (8, 16, 4)
    assert batch["obs"].abs().max() <= 1 and batch["action"].abs().max() <= 1
    assert len(dm.train_episodes) == 2 and len(dm.val_episodes) == 1


@pytest.mark.sim
def test_lerobot_export_layout(demos, tmp_path, capsys):
    import pandas as pd
    import pyarrow.parquet as pq

    _, conv, _ = demos
    out = tmp_path / "lerobot"
    code, _, _ = _run_cli(["data", "export-lerobot", str(conv.path), "--out", str(out)], capsys)
    assert code == 0
    info = json.loads((out / "meta/info.json").read_text())
    arrays = load_arrays(conv.path)
    assert info["codebase_version"] == "v3.0" and info["fps"] == 20
    assert info["total_episodes"] == 3 and info["total_frames"] == len(arrays.action)
    assert info["features"]["observation.state"]["shape"] == [35]
    data = pq.read_table(out / info["data_path"].format(chunk_index=0, file_index=0)).to_pandas()
    np.testing.assert_array_equal(np.stack(data["observation.state"].to_numpy()), arrays.state)
    np.testing.assert_array_equal(np.stack(data["action"].to_numpy()), arrays.action)
    assert data["episode_index"].tolist() == np.repeat([0, 1, 2], arrays.lengths).tolist()
    assert data["frame_index"].iloc[arrays.lengths[0]] == 0
    np.testing.assert_allclose(data["timestamp"].iloc[:3], [0, 0.05, 0.1], atol=1e-6)
    eps = pq.read_table(out / "meta/episodes/chunk-000/file-000.parquet").to_pandas()
    assert eps["length"].tolist() == arrays.lengths.tolist()
    assert eps["dataset_to_index"].tolist() == arrays.episode_ends.tolist()
    tasks = pd.read_parquet(out / "meta/tasks.parquet")
    assert tasks.loc[ENV, "task_index"] == 0
    stats = json.loads((out / "meta/stats.json").read_text())
    assert set(stats["action"]) >= {"min", "max", "mean", "std", "count", "q01", "q99"}


@pytest.mark.sim
@pytest.mark.slow
def test_prepare_with_two_workers_gives_the_same_dataset(demos, tmp_path, capsys):
    """`prepare --workers 2` keeps the same seeds and writes the same arrays as generate + convert with 1 worker,
    and keeps the raw files next to the output."""
    gen, conv, _ = demos
    out = tmp_path / "PushCube-v1.zarr"
    argv = ["data", "prepare", "--env-id", ENV, "--num-demos", "3", "--out", str(out), "--workers", "2", "--quiet"]
    code, text, _ = _run_cli(argv, capsys)
    assert code == 0 and "kept 3" in text
    assert (tmp_path / "PushCube-v1.raw" / gen.h5.name).exists()
    a, b = load_arrays(conv.path), load_arrays(out)
    np.testing.assert_array_equal(a.episode_seed, b.episode_seed)
    np.testing.assert_array_equal(a.state, b.state)
    np.testing.assert_array_equal(a.action, b.action)


# -- bad input -------------------------------------------------------------------------------------------------------
def _copy_raw(demos, tmp_path) -> Path:
    gen, _, _ = demos
    dst = tmp_path / "raw"
    shutil.copytree(gen.h5.parent, dst)
    return dst / gen.h5.name


def _expect_cli_error(capsys, argv, *fragments):
    code, _, err = _run_cli(argv, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for frag in fragments:
        assert frag in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("command", ["generate", "prepare"])
def test_task_without_demo_source_or_unknown_lists_supported(tmp_path, capsys, command):
    """Nope-v1 is not registered: one line, naming the tasks that have demos, and nothing written (a registered
    task without a demo source: tests/test_tasks.py)."""
    for env_id, why in (("Nope-v1", "not a registered task"),):
        out = tmp_path / ("x.zarr" if command == "prepare" else "x")
        argv = ["data", command, "--env-id", env_id, "--num-demos", "2", "--out", str(out)]
        line = _expect_cli_error(capsys, argv, env_id, why)
        assert "PushCube-v1" in task_ids(with_demos=True)
        for with_demos in task_ids(with_demos=True):
            assert with_demos in line
        assert list(tmp_path.iterdir()) == []


def test_convert_missing_source(tmp_path, capsys):
    _expect_cli_error(
        capsys, ["data", "convert", "--src", str(tmp_path / "nope.h5"), "--out", str(tmp_path / "o.zarr")], "nope.h5"
    )
    _expect_cli_error(
        capsys, ["data", "convert", "--src", str(tmp_path), "--out", str(tmp_path / "o.zarr")], "is a directory"
    )


@pytest.mark.sim
def test_truncated_and_corrupt_h5(demos, tmp_path, capsys):
    h5 = _copy_raw(demos, tmp_path)
    data = h5.read_bytes()
    h5.write_bytes(data[: len(data) // 2])
    _expect_cli_error(
        capsys,
        ["data", "convert", "--src", str(h5), "--out", str(tmp_path / "o.zarr")],
        h5.name,
        "truncated or corrupt",
    )
    h5.write_bytes(b"not an hdf5 file at all" * 100)
    _expect_cli_error(capsys, ["data", "convert", "--src", str(h5), "--out", str(tmp_path / "o.zarr")], "corrupt")
    assert not (tmp_path / "o.zarr").exists()


@pytest.mark.sim
def test_missing_and_mismatched_json(demos, tmp_path, capsys):
    h5 = _copy_raw(demos, tmp_path)
    js = h5.with_suffix(".json")
    original = js.read_text()
    argv = ["data", "convert", "--src", str(h5), "--out", str(tmp_path / "o.zarr")]
    js.unlink()
    _expect_cli_error(capsys, argv, h5.name, "missing", ".json")
    meta = json.loads(original)
    meta["episodes"][1]["elapsed_steps"] += 5
    js.write_text(json.dumps(meta))
    _expect_cli_error(capsys, argv, "traj_1", "do not match")
    meta = json.loads(original)
    meta["episodes"].append(dict(meta["episodes"][0], episode_id=7))
    js.write_text(json.dumps(meta))
    _expect_cli_error(capsys, argv, "traj_7", "do not match")
    js.write_text("{not json")
    _expect_cli_error(capsys, argv, "not valid JSON")


@pytest.mark.sim
def test_control_mode_not_the_one_asked(demos, tmp_path, capsys):
    h5 = _copy_raw(demos, tmp_path)
    argv = ["data", "convert", "--src", str(h5), "--out", str(tmp_path / "o.zarr")]
    _expect_cli_error(capsys, [*argv, "--control-mode", "pd_ee_pose"], "pd_ee_pose", "--control-mode pd_joint_pos")
    js = h5.with_suffix(".json")
    meta = json.loads(js.read_text())
    meta["env_info"]["env_kwargs"]["control_mode"] = "pd_ee_delta_pose"
    for ep in meta["episodes"]:
        ep["control_mode"] = "pd_ee_delta_pose"
    js.write_text(json.dumps(meta))
    line = _expect_cli_error(capsys, [*argv, "--control-mode", "pd_ee_delta_pos"], "pd_ee_delta_pose")
    assert "--control-mode pd_ee_delta_pose" in line
    meta["episodes"][0]["control_mode"] = "pd_joint_pos"
    js.write_text(json.dumps(meta))
    _expect_cli_error(capsys, [*argv, "--control-mode", "pd_ee_delta_pose"], "episode 0", "control mode")


@pytest.mark.sim
def test_nan_actions_and_zero_length_episode(demos, tmp_path, capsys):
    h5 = _copy_raw(demos, tmp_path)
    argv = ["data", "convert", "--src", str(h5), "--out", str(tmp_path / "o.zarr")]
    with h5py.File(h5, "r+") as f:
        f["traj_2/actions"][4, 1] = np.nan
    _expect_cli_error(capsys, argv, "traj_2", "NaN/inf actions at step 4")
    with h5py.File(h5, "r+") as f:
        del f["traj_2/actions"]
        f["traj_2"].create_dataset("actions", data=np.zeros((0, 8), np.float32))
    js = h5.with_suffix(".json")
    meta = json.loads(js.read_text())
    meta["episodes"][2]["elapsed_steps"] = 0
    js.write_text(json.dumps(meta))
    _expect_cli_error(capsys, argv, "traj_2", "zero length")


@pytest.mark.sim
def test_existing_output_needs_overwrite(demos, tmp_path, capsys):
    gen, conv, _ = demos
    out = tmp_path / "o.zarr"
    out.mkdir()
    (out / "keep").write_text("x")
    _expect_cli_error(
        capsys, ["data", "convert", "--src", str(gen.h5), "--out", str(out)], "already exists", "--overwrite"
    )
    assert (out / "keep").exists()
    raw = tmp_path / "raw"
    raw.mkdir()
    _expect_cli_error(
        capsys,
        ["data", "generate", "--env-id", ENV, "--num-demos", "1", "--out", str(raw)],
        "already exists",
        "--overwrite",
    )
    src = _state_file(demos, tmp_path)
    argv = ["data", "convert", "--src", str(src), "--out", str(out), "--overwrite", "--quiet"]
    _expect_cli_error(capsys, argv, "is not a zarr dataset", "not replaced")  # a folder we did not write survives
    assert (out / "keep").exists()
    shutil.rmtree(out)
    shutil.copytree(conv.path, out)  # an earlier dataset is replaced
    code, out_text, _ = _run_cli(argv, capsys)
    assert code == 0 and "kept 3" in out_text
    assert read_info(out).num_episodes == 3


def _state_file(demos, tmp_path) -> Path:
    """The converted demos as a ManiSkill h5 already in state obs + pd_ee_delta_pos (what its replay tool writes)."""
    gen, conv, _ = demos
    arrays = load_arrays(conv.path)
    src = tmp_path / "trajectory.state.pd_ee_delta_pos.physx_cpu.h5"
    meta = json.loads(gen.json.read_text())
    meta["env_info"]["env_kwargs"].update(obs_mode="state", control_mode="pd_ee_delta_pos")
    with h5py.File(src, "w") as f:
        for i, ep in enumerate(meta["episodes"]):
            ep["control_mode"] = "pd_ee_delta_pos"
            s, a = arrays.episode(i)
            ep["elapsed_steps"] = len(a)
            g = f.create_group(f"traj_{i}")
            g["obs"] = np.concatenate([s, s[-1:]])
            g["actions"] = a
    src.with_suffix(".json").write_text(json.dumps(meta))
    return src


@pytest.mark.sim
def test_stored_state_file_needs_no_replay(demos, tmp_path):
    """A file already in state + the target control mode is read directly, without the simulator."""
    src = _state_file(demos, tmp_path)
    arrays = load_arrays(demos[1].path)
    res = convert(src, tmp_path / "direct.zarr", show_progress=False)
    assert not res.replayed and res.num_kept == 3
    np.testing.assert_array_equal(load_arrays(res.path).state, arrays.state)


@pytest.mark.sim
@pytest.mark.slow
def test_killed_conversion_leaves_nothing_and_rerun_works(demos, tmp_path):
    gen, _, _ = demos
    out = tmp_path / "killed.zarr"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "mepoly_il", "data", "convert", "--src", str(gen.h5), "--out", str(out)]
    proc = subprocess.Popen(
        [*cmd, "--workers", "2", "--quiet"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    # The simulator workers exist only while the conversion runs: kill everything once they are up.
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if children.exists() and children.read_text().strip():
            break
        time.sleep(0.05)
    assert proc.poll() is None, "conversion finished before it could be killed"
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-killed.zarr")]
    assert all(not (p / "killed.zarr" / ".zmetadata").exists() for p in leftovers)
    res = convert(gen.h5, out, show_progress=False)
    assert res.num_kept == 3 and read_info(out).num_episodes == 3
    # ... and the rerun's dataset equals an uninterrupted conversion's.
    ref, got = load_arrays(convert(gen.h5, tmp_path / "ref.zarr", show_progress=False).path), load_arrays(out)
    np.testing.assert_array_equal(got.state, ref.state)
    np.testing.assert_array_equal(got.action, ref.action)


@pytest.mark.sim
@pytest.mark.slow
def test_workers_die_with_a_killed_main_process(demos, tmp_path):
    """SIGKILL of the main process alone (not its group): its simulator workers must not outlive it."""
    gen, _, _ = demos
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    out = tmp_path / "k.zarr"
    cmd = [sys.executable, "-m", "mepoly_il", "data", "convert", "--src", str(gen.h5), "--out", str(out)]
    proc = subprocess.Popen(
        [*cmd, "--workers", "2", "--quiet"], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    pids: list[int] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and len(pids) < 2:
        with contextlib.suppress(OSError):
            pids = [int(p) for p in children.read_text().split()]
        time.sleep(0.05)
    assert proc.poll() is None and pids, "conversion finished before it could be killed"
    time.sleep(1.0)  # the workers are importing / building their simulators
    with contextlib.suppress(OSError):
        pids = [int(p) for p in children.read_text().split()]  # all of them, the resource tracker included
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 30
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [p for p in pids if Path(f"/proc/{p}").exists() and "(Z)" not in _proc_state(p)]
        time.sleep(0.1)
    try:
        assert not alive, f"workers {alive} outlived their killed parent"
    finally:
        for p in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)


def _proc_state(pid: int) -> str:
    try:
        return "(" + Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] + ")"
    except (OSError, IndexError):
        return "(Z)"


def test_prepare_keeps_raw_next_to_output(tmp_path):
    assert raw_dir_for(tmp_path / "push_100.zarr") == tmp_path / "push_100.raw"


def test_read_source_requires_json_keys(tmp_path):
    h5 = tmp_path / "t.h5"
    with h5py.File(h5, "w") as f:
        f.create_group("traj_0")
    h5.with_suffix(".json").write_text(json.dumps({"episodes": []}))
    with pytest.raises(UserError, match="not a ManiSkill trajectory json"):
        read_source(h5)


@pytest.mark.sim
def test_bench_data_smoke(tmp_path, capsys):
    from mepoly_il.cli.bench import main as bench_main

    out = tmp_path / "bench.json"
    assert bench_main(["data", "--num-demos", "1", "--workers", "1", "--quiet", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    (row,) = result["rows"]
    assert row["workers"] == 1 and row["kept_after_convert"] == 1
    assert row["generate_demos_per_s"] > 0 and row["convert_demos_per_s"] > 0
    assert row["cpu_s_per_demo"]["generate"] > 0 and row["cpu_s_per_demo"]["convert"] > 0
    assert "where the time goes" in capsys.readouterr().out
