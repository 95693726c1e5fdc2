"""A ``hidden`` cache stores what enters the teacher's output head (the logits are that times the head): the
hook that captures it, and the head saved once beside the cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .format import file_sha256


class HeadInputs:
    """Captures what goes into the model's output embedding (the vector whose product with the head gives
    the logits), so that a ``hidden`` cache can store it instead of the logits."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.value: torch.Tensor | None = None
        self.handle = model.get_output_embeddings().register_forward_hook(self._hook)

    def _hook(self, module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        self.value = inputs[0].detach()


def teacher_forward(model, ids, mask, capture: HeadInputs | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, what the cache stores: the logits, or in mode ``hidden`` the LM head's inputs)."""
    logits = model(input_ids=ids, attention_mask=mask).logits
    return logits, capture.value if capture is not None else logits


def hidden_capture(model, out_dir, settings: dict[str, Any], main: bool) -> tuple[HeadInputs | None, str | None]:
    """Mode ``hidden``: a hook on the head's inputs, and the head saved once beside the cache by the main
    process (its sha256)."""
    if settings["mode"] != "hidden":
        return None, None
    return HeadInputs(model), _save_head(model, out_dir) if main else None


def _save_head(model: torch.nn.Module, out_dir: str | Path) -> str:
    """The teacher's full output head, stored once beside a ``hidden`` cache; returns its sha256."""
    from safetensors.torch import save_file

    head = model.get_output_embeddings()
    tensors = {"weight": head.weight.detach().float().cpu().contiguous()}
    if head.bias is not None:
        tensors["bias"] = head.bias.detach().float().cpu().contiguous()
    path = Path(out_dir) / "head.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return file_sha256(path)
