"""`mepoly-il data prepare` killed with SIGKILL during generation and during conversion, then run again: it must
end with the dataset of an uninterrupted run (same seeds, identical arrays), reuse complete raw demos, and leave no
temporary folder behind."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from mepoly_il.data.maniskill import raw_dir_for
from mepoly_il.data.zarr_io import load_arrays

REPO = Path(__file__).resolve().parents[1]
ENV = "PushCube-v1"


def _argv(out: Path, num_demos: int = 3) -> list[str]:
    cli = [sys.executable, "-m", "mepoly_il", "data", "prepare", "--env-id", ENV, "--workers", "1", "--quiet"]
    return [*cli, "--num-demos", str(num_demos), "--out", str(out)]


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def _run(out: Path, num_demos: int = 3) -> subprocess.CompletedProcess:
    return subprocess.run(_argv(out, num_demos), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)


def _kill_when(out: Path, ready: Callable[[], bool]) -> None:
    """Start prepare, SIGKILL its whole process group as soon as ``ready()`` holds."""
    proc = subprocess.Popen(
        _argv(out),
        cwd=REPO,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None and not ready():
        time.sleep(0.02)
    assert proc.poll() is None, "prepare finished (or failed) before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _tmp_siblings(root: Path) -> list[Path]:
    # Not counted: the empty write-probe file of utils.check_output, which a kill can catch in the instant it exists.
    return [p for p in root.iterdir() if p.name.startswith(".tmp-") and not p.name.startswith(".tmp-probe-")]


@pytest.mark.sim
@pytest.mark.slow
def test_prepare_killed_then_rerun_gives_the_uninterrupted_dataset(tmp_path):
    ref = tmp_path / "ref" / "push.zarr"
    ref.parent.mkdir()
    r = _run(ref)
    assert r.returncode == 0, r.stderr

    root = tmp_path / "killed"
    root.mkdir()
    out = root / "push.zarr"
    raw = raw_dir_for(out)

    # 1. During generation: the first worker file exists inside the temporary raw folder.
    _kill_when(out, lambda: any(p.glob(".work/*.h5") for p in _tmp_siblings(root)))
    assert not raw.exists() and not out.exists(), sorted(p.name for p in root.iterdir())
    assert _tmp_siblings(root), "the killed generation left no temporary folder (the kill came too late to test)"

    # 2. The same command, killed during conversion: the raw folder is complete, the dataset not yet written.
    _kill_when(out, lambda: (raw / "generate.json").exists())
    assert raw.is_dir() and not out.exists(), sorted(p.name for p in root.iterdir())
    assert not any(p.name.startswith(f".tmp-{raw.name}") for p in _tmp_siblings(root)), "stale generate tmp kept"

    # 3. The same command again: reuses the raw demos and finishes.
    r = _run(out)
    assert r.returncode == 0, r.stderr
    assert "reused 3 demos" in r.stdout and "kept 3" in r.stdout, r.stdout
    assert _tmp_siblings(root) == [], sorted(p.name for p in root.iterdir())
    a, b = load_arrays(ref), load_arrays(out)
    np.testing.assert_array_equal(a.episode_seed, b.episode_seed)
    np.testing.assert_array_equal(a.episode_ends, b.episode_ends)
    np.testing.assert_array_equal(a.state, b.state)
    np.testing.assert_array_equal(a.action, b.action)

    # 4. A raw folder of another request is never reused nor deleted: one line naming it, the fix --overwrite.
    shutil.copytree(raw, root / "other.raw")
    before = sorted(p.name for p in (root / "other.raw").iterdir())
    r = _run(root / "other.zarr", num_demos=2)
    assert r.returncode == 2 and r.stderr.count("error:") == 1 and "Traceback" not in r.stderr, r.stderr
    assert "other.raw" in r.stderr and "--overwrite" in r.stderr
    assert sorted(p.name for p in (root / "other.raw").iterdir()) == before
    assert not (root / "other.zarr").exists()
