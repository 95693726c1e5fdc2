"""DIITO's causal loss (Wu et al. 2022; aitsc/GLMKD @2f42ff7 ``distill/distill_model.py`` ``DIITO.pre_loss`` and
``inter_loss`` in the repeated forward pass, ``GLMStudent.pre_loss``, ``distill/custom_loss.py``): the soft
cross-entropy between the student's and the teacher's counterfactual task logits (``kdflow.interchange``), plus,
with ``cosine`` > 0, the cosine distance between their counterfactual last hidden states.
tests/test_zoo_diito.py checks it against an independent implementation of GLMKD's DIITO."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..recipes import specs_interchange as specs
from .base import Loss, LossContext, target_cross_entropy
from .inputs import StepInputs


def soft_cross_entropy(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean over examples of -sum softmax(t / T) log softmax(s / T) over the classes of [batch, classes] logits
    (GLMKD's fine-tuning ``pre_loss``: ``CustomLoss.cross_entropy``, no T^2)."""
    target = torch.softmax(teacher.float() / temperature, -1)
    return target_cross_entropy(target, student.float() / temperature).mean()


def cosine_distance(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 - cos(student, teacher) of [batch, length, width] states, averaged over the real tokens of ``mask``
    (GLMKD averages over every position, padding counting 1 each: a constant and a scale)."""
    distance = 1.0 - F.cosine_similarity(student.float(), teacher.float(), dim=-1)
    weights = mask.to(distance.dtype)
    return (distance * weights).sum() / weights.sum().clamp_min(1.0)


class DIITO(Loss):
    """DIITO (distillation by interchange intervention), the causal term: stage 2 of the encoder track."""

    spec = specs.DIITO

    def bind(self, context: LossContext) -> None:
        s, t = context.student_config, context.teacher_config
        if t is None:
            raise ConfigError("stage2.losses.diito: the interchange intervention needs the online teacher")
        if self.alignment == "full" and s.num_hidden_layers > t.num_hidden_layers:
            raise ConfigError(
                f"stage2.losses.diito.alignment: 'full' maps each student layer onto a block of teacher layers; "
                f"the student has more layers ({s.num_hidden_layers}) than the teacher ({t.num_hidden_layers})"
            )
        if self.cosine > 0 and s.hidden_size != t.hidden_size:
            raise ConfigError(
                f"stage2.losses.diito.cosine: the cosine term compares the last hidden states, whose widths differ "
                f"(student {s.hidden_size}, teacher {t.hidden_size}); set cosine: 0"
            )

    def forward(self, inputs: StepInputs) -> torch.Tensor:
        made = inputs.interchange_scores
        loss = soft_cross_entropy(made.student_logits, made.teacher_logits, self.temperature)
        if self.cosine > 0:
            loss = loss + self.cosine * cosine_distance(made.student_last, made.teacher_last, made.mask)
        return loss
