"""Rule `count_tokens`: token frequencies over a packed corpus (and optionally task training inputs)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from tqdm import tqdm
from transformers import AutoTokenizer

from ..jsonio import read_json
from ..prepare import load_prepared
from ..preprocess import open_blocks

_CHUNK_BLOCKS = 4096


def count_corpus(corpus_dir: str | Path, vocab_size: int) -> np.ndarray:
    """Counts of every token id over the corpus's train and valid blocks, streamed in chunks."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    for split in ("train", "valid"):
        blocks = open_blocks(corpus_dir, split)
        for start in tqdm(range(0, len(blocks), _CHUNK_BLOCKS), desc=f"count {split}", unit="chunk"):
            chunk = np.asarray(blocks[start : start + _CHUNK_BLOCKS]).ravel()
            counts += np.bincount(chunk, minlength=vocab_size)[:vocab_size]
    return counts


def count_task_inputs(task_dir: str | Path, tokenizer, vocab_size: int) -> np.ndarray:
    """Counts over a prepared task's training inputs, rendered through its prompt (text around the slot)."""
    split = "train" if "train" in read_json(Path(task_dir) / "task.json")["splits"] else "dev"
    counts = np.zeros(vocab_size, dtype=np.int64)
    texts = [c.prefix + " " + " ".join(c.candidates) + c.suffix for c in load_prepared(task_dir, split).clozes]
    for start in range(0, len(texts), 512):
        for ids in tokenizer(texts[start : start + 512], add_special_tokens=False)["input_ids"]:
            counts += np.bincount(np.asarray(ids, dtype=np.int64), minlength=vocab_size)[:vocab_size]
    return counts


def count_tokens(corpus_dir: str | Path, tokenizer_dir: str | Path, task_dirs: list[str], out: str | Path) -> dict:
    """Write the frequency table (token_id, token, count, frequency, rank) as CSV."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    meta = read_json(Path(corpus_dir) / "meta.json")
    vocab_size = len(tokenizer)
    if meta["vocab_size"] != vocab_size:
        from ..errors import DataError

        raise DataError(
            f"{corpus_dir}: tokenised with a vocabulary of {meta['vocab_size']}, the tokenizer has {vocab_size}"
        )
    counts = count_corpus(corpus_dir, vocab_size)
    for task_dir in task_dirs:
        counts += count_task_inputs(task_dir, tokenizer, vocab_size)
    write_counts(counts, tokenizer.convert_ids_to_tokens(list(range(vocab_size))), out)
    return {"tokens": int(counts.sum()), "distinct": int((counts > 0).sum())}


def ranks_of(counts: np.ndarray) -> np.ndarray:
    """Rank 0 = most frequent; ties broken by the lower id."""
    order = np.lexsort((np.arange(len(counts)), -counts))
    ranks = np.empty(len(counts), dtype=np.int64)
    ranks[order] = np.arange(len(counts))
    return ranks


def write_counts(counts: np.ndarray, tokens: list[str], out: str | Path) -> None:
    total = max(int(counts.sum()), 1)
    ranks = ranks_of(counts)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["token_id", "token", "count", "frequency", "rank"])
        for i, (tok, c) in enumerate(zip(tokens, counts, strict=True)):
            writer.writerow([i, tok, int(c), f"{c / total:.8g}", int(ranks[i])])


def read_counts(path: str | Path) -> np.ndarray:
    with open(path, encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    counts = np.zeros(len(rows), dtype=np.int64)
    for row in rows:
        counts[int(row["token_id"])] = int(row["count"])
    return counts
