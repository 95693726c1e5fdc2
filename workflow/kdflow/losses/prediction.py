"""Losses on word predictions and on task scores (GLMD, Hinton KD, CE, MSE, the MLM term of DistilBERT)."""

from __future__ import annotations

import torch

from ..cache.kl import dense_kl, sparse_kl
from ..recipes import specs
from .base import Loss
from .inputs import StepInputs


def word_kl_per_position(
    logits: torch.Tensor, targets: dict[str, torch.Tensor], temperature: float, temperatures: list[float]
) -> torch.Tensor:
    """KL(p_T || q_T) at each position from cached top-k (+ normaliser), dense rows, or teacher logits."""
    if "logits" in targets:
        return dense_kl(targets["logits"], logits, temperature)
    if "dense" in targets:
        return dense_kl(targets["dense"], logits, temperature)
    if temperature not in temperatures:
        raise ValueError(f"the cache has log-normalisers for T in {temperatures}, not for T = {temperature}")
    column = temperatures.index(temperature)
    return sparse_kl(logits, targets["values"], targets["ids"], targets["log_norm"][..., column], temperature)


class WordKL(Loss):
    """GLMD: KL(softmax(t/T) || softmax(s/T)) * T^2 over every non-padding word prediction."""

    spec = specs.WordKL

    def forward(self, inputs: StepInputs) -> torch.Tensor:
        kl = word_kl_per_position(
            inputs.word_logits, inputs.word_targets, self.temperature, list(inputs.cache_temperatures)
        )
        return kl.mean() * self.temperature**2


def _soft(scores: list[torch.Tensor], temperature: float) -> list[torch.Tensor]:
    return [torch.softmax(s.float() / temperature, -1) for s in scores]


class CandidateKD(Loss):
    """GLMD stage 2 (aitsc/GLMKD ``--distill_ft_soft``): soft cross-entropy against the teacher's
    distribution over candidates/verbalizers at ``temperature``, averaged over examples. With
    ``per_candidate: true`` each example's cross-entropy is also divided by its number of candidates
    (TinyBERT's ``soft_cross_entropy``, a mean over the [examples, classes] matrix)."""

    spec = specs.CandidateKD

    def forward(self, inputs: StepInputs) -> torch.Tensor:
        t = _soft(inputs.teacher_scores, self.temperature)
        rows = [
            -(p * torch.log_softmax(s.float() / self.temperature, -1)).sum() / (len(p) if self.per_candidate else 1)
            for p, s in zip(t, inputs.student_scores)
        ]
        return torch.stack(rows).mean()


class HintonKD(Loss):
    """Hinton et al.: KL between temperature-softened teacher and student task logits, times T^2."""

    spec = specs.HintonKD

    def forward(self, inputs: StepInputs) -> torch.Tensor:
        rows = [dense_kl(t, s, self.temperature) for t, s in zip(inputs.teacher_scores, inputs.student_scores)]
        return torch.stack(rows).mean() * self.temperature**2


class GoldCE(Loss):
    """Cross-entropy with the gold labels (a target distribution over the candidates)."""

    spec = specs.GoldCE

    def forward(self, inputs: StepInputs) -> torch.Tensor:
        rows = [-(y * torch.log_softmax(s, -1)).sum() for y, s in zip(inputs.labels, inputs.student_scores)]
        return torch.stack(rows).mean()


class LogitMSE(Loss):
    """Mean squared error between student and teacher task logits (STS-B-style regression targets)."""

    spec = specs.LogitMSE

    def forward(self, inputs: StepInputs) -> torch.Tensor:
        rows = [((s - t) ** 2).mean() for s, t in zip(inputs.student_scores, inputs.teacher_scores)]
        return torch.stack(rows).mean()


class LanguageModelling(Loss):
    """DistilBERT's MLM term: the student's cross-entropy with the true tokens (next token for decoders)."""

    spec = specs.LanguageModelling

    def forward(self, inputs: StepInputs) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(inputs.word_logits.float(), inputs.word_labels, ignore_index=-100)
