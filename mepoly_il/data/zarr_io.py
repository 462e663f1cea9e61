"""The on-disk demo dataset: a diffusion_policy ``ReplayBuffer`` layout in Zarr format 2.

Layout (the one of diffusion_policy's ``ReplayBuffer``, so its loaders read these files)::

    NAME.zarr/                  zarr_format=2, written with the zarr-python 3 API, consolidated (.zmetadata)
      .zattrs                   {"mepoly_il": {provenance}, "stats": {"action": {...}, "state": {...}},
                                 "checksums": {"data/action": "sha256:...", ...}}
      data/action   (T, Da) float32   every episode concatenated in time
      data/state    (T, Ds) float32   flat observation; the final observation of each episode is dropped
      meta/episode_ends  (N,) int64   exclusive cumulative ends: episode i is [ends[i-1], ends[i])
      meta/episode_seed  (N,) int64   reset seed of each episode (evaluation must avoid these)
      meta/episode_mode  (N,) int64   optional: each episode's mode label, as an index into the root attribute
                                      ``episode_mode_labels`` (tasks with a ``mode_fn``, see mepoly_il/tasks.py)

Format 2 keeps the store readable by zarr-python 2.x tools (diffusion_policy, DP3, UMI). Everything is written into a
temporary sibling and renamed at the end, so an interrupted write never leaves a complete-looking dataset.

Integrity: a content hash of every array and of the stats is stored at write time and checked by :func:`load_arrays`
(about 1.5 ms for a 100-demo PickCube dataset, 1.8 MB). Chunk files that are missing (zarr would silently read zeros)
or cannot be decoded, and stats that do not match the data, are reported as a corrupt dataset. Datasets written
before the hashes existed still load, with a one-time warning; their stats are recomputed and compared (~70 ms).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import zarr

from mepoly_il.data.stats import check_stats, compute_stats
from mepoly_il.errors import UserError
from mepoly_il.tasks import TASKS, load_mode_fn
from mepoly_il.utils import atomic_path, check_output

FORMAT_VERSION = 1
#: Keys every provenance block carries (DemoDataModule.meta exposes them plus ``episode_seeds``).
PROVENANCE_KEYS = (
    "env_id",
    "obs_mode",
    "control_mode",
    "sim_backend",
    "control_freq",
    "max_episode_steps",
    "source_file",
    "source_sha256",
    "format_version",
)
_FIX_CREATE = "create one with `mepoly-il data prepare` (or `mepoly-il data convert`)"
_FIX_RECREATE = "re-create it with `mepoly-il data convert ... --overwrite`"
_FIX_CORRUPT = "restore it from a backup or re-create it with `mepoly-il data prepare ... --overwrite`"
ARRAY_KEYS = ("data/action", "data/state", "meta/episode_ends", "meta/episode_seed")
#: Optional per-episode mode labels (codes into the root attribute :data:`MODE_LABELS_ATTR`).
MODE_KEY = "meta/episode_mode"
MODE_LABELS_ATTR = "episode_mode_labels"
#: Controllers of ManiSkill's panda (and panda_stick) agents; a dataset naming any other cannot be evaluated.
PANDA_CONTROL_MODES = (
    "pd_joint_delta_pos",
    "pd_joint_pos",
    "pd_ee_delta_pos",
    "pd_ee_delta_pose",
    "pd_ee_pose",
    "pd_joint_target_delta_pos",
    "pd_ee_target_delta_pos",
    "pd_ee_target_delta_pose",
    "pd_joint_vel",
    "pd_joint_pos_vel",
    "pd_joint_delta_pos_vel",
)
#: Packages whose versions are recorded in the provenance (missing ones are skipped).
_VERSIONED = ("mepoly-il", "torch", "numpy", "zarr", "mani_skill")
_warned_unverified: set[str] = set()
# Low-dim arrays are a few MB at most; the diffusion_policy default codec keeps them fast to decompress.
_BLOSC = numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.NOSHUFFLE)
_TARGET_CHUNK_BYTES = 2_000_000


@dataclass
class Episode:
    """One demonstration: ``state`` (L, Ds) and ``action`` (L, Da) aligned step by step, its reset seed and, for
    tasks with a mode function, its mode label."""

    state: np.ndarray
    action: np.ndarray
    seed: int
    mode: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class DatasetArrays:
    """A whole dataset in RAM: ``state`` (T, Ds), ``action`` (T, Da), ``episode_ends`` (N,), ``episode_seed`` (N,)."""

    state: np.ndarray
    action: np.ndarray
    episode_ends: np.ndarray
    episode_seed: np.ndarray

    @property
    def num_episodes(self) -> int:
        return int(len(self.episode_ends))

    @property
    def lengths(self) -> np.ndarray:
        """(N,) episode lengths."""
        return np.diff(self.episode_ends, prepend=0)

    def episode(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(state (L, Ds), action (L, Da)) of episode ``i``."""
        start = 0 if i == 0 else int(self.episode_ends[i - 1])
        end = int(self.episode_ends[i])
        return self.state[start:end], self.action[start:end]


@dataclass
class DatasetInfo:
    """What the root attributes and array shapes say, read without loading the arrays."""

    path: Path
    provenance: dict[str, Any]
    stats: dict[str, dict[str, Any]]
    obs_dim: int
    act_dim: int
    num_frames: int
    num_episodes: int
    checksummed: bool = False  # content hashes stored (verified by load_arrays)


def _chunks(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    """Chunk only along time, about 2 MB per chunk (diffusion_policy's convention)."""
    row = max(1, int(np.prod(shape[1:])) * itemsize)
    rows = max(1, min(shape[0], _TARGET_CHUNK_BYTES // row))
    return (rows, *shape[1:])


def _check_episode(i: int, ep: Episode, ds: int, da: int, where: str) -> None:
    state, action = ep.state, ep.action
    if state.ndim != 2 or action.ndim != 2:
        raise UserError(f"{where}: episode {i} has state {state.shape} / action {action.shape}, expected 2-D arrays")
    if len(action) == 0:
        raise UserError(f"{where}: episode {i} (seed {ep.seed}) has zero length; drop it or regenerate the demos")
    if len(state) != len(action):
        raise UserError(
            f"{where}: episode {i} has {len(state)} states but {len(action)} actions; states must have the final "
            "observation dropped so both have one row per step"
        )
    if state.shape[1] != ds or action.shape[1] != da:
        raise UserError(
            f"{where}: episode {i} has dims state {state.shape[1]}, action {action.shape[1]} but episode 0 has "
            f"{ds}, {da}; every episode must come from the same obs/control mode"
        )
    for name, arr in (("states", state), ("actions", action)):
        if not np.isfinite(arr).all():
            bad = int(np.argwhere(~np.isfinite(arr))[0, 0])
            raise UserError(
                f"{where}: episode {i} (seed {ep.seed}) has NaN/inf {name} at step {bad}; drop that episode or "
                "regenerate the demos"
            )


def _is_zarr_group(path: Path) -> bool:
    return (path / ".zgroup").is_file() or (path / "zarr.json").is_file()


def known_control_modes() -> set[str]:
    """Control modes a dataset may record: every registered task's mode and the panda controllers."""
    return set(PANDA_CONTROL_MODES) | {t.control_mode for t in TASKS.values()}


def array_digest(arr: np.ndarray) -> str:
    """``"sha256:<hex>"`` of an array's dtype, shape and little-endian C-order bytes."""
    arr = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
    h = hashlib.sha256(f"{arr.dtype.str}{arr.shape}".encode())
    h.update(memoryview(arr).cast("B"))
    return f"sha256:{h.hexdigest()}"


def stats_digest(stats: dict[str, Any]) -> str:
    """``"sha256:<hex>"`` of the stats mapping as canonical JSON."""
    return "sha256:" + hashlib.sha256(json.dumps(stats, sort_keys=True).encode()).hexdigest()


def _package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in _VERSIONED:
        with contextlib.suppress(PackageNotFoundError):
            out[name.replace("-", "_")] = version(name)
    return out


def _normalize_provenance(prov: dict[str, Any]) -> dict[str, Any]:
    """Add versions, creation time and command line; keep only the file name of ``source_file`` (paths move)."""
    prov = dict(prov)
    if prov.get("source_file"):
        prov["source_file"] = Path(str(prov["source_file"])).name
    prov["versions"] = _package_versions()
    prov["created_utc"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    prov["command"] = " ".join(sys.argv)
    return prov


def write_dataset(
    path: str | os.PathLike,
    episodes: Sequence[Episode],
    provenance: dict[str, Any],
    overwrite: bool = False,
    source: str | None = None,
) -> Path:
    """Validate ``episodes`` and write them as a zarr dataset at ``path`` (atomically). Returns the final path.

    ``provenance`` must hold :data:`PROVENANCE_KEYS` (``format_version``, package versions, ``created_utc`` and
    ``command`` are filled in; ``source_file`` is reduced to its file name). ``source`` names the input in error
    messages (defaults to ``path``). Each array's :func:`array_digest` and the :func:`stats_digest` go into the
    ``checksums`` attribute. Episodes that carry a ``mode`` (all or none of them) are written with
    ``meta/episode_mode`` and the sorted label set in ``episode_mode_labels``; unlabelled episodes of a registered
    task with a ``mode_fn`` are labelled with it first (from their states).
    """
    path = Path(path)
    where = source or str(path)
    check_output(path, overwrite=overwrite, kind="dir", replaceable=(_is_zarr_group, "a zarr dataset"))
    if not episodes:
        raise UserError(f"{where}: no episodes to write; generate demos first with `mepoly-il data generate`")
    ds, da = episodes[0].state.shape[-1], episodes[0].action.shape[-1]
    for i, ep in enumerate(episodes):
        _check_episode(i, ep, ds, da, where)
    state = np.concatenate([ep.state for ep in episodes]).astype(np.float32)
    action = np.concatenate([ep.action for ep in episodes]).astype(np.float32)
    ends = np.cumsum([len(ep.action) for ep in episodes]).astype(np.int64)
    seeds = np.asarray([int(ep.seed) for ep in episodes], dtype=np.int64)
    task = TASKS.get(str(provenance.get("env_id")))
    mode_fn = load_mode_fn(task) if task is not None else None
    if mode_fn is not None and all(ep.mode is None for ep in episodes):
        # The task's own labels, from each episode's states (as evaluation labels rollouts).
        episodes = [replace(ep, mode=str(mode_fn(ep.state))) for ep in episodes]
        provenance = {**provenance, "mode_fn": task.mode_fn}
    labelled = [ep.mode is not None for ep in episodes]
    if any(labelled) and not all(labelled):
        raise ValueError("either every episode carries a mode label or none does")
    mode_labels = sorted({str(ep.mode) for ep in episodes}) if all(labelled) else None
    modes = np.asarray([mode_labels.index(str(ep.mode)) for ep in episodes], dtype=np.int64) if mode_labels else None
    meta_arrays = [("episode_ends", ends), ("episode_seed", seeds)] + ([("episode_mode", modes)] if mode_labels else [])

    prov = {"format_version": FORMAT_VERSION, "source": "maniskill", **provenance}
    prov["format_version"] = FORMAT_VERSION
    missing = [k for k in PROVENANCE_KEYS if k not in prov]
    if missing:
        raise ValueError(f"provenance lacks {missing}")
    prov.setdefault("keys", {"action": "action", "state": "observation.state"})
    prov = _normalize_provenance(prov)
    stats = {"action": compute_stats(action), "state": compute_stats(state)}

    with atomic_path(path, overwrite=overwrite) as tmp:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=2)
        data = root.create_group("data")
        meta = root.create_group("meta")
        for name, arr in (("action", action), ("state", state)):
            # Every chunk is written, even all-zero ones, so a missing chunk file always means damage.
            z = data.create_array(
                name,
                shape=arr.shape,
                chunks=_chunks(arr.shape, 4),
                dtype="float32",
                compressors=_BLOSC,
                config={"write_empty_chunks": True},
            )
            z[:] = arr
        for name, arr in meta_arrays:
            z = meta.create_array(
                name,
                shape=arr.shape,
                chunks=arr.shape,
                dtype="int64",
                compressors=None,
                config={"write_empty_chunks": True},
            )
            z[:] = arr
        root.attrs["mepoly_il"] = prov
        root.attrs["stats"] = stats
        root.attrs["checksums"] = {
            "data/action": array_digest(action),
            "data/state": array_digest(state),
            "meta/episode_ends": array_digest(ends),
            "meta/episode_seed": array_digest(seeds),
            "stats": stats_digest(stats),
        }
        if mode_labels:
            root.attrs[MODE_LABELS_ATTR] = mode_labels
            root.attrs["checksums"] = {
                **root.attrs["checksums"],
                MODE_KEY: array_digest(modes),
                MODE_LABELS_ATTR: stats_digest({"labels": mode_labels}),
            }
        zarr.consolidate_metadata(str(tmp))
    return path


def _not_dataset(path: Path, why: str) -> UserError:
    return UserError(f"{path}: not a mepoly-il zarr dataset ({why}); {_FIX_CREATE}")


def _open(path: str | os.PathLike) -> tuple[Path, Any]:
    path = Path(path)
    if not path.exists():
        raise _not_dataset(path, "no such file or directory")
    if not path.is_dir():
        raise _not_dataset(path, "not a directory")
    try:
        root = zarr.open_group(str(path), mode="r")
    except Exception as err:  # zarr raises several types for a directory that is not a store
        raise _not_dataset(path, f"cannot open as a zarr group: {type(err).__name__}") from None
    return path, root


def read_info(path: str | os.PathLike) -> DatasetInfo:
    """Read provenance, stats and shapes (no array data). Raises UserError if ``path`` is not a valid dataset."""
    path, root = _open(path)
    attrs = dict(root.attrs)
    prov = attrs.get("mepoly_il")
    if not isinstance(prov, dict) or "format_version" not in prov:
        raise _not_dataset(path, "no 'mepoly_il' provenance in the root attributes")
    if int(prov["format_version"]) > FORMAT_VERSION:
        raise UserError(
            f"{path}: dataset format_version {prov['format_version']} is newer than this mepoly-il supports "
            f"({FORMAT_VERSION}); upgrade mepoly-il or re-create the dataset"
        )
    mode = prov.get("control_mode")
    if mode is not None and mode not in known_control_modes():
        raise UserError(
            f"{path}: control_mode {mode!r} in the provenance is not a ManiSkill panda controller (known: "
            f"{', '.join(sorted(known_control_modes()))}); {_FIX_RECREATE} --control-mode MODE"
        )
    shapes: dict[str, tuple[int, ...]] = {}
    for key in ARRAY_KEYS:
        try:
            shapes[key] = tuple(root[key].shape)
        except KeyError:
            raise _not_dataset(path, f"missing array {key}") from None
    if len(shapes["data/action"]) != 2 or len(shapes["data/state"]) != 2:
        raise UserError(f"{path}: data/action and data/state must be 2-D (T, D); {_FIX_RECREATE}")
    n_act, n_state = shapes["data/action"][0], shapes["data/state"][0]
    if n_act != n_state:
        raise UserError(
            f"{path}: arrays disagree in length (data/action has {n_act} rows, data/state has {n_state}); "
            f"{_FIX_RECREATE}"
        )
    if shapes["meta/episode_ends"] != shapes["meta/episode_seed"]:
        raise UserError(
            f"{path}: meta/episode_ends {shapes['meta/episode_ends']} and meta/episode_seed "
            f"{shapes['meta/episode_seed']} disagree in length; {_FIX_RECREATE}"
        )
    if MODE_KEY in root and tuple(root[MODE_KEY].shape) != shapes["meta/episode_ends"]:
        raise UserError(
            f"{path}: {MODE_KEY} {tuple(root[MODE_KEY].shape)} and meta/episode_ends {shapes['meta/episode_ends']} "
            f"disagree in length; {_FIX_RECREATE}"
        )
    obs_dim, act_dim = shapes["data/state"][1], shapes["data/action"][1]
    stats = attrs.get("stats")
    for key, dim in (("state", obs_dim), ("action", act_dim)):
        problem = check_stats(stats.get(key) if isinstance(stats, dict) else None, dim)
        if problem:
            raise UserError(f"{path}: {key} {problem} in the root attributes; {_FIX_RECREATE}")
    return DatasetInfo(
        path=path,
        provenance=prov,
        stats=stats,
        obs_dim=int(obs_dim),
        act_dim=int(act_dim),
        num_frames=int(n_act),
        num_episodes=int(shapes["meta/episode_ends"][0]),
        checksummed=isinstance(attrs.get("checksums"), dict),
    )


def _read_array(path: Path, root: Any, key: str, dtype: Any, verify: bool) -> np.ndarray:
    """Read one array; missing or undecodable chunks are a one-line UserError instead of zeros or a traceback."""
    z = root[key]
    if verify and z.nchunks_initialized < z.nchunks:
        raise UserError(
            f"{path}: corrupt dataset: {z.nchunks - z.nchunks_initialized} of {z.nchunks} chunk files of {key} are "
            f"missing; {_FIX_CORRUPT}"
        )
    try:
        return np.asarray(z[:], dtype=dtype)
    except Exception as err:  # blosc/numcodecs raise RuntimeError, ValueError, ... for truncated or garbage chunks
        raise UserError(
            f"{path}: corrupt dataset: {key} cannot be decoded ({type(err).__name__}); {_FIX_CORRUPT}"
        ) from None


def _check_stats_match(path: Path, stats: dict[str, Any], arrays: DatasetArrays) -> None:
    for key in ("action", "state"):
        fresh = compute_stats(getattr(arrays, key))
        for name in [k for k in stats[key] if k in fresh]:
            if not np.allclose(np.asarray(stats[key][name], dtype=np.float64), fresh[name], rtol=1e-5, atol=1e-6):
                raise UserError(
                    f"{path}: corrupt dataset: stored {key} stats[{name!r}] do not match data/{key}; {_FIX_CORRUPT}"
                )


def load_arrays(path: str | os.PathLike) -> DatasetArrays:
    """Load the whole dataset into RAM as numpy and check it: checksums, stored stats, lengths, ends, finite values.

    A dataset without ``checksums`` (written by an older mepoly-il) loads with a one-time warning.
    """
    info = read_info(path)
    path, root = _open(path)
    checksums = dict(root.attrs).get("checksums")
    verify = isinstance(checksums, dict)
    if not verify and str(path) not in _warned_unverified:
        _warned_unverified.add(str(path))
        print(
            f"warning: {path}: written without checksums (older mepoly-il), so missing or damaged chunks cannot all "
            f"be detected; {_FIX_RECREATE} to add them",
            file=sys.stderr,
        )
    arrays = DatasetArrays(
        state=_read_array(path, root, "data/state", np.float32, verify),
        action=_read_array(path, root, "data/action", np.float32, verify),
        episode_ends=_read_array(path, root, "meta/episode_ends", np.int64, verify),
        episode_seed=_read_array(path, root, "meta/episode_seed", np.int64, verify),
    )
    ends = arrays.episode_ends
    if len(ends) == 0:
        raise UserError(f"{path}: dataset has no episodes; {_FIX_RECREATE}")
    if (np.diff(ends, prepend=0) <= 0).any():
        raise UserError(
            f"{path}: meta/episode_ends is not strictly increasing (zero-length or reordered episodes); {_FIX_RECREATE}"
        )
    if int(ends[-1]) != info.num_frames:
        raise UserError(
            f"{path}: arrays disagree in length (meta/episode_ends ends at {int(ends[-1])}, data/* has "
            f"{info.num_frames} rows); {_FIX_RECREATE}"
        )
    if verify:
        for key, arr in zip(ARRAY_KEYS, (arrays.action, arrays.state, arrays.episode_ends, arrays.episode_seed)):
            if checksums.get(key) != array_digest(arr):
                raise UserError(f"{path}: corrupt dataset: {key} does not match its stored checksum; {_FIX_CORRUPT}")
    for name in ("state", "action"):
        if not np.isfinite(getattr(arrays, name)).all():
            raise UserError(f"{path}: data/{name} contains NaN/inf; {_FIX_RECREATE}")
    if verify and "stats" in checksums:
        if checksums["stats"] != stats_digest(info.stats):
            raise UserError(f"{path}: corrupt dataset: stored stats do not match their checksum; {_FIX_CORRUPT}")
    else:  # no stored hash: recompute (quantiles dominate the cost)
        _check_stats_match(path, info.stats, arrays)
    return arrays


def episode_seeds(path: str | os.PathLike) -> list[int]:
    """The reset seed of every episode in the dataset (small array; read directly)."""
    _, root = _open(path)
    return [int(s) for s in root["meta/episode_seed"][:]]


def episode_modes(path: str | os.PathLike) -> list[str] | None:
    """Each episode's mode label (``meta/episode_mode`` decoded), or None for a dataset without labels.

    The codes and the label set are checked against their stored checksums.
    """
    path, root = _open(path)
    if MODE_KEY not in root:
        return None
    attrs = dict(root.attrs)
    labels = attrs.get(MODE_LABELS_ATTR)
    checksums = attrs.get("checksums")
    codes = _read_array(path, root, MODE_KEY, np.int64, verify=isinstance(checksums, dict))
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise UserError(f"{path}: {MODE_KEY} exists but the attribute {MODE_LABELS_ATTR} is missing; {_FIX_CORRUPT}")
    if isinstance(checksums, dict) and (
        checksums.get(MODE_KEY) != array_digest(codes)
        or checksums.get(MODE_LABELS_ATTR) != stats_digest({"labels": labels})
    ):
        raise UserError(f"{path}: corrupt dataset: {MODE_KEY} does not match its stored checksum; {_FIX_CORRUPT}")
    if len(codes) and (codes.min() < 0 or codes.max() >= len(labels)):
        raise UserError(f"{path}: corrupt dataset: {MODE_KEY} holds codes outside {MODE_LABELS_ATTR}; {_FIX_CORRUPT}")
    return [labels[int(c)] for c in codes]
