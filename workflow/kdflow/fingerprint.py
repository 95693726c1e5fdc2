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


def content_fingerprint(path: str | Path) -> str:
    """Digest of a file's or a folder's content. A folder with a ``manifest.json`` (a logit cache) is
    identified by its manifest, which holds the checksum of every shard; any other folder by all its files."""
    path = Path(path)
    if path.is_file():
        return file_sha256(path)
    if (path / "manifest.json").is_file():
        return file_sha256(path / "manifest.json")
    return files_sha256([p for p in path.rglob("*") if p.is_file()], path)


def stat_fingerprint(path: str | Path) -> str:
    """A cheap digest of a file's or folder's names, sizes and modification times (no content read): what
    changes when a local model is replaced or edited in place. Used to rerun `build_model`."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for file in files:
        st = file.stat()
        digest.update(
            f"{file.relative_to(path) if file != path else file.name}\t{st.st_size}\t{st.st_mtime_ns}\n".encode()
        )
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    """Versions of the libraries whose changes can change trained weights."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("kdflow", "torch", "transformers", "deepspeed", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "absent"
    return out


def job_identity(inputs: dict[str, str | Path | None], **settings: Any) -> dict[str, Any]:
    """Everything that determines a training job's result: its settings, the content fingerprints of its
    input folders and the library versions (a checkpoint is resumed only under an equal identity). Returned in
    its JSON form (paths as strings), so it compares equal to the copy written beside the checkpoint."""
    identity = {
        **settings,
        "inputs": {name: content_fingerprint(p) for name, p in inputs.items() if p},
        "versions": library_versions(),
    }
    return json.loads(json.dumps(identity, sort_keys=True, default=str))


TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "merges.txt",
    "vocab.json",
)


# Keys that `from_pretrained` writes back into tokenizer_config.json from how the folder was loaded, not from
# what the tokenizer is: a teacher fine-tuned offline saves `local_files_only: true` beside the asset's `false`.
TOKENIZER_LOAD_KEYS = frozenset({"local_files_only", "name_or_path", "cache_dir", "revision", "token", "_commit_hash"})


def _tokenizer_file_digest(path: Path) -> str:
    if path.name != "tokenizer_config.json":
        return file_sha256(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    kept = {key: value for key, value in data.items() if key not in TOKENIZER_LOAD_KEYS}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()


def tokenizer_fingerprint(folder: str | Path) -> str:
    """Digest of the tokenizer files of a model folder (independent of the weights and of the load-time keys
    in ``TOKENIZER_LOAD_KEYS``)."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for name in TOKENIZER_FILES:
        if (folder / name).exists():
            digest.update(name.encode())
            digest.update(_tokenizer_file_digest(folder / name).encode())
    return digest.hexdigest()


def weights_fingerprint(folder: str | Path) -> str:
    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin"))
    files += [folder / "config.json"]
    return files_sha256(files, folder)
