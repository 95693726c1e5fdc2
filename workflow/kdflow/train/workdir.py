"""A training job's scratch folder (checkpoint + training log), bound to the job's identity.

The identity is everything that determines the trained weights: settings, seed, recipe, the content
fingerprints of every input folder, library versions. A checkpoint is resumed only when the identity it was
written under equals this job's; otherwise it is discarded with a log line (a rerun with another learning
rate must never hand back the old model). One process at a time may train into a folder: a lock file
(``flock``) refuses a second run on the same results folder, whatever its working directory. After a job
has written its output, the caller removes the folder, so a finished job is never resumed."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from ..errors import KdflowError
from ..jsonio import read_json, write_json
from ..locks import hold_lock
from ..safeio import make_dirs

log = logging.getLogger(__name__)
IDENTITY = "identity.json"
LOCK = ".lock"


def changed_keys(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += changed_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}")
    return out


class WorkDir:
    """``with WorkDir(path, identity) as work:`` locks the folder and clears state of another identity."""

    def __init__(self, path: str | Path, identity: dict[str, Any], main: bool = True) -> None:
        self.path = Path(path)
        self.identity = json.loads(json.dumps(identity, sort_keys=True, default=str))
        self.main = main
        self._lock_fh: Any = None

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint"

    @property
    def log_csv(self) -> Path:
        return self.path / "train_log.csv"

    def __enter__(self) -> WorkDir:
        if not self.main:  # data-parallel helpers: the main process owns the folder
            return self
        make_dirs(self.path)
        self._lock()
        identity_file = self.path / IDENTITY
        old = read_json(identity_file) if identity_file.exists() else None
        if old != self.identity:
            stale = self.checkpoint.exists() or self.log_csv.exists()
            if stale:
                why = ", ".join(changed_keys(old, self.identity)[:8]) if old else "no identity recorded"
                log.warning(
                    "%s: discarding the checkpoint and log of another run (changed: %s); training from step 0",
                    self.path,
                    why,
                )
            self._clear()
            write_json(identity_file, self.identity)
        return self

    def resumable(self) -> bool:
        """True when the recorded identity is this job's (every rank asks; only the main one clears)."""
        path = self.path / IDENTITY
        try:
            return path.exists() and read_json(path) == self.identity
        except KdflowError:
            return False

    def _lock(self) -> None:
        self._lock_fh = hold_lock(
            self.path / LOCK,
            "training into this folder: two runs on one results folder "
            "cannot share a job (wait for it, or give the other run its own `results`)",
        )

    def _clear(self) -> None:
        if self.checkpoint.exists():
            shutil.rmtree(self.checkpoint)
        self.log_csv.unlink(missing_ok=True)
        (self.path / IDENTITY).unlink(missing_ok=True)

    def __exit__(self, *exc: object) -> None:
        if self._lock_fh is not None:
            self._lock_fh.close()
            self._lock_fh = None

    def remove(self) -> None:
        """Remove the folder once the job's output is written (a finished job is never resumed)."""
        if self.main and self.path.exists():
            shutil.rmtree(self.path, ignore_errors=True)
