"""`mepoly-il data inspect`: what a dataset holds (episodes, lengths, dims, modes, stats) and a diagnostic plot."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from mepoly_il.data.zarr_io import episode_modes, load_arrays, read_info


def summarize(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON-serialisable summary of the dataset at ``path`` (loads the arrays to check them)."""
    info = read_info(path)
    arrays = load_arrays(path)
    lengths = arrays.lengths
    prov = info.provenance
    modes = episode_modes(path)
    return {
        "path": str(info.path),
        "env_id": prov.get("env_id"),
        "obs_mode": prov.get("obs_mode"),
        "control_mode": prov.get("control_mode"),
        "sim_backend": prov.get("sim_backend"),
        "control_freq": prov.get("control_freq"),
        "max_episode_steps": prov.get("max_episode_steps"),
        "source_file": prov.get("source_file"),
        "source_sha256": prov.get("source_sha256"),
        "format_version": prov.get("format_version"),
        "num_episodes": int(arrays.num_episodes),
        "num_frames": int(info.num_frames),
        "obs_dim": info.obs_dim,
        "act_dim": info.act_dim,
        "episode_length": {
            "min": int(lengths.min()),
            "mean": float(lengths.mean()),
            "max": int(lengths.max()),
        },
        "episode_seeds": {
            "min": int(arrays.episode_seed.min()),
            "max": int(arrays.episode_seed.max()),
            "unique": int(len(np.unique(arrays.episode_seed))),
        },
        # episodes per mode label (tasks with a mode function), None for unlabelled datasets
        "modes": {m: modes.count(m) for m in sorted(set(modes))} if modes is not None else None,
        "num_failed_conversions": prov.get("num_failed_conversions"),
        "created_utc": prov.get("created_utc"),
        "command": prov.get("command"),
        "versions": prov.get("versions"),
        "checksums_verified": info.checksummed,
        "stats": info.stats,
    }


#: ``replaceable`` for :func:`mepoly_il.utils.check_output`: only an earlier PNG is overwritten by ``--plot``.
PNG_FILE = (lambda p: p.is_file() and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", "a PNG file")

#: Columns of the per-dimension stats table (one row per dimension keeps lines short for any width).
_STAT_COLUMNS = ("min", "max", "mean", "std", "q01", "q50", "q99")


def format_summary(summary: dict[str, Any]) -> str:
    """Human-readable lines for :func:`summarize`'s output."""
    el, seeds = summary["episode_length"], summary["episode_seeds"]
    lines = [
        f"dataset        {summary['path']}",
        f"env            {summary['env_id']}  obs={summary['obs_mode']}  control={summary['control_mode']}  "
        f"backend={summary['sim_backend']}  {summary['control_freq']} Hz  "
        f"max_episode_steps={summary['max_episode_steps']}",
        f"episodes       {summary['num_episodes']}  frames {summary['num_frames']}  "
        f"length min/mean/max {el['min']}/{el['mean']:.1f}/{el['max']}",
        f"seeds          {seeds['min']}..{seeds['max']} ({seeds['unique']} unique)",
        f"dims           state {summary['obs_dim']}  action {summary['act_dim']}",
        *(
            ["modes          " + "  ".join(f"{m} {n}" for m, n in summary["modes"].items())]
            if summary.get("modes")
            else []
        ),
        f"source         {summary['source_file']} (sha256 {str(summary['source_sha256'])[:12]})",
    ]
    versions = summary.get("versions") or {}
    made = f"{summary.get('created_utc') or 'unknown time'} by mepoly-il {versions.get('mepoly_il', '?')}"
    lines.append(f"written        {made}  checksums {'verified' if summary['checksums_verified'] else 'absent'}")
    if summary.get("num_failed_conversions"):
        lines.append(f"dropped        {summary['num_failed_conversions']} episodes that failed after conversion")
    for key in ("action", "state"):
        st = summary["stats"][key]
        cols = [c for c in _STAT_COLUMNS if c in st]  # q50 is missing in datasets written before it was stored
        lines.append(f"{key} stats")
        lines.append("  dim " + "".join(f"{c:>11}" for c in cols))
        for d in range(len(st["min"])):
            lines.append(f"  {d:>3} " + "".join(f"{_num(st[c][d]):>11}" for c in cols))
    return "\n".join(lines)


def _num(v: float) -> str:
    """At most 10 characters: fixed point for ordinary magnitudes, else scientific."""
    return f"{v:.4f}" if 1e-3 <= abs(v) < 1e5 or v == 0 else f"{v:.3e}"


def plot_dataset(path: str | os.PathLike, out: str | os.PathLike) -> Path:
    """PNG with per-dimension action and state histograms and the episode-length histogram."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mepoly_il.utils import atomic_path, check_output

    check_output(out, [path], overwrite=True, option="--plot", kind="file", replaceable=PNG_FILE)
    info = read_info(path)
    arrays = load_arrays(path)
    da, ds = info.act_dim, info.obs_dim
    ncols = max(da, min(ds, 8), 1)
    state_rows = int(np.ceil(ds / ncols))
    nrows = 1 + state_rows + 1
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.2 * ncols, 1.8 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.set_visible(False)
    for d in range(da):
        ax = axes[0, d]
        ax.set_visible(True)
        ax.hist(arrays.action[:, d], bins=50, color="tab:orange")
        ax.set_title(f"action[{d}]", fontsize=8)
    for d in range(ds):
        ax = axes[1 + d // ncols, d % ncols]
        ax.set_visible(True)
        ax.hist(arrays.state[:, d], bins=50, color="tab:blue")
        ax.set_title(f"state[{d}]", fontsize=8)
    ax = axes[-1, 0]
    ax.set_visible(True)
    ax.hist(arrays.lengths, bins=min(30, max(5, arrays.num_episodes)), color="tab:green")
    ax.set_title(f"episode length ({arrays.num_episodes} eps)", fontsize=8)
    for ax in axes.flat:
        ax.tick_params(labelsize=6)
    prov = info.provenance
    fig.suptitle(f"{prov.get('env_id')}  {prov.get('control_mode')}  {info.path.name}", fontsize=10)
    fig.tight_layout()
    out = Path(out)
    with atomic_path(out, overwrite=True) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    return out
