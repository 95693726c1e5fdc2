"""Small helpers for writing JSON artifacts atomically."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import DataError
from .safeio import atomic_path


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON via a temp file + rename, so readers never see half a file."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2, sort_keys=False, ensure_ascii=False)
        fh.write("\n")


def read_json(path: str | Path) -> Any:
    """Parse a JSON file; a damaged one is a DataError naming file, line and column."""
    try:
        with open(path, encoding="utf-8-sig") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}, column {exc.colno})") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
