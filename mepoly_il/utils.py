"""Small helpers shared by every layer: atomic writes, hashing, seeding, progress bars."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mepoly_il.errors import UserError


def check_output_path(path: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse to clobber an existing output unless ``overwrite`` is set."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise UserError(f"{path}: output already exists; pass --overwrite to replace it or choose another --out")
    return path


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling path; on success rename it to ``final``, on error delete it.

    Works for files and directories. A killed process leaves only a ``.tmp-*`` sibling, never something at
    ``final`` that looks complete.
    """
    final = check_output_path(final, overwrite)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    target = tmp / final.name
    try:
        yield target
        if final.exists():
            if final.is_dir() and not final.is_symlink():
                shutil.rmtree(final)
            else:
                final.unlink()
        os.replace(target, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Write JSON through a temporary file + rename."""
    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    return Path(path)


def to_primitive(x: Any) -> Any:
    """Nested dicts/lists of numpy values, tuples and paths -> plain Python, loadable with ``weights_only=True``."""
    import numpy as np

    if isinstance(x, dict):
        return {str(k): to_primitive(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [to_primitive(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    if x is None or isinstance(x, bool | int | float | str):
        return x
    return str(x)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def progress(**kwargs: Any):
    """A rich progress bar with the columns every long job here uses."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        **kwargs,
    )
