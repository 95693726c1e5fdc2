"""Rule `compress_vocab`: keep the must-keep set plus the most frequent tokens; map every dropped token."""

from __future__ import annotations

import csv
import math
from typing import Any

import numpy as np
import torch
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

from ..errors import ConfigError
from .counts import ranks_of
from .vmap import RESERVED, VocabMap


def answer_token_ids(tokenizer: PreTrainedTokenizerBase, strings: list[str]) -> set[int]:
    """Token ids of every answer string, with and without a leading space (as causal and masked scoring see them)."""
    ids: set[int] = set()
    for text in strings:
        for variant in (text, " " + text):
            ids.update(tokenizer(variant, add_special_tokens=False)["input_ids"])
    return ids


def special_token_ids(tokenizer: PreTrainedTokenizerBase) -> set[int]:
    ids = set(tokenizer.all_special_ids)
    ids.update(tokenizer.added_tokens_decoder)
    return {i for i in ids if i is not None and i < len(tokenizer)}


def target_size(spec: dict[str, Any], vocab_size: int) -> int:
    """Requested size (a count, or a fraction when <= 1) rounded up to a multiple of ``round_to``."""
    size = spec["size"]
    wanted = math.ceil(size * vocab_size) if size <= 1 else int(size)
    multiple = spec.get("round_to", 64)
    return min(math.ceil(wanted / multiple) * multiple, vocab_size)


def nearest_kept(
    embeddings: torch.Tensor, kept: np.ndarray, dropped: np.ndarray, similarity: str, chunk: int = 1024
) -> np.ndarray:
    """For each dropped id, the index (into ``kept``) of the most similar kept embedding; chunked over dropped."""
    keys = embeddings[torch.as_tensor(kept)].float()
    if similarity == "cosine":
        keys = torch.nn.functional.normalize(keys, dim=-1)
    key_norms = (keys * keys).sum(-1)
    out = np.empty(len(dropped), dtype=np.int64)
    for start in tqdm(range(0, len(dropped), chunk), desc=f"nearest ({similarity})", unit="chunk"):
        rows = embeddings[torch.as_tensor(dropped[start : start + chunk])].float()
        if similarity == "cosine":
            rows = torch.nn.functional.normalize(rows, dim=-1)
        scores = rows @ keys.T
        if similarity == "euclidean":
            scores = 2 * scores - key_norms[None, :]  # -|a-b|^2 up to a per-row constant
        out[start : start + len(rows)] = scores.argmax(-1).numpy()
    return out


def build_vocab_map(
    counts: np.ndarray,
    tokenizer: PreTrainedTokenizerBase,
    must_keep_strings: list[str],
    spec: dict[str, Any],
    embeddings: torch.Tensor | None = None,
) -> VocabMap:
    vocab_size = len(counts)
    must = special_token_ids(tokenizer) | answer_token_ids(tokenizer, must_keep_strings)
    size = target_size(spec, vocab_size)
    replacement = spec.get("replacement", "unk")
    reserve = replacement == "unk" and tokenizer.unk_token_id is None and size < vocab_size
    if len(must) + int(reserve) > size:
        raise ConfigError(
            f"vocabulary size {size} (requested {spec['size']}, rounded to {spec.get('round_to', 64)}) is smaller "
            f"than the must-keep set of {len(must) + int(reserve)} tokens (special tokens + verbalizer/answer tokens)"
        )
    ranks = ranks_of(counts)
    order = sorted(range(vocab_size), key=lambda i: (i not in must, ranks[i]))
    chosen = np.sort(np.asarray(order[: size - int(reserve)], dtype=np.int64))
    kept = np.concatenate([chosen, [RESERVED]]) if reserve else chosen
    old_to_new = np.full(vocab_size, -1, dtype=np.int64)
    old_to_new[chosen] = np.arange(len(chosen))
    dropped = np.flatnonzero(old_to_new < 0)
    if len(dropped):
        if replacement == "nearest":
            if embeddings is None:
                raise ConfigError("replacement 'nearest' needs the teacher's input embeddings")
            old_to_new[dropped] = nearest_kept(embeddings, chosen, dropped, spec.get("similarity", "cosine"))
        elif reserve:
            old_to_new[dropped] = len(kept) - 1
        else:
            old_to_new[dropped] = old_to_new[tokenizer.unk_token_id]
    total = max(int(counts.sum()), 1)
    meta = {
        "kdflow": "vocab_map",
        "strategy": "frequency",
        "replacement": replacement,
        "similarity": spec.get("similarity", "cosine") if replacement == "nearest" else None,
        "settings": dict(spec),
        "teacher_vocab_size": vocab_size,
        "size": int(len(kept)),
        "must_keep": len(must),
        "reserved_unk": bool(reserve),
        "coverage": float(counts[chosen].sum() / total),
        "corpus_tokens": int(counts.sum()),
    }
    return VocabMap(kept, old_to_new, meta)


def coverage_curve(counts: np.ndarray, must: set[int], points: int = 64) -> list[tuple[int, float]]:
    """(kept size, share of corpus tokens kept as themselves) at ``points`` evenly spaced sizes."""
    ranks = ranks_of(counts)
    order = sorted(range(len(counts)), key=lambda i: (i not in must, ranks[i]))
    cum = np.cumsum(counts[np.asarray(order)])
    total = max(int(cum[-1]), 1)
    sizes = sorted({max(1, round(len(counts) * k / points)) for k in range(1, points + 1)})
    return [(s, float(cum[s - 1] / total)) for s in sizes]


def write_coverage(
    curve: list[tuple[int, float]], chosen: int, coverage: float, vocab: int, csv_path, png_path
) -> None:
    with open(csv_path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["kept_size", "fraction_of_vocabulary", "coverage"])
        writer.writerows([(s, f"{s / vocab:.4f}", f"{c:.6f}") for s, c in curve])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.plot([s for s, _ in curve], [100 * c for _, c in curve], color="tab:blue")
    ax.axvline(chosen, color="tab:red", linestyle="--", label=f"kept {chosen:,}: {100 * coverage:.2f} %")
    ax.set_xlabel("kept vocabulary size (tokens)")
    ax.set_ylabel("corpus tokens kept as themselves (%)")
    ax.set_title(f"Vocabulary coverage (teacher vocabulary {vocab:,})")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(png_path)
    plt.close(fig)
