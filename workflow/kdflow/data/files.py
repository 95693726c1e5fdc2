"""Line-checked readers for the official TSV and JSONL release files: every error names file:line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import DataError


def text_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """Yield (line number, line without its end) of a UTF-8 text file; a UTF-8 BOM is dropped; bytes that are
    not UTF-8 are a DataError naming file:line and the column."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"{path}:{lineno}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at column "
                    f"{exc.start + 1}); convert the file to UTF-8"
                ) from None
            yield lineno, line.rstrip("\r\n")


def read_tsv(
    path: str | Path, columns: list[str] | None = None, header: bool = True
) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield (line number, row) from a GLUE-style TSV (no quoting, tab-separated, optional UTF-8 BOM).

    With ``header`` the first line names the columns; ``columns`` then lists those that must be present.
    Without ``header``, ``columns`` names every column in order.
    """
    path = Path(path)
    names: list[str] | None = None if header else list(columns or [])
    for lineno, line in text_lines(path):
        if names is None:
            names = line.split("\t")
            missing = [c for c in columns or [] if c not in names]
            if missing:
                raise DataError(
                    f"{path}:{lineno}: header lacks column(s) {', '.join(missing)} (found: {', '.join(names)})"
                )
            continue
        if not line.strip():
            continue
        values = line.split("\t")
        if len(values) != len(names):
            raise DataError(
                f"{path}:{lineno}: expected {len(names)} tab-separated columns ({', '.join(names)}), got {len(values)}"
            )
        yield lineno, dict(zip(names, values, strict=True))


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) from a JSONL file; a line that is not a JSON object is an error."""
    path = Path(path)
    for lineno, line in text_lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{lineno}: not valid JSON: {exc.msg} (column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        yield lineno, obj


def require(obj: dict[str, Any], key: str, where: str, kind: type | tuple[type, ...] | None = None) -> Any:
    """``obj[key]``, or a DataError naming ``where`` (file:line) and the missing/mistyped field."""
    if key not in obj:
        raise DataError(f"{where}: missing field '{key}'")
    value = obj[key]
    if kind is not None and not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise DataError(f"{where}: field '{key}' should be {names}, got {type(value).__name__} {value!r}")
    return value
