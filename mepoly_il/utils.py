"""Small helpers shared by every layer: output-path checks, atomic writes, hashing, seeding, progress bars."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from mepoly_il.errors import UserError

#: Temporary siblings made by :func:`atomic_path`: ``.tmp-<name>.<pid>.<8 random chars>``.
_TMP_RE = r"\.tmp-{name}\.(\d+)\.[a-z0-9_]{{8}}"
#: The same, as written before the owning pid was part of the name (cleaned once they are an hour old).
_LEGACY_TMP_RE = r"\.tmp-{name}-[a-z0-9_]{{8}}"
_LEGACY_TMP_AGE_S = 3600.0
#: Inside a temporary sibling, where the previous output waits while the new one is renamed in.
_ASIDE = ".old-"


def check_output_path(path: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse to clobber an existing output unless ``overwrite`` is set."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise UserError(f"{path}: output already exists; pass --overwrite to replace it or choose another --out")
    return path


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output(
    out: str | os.PathLike,
    inputs: Iterable[str | os.PathLike] = (),
    overwrite: bool = False,
    option: str = "--out",
    kind: str = "any",
    replaceable: tuple[Callable[[Path], bool], str] | None = None,
) -> Path:
    """Validate an output path before any work runs; returns it as a Path.

    UserError (one line) when ``out`` equals, contains or lies inside one of ``inputs``; when it exists and
    ``overwrite`` is false; when it exists as a directory but ``kind="file"`` (or as a file but ``kind="dir"``);
    when it exists and ``replaceable = (looks_like, what)`` says it is not ``what`` (so that only outputs of the
    same command are ever replaced); when its parent is not a writable directory. ``option`` names the flag.
    """
    path = Path(out)
    resolved = path.resolve()
    for src in inputs:
        src_r = Path(src).resolve()
        if resolved == src_r:
            raise UserError(f"{option} {path}: is the input {src} itself; choose a different output path")
        if resolved in src_r.parents:
            raise UserError(f"{option} {path}: contains the input {src}; choose an output outside it")
        if src_r in resolved.parents:
            raise UserError(f"{option} {path}: lies inside the input {src}; choose an output outside it")
    if path.is_symlink() or path.exists():
        if kind == "file" and path.is_dir():
            raise UserError(f"{option} {path}: is an existing directory; give a file name (it is never deleted)")
        if kind == "dir" and not path.is_dir():
            raise UserError(f"{option} {path}: is an existing file; give a directory name (it is never deleted)")
        if not overwrite:
            raise UserError(f"{option} {path}: output already exists; pass --overwrite to replace it or choose another")
        if replaceable is not None and not replaceable[0](path):
            raise UserError(
                f"{option} {path}: exists and is not {replaceable[1]}, so it is not replaced; choose another path"
            )
    parent = _nearest_existing(resolved.parent)
    if not parent.is_dir():
        raise UserError(f"{option} {path}: {parent} is not a directory; choose an output under a directory")
    try:  # os.access is not enough: root passes it even on read-only mounts
        # an unnamed file (O_TMPFILE on Linux): a kill at this instant leaves nothing behind
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as err:
        raise UserError(
            f"{option} {path}: cannot write in {parent} ({err.strerror}); choose a writable location"
        ) from None
    return path


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_tmp(final: str | os.PathLike) -> list[Path]:
    """Remove temporary siblings of ``final`` left by killed :func:`atomic_path` runs; returns what was removed.

    Only names this module creates are touched: ``.tmp-<name>.<pid>.<random>`` whose pid is no longer running, and
    the older ``.tmp-<name>-<random>`` form once it is an hour old. If ``final`` is missing because a run was
    killed between moving the old output aside and renaming the new one in, the old output is put back first.
    """
    final = Path(final)
    parent = final.parent
    if not parent.is_dir():
        return []
    name = re.escape(final.name)
    current, legacy = re.compile(_TMP_RE.format(name=name)), re.compile(_LEGACY_TMP_RE.format(name=name))
    removed = []
    for entry in parent.iterdir():
        if not entry.is_dir() or entry.is_symlink():
            continue
        m = current.fullmatch(entry.name)
        if m:
            if _pid_alive(int(m.group(1))):
                continue  # another process is writing the same target right now
        elif not (legacy.fullmatch(entry.name) and time.time() - entry.stat().st_mtime > _LEGACY_TMP_AGE_S):
            continue
        aside = entry / (_ASIDE + final.name)
        if (aside.exists() or aside.is_symlink()) and not (final.exists() or final.is_symlink()):
            os.rename(aside, final)
            print(f"note: {final}: restored the previous output after an interrupted replace", file=sys.stderr)
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


_RENAME_EXCHANGE = 2  # renameat2 flag: swap two existing paths in one step (Linux >= 3.15)
_AT_FDCWD = -100
_libc: Any = None


def _exchange(a: Path, b: Path) -> bool:
    """Swap ``a`` and ``b`` atomically; False where the OS or filesystem cannot (then the caller falls back)."""
    global _libc
    if not sys.platform.startswith("linux"):
        return False
    if _libc is None:
        try:
            _libc = ctypes.CDLL(None, use_errno=True)
        except OSError:
            _libc = False
    fn = getattr(_libc, "renameat2", None) if _libc else None
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _is_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


def _replace(new: Path, final: Path, aside: Path) -> None:
    """Put ``new`` at ``final``; an existing ``final`` ends up at ``new`` or ``aside`` (both inside the tmp dir)."""
    if not (final.exists() or final.is_symlink()):
        os.rename(new, final)
        return
    if _is_dir(final) != _is_dir(new):
        what = lambda p: "directory" if _is_dir(p) else "file"
        raise UserError(f"{final}: is an existing {what(final)}; refusing to replace it with a {what(new)}")
    if _exchange(new, final):
        return
    # No atomic swap: old aside, new in, and the old one back if the second rename fails. A kill between the two
    # renames leaves the old output in ``aside``; clean_stale_tmp puts it back on the next run.
    os.rename(final, aside)
    try:
        os.rename(new, final)
    except BaseException:
        os.rename(aside, final)
        raise


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a path inside a temporary sibling directory; on success it replaces ``final``, on error it is deleted.

    Works for files and directories. The old output is deleted only after the new one is in place (an atomic swap
    on Linux; elsewhere rename old aside, rename new in, delete old), so a killed process leaves ``final`` holding
    either the complete old or the complete new output, plus a ``.tmp-*`` sibling that the next run for the same
    ``final`` removes (:func:`clean_stale_tmp`). A directory is never replaced by a file or the reverse.
    """
    final = check_output_path(final, overwrite)
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_tmp(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}.{os.getpid()}.", dir=final.parent))
    target = tmp / final.name
    try:
        yield target
        if not (target.exists() or target.is_symlink()):
            raise FileNotFoundError(f"atomic_path: nothing was written to {target}")
        _replace(target, final, tmp / (_ASIDE + final.name))
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
