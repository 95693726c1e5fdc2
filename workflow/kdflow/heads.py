"""A language model's output head taken apart: run the model up to the head's input (no vocabulary-wide logits),
and read the head's rows, so that the logits can be formed a chunk of positions at a time."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from .errors import ConfigError


@dataclass(frozen=True, eq=False)
class HeadRows:
    """What a word-prediction loss needs to form the student's logits itself: the head's inputs at the word
    positions ``hidden`` [positions, d] and the head, ``weight`` [vocabulary, d] (+ ``bias`` [vocabulary]);
    ``chunk``: positions per chunk of the fused head + loss (``compute.loss_chunk``; None: all at once)."""

    hidden: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None = None
    chunk: int | None = None

    def logits(self, rows: slice | None = None) -> torch.Tensor:
        """The logits of ``rows`` (all when None) in float32."""
        h = self.hidden if rows is None else self.hidden[rows]
        out = h.float() @ self.weight.float().T
        return out + self.bias.float() if self.bias is not None else out

    def __len__(self) -> int:
        return self.hidden.shape[0]


@dataclass(frozen=True, eq=False)
class DecodedRows:
    """Teacher word targets kept as head inputs [positions, d] and decoded to logits a slice at a time by
    ``decode`` (a cached teacher's head, projected onto the kept vocabulary)."""

    hidden: torch.Tensor
    decode: Callable[[torch.Tensor], torch.Tensor]

    def decoded(self, rows: slice | None = None) -> torch.Tensor:
        """The logits of ``rows`` (all when None) in the head's dtype."""
        return self.decode(self.hidden if rows is None else self.hidden[rows])

    def logits(self, rows: slice | None = None) -> torch.Tensor:
        return self.decoded(rows).float()

    def __getitem__(self, rows: slice) -> DecodedRows:
        return DecodedRows(self.hidden[rows], self.decode)

    def __len__(self) -> int:
        return self.hidden.shape[0]


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The Hugging Face model inside a DeepSpeed engine or DDP wrapper."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    return model


def _owner(model: torch.nn.Module, target: torch.nn.Module) -> tuple[torch.nn.Module, str]:
    for module in model.modules():
        for child_name, child in module.named_children():
            if child is target:
                return module, child_name
    raise ValueError(f"{type(model).__name__}: its output embeddings are not one of its submodules")


@contextlib.contextmanager
def head_bypassed(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Within the block, the model's output embeddings are the identity: its "logits" are the head's inputs
    (after any head transform, e.g. BERT's dense + LayerNorm). The head module is put back afterwards."""
    inner = unwrap(model)
    head = inner.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(inner).__name__} has no output embeddings (no LM head)")
    owner, name = _owner(inner, head)
    setattr(owner, name, torch.nn.Identity())
    try:
        yield head
    finally:
        setattr(owner, name, head)


def head_parameters(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The output head's weight [vocabulary, d] and bias (None when it has none)."""
    head = unwrap(model).get_output_embeddings()
    return head.weight, getattr(head, "bias", None)


def position_rows(outputs: torch.Tensor, positions: list[torch.Tensor]) -> torch.Tensor:
    """``outputs[r, p]`` of every batch row ``r``, concatenated: [sum of the positions, ...]. When every row
    takes the same leading positions 0..n-1 (a causal stage 1), one slice of ``outputs`` instead of a copy per
    row and another for the concatenation (two [positions, vocabulary] copies, and their backward)."""
    first = positions[0]
    n = len(first)
    leading = torch.arange(n, device=first.device)
    if all(len(p) == n for p in positions) and all(torch.equal(p, leading) for p in positions):
        return outputs[:, :n].reshape(-1, *outputs.shape[2:])
    return torch.cat([outputs[r, p] for r, p in enumerate(positions)])


def word_rows(
    model: torch.nn.Module, outputs: torch.Tensor, positions: list[torch.Tensor], chunk: int | None
) -> torch.Tensor | HeadRows:
    """The student's word predictions at ``positions`` (one index tensor per batch row) from its forward
    ``outputs``: logits, or with ``chunk`` (the head was bypassed) its head inputs with the head, as ``HeadRows``
    for the fused head + loss."""
    rows = position_rows(outputs, positions)
    if not chunk:
        return rows
    weight, bias = head_parameters(model)
    if weight.numel() == 0:
        raise ConfigError(
            "compute.loss_chunk reads the student's LM head outside its forward pass, and ZeRO-3 has partitioned "
            "it: set compute.loss_chunk: null for this rule (compute.rules.RULE)"
        )
    return HeadRows(rows, weight, bias, chunk=chunk)
