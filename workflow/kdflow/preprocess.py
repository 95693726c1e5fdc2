"""Rule `preprocess_corpus`: normalise, deduplicate, split, tokenise and pack a corpus into flat memmaps.

Output folder: ``train.bin`` and ``valid.bin`` (token ids, uint16 when the vocabulary fits, else
uint32, ``blocks x block_size`` row-major) and ``meta.json`` (tokenizer fingerprint, counts, block size).
Memory stays bounded: documents stream through; only 16-byte hashes of seen documents are kept.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from tqdm import tqdm
from transformers import AutoTokenizer

from .data.corpus import iter_documents, normalise_text
from .errors import DataError
from .fingerprint import tokenizer_fingerprint
from .jsonio import read_json, write_json
from .safeio import atomic_path, make_dirs

SPLITS = ("train", "valid")


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.uint32)


def split_of(text: str, seed: int, valid_fraction: float) -> str:
    """Deterministic document-level split from a hash of the text and the seed."""
    digest = hashlib.sha256(f"{seed}\x00{text}".encode()).digest()
    return "valid" if int.from_bytes(digest[:8], "big") / 2**64 < valid_fraction else "train"


class _Packer:
    """Append token ids to a binary file in whole blocks; the partial tail is counted, not written."""

    def __init__(self, fh: BinaryIO, block_size: int, dtype: np.dtype) -> None:
        self.fh, self.block_size, self.dtype = fh, block_size, dtype
        self.pending: list[int] = []
        self.blocks = self.documents = self.tokens = 0

    def add(self, ids: list[int]) -> None:
        """One document's ids (separator included)."""
        self.documents += 1
        self.tokens += len(ids)
        self.pending.extend(ids)
        whole = len(self.pending) // self.block_size * self.block_size
        if whole:
            np.asarray(self.pending[:whole], dtype=self.dtype).tofile(self.fh)
            self.blocks += whole // self.block_size
            del self.pending[:whole]


def _new_texts(documents: list[str], seen: set[bytes], stats: dict[str, int]) -> list[str]:
    """The normalised texts of ``documents`` that are neither empty nor seen before (counted in ``stats``)."""
    texts = []
    for raw in documents:
        stats["documents_read"] += 1
        text = normalise_text(raw)
        if not text:
            stats["empty_documents"] += 1
            continue
        key = hashlib.blake2b(text.encode(), digest_size=16).digest()
        if key in seen:
            stats["duplicate_documents"] += 1
            continue
        seen.add(key)
        texts.append(text)
    return texts


def _tokenizer(tokenizer_dir: str | Path) -> tuple[Any, int]:
    """The fast tokenizer of ``tokenizer_dir`` and the token that separates documents (EOS, else SEP)."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    if not tokenizer.is_fast:
        raise DataError(f"{tokenizer_dir}: preprocess_corpus needs a fast tokenizer")
    separator = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    if separator is None:
        raise DataError(f"{tokenizer_dir}: the tokenizer has neither an EOS nor a SEP token to separate documents")
    return tokenizer, separator


def preprocess_corpus(
    source: str,
    spec: dict[str, Any],
    tokenizer_dir: str | Path,
    out_dir: str | Path,
    settings: dict[str, Any],
    seed: int,
) -> dict[str, Any]:
    tokenizer, separator = _tokenizer(tokenizer_dir)
    vocab_size, block_size, batch = len(tokenizer), settings["block_size"], settings["batch_documents"]
    dtype, out_dir, seen = token_dtype(vocab_size), make_dirs(out_dir), set()
    stats = {"documents_read": 0, "empty_documents": 0, "duplicate_documents": 0}
    documents = itertools.islice(iter_documents(source, spec), spec.get("max_documents") or None)
    started = time.perf_counter()
    with (
        atomic_path(out_dir / "train.bin") as t_train,
        atomic_path(out_dir / "valid.bin") as t_valid,
        open(t_train, "wb") as f_train,
        open(t_valid, "wb") as f_valid,
    ):
        packers = {"train": _Packer(f_train, block_size, dtype), "valid": _Packer(f_valid, block_size, dtype)}
        bar = tqdm(desc="preprocess", unit="tok", unit_scale=True, mininterval=1.0)
        while chunk := list(itertools.islice(documents, batch)):
            texts = [(split_of(t, seed, settings["valid_fraction"]), t) for t in _new_texts(chunk, seen, stats)]
            if not texts:
                continue
            encoded = tokenizer([t for _, t in texts], add_special_tokens=False)["input_ids"]
            for (split, _), ids in zip(texts, encoded, strict=True):
                packers[split].add([*ids, separator])
                bar.update(len(ids) + 1)
        bar.close()
    elapsed = time.perf_counter() - started
    counts = {
        split: {
            "documents": p.documents,
            "tokens": p.tokens,
            "blocks": p.blocks,
            "tail_tokens_not_packed": len(p.pending),
        }
        for split, p in packers.items()
    }
    total = sum(c["tokens"] for c in counts.values())
    meta = {
        "kdflow": "token_stream",
        "source": source,
        "tokenizer": str(tokenizer_dir),
        "tokenizer_sha256": tokenizer_fingerprint(tokenizer_dir),
        "vocab_size": vocab_size,
        "dtype": dtype.name,
        "block_size": block_size,
        "separator_id": separator,
        "seed": seed,
        "valid_fraction": settings["valid_fraction"],
        **stats,
        "splits": counts,
        "tokens": total,
        "tokens_per_second": total / elapsed if elapsed > 0 else None,
    }
    write_json(out_dir / "meta.json", meta)
    return meta


def open_blocks(folder: str | Path, split: str = "train") -> np.memmap:
    """The packed blocks of a preprocessed corpus as a read-only (blocks, block_size) memmap."""
    folder = Path(folder)
    meta = read_json(folder / "meta.json")
    path = folder / f"{split}.bin"
    expected = meta["splits"][split]["blocks"] * meta["block_size"] * np.dtype(meta["dtype"]).itemsize
    if path.stat().st_size != expected:
        raise DataError(f"{path}: {path.stat().st_size} bytes, expected {expected} from meta.json (truncated?)")
    if meta["splits"][split]["blocks"] == 0:
        return np.zeros((0, meta["block_size"]), dtype=meta["dtype"])
    return np.memmap(path, dtype=meta["dtype"], mode="r", shape=(meta["splits"][split]["blocks"], meta["block_size"]))
