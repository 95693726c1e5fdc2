"""Writes that never leave a half file behind and never fail without naming the path.

Every artifact is written to a unique temporary name beside its destination and renamed onto it; on any
failure the temporary file is removed and the error names the destination, the cause and, for a failed
write, the free space left on its file system (a full disk is the usual cause of a nameless
``iostream error`` from torch or safetensors)."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import KdflowError


class WriteError(KdflowError):
    """An artifact could not be written (disk full, read-only folder, ...): the message names the path."""


def _free_space(folder: Path) -> str:
    try:
        return f"{shutil.disk_usage(folder).free / 2**20:,.1f} MiB free there"
    except OSError:
        return "free space unknown"


def write_error(path: str | Path, exc: BaseException) -> WriteError:
    """A WriteError naming ``path``, the cause of ``exc`` and the free space of its folder."""
    path = Path(path)
    if isinstance(exc, OSError) and exc.errno is not None:
        cause = f"{errno.errorcode.get(exc.errno, exc.errno)}: {exc.strerror}"
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return WriteError(f"{path}: cannot write ({cause}); check the folder's permissions")
    else:
        cause = f"{type(exc).__name__}: {exc}"
    folder = next((p for p in [path.parent, *path.parents] if p.exists()), Path("."))
    return WriteError(f"{path}: writing failed ({cause}; {_free_space(folder)})")


def make_dirs(folder: str | Path) -> Path:
    """``mkdir -p`` whose failure names the folder."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(folder, exc) from None
    return folder


@contextmanager
def atomic_path(path: str | Path, mode: int = 0o644) -> Iterator[Path]:
    """Yield a unique temporary path beside ``path``; on success it replaces ``path``, on failure it is
    removed and the error names ``path``."""
    path = Path(path)
    make_dirs(path.parent)
    try:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise write_error(path, exc) from None
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except KdflowError:
        tmp.unlink(missing_ok=True)
        raise
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        raise write_error(path, exc) from exc


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` atomically and durably (fsync before the rename)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


@contextmanager
def atomic_folder(folder: str | Path) -> Iterator[Path]:
    """Yield a unique temporary folder beside ``folder``; on success it replaces ``folder`` (an older one is
    removed first), on failure it is removed and the error names ``folder``."""
    folder = Path(folder)
    make_dirs(folder.parent)
    for leftover in folder.parent.glob(f".{folder.name}.*.tmp"):  # of a writer that was killed
        shutil.rmtree(leftover, ignore_errors=True)
    try:
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
    except OSError as exc:
        raise write_error(folder, exc) from None
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except KdflowError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_error(folder, exc) from exc
