"""Aggregation math and file handling of `mepoly-il eval summary`, on fabricated evaluation files (no simulator)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import torch

from mepoly_il.cli import main as cli_main
from mepoly_il.errors import UserError
from mepoly_il.eval.aggregate import (
    TRAINING_EVAL_FORMAT,
    append_training_eval,
    collect_series,
    mean_std,
    summarize,
    to_csv,
    to_markdown,
)
from mepoly_il.eval.rollout import check_seed_overlap, eval_seeds, list_checkpoints

# success_once per evaluated step, per (method, seed): steps 1000..4000.
CURVES = {
    ("dp", 0): [0.2, 0.8, 0.6, 0.7],
    ("dp", 1): [0.1, 0.3, 0.6, 0.5],
    ("dp", 2): [0.4, 0.9, 0.9, 0.2],
    ("mepoly", 0): [0.5, 0.5, 0.95, 0.9],
    ("mepoly", 1): [0.6, 0.7, 0.8, 0.85],
    ("mepoly", 2): [0.3, 0.9, 0.4, 0.88],
}
STEPS = [1000, 2000, 3000, 4000]


def _eval_info(
    path: Path, method: str, seed: int, step: int, once: float, episodes: int = 20, env_id: str = "PushCube-v1"
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    at_end = once / 2
    rows = [
        {
            "episode": i,
            "seed": 1_000_000 + i,
            "success_once": i < once * episodes,
            "success_at_end": i < at_end * episodes,
            "episode_len": 100,
        }
        for i in range(episodes)
    ]
    info = {
        "per_episode": rows,
        "aggregated": {"success_once": once, "success_at_end": at_end, "n_episodes": episodes, "sec": 1.0},
        "video_paths": [],
        "provenance": {"method": method, "env_id": env_id, "global_step": step, "train_seed": seed},
    }
    path.write_text(json.dumps(info))


def _fabricate(root: Path, env_id: str = "PushCube-v1") -> list[Path]:
    runs = []
    for (method, seed), curve in CURVES.items():
        run = root / method / env_id / f"seed{seed}"
        for step, once in zip(STEPS, curve):
            _eval_info(
                run / "checkpoints" / "eval" / f"step={step:07d}" / "eval_info.json",
                method,
                seed,
                step,
                once,
                env_id=env_id,
            )
        runs.append(run)
    return runs


def test_peak_last_topk_and_mean_std(tmp_path):
    runs = _fabricate(tmp_path)
    series = collect_series(runs)
    assert len(series) == 6 and {s.source for s in series} == {"checkpoints"}
    summary = summarize(series, k=3)
    groups = {g["method"]: g for g in summary["groups"]}
    for method in ("dp", "mepoly"):
        per_seed = {p["train_seed"]: p for p in groups[method]["per_seed"]}
        peaks, lasts, tops = [], [], []
        for seed in range(3):
            curve = CURVES[(method, seed)]
            peaks.append(max(curve))
            lasts.append(curve[-1])
            tops.append(sum(sorted(curve, reverse=True)[:3]) / 3)
            p = per_seed[seed]
            assert p["peak"] == pytest.approx(peaks[-1])
            assert p["peak_step"] == STEPS[curve.index(max(curve))]  # first step reaching the peak
            assert p["last"] == pytest.approx(lasts[-1]) and p["last_step"] == 4000
            assert p["top3"] == pytest.approx(tops[-1])
            assert p["peak_at_end"] == pytest.approx(max(curve) / 2)
        g = groups[method]
        assert g["n_seeds"] == 3
        assert g["peak_mean"] == pytest.approx(statistics.mean(peaks))
        assert g["peak_std"] == pytest.approx(statistics.stdev(peaks))  # sample std, ddof=1
        assert g["last_mean"] == pytest.approx(statistics.mean(lasts))
        assert g["top3_std"] == pytest.approx(statistics.stdev(tops))
    md = to_markdown(summary)
    dp_peaks = [max(CURVES[("dp", s)]) for s in range(3)]
    assert f"{statistics.mean(dp_peaks):.3f} ± {statistics.stdev(dp_peaks):.3f}" in md
    csv_lines = to_csv(summary).strip().splitlines()
    assert csv_lines[0].startswith("env_id,method,seed,peak,last,top3")
    assert len(csv_lines) == 1 + 2 * (3 + 2)  # header + per method: 3 seeds + mean + std


def test_single_seed_std_is_null_and_topk_with_few_points():
    assert mean_std([0.5]) == (0.5, None)
    mean, std = mean_std([0.2, 0.4])
    assert mean == pytest.approx(0.3) and std == pytest.approx(statistics.stdev([0.2, 0.4]))


def test_training_log_preferred_and_merged(tmp_path):
    run = tmp_path / "run"
    prov = {"method": "dp", "env_id": "PickCube-v1", "train_seed": 7}
    # Two logger versions (a resumed run): step 200 appears in both, the later file wins.
    for version, rows in (("version_0", [(100, 0.1), (200, 0.5)]), ("version_1", [(200, 0.6), (300, 0.4)])):
        for step, once in rows:
            append_training_eval(
                run / "tb" / version / "eval_during_training.json",
                prov,
                {"global_step": step, "success_once": once, "success_at_end": 0.0, "n_episodes": 10},
            )
    _eval_info(run / "checkpoints" / "eval" / "last" / "eval_info.json", "dp", 7, 300, 0.99, env_id="PickCube-v1")
    (auto,) = collect_series([run])
    assert auto.source == "training" and auto.seed_label == "seed7"
    assert [(p.step, p.success_once) for p in auto.points] == [(100, 0.1), (200, 0.6), (300, 0.4)]
    (ckpts,) = collect_series([run], source="checkpoints")
    assert [(p.step, p.success_once) for p in ckpts.points] == [(300, 0.99)]


def test_append_training_eval_replaces_same_step(tmp_path):
    path = tmp_path / "eval_during_training.json"
    prov = {"method": "mepoly", "env_id": "PushCube-v1"}
    for step, once in ((20, 0.1), (10, 0.2), (20, 0.3)):
        append_training_eval(
            path, prov, {"global_step": step, "success_once": once, "success_at_end": 0.0, "n_episodes": 2}
        )
    data = json.loads(path.read_text())
    assert data["format"] == TRAINING_EVAL_FORMAT
    assert [(r["global_step"], r["success_once"]) for r in data["rows"]] == [(10, 0.2), (20, 0.3)]


def test_bad_inputs_give_user_errors(tmp_path):
    with pytest.raises(UserError, match="not a directory"):
        collect_series([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no eval_info.json"):
        collect_series([tmp_path / "empty"])
    bad = tmp_path / "bad" / "eval_info.json"
    bad.parent.mkdir()
    bad.write_text('{"per_episode": [')  # truncated file
    with pytest.raises(UserError, match=r"bad/eval_info.json: unreadable JSON"):
        collect_series([tmp_path / "bad"])
    bad.write_text('{"aggregated": {}}')
    with pytest.raises(UserError, match="not an eval_info.json"):
        collect_series([tmp_path / "bad"])


def test_summary_cli_writes_all_outputs_and_refuses_overwrite(tmp_path, capsys):
    runs = _fabricate(tmp_path / "runs")
    out = tmp_path / "summary"
    assert cli_main(["eval", "summary", *map(str, runs), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| PushCube-v1 | dp | 3 |" in printed and "| PushCube-v1 | mepoly | 3 |" in printed
    data = json.loads((out / "summary.json").read_text())
    assert {g["method"] for g in data["groups"]} == {"dp", "mepoly"}
    assert len(data["series"]) == 6
    assert (out / "success_vs_step.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "summary.csv").read_text().count("\n") == 11
    # A parent directory works too and finds the same six runs.
    assert cli_main(["eval", "summary", str(tmp_path / "runs"), "--out", str(out), "--overwrite"]) == 0
    assert len(json.loads((out / "summary.json").read_text())["series"]) == 6
    assert cli_main(["eval", "summary", *map(str, runs), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_eval_seeds_and_overlap_refusal():
    seeds = eval_seeds(2, 5)
    assert seeds == list(range(1_020_000, 1_020_005))
    assert eval_seeds(2, 5) == seeds  # deterministic
    check_seed_overlap(seeds, list(range(1000)), "ckpt")  # disjoint: fine
    with pytest.raises(UserError, match=r"ckpt: 1 evaluation seed\(s\) are demonstration seeds.*1020003"):
        check_seed_overlap(seeds, [5, 1_020_003], "ckpt")
    with pytest.raises(UserError, match="no 'episode_seeds'"):
        check_seed_overlap(seeds, None, "ckpt")
    with pytest.raises(UserError, match="--episodes"):
        eval_seeds(0, 0)


def _fake_ckpt(path: Path, step: int, policy: str | None = "dp") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"global_step": step, "state_dict": {}, "mepoly_il": {"format_version": 1, "policy": policy}}, path)


def test_list_checkpoints_orders_by_step_and_skips_duplicate_last(tmp_path):
    ckpts = tmp_path / "run" / "checkpoints"
    _fake_ckpt(ckpts / "step=0000020.ckpt", 20)
    _fake_ckpt(ckpts / "step=0000010.ckpt", 10)
    _fake_ckpt(ckpts / "last.ckpt", 20)
    found = list_checkpoints(tmp_path / "run")
    assert [(p.name, c["global_step"]) for p, c in found] == [("step=0000010.ckpt", 10), ("step=0000020.ckpt", 20)]
    _fake_ckpt(ckpts / "last.ckpt", 25)  # training went past the last step checkpoint: keep it
    assert [p.name for p, _ in list_checkpoints(tmp_path / "run")][-1] == "last.ckpt"
    _fake_ckpt(tmp_path / "run" / "stage1" / "last.ckpt", 30, policy=None)  # cannot act: skipped in a directory
    assert len(list_checkpoints(tmp_path / "run")) == 3
    with pytest.raises(UserError, match="no checkpoint here can act"):
        list_checkpoints(tmp_path / "run" / "stage1")


def test_missing_or_corrupt_checkpoint_is_a_clear_cli_error(tmp_path, capsys):
    assert cli_main(["eval", "run", str(tmp_path / "nope.ckpt"), "--episodes", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "nope.ckpt: no such checkpoint" in err and len(err.splitlines()) == 1
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"PK\x03\x04 definitely not a zip archive")
    assert cli_main(["eval", "run", str(bad), "--episodes", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "bad.ckpt: not a readable checkpoint" in err and len(err.splitlines()) == 1
    (tmp_path / "emptyrun").mkdir()
    assert cli_main(["eval", "run", str(tmp_path / "emptyrun")]) == 2
    assert "no *.ckpt files" in capsys.readouterr().err


def test_same_seed_in_two_run_dirs_is_merged_with_a_warning(tmp_path, capsys):
    for name, step, once in (("a", 100, 0.2), ("b", 200, 0.9)):
        _eval_info(tmp_path / name / "eval_info.json", "dp", 0, step, once)
    (series,) = collect_series([tmp_path / "a", tmp_path / "b"])
    assert [(p.step, p.success_once) for p in series.points] == [(100, 0.2), (200, 0.9)]
    assert "treated as ONE run" in capsys.readouterr().err
