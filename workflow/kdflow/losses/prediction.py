"""Losses on word predictions and on task scores (GLMD, Hinton KD, CE, MSE, the MLM term of DistilBERT)."""

from __future__ import annotations

from typing import Any

import torch

from ..buffers import ChunkBuffers
from ..cache.kl import dense_kl, dense_kl_and_grad_, sparse_kl
from ..heads import HeadRows
from ..recipes import specs
from .base import Loss, target_cross_entropy
from .chunked import PerPosition, PerPositionGrad, fused_head_loss
from .inputs import StepInputs

DENSE_TARGETS = ("head", "logits", "dense")  # the teacher's whole distribution at each position


def _dense_teacher(targets: dict[str, Any], any_dtype: bool = False) -> torch.Tensor | None:
    """The teacher's logits (or log-probabilities) of these rows where the targets are dense, else None; decoded
    ones in fp32 unless ``any_dtype`` (in the teacher head's dtype)."""
    if "head" in targets:
        return targets["head"].decoded() if any_dtype else targets["head"].logits()
    return targets.get("logits", targets.get("dense"))


def word_kl_per_position(
    logits: torch.Tensor, targets: dict[str, Any], temperature: float, temperatures: list[float]
) -> torch.Tensor:
    """KL(p_T || q_T) at each position from cached top-k (+ normaliser), dense rows, teacher logits, or a
    cached teacher's head inputs (``head``: ``DecodedRows``, decoded here)."""
    teacher = _dense_teacher(targets)
    if teacher is not None:
        return dense_kl(teacher, logits, temperature)
    if temperature not in temperatures:
        raise ValueError(f"the cache has log-normalisers for T in {temperatures}, not for T = {temperature}")
    column = temperatures.index(temperature)
    return sparse_kl(logits, targets["values"], targets["ids"], targets["log_norm"][..., column], temperature)


def target_rows(targets: dict[str, Any], rows: slice) -> dict[str, Any]:
    """The word targets of the positions ``rows`` (tensors and ``DecodedRows`` are sliced alike)."""
    return {k: v[rows] for k, v in targets.items()}


def summed_over_positions(
    word_logits: torch.Tensor | HeadRows, per_position: PerPosition, closed_form: PerPositionGrad | None = None
) -> torch.Tensor:
    """The sum of ``per_position(logits, rows)`` over every word position: on the logits as given, or, for a
    student's ``HeadRows``, formed by its head (fused with the loss a chunk at a time when ``chunk`` is set,
    with the logits' gradient from ``closed_form`` where given)."""
    if isinstance(word_logits, HeadRows):
        if word_logits.chunk:
            return fused_head_loss(word_logits, per_position, word_logits.chunk, closed_form)
        word_logits = word_logits.logits()
    return per_position(word_logits, slice(None)).sum()


class WordKL(Loss):
    """GLMD: KL(softmax(t/T) || softmax(s/T)) * T^2 over every non-padding word prediction."""

    spec = specs.WordKL

    def forward(self, inputs: StepInputs) -> torch.Tensor:
        targets, temperatures = inputs.word_targets, list(inputs.cache_temperatures)

        def kl(logits: torch.Tensor, rows: slice) -> torch.Tensor:
            return word_kl_per_position(logits, target_rows(targets, rows), self.temperature, temperatures)

        def kl_and_grad(logits: torch.Tensor, rows: slice, buffers: ChunkBuffers) -> tuple[torch.Tensor, torch.Tensor]:
            teacher = _dense_teacher(target_rows(targets, rows), any_dtype=True)
            p, d = buffers.take("p", logits.shape), buffers.take("d", logits.shape)
            return dense_kl_and_grad_(teacher, logits, self.temperature, p, d), logits  # the gradient, in place

        dense = any(k in targets for k in DENSE_TARGETS)
        n = len(inputs.word_logits)
        total = summed_over_positions(inputs.word_logits, kl, kl_and_grad if dense else None)
        return total / max(n, 1) * self.temperature**2


def _soft(scores: list[torch.Tensor], temperature: float) -> list[torch.Tensor]:
    return [torch.softmax(s.float() / temperature, -1) for s in scores]


class CandidateKD(Loss):
    """GLMD stage 2 (aitsc/GLMKD ``--distill_ft_soft``): soft cross-entropy against the teacher's
    distribution over candidates/verbalizers at ``temperature``, averaged over examples. With
    ``per_candidate: true`` each example's cross-entropy is also divided by its number of candidates
    (TinyBERT's ``soft_cross_entropy``, a mean over the [examples, classes] matrix)."""

    spec = specs.CandidateKD
    has_per_example = True

    def per_example(self, inputs: StepInputs) -> torch.Tensor:
        t = _soft(inputs.teacher_scores, self.temperature)
        rows = [
            target_cross_entropy(p, s.float() / self.temperature) / (len(p) if self.per_candidate else 1)
            for p, s in zip(t, inputs.student_scores)
        ]
        return torch.stack(rows)

    def forward(self, inputs: StepInputs) -> torch.Tensor:
        return self.per_example(inputs).mean()


class HintonKD(Loss):
    """Hinton et al.: KL between temperature-softened teacher and student task logits, times T^2."""

    spec = specs.HintonKD
    has_per_example = True

    def per_example(self, inputs: StepInputs) -> torch.Tensor:
        rows = [dense_kl(t, s, self.temperature) for t, s in zip(inputs.teacher_scores, inputs.student_scores)]
        return torch.stack(rows) * self.temperature**2

    def forward(self, inputs: StepInputs) -> torch.Tensor:
        return self.per_example(inputs).mean()


class GoldCE(Loss):
    """Cross-entropy with the gold labels (a target distribution over the candidates)."""

    spec = specs.GoldCE
    has_per_example = True

    def per_example(self, inputs: StepInputs) -> torch.Tensor:
        rows = [target_cross_entropy(y, s) for y, s in zip(inputs.labels, inputs.student_scores)]
        return torch.stack(rows)

    def forward(self, inputs: StepInputs) -> torch.Tensor:
        return self.per_example(inputs).mean()


class LogitMSE(Loss):
    """Mean squared error between student and teacher task logits (STS-B-style regression targets)."""

    spec = specs.LogitMSE
    has_per_example = True

    def per_example(self, inputs: StepInputs) -> torch.Tensor:
        rows = [((s - t) ** 2).mean() for s, t in zip(inputs.student_scores, inputs.teacher_scores)]
        return torch.stack(rows)

    def forward(self, inputs: StepInputs) -> torch.Tensor:
        return self.per_example(inputs).mean()


class LanguageModelling(Loss):
    """DistilBERT's MLM term: the student's cross-entropy with the true tokens (next token for decoders)."""

    spec = specs.LanguageModelling

    def forward(self, inputs: StepInputs) -> torch.Tensor:
        labels = inputs.word_labels

        def ce(logits: torch.Tensor, rows: slice) -> torch.Tensor:
            return torch.nn.functional.cross_entropy(logits.float(), labels[rows], ignore_index=-100, reduction="none")

        return summed_over_positions(inputs.word_logits, ce) / (labels != -100).sum().clamp(min=1)
