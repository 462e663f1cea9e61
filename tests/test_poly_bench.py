"""`mepoly-il bench poly` building blocks on tiny sizes (the full run is a benchmark, not a test)."""

from __future__ import annotations

import json

import pytest
import torch

from mepoly_il.bench import poly as bench
from mepoly_il.cli import main as cli_main


def test_bench_row_reports_both_sides_and_accuracy():
    row = bench.bench_row(2, 4, 8, torch.float32, 0.2, seed=0, reps=1, err_rows=4, ref_flop_cap=1e12)
    for key in ("ref_fwd_s", "ours_fwd_s", "ref_fwdbwd_s", "ours_fwdbwd_s", "speedup_fwd"):
        assert row[key] > 0
    assert row["ours_dlogz"] < 1e-5  # Gauss-Legendre on a smooth density, float32
    assert row["ref_dlogz"] > row["ours_dlogz"]  # the 64-node trapezoid rule is less accurate
    assert "| 2 | 4 | 8 | float32 |" in bench.format_main([row])


def test_scale_row_never_silent():
    row = bench.scale_row(1, 8, 8, 5.0, seed=0, err_rows=8)
    assert row["silent_rows"] == 0
    assert row["ours_nodes_max"] >= 20


def test_cli_smoke_writes_json(tmp_path):
    out = tmp_path / "b.json"
    assert cli_main(["bench", "poly", "--smoke", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["main"] and data["headline"] and data["qmc"] and data["scale"] and "goal" in data
    assert data["qmc"][0]["ours_quadrature"] in ("gauss", "qmc")
    assert data["machine"]["cores"] >= 1


def test_busy_processes_are_started_and_always_stopped():
    with pytest.raises(RuntimeError, match="boom"), bench.busy_processes(2) as procs:  # noqa: PT012
        assert len(procs) == 2 and all(p.poll() is None for p in procs)  # running
        raise RuntimeError("boom")
    assert all(p.poll() is not None for p in procs)  # killed and reaped despite the error
