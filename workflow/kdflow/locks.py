"""Exclusive advisory locks (``flock``) that name their holder: one run per results folder, one process per
training work folder. The kernel releases them when the holder dies, so a killed run never leaves a stale
lock behind."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

from .errors import KdflowError
from .safeio import make_dirs, write_error


class BusyError(KdflowError):
    """Another live process holds the lock."""


def hold_lock(path: str | Path, what: str) -> IO[str]:
    """Take the lock at ``path`` without waiting and return its open handle (the lock lives as long as the
    handle); a BusyError naming ``what`` and the holder's pid and host when another process has it."""
    path = Path(path)
    make_dirs(path.parent)
    try:
        fh = open(path, "a+", encoding="utf-8")
    except OSError as exc:
        raise write_error(path, exc) from None
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "another process"
        fh.close()
        raise BusyError(f"{path.parent}: {holder} is already {what} ({path} is locked)") from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
    fh.flush()
    return fh
