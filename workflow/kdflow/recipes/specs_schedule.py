"""Declarations of the scheduled losses of the GKD method zoo (``kdflow.losses.schedule``): Annealing-KD, SID,
MobileBERT's progressive knowledge transfer and LRC-BERT's COS-NCE (with its gradient perturbation). Their
schedules run over the loss's own ``start``/``stop`` window (see ``kdflow.losses.schedule``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from .specs import HIDDEN, LossSpec, _Layers, _Pooled
from .values import SettingError, at_least

ATTENTIONS = frozenset({"student_attentions", "teacher_attentions"})


@dataclass(frozen=True)
class AnnealingKD(LossSpec):
    name: ClassVar[str] = "annealing_kd"
    needs: ClassVar[frozenset[str]] = frozenset({"student_scores", "teacher_scores"})
    stages: ClassVar[tuple[str, ...]] = ("stage2",)
    max_temperature: float = 7.0  # GLMKD --annealing_kd_max_t

    def check(self) -> None:
        self.set(max_temperature=at_least("max_temperature", self.max_temperature, 1.0))


@dataclass(frozen=True)
class SID(_Pooled):
    name: ClassVar[str] = "sid"
    needs: ClassVar[frozenset[str]] = HIDDEN | ATTENTIONS
    token_aligned: ClassVar[bool] = True


@dataclass(frozen=True)
class MobileBERT(_Layers):
    name: ClassVar[str] = "mobilebert"
    needs: ClassVar[frozenset[str]] = HIDDEN | ATTENTIONS
    token_aligned: ClassVar[bool] = True
    lower_weight: float = 0.1  # GLMKD --mobilebert_pkt_small_lr: the layers below the one being transferred

    def check(self) -> None:
        super().check()
        self.set(lower_weight=at_least("lower_weight", self.lower_weight, 0.0))


@dataclass(frozen=True)
class LRCBert(_Layers):
    name: ClassVar[str] = "lrc_bert"
    needs: ClassVar[frozenset[str]] = HIDDEN
    token_aligned: ClassVar[bool] = True
    # GLMKD --lrc_bert_gard_perturb (1.0): the L2 norm, per token, of the gradient perturbation of the student's
    # embedding output in the steps where the loss is active (kdflow.distill.perturb); 0: none
    perturbation: float = 0.0

    def check(self) -> None:
        super().check()
        value = at_least("perturbation", self.perturbation, 0.0)
        if not math.isfinite(value):
            raise SettingError("perturbation", f"expected a finite number >= 0, got {value:g}")
        self.set(perturbation=value)
