"""BERT-of-Theseus module replacement: during one forward pass each student layer is, with probability
1 - p, replaced by the contiguous block of teacher layers it stands for (teacher layers stay frozen)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import torch

from .features import transformer_layers


def layer_blocks(n_student: int, n_teacher: int) -> list[range]:
    """A contiguous, uniform partition of the teacher's layers into one block per student layer."""
    bounds = [round(i * n_teacher / n_student) for i in range(n_student + 1)]
    return [range(bounds[i], bounds[i + 1]) for i in range(n_student)]


class _Successor(torch.nn.Module):
    """A student layer or, when ``use_teacher`` is set, its predecessor block of teacher layers."""

    def __init__(self, student_layer: torch.nn.Module, teacher_layers: list[torch.nn.Module]) -> None:
        super().__init__()
        self.student_layer = student_layer
        self._teacher = teacher_layers  # a plain list: not registered, never in the student's state
        self.use_teacher = False

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if not self.use_teacher:
            return self.student_layer(hidden_states, *args, **kwargs)
        for key in ("past_key_values", "past_key_value"):  # the student's KV cache has no slots for them
            if key in kwargs:
                kwargs[key] = None
        out: Any = hidden_states
        for layer in self._teacher:
            out = layer(hidden_states, *args, **kwargs)
            hidden_states = out[0] if isinstance(out, tuple) else out
        return out


@contextmanager
def theseus_layers(student: torch.nn.Module, teacher: torch.nn.Module, p_student: float, generator: torch.Generator):
    """Inside the block, ``student``'s forward runs the hybrid model; yields the per-layer choice (True = teacher)."""
    s_layers, t_layers = transformer_layers(student), transformer_layers(teacher)
    blocks = layer_blocks(len(s_layers), len(t_layers))
    originals = list(s_layers)
    choice = (torch.rand(len(s_layers), generator=generator) >= p_student).tolist()
    for i, (layer, block, use_teacher) in enumerate(zip(originals, blocks, choice, strict=True)):
        successor = _Successor(layer, [t_layers[j] for j in block])
        successor.use_teacher = use_teacher
        s_layers[i] = successor
    use_cache = getattr(student.config, "use_cache", None)
    student.config.use_cache = False
    try:
        yield choice
    finally:
        student.config.use_cache = use_cache
        for i, layer in enumerate(originals):
            s_layers[i] = layer


def tie_to_successors(scores: list[torch.Tensor], student: torch.nn.Module) -> list[torch.Tensor]:
    """Scores of a draw that swapped in the teacher for every student layer depend on no trained parameter. The
    reference (run_glue.py optimises the successor layers only, yet every parameter requires grad) still
    backpropagates and steps, the successors receiving zero gradients; tying the scores to them with weight zero
    does the same here (and keeps DeepSpeed's backward valid)."""
    anchor = sum(p.sum() for p in transformer_layers(student).parameters() if p.requires_grad)
    return [s + 0.0 * anchor for s in scores]
