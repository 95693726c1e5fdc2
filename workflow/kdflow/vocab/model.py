"""Compressed-vocabulary models: slice embedding/LM-head rows, export, and load with a mapping tokenizer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoTokenizer, BatchEncoding, PreTrainedModel

from ..jsonio import write_json
from ..safeio import atomic_folder
from ..sharing import save_model
from .vmap import RESERVED, VocabMap

_TOKEN_ID_KEYS = ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id", "unk_token_id")


def _rows(weight: torch.Tensor, vmap: VocabMap) -> torch.Tensor:
    """Rows of ``weight`` (teacher vocabulary) for the kept ids; the reserved row is the mean of dropped rows."""
    kept = torch.as_tensor(vmap.kept)
    rows = weight.detach()[kept.clamp(min=0)].clone()
    if vmap.reserved is not None:
        dropped = torch.as_tensor(np.flatnonzero(~vmap.kept_mask()))
        rows[vmap.reserved] = weight.detach()[dropped].mean(0)
    return rows


def _remap_config_ids(config: Any, vmap: VocabMap) -> None:
    for key in _TOKEN_ID_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and 0 <= value < vmap.teacher_size:
            setattr(config, key, int(vmap.old_to_new[value]))
        elif isinstance(value, list):
            setattr(config, key, [int(vmap.old_to_new[v]) for v in value])


def compress_model(model: PreTrainedModel, vmap: VocabMap) -> PreTrainedModel:
    """Give ``model`` only the kept vocabulary rows (input embedding and LM head), tied as before."""
    old_in = model.get_input_embeddings()
    if old_in.weight.shape[0] != vmap.teacher_size:
        raise ValueError(f"model has {old_in.weight.shape[0]} vocabulary rows, the map expects {vmap.teacher_size}")
    old_out = model.get_output_embeddings()
    tied = old_out is not None and old_out.weight is old_in.weight
    new_in = torch.nn.Embedding(vmap.size, old_in.weight.shape[1], dtype=old_in.weight.dtype)
    new_in.weight.data.copy_(_rows(old_in.weight, vmap))
    pad = getattr(model.config, "pad_token_id", None)
    new_in.padding_idx = int(vmap.old_to_new[pad]) if isinstance(pad, int) else None
    model.set_input_embeddings(new_in)
    if old_out is not None:
        if tied:
            new_out = torch.nn.Linear(old_out.in_features, vmap.size, bias=old_out.bias is not None)
            new_out.weight = new_in.weight
        else:
            new_out = torch.nn.Linear(old_out.in_features, vmap.size, bias=old_out.bias is not None)
            new_out.weight.data.copy_(_rows(old_out.weight, vmap))
        if old_out.bias is not None:
            bias = _rows(old_out.bias[:, None], vmap)[:, 0]
            new_out.bias.data.copy_(bias)
        model.set_output_embeddings(new_out)
    model.config.vocab_size = vmap.size
    _remap_config_ids(model.config, vmap)
    if getattr(model, "generation_config", None) is not None:
        _remap_config_ids(model.generation_config, vmap)
    return model


def write_model_folder(model: PreTrainedModel, tokenizer_dir: str | Path, vmap: VocabMap | None, folder: Path) -> None:
    """Weights, the teacher's tokenizer files and, for a compressed vocabulary, ``vocab_map.json``: a folder
    that AutoModelFor* loads (its tokenizer with :class:`CompressedTokenizer` when there is a map)."""
    save_model(model, folder)
    AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True).save_pretrained(folder)
    if vmap is not None:
        vmap.save(folder / "vocab_map.json")


def export_compressed(model: PreTrainedModel, tokenizer_dir: str | Path, vmap: VocabMap, out: str | Path) -> Path:
    """A compressed-vocabulary model as a folder of its own (``write_model_folder``), written whole or not at
    all, with ``kdflow.json`` naming the tokenizer loader."""
    out = Path(out)
    with atomic_folder(out) as tmp:
        write_model_folder(model, tokenizer_dir, vmap, tmp)
        write_json(
            tmp / "kdflow.json",
            {
                "vocab_map": "vocab_map.json",
                "vocab_size": vmap.size,
                "tokenizer_loader": "kdflow.vocab.model.CompressedTokenizer",
            },
        )
    return out


class CompressedTokenizer:
    """The teacher's tokenizer followed by the old->new id map: text in, compressed ids out.

    ``CompressedTokenizer.from_pretrained(folder)`` on an exported student folder; calling it returns a
    ``BatchEncoding`` like any HF tokenizer, ``decode`` maps ids back through the kept list.
    """

    def __init__(self, tokenizer, vmap: VocabMap) -> None:
        self.tokenizer, self.vmap = tokenizer, vmap

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> CompressedTokenizer:
        folder = Path(folder)
        return cls(
            AutoTokenizer.from_pretrained(folder, local_files_only=True), VocabMap.load(folder / "vocab_map.json")
        )

    def __len__(self) -> int:
        return self.vmap.size

    def __call__(self, *args: Any, **kwargs: Any) -> BatchEncoding:
        encoding = self.tokenizer(*args, **kwargs)
        ids = encoding["input_ids"]
        if isinstance(ids, torch.Tensor):
            encoding["input_ids"] = self.vmap.remap(ids)
        elif ids and isinstance(ids[0], list):
            encoding["input_ids"] = [self.vmap.remap(np.asarray(row)).tolist() for row in ids]
        else:
            encoding["input_ids"] = self.vmap.remap(np.asarray(ids)).tolist()
        return encoding

    def convert_ids_to_teacher(self, ids: Any) -> list[int]:
        old = self.vmap.unmap(np.asarray(ids))
        unk = self.tokenizer.unk_token_id if self.tokenizer.unk_token_id is not None else 0
        return [int(i) if i != RESERVED else unk for i in np.atleast_1d(old)]

    def decode(self, ids: Any, **kwargs: Any) -> str:
        return self.tokenizer.decode(self.convert_ids_to_teacher(ids), **kwargs)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self.tokenizer, name)
        if name.endswith("_token_id") and isinstance(value, int):
            return int(self.vmap.old_to_new[value])  # special token ids in the compressed space
        return value
