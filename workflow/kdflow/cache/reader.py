"""Datasets over a finished logit cache: student inputs + cached teacher targets, checked by fingerprint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import DataError
from ..fingerprint import tokenizer_fingerprint, weights_fingerprint
from ..heads import DecodedRows
from ..preprocess import open_blocks
from ..vocab.compress import special_token_ids
from ..vocab.vmap import VocabMap
from .build import corpus_fingerprint, task_fingerprint, vocab_fingerprint
from .format import decode_values, file_sha256
from .masking import mask_block
from .quant import decode_hidden
from .store import ShardReader


def _targets(arrays: dict[str, np.ndarray], rows: slice, dtype: str) -> dict[str, torch.Tensor]:
    if "hidden" in arrays:
        return {"hidden": decode_hidden(arrays, rows, dtype)}
    out = {"log_norm": torch.from_numpy(np.ascontiguousarray(arrays["log_norm"][rows]))}
    if "dense" in arrays:
        out["dense"] = decode_values(arrays["dense"][rows], dtype)
    else:
        out["values"] = decode_values(arrays["topk_values"][rows], dtype)
        out["ids"] = torch.from_numpy(arrays["topk_ids"][rows].astype(np.int64))
    return out


def expected_fingerprints(data: str, vocab_map: str | Path | None, teacher_dir: str | Path | None) -> dict[str, str]:
    """What a cache must have been built from: this data and vocabulary map, and (when the job names its
    teacher) this teacher's weights and tokenizer."""
    out = {"data": data, "vocab_map": vocab_fingerprint(vocab_map)}
    if teacher_dir is not None:
        out.update(teacher=weights_fingerprint(teacher_dir), tokenizer=tokenizer_fingerprint(teacher_dir))
    return out


class _CacheDataset(Dataset):
    def __init__(self, cache_dir: str | Path, expected: dict[str, str], vocab_map: str | Path | None) -> None:
        self.reader = ShardReader(cache_dir)
        self.reader.check_fingerprints(expected)
        self.manifest = self.reader.manifest
        self.settings = self.manifest["settings"]
        self.vmap = VocabMap.load(vocab_map) if vocab_map else None
        self._head: dict[str, torch.Tensor] | None = None

    def word_targets(self, batch_targets: dict[str, torch.Tensor]) -> dict[str, Any]:
        """A batch's cached word targets for the losses: as stored, or (mode ``hidden``) the head inputs as
        ``DecodedRows``, decoded by the loss (a chunk at a time with ``compute.loss_chunk``)."""
        if "hidden" not in batch_targets:
            return dict(batch_targets)
        return {"head": DecodedRows(batch_targets["hidden"], self.teacher_logits)}

    def teacher_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Mode ``hidden``: the teacher's logits from its cached head inputs (projected onto the kept vocabulary)."""
        if self._head is None:
            from safetensors.torch import load_file

            path = self.reader.dir / "head.safetensors"
            if file_sha256(path) != self.manifest.get("head_sha256"):
                raise DataError(f"{path}: teacher head is missing or does not match the cache manifest")
            self._head = {k: v.to(hidden.device) for k, v in load_file(str(path)).items()}  # decoded where the batch is
        logits = hidden.float() @ self._head["weight"].T
        if "bias" in self._head:
            logits = logits + self._head["bias"]
        return self.vmap.project_logits(logits) if self.vmap is not None else logits

    def _student_ids(self, ids: np.ndarray) -> torch.Tensor:
        ids = torch.from_numpy(ids.astype(np.int64))
        return self.vmap.remap(ids) if self.vmap is not None else ids


class CorpusCacheDataset(_CacheDataset):
    """Item i: a corpus block as student ids, with the teacher's targets at its cached positions."""

    def __init__(
        self,
        cache_dir: str | Path,
        corpus_dir: str | Path,
        vocab_map: str | Path | None = None,
        tokenizer_dir: str | Path | None = None,
    ) -> None:
        expected = expected_fingerprints(corpus_fingerprint(corpus_dir), vocab_map, tokenizer_dir)
        super().__init__(cache_dir, expected, vocab_map)
        self.blocks = open_blocks(corpus_dir, "train")
        self.block_size = self.manifest["block_size"]
        self.per_shard = self.settings["shard_blocks"]
        self.masking = self.manifest.get("masking")
        self._specials: set[int] | None = None
        self.tokenizer_dir = tokenizer_dir

    def __len__(self) -> int:
        return self.manifest["blocks"]

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        shard_index, offset = divmod(i, self.per_shard)
        arrays = self.reader.shard(shard_index)
        ids = np.asarray(self.blocks[i])
        item: dict[str, Any] = {}
        if self.masking is None:
            rows = slice(offset * self.block_size, (offset + 1) * self.block_size)
            item["positions"] = torch.arange(self.block_size)
        else:
            lo = np.searchsorted(arrays["positions"], i * self.block_size)
            hi = np.searchsorted(arrays["positions"], (i + 1) * self.block_size)
            rows = slice(lo, hi)
            stored = arrays["positions"][lo:hi] - i * self.block_size
            ids, positions = self._masked(ids, i)
            if not np.array_equal(stored, positions):
                raise DataError(f"{self.reader.dir}: masked positions of block {i} differ from the cache's")
            item["positions"] = torch.from_numpy(positions)
        item["input_ids"] = self._student_ids(ids)
        item["teacher_ids"] = torch.from_numpy(ids.astype(np.int64))
        item.update(_targets(arrays, rows, self.settings["value_dtype"]))
        return item

    def _masked(self, ids: np.ndarray, i: int) -> tuple[np.ndarray, np.ndarray]:
        if self._specials is None:
            from transformers import AutoTokenizer

            if self.tokenizer_dir is None:
                raise DataError("a masked-LM cache needs tokenizer_dir to reproduce its masking")
            tok = AutoTokenizer.from_pretrained(self.tokenizer_dir, local_files_only=True)
            self._specials, self._vocab = special_token_ids(tok), len(tok)
        m = self.masking
        return mask_block(ids, m["seed"], i, m["mask_id"], self._vocab, self._specials, m["prob"])


class TaskCacheDataset(_CacheDataset):
    """Item i: a task example's prompt as student ids, word-prediction targets and candidate scores."""

    def __init__(
        self,
        cache_dir: str | Path,
        task_dir: str | Path,
        vocab_map: str | Path | None = None,
        teacher_dir: str | Path | None = None,
    ) -> None:
        super().__init__(
            cache_dir, expected_fingerprints(task_fingerprint(task_dir), vocab_map, teacher_dir), vocab_map
        )
        self.per_shard = self.settings["shard_examples"]

    def __len__(self) -> int:
        return self.manifest["examples"]

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        shard_index, j = divmod(i, self.per_shard)
        a = self.reader.shard(shard_index)
        inputs = a["input_ids"][a["input_offsets"][j] : a["input_offsets"][j + 1]]
        rows = slice(int(a["position_offsets"][j]), int(a["position_offsets"][j + 1]))
        item = {
            "input_ids": self._student_ids(inputs),
            "positions": torch.from_numpy(a["positions"][rows].copy()),
            "candidate_scores": torch.from_numpy(
                a["candidate_scores"][a["candidate_offsets"][j] : a["candidate_offsets"][j + 1]].copy()
            ),
        }
        item.update(_targets(a, rows, self.settings["value_dtype"]))
        return item
