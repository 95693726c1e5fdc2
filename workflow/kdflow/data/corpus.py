"""Stream documents out of a corpus source: text file or folder, JSONL, or a HF dataset."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import DataError
from .files import read_jsonl, text_lines

_SPACES = re.compile(r"[ \t\f\v\u00a0]+")
_BLANKS = re.compile(r"\n{3,}")


def normalise_text(text: str) -> str:
    """NFC normalisation, one space for runs of blanks, no trailing spaces, at most one empty line in a row."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    return _BLANKS.sub("\n\n", "\n".join(lines)).strip()


def _text_documents(path: Path) -> Iterator[str]:
    """Documents of a plain text file are separated by blank lines."""
    buffer: list[str] = []
    for _, line in text_lines(path):
        if line.strip():
            buffer.append(line + "\n")
        elif buffer:
            yield "".join(buffer)
            buffer = []
    if buffer:
        yield "".join(buffer)


def _jsonl_documents(path: Path, field: str) -> Iterator[str]:
    for lineno, obj in read_jsonl(path):
        if not isinstance(obj.get(field), str):
            raise DataError(f"{path}:{lineno}: expected an object with a string field '{field}'")
        yield obj[field]


def _format_of(path: Path, declared: str) -> str:
    if declared != "auto":
        return declared
    return "jsonl" if path.suffix in (".jsonl", ".json") else "text"


def iter_documents(source: str, spec: dict[str, Any]) -> Iterator[str]:
    """Raw documents of ``source`` in a fixed order (folders: files sorted by name)."""
    fmt = spec.get("format", "auto")
    field = spec.get("text_field", "text")
    if fmt == "hf" or source.startswith("hf:"):
        import datasets

        name, subset = source.removeprefix("hf:"), spec.get("subset")
        data = datasets.load_dataset(name, subset, split=spec.get("split", "train"), streaming=True)
        for row in data:
            yield row[field]
        return
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".txt", ".jsonl", ".json"))
        if not files:
            raise DataError(f"{path}: folder has no .txt or .jsonl files")
    elif path.is_file():
        files = [path]
    else:
        raise DataError(f"{path}: corpus source not found")
    for file in files:
        if _format_of(file, fmt) == "jsonl":
            yield from _jsonl_documents(file, field)
        else:
            yield from _text_documents(file)
