"""Smoke tests of `mepoly-il bench latency` and `mepoly-il bench train` (tiny budgets, real models)."""

from __future__ import annotations

import json

import pytest

from mepoly_il.cli import main as cli_main


def test_bench_latency_quick(tmp_path, capsys):
    out = tmp_path / "lat.json"
    assert cli_main(["bench", "latency", "--quick", "--ddim-steps", "5", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    table = capsys.readouterr().out
    assert "| cpu | mepoly | 1 |" in table and "mepoly_over_ddpm100" in table
    med = {r["policy"]: r["median_ms"] for r in res["rows"]}
    assert set(med) == {"mepoly", "dp-ddpm100", "dp-ddim5"}
    assert all(v > 0 for v in med.values())
    # same UNet, 100 vs 5 denoising passes: DDPM-100 must be the slower one
    assert med["dp-ddpm100"] > med["dp-ddim5"]
    assert res["ratios"]["cpu/b1/mepoly_over_ddpm100"] == pytest.approx(med["mepoly"] / med["dp-ddpm100"])
    assert res["params"]["dp"] > 0 and res["params"]["mepoly_total"] > res["params"]["mepoly_acting"] > 0
    # the trained (frozen) checkpoint on in-range and out-of-range histories
    dep = res["input_dependence"]
    assert [r["kind"] for r in dep["rows"]] == ["data", "zeros", "+3std", "-3std"]
    for r in dep["rows"]:
        assert r["inputs"] == 4 and 0 < r["median_ms"] <= r["p90_ms"] <= r["max_ms"]
        # a history's latency is the median of its 2 calls, so the slowest single call is at least the worst one
        assert r["calls_per_input"] == 2 and r["max_call_ms"] >= r["max_ms"]
    assert dep["worst_over_median"] == pytest.approx(dep["worst_ms"] / dep["rows"][0]["median_ms"])
    assert "x the in-range median" in table
    assert dep["worst_call_ms"] == max(r["max_call_ms"] for r in dep["rows"]) >= dep["worst_ms"]


def test_bench_latency_bad_args(tmp_path, capsys):
    assert cli_main(["bench", "latency", "--quick", "--ddim-steps", "0", "--out", str(tmp_path / "x.json")]) == 2
    assert "--ddim-steps 0" in capsys.readouterr().err
    assert cli_main(["bench", "latency", "--quick", "--input-calls", "0", "--out", str(tmp_path / "x.json")]) == 2
    assert "--input-calls 0" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
    assert cli_main(["bench", "latency", "--quick", "--checkpoint", str(tmp_path / "none.ckpt")]) == 2
    assert "--checkpoint and --data go together" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_train_quick(tmp_path, capsys):
    out = tmp_path / "train.json"
    assert cli_main(["bench", "train", "--quick", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    rows = res["rows"]
    assert set(rows) == {"dp", "stage1", "stage2"}
    for r in rows.values():
        assert r["batch_size"] == 32 and r["timed_steps"] == 3 and r["median_s_per_step"] > 0
    t = {k: r["median_s_per_step"] for k, r in rows.items()}
    ratio = (t["stage1"] + t["stage2"]) / t["dp"]
    assert res["ratio_stage1_plus_stage2_over_dp_per_step"] == pytest.approx(ratio)
    assert rows["dp"]["config"].endswith("configs/dp/cpu.yaml")
    assert "(stage1 + stage2) / DP per step" in capsys.readouterr().out
