"""Content fingerprints of files, folders and settings, used by artifact manifests."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def files_sha256(paths: list[Path], root: Path) -> str:
    """One digest over several files, keyed by their path relative to ``root``."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(file_sha256(path).encode())
    return digest.hexdigest()


def settings_sha256(settings: Any) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "merges.txt",
    "vocab.json",
)


def tokenizer_fingerprint(folder: str | Path) -> str:
    """Digest of the tokenizer files of a model folder (independent of the weights)."""
    folder = Path(folder)
    files = [folder / name for name in TOKENIZER_FILES if (folder / name).exists()]
    return files_sha256(files, folder)


def weights_fingerprint(folder: str | Path) -> str:
    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin"))
    files += [folder / "config.json"]
    return files_sha256(files, folder)
