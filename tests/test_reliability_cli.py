"""Bad inputs through the real CLI: each must exit 2 with exactly one `error:` line, no traceback, and leave the
files on disk exactly as they were (no dataset deleted, no half-written output, no stray temporary folder)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import zarr

from mepoly_il.cli import main as cli_main
from mepoly_il.data.synthetic import make_synthetic_dataset


def _snapshot(root: Path) -> dict[str, str]:
    """Relative path -> 'dir' or the sha256 of the file, for everything under ``root``."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _set_attrs(ds: Path, **attrs) -> None:
    """Change root attributes and re-consolidate (what a hand edit of .zattrs + .zmetadata would do)."""
    root = zarr.open_group(str(ds), mode="r+")
    for key, value in attrs.items():
        if value is None:
            del root.attrs[key]
        else:
            root.attrs[key] = value
    zarr.consolidate_metadata(str(ds))


def _prov(ds: Path, **changes) -> dict:
    prov = dict(zarr.open_group(str(ds), mode="r").attrs["mepoly_il"])
    prov.update(changes)
    return prov


def _fake_ckpt(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"global_step": 10, "state_dict": {}, "mepoly_il": {"format_version": 1, "policy": "dp"}}, path)
    return path


# Each case: (id, setup(tmp, ds) -> argv, substring of the error line). ``ds`` is a fresh synthetic dataset.
Case = tuple[str, Callable[[Path, Path], list[str]], str]


def _missing_chunk(tmp: Path, ds: Path) -> list[str]:
    (ds / "data" / "action" / "0.0").unlink()
    return ["data", "inspect", str(ds)]


def _garbage_chunk(tmp: Path, ds: Path) -> list[str]:
    (ds / "data" / "state" / "0.0").write_bytes(b"not a blosc frame at all")
    return ["data", "inspect", str(ds)]


def _truncated_chunk(tmp: Path, ds: Path) -> list[str]:
    chunk = ds / "data" / "action" / "0.0"
    chunk.write_bytes(chunk.read_bytes()[:40])
    return ["data", "inspect", str(ds)]


def _changed_data(tmp: Path, ds: Path) -> list[str]:
    z = zarr.open_group(str(ds), mode="r+")["data/action"]
    z[3, 0] = 0.123  # valid chunk, plausible value, stats untouched
    return ["data", "inspect", str(ds)]


def _changed_stats(tmp: Path, ds: Path) -> list[str]:
    stats = dict(zarr.open_group(str(ds), mode="r").attrs["stats"])
    stats["action"] = {**stats["action"], "max": [v + 0.5 for v in stats["action"]["max"]]}
    _set_attrs(ds, stats=stats)
    return ["data", "inspect", str(ds)]


def _legacy_changed_stats(tmp: Path, ds: Path) -> list[str]:
    _set_attrs(ds, checksums=None)
    return _changed_stats(tmp, ds)


def _legacy_missing_chunk(tmp: Path, ds: Path) -> list[str]:
    _set_attrs(ds, checksums=None)  # as written before checksums existed
    (ds / "data" / "action" / "0.0").unlink()
    return ["data", "inspect", str(ds)]


def _bogus_control_mode(tmp: Path, ds: Path) -> list[str]:
    _set_attrs(ds, mepoly_il=_prov(ds, control_mode="pd_warp_drive"))
    return ["data", "inspect", str(ds)]


def _corrupt_eval_info(tmp: Path, ds: Path) -> list[str]:
    ckpt = _fake_ckpt(tmp / "run" / "step=10.ckpt")
    info = ckpt.parent / "eval" / "step=10" / "eval_info.json"
    info.parent.mkdir(parents=True)
    info.write_text('{"provenance": {"checkpoint_sha256": "ab')  # a run killed mid-write by an older version
    return ["eval", "run", str(ckpt), "--episodes", "2"]


def _incomplete_eval_info(tmp: Path, ds: Path) -> list[str]:
    ckpt = _fake_ckpt(tmp / "run" / "step=10.ckpt")
    info = ckpt.parent / "eval" / "step=10" / "eval_info.json"
    info.parent.mkdir(parents=True)
    info.write_text(json.dumps({"provenance": {}}))
    return ["eval", "run", str(ckpt), "--episodes", "2"]


def _demos(tmp: Path, env_id: str = "PushCube-v1", episodes: int = 1, **env_kwargs) -> Path:
    """A small ManiSkill-format demo pair (h5 + json) in ``tmp/raw``: ``episodes`` listed, one stored."""
    import h5py
    import numpy as np

    raw = tmp / "raw"
    raw.mkdir(exist_ok=True)
    h5 = raw / "trajectory.none.pd_joint_pos.physx_cpu.h5"
    with h5py.File(h5, "w") as f:
        f.create_dataset("traj_0/actions", data=np.zeros((4, 8), np.float32))
        f.create_dataset("traj_0/env_states/actors/cube", data=np.zeros((5, 13), np.float32))
    kwargs = {"control_mode": "pd_joint_pos", "obs_mode": "none", "sim_backend": "physx_cpu", **env_kwargs}
    eps = [{"episode_id": i, "episode_seed": i, "elapsed_steps": 4, "success": True} for i in range(episodes)]
    meta = {"env_info": {"env_id": env_id, "env_kwargs": kwargs, "max_episode_steps": 50}, "episodes": eps}
    h5.with_suffix(".json").write_text(json.dumps(meta))
    return h5


def _unrelated_raw(tmp: Path) -> Path:
    """An output ``x.zarr`` whose raw-demo folder ``x.raw`` exists but holds something else."""
    (tmp / "x.raw").mkdir()
    (tmp / "x.raw" / "notes.txt").write_text("mine")
    return tmp / "x.zarr"


def _convert(h5: Path, *more: str) -> list[str]:
    return ["data", "convert", "--src", str(h5), "--out", str(h5.parent.parent / "c.zarr"), *more]


def _not_a_dir_parent(tmp: Path, ds: Path) -> Path:
    (tmp / "afile").write_text("x")
    return tmp / "afile" / "out"


def _fit(ds: Path, root: Path, *extra: str) -> list[str]:
    """A tiny stage-1 `fit` of the synthetic dataset (its env id is no registered task: horizons given)."""
    horizons = ["--data.obs_horizon", "2", "--data.act_horizon", "8", "--data.pred_horizon", "16"]
    return ["fit", "stage1", "--config", "configs/stage1/cpu.yaml", "--data.path", str(ds), *horizons,
            "--trainer.default_root_dir", str(root), "--trainer.max_steps", "2", *extra]  # fmt: skip


def _ckpt_file(tmp: Path, content: bytes | None = None, **mepoly) -> Path:
    """A .ckpt holding ``content``, or a torch.save'd checkpoint with a NaN weight / ``mepoly`` overrides."""
    path = tmp / "bad.ckpt"
    if content is not None:
        path.write_bytes(content)
        return path
    state = {"policy.w": torch.tensor([1.0, float("nan")])} if not mepoly else {"policy.w": torch.ones(2)}
    torch.save({"global_step": 2, "state_dict": state, "mepoly_il": {"format_version": 1, "stage": 1, **mepoly}}, path)
    return path


def _truncated_ckpt(tmp: Path) -> Path:
    good = _ckpt_file(tmp, None, policy=None)
    good.write_bytes(good.read_bytes()[:200])
    return good


def _other_run(tmp: Path) -> Path:
    _fake_ckpt(tmp / "run" / "checkpoints" / "step=0000020.ckpt")
    return tmp / "run"


REPO = Path(__file__).resolve().parents[1]
CASES: list[Case] = [
    ("fit-ckpt-text", lambda t, d: _fit(d, t / "r", "--ckpt_path", str(_ckpt_file(t, b"hello"))), "not a checkpoint"),
    ("fit-ckpt-empty", lambda t, d: _fit(d, t / "r", "--ckpt_path", str(_ckpt_file(t, b""))), "empty file"),
    ("fit-ckpt-truncated", lambda t, d: _fit(d, t / "r", "--ckpt_path", str(_truncated_ckpt(t))), "truncated"),
    ("fit-ckpt-nan", lambda t, d: _fit(d, t / "r", "--ckpt_path", str(_ckpt_file(t))), "NaN or inf"),
    (
        "fit-ckpt-future-format",
        lambda t, d: _fit(d, t / "r", "--ckpt_path", str(_ckpt_file(t, None, format_version=99))),
        "format version 99",
    ),
    ("fit-ckpt-missing", lambda t, d: _fit(d, t / "r", "--ckpt_path", str(t / "nope.ckpt")), "not found"),
    (
        "fit-ckpt-other-stage",
        lambda t, d: _fit(d, t / "r", "--ckpt_path", str(_fake_ckpt(t / "dp.ckpt"))),
        "not of `fit stage1`",
    ),
    ("fit-into-other-run", lambda t, d: _fit(d, _other_run(t)), "already holds the checkpoints of another run"),
    ("fit-max-steps-negative", lambda t, d: _fit(d, t / "r", "--trainer.max_steps", "-5"), "max_steps"),
    ("fit-latent-dim-zero", lambda t, d: _fit(d, t / "r", "--model.policy.latent_dim", "0"), "latent_dim=0"),
    ("fit-unknown-key", lambda t, d: _fit(d, t / "r", "--model.bogus", "3"), "--model.bogus"),
    ("fit-bad-value", lambda t, d: _fit(d, t / "r", "--model.lr", "fast"), "model.lr"),
    ("eval-nan-weights", lambda t, d: ["eval", "run", str(_ckpt_file(t)), "--episodes", "1"], "NaN or inf"),
    ("plot-onto-dataset", lambda t, d: ["data", "inspect", str(d), "--plot", str(d)], "is the input"),
    ("plot-existing-dir", lambda t, d: ["data", "inspect", str(d), "--plot", str(t / "run")], "existing directory"),
    ("plot-parent-of-dataset", lambda t, d: ["data", "inspect", str(d), "--plot", str(t)], "contains the input"),
    ("plot-parent-is-file", lambda t, d: ["data", "inspect", str(d), "--plot", str(_not_a_dir_parent(t, d))], "not a"),
    ("export-onto-source", lambda t, d: ["data", "export-lerobot", str(d), "--out", str(d), "--overwrite"], "is the"),
    (
        "export-inside-source",
        lambda t, d: ["data", "export-lerobot", str(d), "--out", str(d / "meta" / "x"), "--overwrite"],
        "lies inside the input",
    ),
    (
        "export-parent-of-source",
        lambda t, d: ["data", "export-lerobot", str(d), "--out", str(t), "--overwrite"],
        "contains the input",
    ),
    (
        "export-over-unrelated-dir",
        lambda t, d: ["data", "export-lerobot", str(d), "--out", str(t / "run"), "--overwrite"],
        "is not a LeRobot dataset",
    ),
    ("plot-over-other-file", lambda t, d: ["data", "inspect", str(d), "--plot", str(t / "run" / "keep.txt")], "PNG"),
    ("export-existing", lambda t, d: ["data", "export-lerobot", str(d), "--out", str(t / "run")], "already exists"),
    (
        "export-parent-is-file",
        lambda t, d: ["data", "export-lerobot", str(d), "--out", str(_not_a_dir_parent(t, d))],
        "is not a directory",
    ),
    ("missing-chunk", _missing_chunk, "chunk files of data/action are missing"),
    ("garbage-chunk", _garbage_chunk, "data/state cannot be decoded"),
    ("truncated-chunk", _truncated_chunk, "corrupt dataset: data/action"),
    ("changed-data", _changed_data, "data/action does not match its stored checksum"),
    ("changed-stats", _changed_stats, "stored stats do not match their checksum"),
    ("legacy-changed-stats", _legacy_changed_stats, "stored action stats['max'] do not match data/action"),
    ("legacy-missing-chunk", _legacy_missing_chunk, "stats["),
    ("bogus-control-mode", _bogus_control_mode, "'pd_warp_drive' in the provenance is not a ManiSkill"),
    ("eval-seed-too-large", lambda t, d: ["eval", "run", str(t / "x.ckpt"), "--seed", "429397"], "use a seed block"),
    ("eval-reconfig-negative", lambda t, d: ["eval", "run", "x.ckpt", "--reconfiguration-freq", "-1"], ">= 0"),
    ("eval-steps-zero", lambda t, d: ["eval", "run", "x.ckpt", "--max-episode-steps", "0"], "must be >= 1"),
    ("eval-num-envs-zero", lambda t, d: ["eval", "run", "x.ckpt", "--num-envs", "0"], "--num-envs must be >= 1"),
    ("eval-device-bogus", lambda t, d: ["eval", "run", "x.ckpt", "--device", "tpu9"], "not a torch device"),
    (
        "eval-default-episodes-seed-block",  # no --episodes: the task's 100 episodes (+ 7250 envs) pass the top block
        lambda t, d: ["eval", "run", str(_fake_ckpt(t / "r" / "a.ckpt")), "--seed", "429396", "--num-envs", "7250"],
        "use a seed block <= 429395",
    ),
    ("eval-corrupt-eval-info", _corrupt_eval_info, "corrupt eval_info.json"),
    ("eval-incomplete-eval-info", _incomplete_eval_info, "delete it to re-evaluate"),
    (
        "convert-onto-source",
        lambda t, d: ["data", "convert", "--src", str(h5 := _demos(t)), "--out", str(h5)],
        "is the",
    ),
    (
        "convert-over-raw-dir",
        lambda t, d: ["data", "convert", "--src", str(h5 := _demos(t)), "--out", str(h5.parent), "--overwrite"],
        "contains the input",
    ),
    (
        "convert-over-unrelated-dir",
        lambda t, d: ["data", "convert", "--src", str(_demos(t)), "--out", str(t / "run"), "--overwrite"],
        "is not a zarr dataset",
    ),
    (
        "prepare-over-unrelated-dir",
        lambda t, d: (
            ["data", "prepare", "--env-id", "PushCube-v1", "--num-demos", "2", "--out", str(t / "run")]
            + ["--overwrite"]
        ),
        "is not a zarr dataset",
    ),
    (
        "generate-over-file",
        lambda t, d: (
            ["data", "generate", "--env-id", "PushCube-v1", "--num-demos", "2", "--out"]
            + [str(t / "run" / "keep.txt"), "--overwrite"]
        ),
        "is an existing file",
    ),
    (
        "generate-over-unrelated-dir",
        lambda t, d: (
            ["data", "generate", "--env-id", "PushCube-v1", "--num-demos", "2", "--out", str(t / "run")]
            + ["--overwrite"]
        ),
        "is not a `data generate` output",
    ),
    (
        "prepare-over-unrelated-raw-dir",
        lambda t, d: (
            ["data", "prepare", "--env-id", "PushCube-v1", "--num-demos", "2", "--overwrite", "--out"]
            + [str(_unrelated_raw(t))]
        ),
        "is not a `data generate` output",
    ),
    (
        "prepare-out-contains-its-raw-dir",  # the test runs in tmp: --out . would hold ./.raw
        lambda t, d: ["data", "prepare", "--env-id", "PushCube-v1", "--num-demos", "2", "--out", ".", "--overwrite"],
        "contains the input .raw",
    ),
    ("demo-json-bogus-backend", lambda t, d: _convert(_demos(t, sim_backend="warp_cpu")), "is not a ManiSkill backend"),
    ("demo-h5-missing-trajectory", lambda t, d: _convert(_demos(t, episodes=2)), "the h5 has no such episode"),
    (
        "demo-json-other-control-mode",
        lambda t, d: _convert(_demos(t, control_mode="pd_ee_delta_pos"), "--control-mode", "pd_joint_pos"),
        "demos are in control mode pd_ee_delta_pos",
    ),
]
# Cases that import ManiSkill or build one of its environments (no stepping).
SIM_CASES: list[Case] = [
    ("demo-json-unknown-env", lambda t, d: _convert(_demos(t, env_id="Nope-v9")), "'Nope-v9' is not a ManiSkill env"),
    (
        "demo-json-bogus-control-mode",
        lambda t, d: _convert(_demos(t, control_mode="pd_warp"), "--control-mode", "pd_warp"),
        "control mode pd_warp is not one of PushCube-v1's robot",
    ),
]


def _rl(method: str, *flags: str, head: str | None = "mepoly", env: str = "bandit-lemniscate"):
    """``rl METHOD`` with a tiny budget (were a bad value accepted, the row would fail fast), output in tmp/rl."""
    budget = {"ppo": ["--iterations", "1", "--num_steps", "4", "--num_envs", "2"], "rpg": ["--iterations", "1"],
              "sac": ["--total_steps", "8"], "s2ac": ["--total_steps", "8"]}[method]  # fmt: skip
    head_flags = ["--head", head] if head and method in ("ppo", "sac") else []
    return lambda t, d: ["rl", method, "--env", env, *head_flags, "--out", str(t / "rl"), *budget,
                         *[f.replace("{tmp}", str(t)) for f in flags]]  # fmt: skip


def _text_file(tmp: Path, name: str, content: str = "hello") -> Path:
    path = tmp / name
    path.write_text(content)
    return path


def _eval(*flags: str):
    return lambda t, d: ["eval", "run", str(_fake_ckpt(t / "r" / "a.ckpt")), "--episodes", "2", *flags]


def _fit_kind(kind: str, ds: Path, root: Path, *extra: str) -> list[str]:
    """A ``fit KIND`` of the synthetic dataset with the horizons it needs (no registered task)."""
    horizons = ["--data.obs_horizon", "2", "--data.act_horizon", "8", "--data.pred_horizon", "16"]
    return ["fit", kind, "--config", f"configs/{kind}/cpu.yaml", "--data.path", str(ds), *horizons,
            "--trainer.default_root_dir", str(root), "--trainer.max_steps", "2", *extra]  # fmt: skip


# The rest of the corpus, by command group; each row a different mistake (or the same one in another command).
RL_CASES: list[Case] = [
    *[(f"rl-{m}-order-300", _rl(m, "--order", "300"), "use --order <= 177") for m in ("ppo", "sac")],
    ("rl-s2ac-order-300", _rl("s2ac", "--order", "300"), "unrecognized arguments: --order 300"),  # no polynomial
    ("rl-rpg-toy-order-300", _rl("rpg", "--order", "300", env="toy1d"), "--order"),
    ("rl-ppo-order-negative", _rl("ppo", "--order", "-1"), "order"),
    ("rl-sac-order-negative", _rl("sac", "--order", "-1"), "order"),
    ("rl-ppo-order-zero", _rl("ppo", "--order", "0"), "order"),
    ("rl-s2ac-particles-zero", _rl("s2ac", "--particles", "0"), "particles"),
    ("rl-ppo-nodes-one", _rl("ppo", "--nodes", "1"), "nodes"),
    ("rl-sac-nodes-one", _rl("sac", "--nodes", "1"), "nodes"),
    ("rl-ppo-components-zero", _rl("ppo", "--components", "0", head="gmm"), "components"),
    ("rl-sac-components-zero", _rl("sac", "--components", "0", head="gmm"), "components"),
    ("rl-ppo-sigma-zero", _rl("ppo", "--sigma", "0"), "sigma"),
    ("rl-rpg-sigma-zero", _rl("rpg", "--sigma", "0"), "sigma"),
    ("rl-ppo-lr-negative", _rl("ppo", "--lr", "-1"), "lr"),
    ("rl-rpg-lr-negative", _rl("rpg", "--lr", "-1"), "lr"),
    ("rl-sac-actor-lr-negative", _rl("sac", "--actor_lr", "-1"), "actor_lr=-1.0 must be > 0"),
    ("rl-s2ac-critic-lr-negative", _rl("s2ac", "--critic_lr", "-1"), "critic_lr=-1.0 must be > 0"),
    ("rl-ppo-num-envs-zero", _rl("ppo", "--num_envs", "0"), "--num-envs 0"),
    ("rl-sac-num-envs-zero", _rl("sac", "--num_envs", "0"), "num_envs=0 must be"),
    ("rl-ppo-seed-negative", _rl("ppo", "--seed", "-1"), "--seed -1"),
    ("rl-sac-seed-negative", _rl("sac", "--seed", "-1"), "--seed -1"),
    ("rl-ppo-unknown-env", _rl("ppo", env="bandit-nope"), "bandit-nope"),
    ("rl-sac-unknown-env", _rl("sac", env="mars"), "mars"),
    ("rl-rpg-unknown-env", _rl("rpg", env="mars"), "mars"),
    ("rl-ppo-unknown-head", _rl("ppo", head="transformer"), "transformer"),
    ("rl-sac-unknown-head", _rl("sac", head="fpo"), "fpo"),
    ("rl-ppo-unknown-flag", _rl("ppo", "--warp", "9"), "--warp"),
    ("rl-s2ac-unknown-flag", _rl("s2ac", "--warp", "9"), "--warp"),
    ("rl-ppo-gamma-above-one", _rl("ppo", "--gamma", "2"), "gamma"),
    ("rl-sac-tau-above-one", _rl("sac", "--tau", "2"), "tau"),
    ("rl-ppo-iterations-zero", _rl("ppo", "--iterations", "0"), "iterations"),
    ("rl-sac-total-steps-zero", _rl("sac", "--total_steps", "0"), "total_steps=0 must be"),
    ("rl-sac-batch-size-zero", _rl("sac", "--batch_size", "0"), "batch_size=0 must be"),
    ("rl-ppo-minibatches-zero", _rl("ppo", "--num_minibatches", "0"), "--num-minibatches 0"),
    ("rl-ppo-clip-negative", _rl("ppo", "--clip_coef", "-0.2"), "--clip-coef -0.2"),
    ("rl-ppo-quadrature-bogus", _rl("ppo", "--quadrature", "simpson"), "simpson"),
    ("rl-ppo-basis-bogus", _rl("ppo", "--basis", "fourier"), "fourier"),
    ("rl-rpg-latents-zero", _rl("rpg", "--latents", "0"), "latents"),
    ("rl-ppo-eval-episodes-zero", _rl("ppo", "--eval_episodes", "0"), "--eval-episodes 0"),
    ("rl-s2ac-autotune", _rl("s2ac", "--autotune", "true"), "--autotune true"),
    ("rl-ppo-out-is-file", _rl("ppo", "--out", "{tmp}/run/keep.txt"), "is an existing file"),
    ("rl-ppo-out-exists", _rl("ppo", "--out", "{tmp}/run"), "already exists"),
    ("rl-ppo-out-other-dir-overwrite", _rl("ppo", "--out", "{tmp}/run", "--overwrite"), "not an `rl` run folder"),
    ("rl-sac-out-parent-is-file", _rl("sac", "--out", "{tmp}/run/keep.txt/x"), "is not a directory"),
    ("rl-unknown-command", lambda t, d: ["rl", "a2c"], "unknown rl command 'a2c'"),
    ("rl-report-missing-root", lambda t, d: ["rl", "report", str(t / "nope"), "--out", str(t / "rep")], "nope"),
    (
        "rl-sweep-unknown-env",
        lambda t, d: ["rl", "sweep", "--envs", "mars", "--heads", "mepoly", "--seeds", "0", "--out", str(t / "sw")],
        "mars",
    ),
    (
        "rl-sweep-jobs-zero",
        lambda t, d: [
            "rl",
            "sweep",
            "--envs",
            "bandit-lemniscate",
            "--seeds",
            "0",
            "--jobs",
            "0",
            "--out",
            str(t / "s"),
        ],
        "--jobs 0: must be >= 1",
    ),
]
EVAL_CASES: list[Case] = [
    ("eval-episodes-zero", _eval("--episodes", "0"), "episodes"),
    ("eval-episodes-negative", _eval("--episodes", "-3"), "episodes"),
    ("eval-seed-negative", _eval("--seed", "-1"), "seed"),
    ("eval-video-negative", _eval("--video", "-1"), "--video must be >= 0"),
    ("eval-num-envs-negative", _eval("--num-envs", "-2"), "--num-envs must be >= 1"),
    ("eval-steps-negative", _eval("--max-episode-steps", "-5"), "--max-episode-steps"),
    ("eval-reconfig-very-negative", _eval("--reconfiguration-freq", "-100"), "--reconfiguration-freq"),
    ("eval-device-cuda-index", _eval("--device", "cuda:7"), "--device cuda:7"),
    ("eval-device-mps", _eval("--device", "mps"), "only cpu and cuda"),
    ("eval-sim-backend-bogus", _eval("--sim-backend", "warp"), "warp"),
    ("eval-episodes-not-int", _eval("--episodes", "ten"), "ten"),
    ("eval-unknown-flag", _eval("--fast"), "--fast"),
    ("eval-missing-ckpt", lambda t, d: ["eval", "run", str(t / "nope.ckpt"), "--episodes", "2"], "nope.ckpt"),
    ("eval-text-ckpt", lambda t, d: ["eval", "run", str(_ckpt_file(t, b"hello")), "--episodes", "2"], "bad.ckpt"),
    ("eval-empty-ckpt", lambda t, d: ["eval", "run", str(_ckpt_file(t, b"")), "--episodes", "2"], "empty file"),
    ("eval-truncated-ckpt", lambda t, d: ["eval", "run", str(_truncated_ckpt(t)), "--episodes", "2"], "truncated"),
    (
        "eval-future-format-ckpt",
        lambda t, d: ["eval", "run", str(_ckpt_file(t, None, format_version=99)), "--episodes", "2"],
        "format version 99",
    ),
    ("eval-dir-without-ckpts", lambda t, d: ["eval", "run", str(t / "run"), "--episodes", "2"], "run"),
    ("eval-dataset-as-ckpt", lambda t, d: ["eval", "run", str(d), "--episodes", "2"], "d.zarr"),
    ("eval-no-command", lambda t, d: ["eval", "rollout", "x.ckpt"], "rollout"),
    ("eval-summary-missing-dir", lambda t, d: ["eval", "summary", str(t / "nope"), "--out", str(t / "s")], "nope"),
    ("eval-summary-top-k-zero", lambda t, d: ["eval", "summary", str(t / "run"), "--top-k", "0"], "top-k"),
    ("eval-summary-source-bogus", lambda t, d: ["eval", "summary", str(t / "run"), "--source", "x"], "source"),
    ("eval-summary-no-dirs", lambda t, d: ["eval", "summary"], "RUN_DIR"),
]
DATA_CASES: list[Case] = [
    ("inspect-missing", lambda t, d: ["data", "inspect", str(t / "nope.zarr")], "nope.zarr"),
    ("inspect-a-text-file", lambda t, d: ["data", "inspect", str(_text_file(t, "x.zarr"))], "x.zarr"),
    ("inspect-a-plain-dir", lambda t, d: ["data", "inspect", str(t / "run")], "run"),
    ("inspect-no-path", lambda t, d: ["data", "inspect"], "path"),
    ("data-unknown-command", lambda t, d: ["data", "shuffle", str(d)], "shuffle"),
    (
        "export-missing-source",
        lambda t, d: ["data", "export-lerobot", str(t / "no.zarr"), "--out", str(t / "e")],
        "no.zarr",
    ),
    ("export-no-out", lambda t, d: ["data", "export-lerobot", str(d)], "--out"),
    (
        "convert-src-missing",
        lambda t, d: ["data", "convert", "--src", str(t / "no.h5"), "--out", str(t / "c.zarr")],
        "no.h5",
    ),
    (
        "convert-json-missing",
        lambda t, d: ["data", "convert", "--src", str(_no_json(t)), "--out", str(t / "c.zarr")],
        ".json",
    ),
    (
        "convert-src-not-h5",
        lambda t, d: ["data", "convert", "--src", str(_text_file(t, "t.h5")), "--out", str(t / "c.zarr")],
        "t.h5",
    ),
    ("convert-workers-zero", lambda t, d: _convert(_demos(t), "--workers", "0"), "--workers"),
    ("convert-out-is-file", lambda t, d: _convert(_demos(t))[:-2] + ["--out", str(t / "run" / "keep.txt")], "keep.txt"),
    ("convert-out-exists", lambda t, d: _convert(_demos(t))[:-2] + ["--out", str(d)], "already exists"),
    (
        "prepare-num-demos-zero",
        lambda t, d: ["data", "prepare", "--env-id", "PushCube-v1", "--num-demos", "0", "--out", str(t / "p.zarr")],
        "--num-demos",
    ),
    (
        "prepare-num-demos-negative",
        lambda t, d: ["data", "prepare", "--env-id", "PushCube-v1", "--num-demos", "-4", "--out", str(t / "p.zarr")],
        "--num-demos",
    ),
    (
        "prepare-unknown-env",
        lambda t, d: ["data", "prepare", "--env-id", "Nope-v9", "--num-demos", "2", "--out", str(t / "p.zarr")],
        "Nope-v9",
    ),
    (
        "prepare-workers-zero",
        lambda t, d: (
            ["data", "prepare", "--env-id", "PushCube-v1", "--num-demos", "2", "--workers", "0"]
            + ["--out", str(t / "p.zarr")]
        ),  # fmt: skip
        "--workers",
    ),
    (
        "prepare-seed-negative",
        lambda t, d: (
            ["data", "prepare", "--env-id", "PushCube-v1", "--num-demos", "2", "--seed", "-1"]
            + ["--out", str(t / "p.zarr")]
        ),  # fmt: skip
        "--seed",
    ),
    (
        "prepare-out-exists",
        lambda t, d: ["data", "prepare", "--env-id", "PushCube-v1", "--num-demos", "2", "--out", str(d)],
        "already exists",
    ),
    (
        "generate-num-demos-zero",
        lambda t, d: ["data", "generate", "--env-id", "PushCube-v1", "--num-demos", "0", "--out", str(t / "g")],
        "--num-demos",
    ),
    (
        "generate-unknown-env",
        lambda t, d: ["data", "generate", "--env-id", "Nope-v9", "--num-demos", "2", "--out", str(t / "g")],
        "Nope-v9",
    ),
    (
        "generate-out-exists",
        lambda t, d: ["data", "generate", "--env-id", "PushCube-v1", "--num-demos", "2", "--out", str(t / "run")],
        "already exists",
    ),
    (
        "generate-num-demos-not-int",
        lambda t, d: ["data", "generate", "--env-id", "PushCube-v1", "--num-demos", "many", "--out", str(t / "g")],
        "many",
    ),
]
FIT_CASES: list[Case] = [
    ("fit-unknown-target", lambda t, d: ["fit", "stage3"], "stage3"),
    ("fit-data-path-missing", lambda t, d: _fit(t / "no.zarr", t / "r"), "no.zarr"),
    ("fit-data-path-not-zarr", lambda t, d: _fit(t / "run", t / "r"), "run"),
    ("fit-batch-size-zero", lambda t, d: _fit(d, t / "r", "--data.batch_size", "0"), "batch_size"),
    ("fit-val-ratio-above-one", lambda t, d: _fit(d, t / "r", "--data.val_ratio", "1.5"), "val_ratio"),
    ("fit-max-episodes-zero", lambda t, d: _fit(d, t / "r", "--data.max_episodes", "0"), "max_episodes"),
    ("fit-norm-margin-two", lambda t, d: _fit(d, t / "r", "--data.norm_margin", "2"), "norm_margin"),
    ("fit-horizons-inconsistent", lambda t, d: _fit(d, t / "r", "--data.act_horizon", "20"), "horizon"),
    ("fit-lr-schedule-bogus", lambda t, d: _fit(d, t / "r", "--model.lr_schedule", "linear"), "lr_schedule"),
    ("fit-config-missing", lambda t, d: _fit(d, t / "r", "--config", str(t / "no.yaml")), "no.yaml"),
    ("fit-precision-bogus", lambda t, d: _fit(d, t / "r", "--trainer.precision", "7-bit"), "precision"),
    ("fit-accelerator-bogus", lambda t, d: _fit(d, t / "r", "--trainer.accelerator", "abacus"), "abacus"),
    ("fit-latent-dim-negative", lambda t, d: _fit(d, t / "r", "--model.policy.latent_dim", "-2"), "latent_dim"),
    ("fit-dropout-above-one", lambda t, d: _fit(d, t / "r", "--model.policy.dropout", "1.5"), "dropout"),
    (
        "fit-stage2-poly-order-200",
        lambda t, d: _fit_kind(
            "stage2",
            d,
            t / "r",
            "--model.stage1_ckpt",
            str(_frozen("mepoly_stage1.ckpt")),
            "--model.policy.poly_order",
            "200",
            "--data.act_horizon",  # the frozen stage 1's horizons (2, 4, 8)
            "4",
            "--data.pred_horizon",
            "8",
        ),
        "poly_order",
    ),
    (
        "fit-stage2-stage1-missing",
        lambda t, d: _fit_kind("stage2", d, t / "r", "--model.stage1_ckpt", str(t / "no.ckpt")),
        "no.ckpt",
    ),
    (
        "fit-stage2-stage1-text",
        lambda t, d: _fit_kind("stage2", d, t / "r", "--model.stage1_ckpt", str(_ckpt_file(t, b"hi"))),
        "bad.ckpt",
    ),
    (
        "fit-stage2-stage1-is-dp",
        lambda t, d: _fit_kind("stage2", d, t / "r", "--model.stage1_ckpt", str(_frozen("dp.ckpt"))),
        "dp.ckpt",
    ),
    ("fit-dp-pred-horizon-odd", lambda t, d: _fit_kind("dp", d, t / "r", "--data.pred_horizon", "18"), "pred_horizon"),
    (
        "fit-dp-ckpt-of-stage1",
        lambda t, d: _fit_kind("dp", d, t / "r", "--ckpt_path", str(_frozen("mepoly_stage1.ckpt"))),
        "stage1",
    ),
    ("top-unknown-group", lambda t, d: ["train", "stage1"], "unknown command group 'train'"),
    ("demo-unknown-job", lambda t, d: ["demo", "rl"], "rl"),
    ("demo-num-demos-not-int", lambda t, d: ["demo", "il", "--num-demos", "x"], "x"),
]
CASES += RL_CASES + EVAL_CASES + DATA_CASES + FIT_CASES


def _no_json(tmp: Path) -> Path:
    h5 = _demos(tmp)
    h5.with_suffix(".json").unlink()
    return h5


def _frozen(name: str) -> Path:
    return REPO / "tests" / "data" / "frozen" / name


if not torch.cuda.is_available():
    CASES.append(
        (
            "eval-cuda-without-gpu",
            lambda t, d: ["eval", "run", "x.ckpt", "--device", "cuda"],
            "CUDA is not available on this machine; use --device cpu",
        )
    )
    CASES.append(
        ("fit-gpu-without-gpu", lambda t, d: _fit(d, t / "r", "--trainer.accelerator", "gpu"), "CUDA is not available")
    )


@pytest.mark.parametrize("setup,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gives_one_line_and_changes_nothing(tmp_path, capsys, monkeypatch, setup, expected):
    _check_one_line(tmp_path, capsys, monkeypatch, setup, expected)


@pytest.mark.sim
@pytest.mark.parametrize("setup,expected", [c[1:] for c in SIM_CASES], ids=[c[0] for c in SIM_CASES])
def test_bad_demo_file_gives_one_line_and_changes_nothing(tmp_path, capsys, monkeypatch, setup, expected):
    _check_one_line(tmp_path, capsys, monkeypatch, setup, expected)


def _check_one_line(tmp_path, capsys, monkeypatch, setup, expected) -> None:
    monkeypatch.chdir(tmp_path)  # relative outputs (if any slipped through) would land here and be seen
    (tmp_path / "configs").symlink_to(REPO / "configs")  # `fit --config configs/...` as run from the repository
    # Lightning's "Seed set to 0" info line goes through a handler bound to an earlier test's captured stream.
    monkeypatch.setattr(logging.getLogger("lightning.fabric.utilities.seed"), "disabled", True)
    ds = make_synthetic_dataset(tmp_path / "d.zarr", num_episodes=6, length=(10, 14))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("not ours")
    argv = setup(tmp_path, ds)
    capsys.readouterr()
    before = _snapshot(tmp_path)
    code = cli_main(argv)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    others = [line for line in err.splitlines() if line.strip() and "error:" not in line]
    assert code == 2, err
    assert len(errors) == 1 and expected in errors[0], err
    assert "Traceback" not in err
    assert all(line.startswith("warning:") for line in others), err  # e.g. the unverified-dataset warning
    assert _snapshot(tmp_path) == before


def test_rl_sweep_failing_child_is_one_line_naming_command_and_log(tmp_path, capsys):
    """A child run that fails is reported in one line (its command and its log file), its output only in the log."""
    from mepoly_il.cli.rl import main as rl_main

    root = tmp_path / "runs"
    argv = ["sweep", "--envs", "bandit-lemniscate", "--heads", "mepoly", "--seeds", "0", "--out", str(root)]
    code = rl_main([*argv, "--", "--no-such-option", "1"])
    out, err = capsys.readouterr()
    assert code == 1
    failed = [line for line in out.splitlines() if "FAILED" in line]
    assert len(failed) == 1 and "Traceback" not in out + err and not err.strip(), out + err
    log = root / "bandit-lemniscate" / "mepoly" / "seed0.log"
    assert f"log {log}" in failed[0] and "rl ppo --env bandit-lemniscate" in failed[0]
    assert "unrecognized arguments" in failed[0] and "unrecognized arguments" in log.read_text()


def test_eval_episodes_default_is_the_tasks(monkeypatch):
    from mepoly_il.cli.eval import default_episodes
    from mepoly_il.tasks import TASKS, TaskSpec

    monkeypatch.setitem(
        TASKS, "Few-v0", TaskSpec("Few-v0", None, max_episode_steps=10, obs_dim=3, act_dim=2, eval_episodes=7)
    )
    ckpt = lambda env_id: {"mepoly_il": {"format_version": 1, "dataset": {"env_id": env_id}}}  # noqa: E731
    assert default_episodes(ckpt("Few-v0")) == 7
    assert default_episodes(ckpt("PushCube-v1")) == TASKS["PushCube-v1"].eval_episodes
    assert default_episodes(ckpt("Unregistered-v0")) == 100
    assert default_episodes({"state_dict": {}}) == 100


@pytest.mark.parametrize(
    "extra, expected",
    [(["--trainer.max_steps", "-5"], "max_steps"), (["--model.policy.latent_dim", "0"], "latent_dim=0")],
    ids=["trainer-error", "model-error"],
)
def test_fit_config_error_is_the_only_line_of_stderr(tmp_path, extra, expected):
    """In a fresh process (no earlier test's logging set-up): Lightning's "Seed set to 0" and any other log line
    are held back until the run is set up, so a config error is the one line on stderr."""
    import subprocess
    import sys

    ds = make_synthetic_dataset(tmp_path / "d.zarr", num_episodes=4, length=(10, 14))
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    argv = [sys.executable, "-m", "mepoly_il", *_fit(ds, tmp_path / "r", *extra)]
    res = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2 and len(lines) == 1 and "error:" in lines[0] and expected in lines[0], res.stderr
    assert not (tmp_path / "r").exists()
