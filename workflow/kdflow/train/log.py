"""The per-step CSV log of a training run."""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path
from typing import Any

from ..safeio import atomic_path, write_error

log = logging.getLogger(__name__)


class TrainLog:
    """The per-step CSV log: on resume the rows up to the checkpoint are kept (rewritten atomically, so a
    torn last line from a killed writer goes away) and new rows are appended; never truncated."""

    def __init__(self, path: Path, start: int, main: bool) -> None:
        self.path, self.main = path, main
        self.rows = self._previous(start) if main else []
        self.fields: list[str] | None = list(self.rows[0]) if self.rows else None
        if main:
            with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
                if self.fields:
                    writer = csv.DictWriter(fh, fieldnames=self.fields)
                    writer.writeheader()
                    writer.writerows(self.rows)
        self._fh = open(path if main else os.devnull, "a", newline="", encoding="utf-8")

    def _previous(self, start: int) -> list[dict[str, Any]]:
        if start == 0 or not self.path.exists():
            if start:
                log.warning("%s is missing: the log of steps 1-%d is lost", self.path, start)
            return []
        rows = []
        with open(self.path, newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                try:
                    step = int(row["step"])
                except (TypeError, ValueError):
                    break  # a torn line after the last checkpoint
                if step > start:
                    break
                rows.append(row)
        if len(rows) != start:
            log.warning("%s holds %d of the %d steps before the checkpoint", self.path, len(rows), start)
        return rows

    def write(self, row: dict[str, Any]) -> None:
        try:
            if self.fields is None:
                self.fields = list(row)
                csv.DictWriter(self._fh, fieldnames=self.fields).writeheader()
            csv.DictWriter(self._fh, fieldnames=self.fields).writerow(row)
            self._fh.flush()
        except OSError as exc:
            raise write_error(self.path, exc) from None

    def close(self) -> None:
        self._fh.close()
