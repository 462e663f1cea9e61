"""`mepoly-il data export-lerobot`: a state dataset in LeRobot's v3.0 on-disk layout.

Written (LeRobot ``CODEBASE_VERSION = "v3.0"``; many episodes per parquet file)::

    OUT/meta/info.json                          codebase_version, fps, features, totals, path templates, splits
    OUT/meta/stats.json                         {feature: {min, max, mean, std, count, q01, q10, q50, q90, q99}}
    OUT/meta/tasks.parquet                      index = task string, column task_index
    OUT/meta/episodes/chunk-000/file-000.parquet   one row per episode (length, index ranges, file refs, and
                                                ``stats/<feature>/<stat>`` for every feature and stat, as LeRobot
                                                writes them: its split/delete tools re-aggregate from these)
    OUT/data/chunk-000/file-000.parquet         action, observation.state, timestamp, frame_index, episode_index,
                                                index, task_index

Key mapping: ``state`` -> ``observation.state``, ``action`` -> ``action``; ``timestamp = frame_index / fps``.
Files hold at most ``chunks_size`` files per chunk and about ``data_files_size_in_mb`` each, like LeRobot.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from mepoly_il.data.stats import compute_stats
from mepoly_il.data.zarr_io import load_arrays, read_info
from mepoly_il.errors import UserError
from mepoly_il.utils import atomic_path, check_output

CODEBASE_VERSION = "v3.0"
CHUNKS_SIZE = 1000
DATA_FILE_SIZE_MB = 100
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"


def _fixed_list(arr: np.ndarray):
    """(N, D) float32 -> arrow fixed-size list column (LeRobot's ``Sequence(length=D)``)."""
    import pyarrow as pa

    arr = np.ascontiguousarray(arr, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(arr.reshape(-1), type=pa.float32()), arr.shape[1])


def _split_files(ends: np.ndarray, bytes_per_frame: int) -> list[tuple[int, int]]:
    """Group whole episodes into files of about DATA_FILE_SIZE_MB: list of (first_episode, end_episode)."""
    limit = DATA_FILE_SIZE_MB * 1024 * 1024
    groups, first, start_row = [], 0, 0
    for i, end in enumerate(ends):
        if (end - start_row) * bytes_per_frame > limit and i > first:
            groups.append((first, i))
            first, start_row = i, int(ends[i - 1])
    groups.append((first, len(ends)))
    return groups


def export_lerobot(
    path: str | os.PathLike,
    out: str | os.PathLike,
    task: str | None = None,
    robot_type: str = "panda",
    overwrite: bool = False,
) -> Path:
    """Write the zarr dataset at ``path`` as a LeRobot v3.0 dataset directory ``out``; returns ``out``.

    ``out`` may not be, contain or lie inside ``path`` (checked before any work, even with ``overwrite``).
    """
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    looks_like = lambda p: (p / "meta" / "info.json").is_file()
    check_output(out, [path], overwrite=overwrite, kind="dir", replaceable=(looks_like, "a LeRobot dataset"))
    info = read_info(path)
    prov = info.provenance
    if prov.get("obs_mode") not in (None, "state"):
        raise UserError(f"{path}: obs_mode {prov.get('obs_mode')}; export-lerobot handles state datasets only")
    arrays = load_arrays(path)
    fps = int(prov.get("control_freq") or 20)
    task = task or str(prov.get("env_id") or "task")
    ends = arrays.episode_ends
    starts = np.concatenate([[0], ends[:-1]])
    lengths = ends - starts
    n_frames, n_eps = int(ends[-1]), len(ends)
    episode_index = np.repeat(np.arange(n_eps, dtype=np.int64), lengths)
    frame_index = np.arange(n_frames, dtype=np.int64) - np.repeat(starts, lengths)
    timestamp = (frame_index / fps).astype(np.float32)
    da, ds = info.act_dim, info.obs_dim

    features = {
        "action": {"dtype": "float32", "shape": [da], "names": [f"action_{i}" for i in range(da)]},
        "observation.state": {"dtype": "float32", "shape": [ds], "names": [f"state_{i}" for i in range(ds)]},
        "timestamp": {"dtype": "float32", "shape": [1], "names": None},
        "frame_index": {"dtype": "int64", "shape": [1], "names": None},
        "episode_index": {"dtype": "int64", "shape": [1], "names": None},
        "index": {"dtype": "int64", "shape": [1], "names": None},
        "task_index": {"dtype": "int64", "shape": [1], "names": None},
    }
    columns = {
        "action": arrays.action,
        "observation.state": arrays.state,
        "timestamp": timestamp,
        "frame_index": frame_index,
        "episode_index": episode_index,
        "index": np.arange(n_frames, dtype=np.int64),
        "task_index": np.zeros(n_frames, dtype=np.int64),
    }
    # Recomputed rather than copied from the zarr attributes, so datasets stored with fewer quantiles export all five.
    as_2d = lambda v: v.reshape(len(v), -1)
    stats = {k: compute_stats(as_2d(v)) for k, v in columns.items()}
    bytes_per_frame = 4 * (da + ds + 1) + 8 * 4
    files = _split_files(ends, bytes_per_frame)

    with atomic_path(out, overwrite=overwrite) as tmp:
        episode_rows: dict[str, list] = {
            k: []
            for k in (
                "episode_index",
                "tasks",
                "length",
                "data/chunk_index",
                "data/file_index",
                "dataset_from_index",
                "dataset_to_index",
                "meta/episodes/chunk_index",
                "meta/episodes/file_index",
            )
        }
        per_episode_stats: dict[str, list] = {}
        for file_no, (e0, e1) in enumerate(files):
            chunk, fidx = divmod(file_no, CHUNKS_SIZE)
            r0, r1 = int(starts[e0]), int(ends[e1 - 1])
            table = pa.table(
                {k: _fixed_list(v[r0:r1]) if v.ndim == 2 else pa.array(v[r0:r1]) for k, v in columns.items()}
            )
            dest = tmp / DATA_PATH.format(chunk_index=chunk, file_index=fidx)
            dest.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, dest)
            for e in range(e0, e1):
                b, en = int(starts[e]), int(ends[e])
                episode_rows["episode_index"].append(e)
                episode_rows["tasks"].append([task])
                episode_rows["length"].append(en - b)
                episode_rows["data/chunk_index"].append(chunk)
                episode_rows["data/file_index"].append(fidx)
                episode_rows["dataset_from_index"].append(b)
                episode_rows["dataset_to_index"].append(en)
                episode_rows["meta/episodes/chunk_index"].append(0)
                episode_rows["meta/episodes/file_index"].append(0)
                for key, src in columns.items():
                    for name, value in compute_stats(as_2d(src[b:en])).items():
                        per_episode_stats.setdefault(f"stats/{key}/{name}", []).append(value)
        ep_table = pa.table({**episode_rows, **per_episode_stats})
        ep_dest = tmp / EPISODES_PATH.format(chunk_index=0, file_index=0)
        ep_dest.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(ep_table, ep_dest)

        pd.DataFrame({"task_index": [0]}, index=pd.Index([task], name="task")).to_parquet(tmp / "meta/tasks.parquet")
        info_json = {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": robot_type,
            "total_episodes": n_eps,
            "total_frames": n_frames,
            "total_tasks": 1,
            "chunks_size": CHUNKS_SIZE,
            "data_files_size_in_mb": DATA_FILE_SIZE_MB,
            "video_files_size_in_mb": 500,
            "fps": fps,
            "splits": {"train": f"0:{n_eps}"},
            "data_path": DATA_PATH,
            "video_path": None,
            "features": features,
            # Not read by LeRobot; keeps the link back to the simulator setup (seeds, control mode, source hash).
            "mepoly_il": {**prov, "episode_seeds": [int(s) for s in arrays.episode_seed]},
        }
        (tmp / "meta/info.json").write_text(json.dumps(info_json, indent=4))
        (tmp / "meta/stats.json").write_text(json.dumps(stats, indent=4))
    return Path(out)
