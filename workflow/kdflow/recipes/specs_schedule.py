"""Declarations of the scheduled losses of the GKD method zoo (``kdflow.losses.schedule``): Annealing-KD,
Continuation-KD, SID, MobileBERT's progressive knowledge transfer and LRC-BERT's COS-NCE (with its gradient
perturbation). Their schedules run over the loss's own ``start``/``stop`` window (see ``kdflow.losses.schedule``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from .specs import HIDDEN, LossSpec, _Layers, _Pooled
from .values import SettingError, at_least, number, positive

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
class ContinuationKD(LossSpec):
    name: ClassVar[str] = "continuation_kd"
    needs: ClassVar[frozenset[str]] = frozenset({"student_scores", "teacher_scores", "labels"})
    stages: ClassVar[tuple[str, ...]] = ("stage2",)
    uses_labels: ClassVar[bool] = True
    max_temperature: float = 10.0  # T_max (the paper's NLU runs; GLMKD --continuation_kd_max_t=10)
    margin: float = 1.0  # m of the hinge (GLMKD --continuation_kd_margin=1)
    psi_sep: float = 2 / 3  # psi = progress / psi_denominator up to here, then 1 (paper eq. 8: epoch 20 of 30)
    psi_denominator: float = 4 / 3  # (eq. 8: 40 / 30 epochs; GLMKD --continuation_kd_psi_sep/denominator)

    def check(self) -> None:
        self.set(
            max_temperature=at_least("max_temperature", self.max_temperature, 1.0),
            margin=at_least("margin", self.margin, 0.0),
            psi_sep=number("psi_sep", self.psi_sep),
            psi_denominator=positive("psi_denominator", self.psi_denominator),
        )
        if not 0.0 <= self.psi_sep <= 1.0:
            raise SettingError(
                "psi_sep", f"expected a value in [0, 1] (a fraction of the window), got {self.psi_sep:g}"
            )
        if self.psi_denominator < self.psi_sep:
            raise SettingError(
                "psi_denominator",
                f"{self.psi_denominator:g} < psi_sep {self.psi_sep:g}: psi = progress / psi_denominator would pass 1",
            )


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
