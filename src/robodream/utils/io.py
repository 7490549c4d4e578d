"""Atomic file and directory writes.

A reader never sees a half-written file: content goes to a temporary sibling first and is
moved into place with :func:`os.replace`, which is atomic on POSIX file systems.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: Permissions of files and directories robodream writes (mkstemp/mkdtemp alone give 0600/0700).
FILE_MODE, DIR_MODE = 0o644, 0o755


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, fsync, rename), mode 0644."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically.

    Non-finite floats (NaN, inf), which JSON cannot hold, are written as ``null``.
    """
    text = json.dumps(_finite(obj), indent=2, sort_keys=False, default=_json_default, allow_nan=False)
    atomic_write_text(path, text + "\n")


def _finite(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None (recursively through dicts, lists, tuples)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
        return _finite(obj.tolist())
    return obj


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _json_default(o: Any) -> Any:
    # numpy scalars and arrays, Paths
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, os.PathLike):
        return os.fspath(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Build a directory under a temporary name and move it to ``path`` only on success.

    Yields the temporary directory to write into, ``.{name}.pid{pid}@{host}.{random}.tmp`` beside
    ``path`` (the owner in the name lets :func:`remove_stale_temporaries` tell a killed run's
    leftovers from a live one). If the block raises, the temporary directory is removed and
    ``path`` is untouched. If ``path`` exists it is replaced only when ``overwrite`` is true
    (the old one is removed after the new one is in place); otherwise ``FileExistsError`` is
    raised before anything is written.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists")
    path.parent.mkdir(parents=True, exist_ok=True)
    owner = f"pid{os.getpid()}@{socket.gethostname()}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{owner}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, DIR_MODE)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


#: A temporary directory without a live owner on this host is left alone until nothing in it
#: has changed for this long (seconds).
STALE_TEMPORARY_AGE_S = 24 * 3600


def remove_stale_temporaries(path: str | os.PathLike, stale_after_s: float = STALE_TEMPORARY_AGE_S) -> list[Path]:
    """Delete the temporary siblings that killed runs of :func:`atomic_directory` left for ``path``.

    A sibling ``.{name}.pid{pid}@{host}.{random}.tmp`` is removed when ``host`` is this host
    and process ``pid`` no longer exists. Any other temporary sibling (written on another
    host of a shared file system, or named ``.{name}.{random}.tmp`` by older versions) is
    removed only when nothing inside it was modified for ``stale_after_s`` seconds. So the
    directory of a writer still running on this host is never touched, nor one on another host
    that is still writing. ``.{name}.old-{pid}`` directories are never touched: a run killed
    while swapping them may have left the only copy of the previous ``path`` there.

    Returns the removed directories.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return []
    name = re.escape(path.name)
    owned = re.compile(rf"\.{name}\.pid(\d+)@(.+)\.[A-Za-z0-9_]{{8}}\.tmp")
    legacy = re.compile(rf"\.{name}\.[A-Za-z0-9_]{{8}}\.tmp")
    host, now, removed = socket.gethostname(), time.time(), []
    for entry in path.parent.iterdir():
        if not entry.is_dir() or entry.is_symlink():
            continue
        m = owned.fullmatch(entry.name)
        if m and m.group(2) == host:
            stale = not _process_alive(int(m.group(1)))
        elif m or legacy.fullmatch(entry.name):
            stale = now - _newest_mtime(entry) > stale_after_s
        else:
            continue
        if stale:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _newest_mtime(root: Path) -> float:
    newest = root.lstat().st_mtime
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            with contextlib.suppress(OSError):
                newest = max(newest, os.lstat(os.path.join(dirpath, n)).st_mtime)
    return newest
