"""Losses on intermediate representations: PKD, DistilBERT's hidden-state cosine, TinyBERT, MiniLM,
MiniLMv2, an LRC-BERT-style in-batch contrastive loss, and BERT-of-Theseus's hybrid-model loss.

Student layer i (1-based) is matched to a teacher layer by ``layers`` (uniform, last or an explicit list,
see ``features.map_layers``); a learned linear projection maps student widths onto teacher widths where
they differ. Each class states the reference it follows; tests/test_fidelity.py checks it against an
independent implementation of that reference, and README.md's methods table lists the differences."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..features import default_pooling, map_layers, pool, transformer_layers
from ..recipes import specs
from .base import Loss, LossContext, target_cross_entropy
from .inputs import StepInputs

SCORE_FLOOR = -100.0  # TinyBERT: attention scores at or below it (the masked ones) count as 0


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` [batch, length, ...] over the real tokens of ``mask`` [batch, length]."""
    weights = mask.to(values.dtype)
    while weights.dim() < values.dim():
        weights = weights.unsqueeze(-1)
    per_token = values * weights
    return per_token.sum() / (weights.sum() * (values[0, 0].numel() if values.dim() > 2 else 1)).clamp_min(1.0)


class _Layered(Loss):
    """A loss over matched student/teacher layers, with projections where the widths differ."""

    projection_bias: ClassVar[bool] = False
    pooling: str = "auto"  # the losses that pool set it

    def __init__(self, settings: specs.LossSpec | None = None, **values: Any) -> None:
        super().__init__(settings, **values)
        self.layer_map: list[int] = []
        self.projections = torch.nn.ModuleList()

    def bind(self, context: LossContext) -> None:
        s, t = context.student_config, context.teacher_config
        self.layer_map = map_layers(s.num_hidden_layers, t.num_hidden_layers, getattr(self, "layers", "last"))
        if self.pooling == "auto":
            self.pooling = default_pooling(s)
        if s.hidden_size != t.hidden_size:
            self.projections = torch.nn.ModuleList(
                [
                    torch.nn.Linear(s.hidden_size, t.hidden_size, bias=self.projection_bias)
                    for _ in range(self.n_projections())
                ]
            )

    def n_projections(self) -> int:
        return len(self.layer_map)

    def project(self, k: int, x: torch.Tensor) -> torch.Tensor:
        return self.projections[k](x) if len(self.projections) else x

    def pairs(self, inputs: StepInputs) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
        """(student layer - 1, student hidden, teacher hidden) for every matched layer."""
        s, t = inputs.student_hidden, inputs.teacher_hidden
        return [(i, s.hidden[i + 1], t.hidden[j]) for i, j in enumerate(self.layer_map)]


class PKD(_Layered):
    """Patient KD (Sun et al. 2019, intersun/PKD-for-BERT-Model-Compression ``patience_loss``): the mean
    squared difference (``F.mse_loss``: averaged over examples, layers and hidden units) of the
    L2-normalised pooled states of matched layers, the student's last layer excluded. Pooling: the first
    token ([CLS]) for encoders, the mean over real tokens for decoders (``pooling: auto``)."""

    spec = specs.PKD

    def forward(self, inputs: StepInputs) -> torch.Tensor:
        mask = inputs.student_hidden.mask
        pairs = self.pairs(inputs)
        if self.exclude_last and len(pairs) > 1:  # the last layer is the prediction KD's job
            pairs = pairs[:-1]
        terms = []
        for k, s, t in pairs:
            s = F.normalize(self.project(k, pool(s, mask, self.pooling)).float(), dim=-1)
            t = F.normalize(pool(t, inputs.teacher_hidden.mask, self.pooling).float(), dim=-1)
            terms.append(((s - t) ** 2).mean())
        return torch.stack(terms).mean()


class HiddenCosine(_Layered):
    """DistilBERT's cosine embedding loss: 1 - cos(student, teacher) of the last hidden states at every token."""

    spec = specs.HiddenCosine

    def n_projections(self) -> int:
        return 1

    def forward(self, inputs: StepInputs) -> torch.Tensor:
        s, t = inputs.student_hidden, inputs.teacher_hidden
        cos = F.cosine_similarity(self.project(0, s.hidden[-1]), t.hidden[-1], dim=-1)
        return _masked_mean(1.0 - cos, s.mask)


class TinyBERTHidden(_Layered):
    """TinyBERT (huawei-noah TinyBERT ``rep_loss``): the sum over matched layers (and, with ``embeddings:
    true``, as in the preset, the embedding outputs) of the MSE between the student's states, mapped by one
    projection shared by all of them (TinyBERT's ``fit_dense``), and the teacher's, averaged over real tokens."""

    spec = specs.TinyBERTHidden
    projection_bias = True  # TinyBERT's fit_dense is an nn.Linear with bias

    def n_projections(self) -> int:
        return 1

    def forward(self, inputs: StepInputs) -> torch.Tensor:
        s, t = inputs.student_hidden, inputs.teacher_hidden
        pairs = [(s.hidden[0], t.hidden[0])] if self.embeddings else []
        pairs += [(sh, th) for _, sh, th in self.pairs(inputs)]
        return torch.stack([_masked_mean((self.project(0, a) - b) ** 2, s.mask) for a, b in pairs]).sum()


def heads_alike(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention maps [batch, heads, q, k] with different head counts are compared head-averaged."""
    if a.shape[1] != b.shape[1]:
        return a.mean(1, keepdim=True), b.mean(1, keepdim=True)
    return a, b


def floor_masked(scores: torch.Tensor) -> torch.Tensor:
    """TinyBERT's treatment of masked attention scores: entries <= -100 (mask added) become 0."""
    scores = scores.float()
    return torch.where(scores <= SCORE_FLOOR, torch.zeros_like(scores), scores)


class TinyBERTAttention(_Layered):
    """TinyBERT (huawei-noah TinyBERT ``att_loss``): the sum over matched layers of the MSE between the
    student's and the teacher's attention *scores* (q k^T / sqrt(d) + mask, before the softmax; masked
    entries set to 0), averaged over the (query, key) pairs of real tokens and heads; maps with different
    head counts are head-averaged."""

    spec = specs.TinyBERTAttention

    def n_projections(self) -> int:
        return 0

    def forward(self, inputs: StepInputs) -> torch.Tensor:
        s, t = inputs.student_attentions, inputs.teacher_attentions
        pair_mask = (s.mask[:, None, :, None] * s.mask[:, None, None, :]).float()
        terms = []
        for i, j in enumerate(self.layer_map):
            a, b = heads_alike(floor_masked(s.scores[i]), floor_masked(t.scores[j - 1]))
            terms.append((((a - b) ** 2) * pair_mask).sum() / (pair_mask.sum() * a.shape[1]))
        return torch.stack(terms).sum()


class InBatchContrastive(_Layered):
    """LRC-BERT-style contrastive distillation on intermediate layers: for each matched layer, the
    student's pooled state of example i must be closer (cosine / temperature) to the teacher's state of
    example i than to those of the other examples in the batch (InfoNCE with in-batch negatives)."""

    spec = specs.InBatchContrastive

    def forward(self, inputs: StepInputs) -> torch.Tensor:
        s_mask, t_mask = inputs.student_hidden.mask, inputs.teacher_hidden.mask
        terms = []
        for k, s, t in self.pairs(inputs):
            s = F.normalize(self.project(k, pool(s, s_mask, self.pooling)).float(), dim=-1)
            t = F.normalize(pool(t, t_mask, self.pooling).float(), dim=-1)
            logits = s @ t.T / self.temperature
            terms.append(F.cross_entropy(logits, torch.arange(len(s), device=logits.device)))
        return torch.stack(terms).mean()


class Theseus(Loss):
    """BERT-of-Theseus (Xu et al. 2020, JetRunner/BERT-of-Theseus): the task loss of a hybrid model in which
    each student layer is replaced, with probability 1 - p, by the teacher layers it stands for. p grows
    linearly from ``replace_start`` to 1 at ``replace_full_at`` (fractions of the steps); the plain
    student's own losses (``ce``, ``kd``) then carry on. As in the reference, only the student's
    transformer layers (the successor modules) train: its embeddings and output head stay as initialised
    (from the teacher). Stage 2 only; the student and teacher widths must match."""

    spec = specs.Theseus

    def bind(self, context: LossContext) -> None:
        if context.student_config.hidden_size != context.teacher_config.hidden_size:
            raise ConfigError(
                f"theseus swaps teacher layers into the student: widths must match (student "
                f"{context.student_config.hidden_size}, teacher {context.teacher_config.hidden_size})"
            )

    def prepare_student(self, student: torch.nn.Module) -> None:
        """Only the successor modules (the student's transformer layers) train."""
        student.requires_grad_(False)
        transformer_layers(student).requires_grad_(True)

    def replace_probability(self, progress: float) -> float:
        """Probability that a student layer is used (not its teacher layers) at ``progress`` in [0, 1)."""
        return min(1.0, self.replace_start + (1.0 - self.replace_start) * progress / self.replace_full_at)

    def forward(self, inputs: StepInputs) -> torch.Tensor:
        rows = [target_cross_entropy(y, s) for y, s in zip(inputs.labels, inputs.hybrid_scores)]
        return torch.stack(rows).mean()
