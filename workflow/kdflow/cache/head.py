"""The teacher's forward pass for a cache: the model runs with its LM head skipped (``heads.head_bypassed``), so
that a ``hidden`` cache stores the head's inputs without computing any vocabulary-wide logits, and the other
modes apply the head to the rows they store, a chunk of rows at a time. A ``hidden`` cache keeps the head once
beside its shards."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..heads import head_bypassed
from .format import file_sha256

# Logits formed at once: 64 Mi elements (256 MiB of float32, 1,365 rows of SmolLM2's 49,152). The head's matrix
# product is the cost here, and it runs 1.3-1.5x faster on 1,024 rows than on 170 (the former 32 MiB chunks):
# the figures are the README's (Benchmarks, P4).
CHUNK_ELEMENTS = 1 << 26


def teacher_hidden(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """The LM head's inputs at every position, [batch, length, d] (after any head transform), and the head."""
    with head_bypassed(model) as head:
        hidden = model(input_ids=ids, attention_mask=mask).logits
    return hidden, head


def chunk_rows(head: torch.nn.Module) -> int:
    """How many rows of head inputs to turn into logits at once."""
    return max(1, CHUNK_ELEMENTS // head.weight.shape[0])


def save_head(model: torch.nn.Module, out_dir: str | Path, settings: dict[str, Any], main: bool) -> str | None:
    """Mode ``hidden``: the teacher's full output head, stored once beside the cache by the main process; its
    sha256 (None in the other modes and processes)."""
    if settings["mode"] != "hidden" or not main:
        return None
    from safetensors.torch import save_file

    head = model.get_output_embeddings()
    tensors = {"weight": head.weight.detach().float().cpu().contiguous()}
    if head.bias is not None:
        tensors["bias"] = head.bias.detach().float().cpu().contiguous()
    path = Path(out_dir) / "head.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return file_sha256(path)
