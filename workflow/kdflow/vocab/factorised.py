"""ALBERT-style factorised vocabulary embedding (N x e, then e -> d), as in GLMD's variant.

The factorised rows train with N*e + e*d parameters instead of N*d. ``merge_factorised`` turns them back
into ordinary embedding/head weights (their product, a rank-e matrix), so the saved folder loads with
AutoModelFor*; ``factorise_embeddings`` splits such a matrix again exactly (its SVD has rank e), which is
how a student on a vocabulary with ``embedding_dim`` is factorised at ``init_student`` and again at the
start of every training (``refactorise``: the folder's kdflow.json records ``embedding_dim``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedModel


class FactorisedEmbedding(nn.Module):
    def __init__(self, rows: int, embedding_dim: int, hidden: int, padding_idx: int | None = None) -> None:
        super().__init__()
        self.rows = nn.Embedding(rows, embedding_dim, padding_idx=padding_idx)
        self.project = nn.Linear(embedding_dim, hidden, bias=False)
        self.padding_idx = padding_idx

    @property
    def weight(self) -> torch.Tensor:
        """The full (N, d) matrix this factorisation stands for."""
        return self.project(self.rows.weight)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.project(self.rows(ids))


class FactorisedHead(nn.Module):
    """LM head tied to a FactorisedEmbedding: logits = (h B^T) A^T (+ bias)."""

    def __init__(self, embedding: FactorisedEmbedding, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.embedding = embedding
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None

    @property
    def weight(self) -> torch.Tensor:
        return self.embedding.weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        out = (hidden @ self.embedding.project.weight) @ self.embedding.rows.weight.T
        return out + self.bias if self.bias is not None else out


def factorise_embeddings(model: PreTrainedModel, embedding_dim: int) -> PreTrainedModel:
    """Replace the input embedding (and a tied head) by a rank-``embedding_dim`` factorisation (SVD init)."""
    old = model.get_input_embeddings()
    weight = old.weight.detach().float()
    rows, hidden = weight.shape
    if not 0 < embedding_dim <= min(rows, hidden):
        raise ValueError(f"embedding_dim {embedding_dim} must be in 1..{min(rows, hidden)}")
    u, s, vh = torch.linalg.svd(weight, full_matrices=False)
    new = FactorisedEmbedding(rows, embedding_dim, hidden, getattr(old, "padding_idx", None))
    new.rows.weight.data.copy_(u[:, :embedding_dim] * s[:embedding_dim])
    new.project.weight.data.copy_(vh[:embedding_dim].T)
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is old.weight
    model.set_input_embeddings(new)
    if tied:
        model.set_output_embeddings(FactorisedHead(new, head.bias))
    return model


def merge_factorised(model: PreTrainedModel) -> PreTrainedModel:
    """Materialise a factorised embedding (and tied head) as plain weights, ready for save_pretrained."""
    emb = model.get_input_embeddings()
    if not isinstance(emb, FactorisedEmbedding):
        return model
    full = emb.weight.detach()
    plain = nn.Embedding(*full.shape, padding_idx=emb.padding_idx)
    plain.weight.data.copy_(full)
    head = model.get_output_embeddings()
    model.set_input_embeddings(plain)
    if isinstance(head, FactorisedHead):
        linear = nn.Linear(full.shape[1], full.shape[0], bias=head.bias is not None)
        linear.weight = plain.weight
        if head.bias is not None:
            linear.bias.data.copy_(head.bias.detach())
        model.set_output_embeddings(linear)
    return model


def refactorise(model: PreTrainedModel, folder: str | Path) -> PreTrainedModel:
    """``model`` (loaded from ``folder``) with its embedding factorised again when its kdflow.json records an
    ``embedding_dim`` (a student on a factorised vocabulary); unchanged otherwise."""
    from ..modeling import read_metadata

    dim = read_metadata(folder).get("embedding_dim")
    return factorise_embeddings(model, int(dim)) if dim else model
