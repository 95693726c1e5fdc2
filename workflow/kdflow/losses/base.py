"""A loss declares the tensors it needs; the engine computes only the union of what a run's losses need.

Losses are ``torch.nn.Module``s: those with learned projections (TinyBERT, CoDIR) or state (CoDIR's memory
banks) train and checkpoint with the student. ``bind`` is called once before training with the sizes they
depend on; ``start``/``stop`` (fractions of the stage's steps) switch a loss on and off, e.g. TinyBERT's
intermediate-layer phase followed by its prediction-layer phase."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..errors import ConfigError

# Tensor names a loss may need (the engine knows how to produce each):
#   word_logits         student logits at the positions with word-prediction targets
#   word_targets        the teacher's word-prediction targets there (cached top-k/dense/hidden, or online logits)
#   word_labels         the true tokens there (stage 1; -100 where there is none)
#   student_scores      the student's task scores: candidate/verbalizer scores or classification-head logits
#   teacher_scores      the teacher's task scores (cached candidate scores, or an online classifier's logits)
#   labels              gold target distributions over the candidates
#   student_hidden      student Features with per-layer hidden states (teacher_hidden: the teacher's)
#   student_attentions  ... with per-layer attention probabilities (eager attention)
#   student_qkv         ... with per-layer query/key/value projections
#   hybrid_scores       task scores of the student with teacher layers swapped in (BERT-of-Theseus)
#   example_ids         dataset indices of the batch (memory banks)
NEEDS = frozenset({
    "word_logits", "word_targets", "word_labels", "student_scores", "teacher_scores", "labels",
    "student_hidden", "teacher_hidden", "student_attentions", "teacher_attentions", "student_qkv",
    "teacher_qkv", "hybrid_scores", "example_ids",
})  # fmt: skip
FEATURE_NEEDS = {"hidden", "attentions", "qkv"}

REGISTRY: dict[str, type[Loss]] = {}
PRESETS: dict[str, Any] = {}


@dataclass(frozen=True)
class LossContext:
    """What a loss may size itself by: the data, the two models' shapes, the stage and its length."""

    stage: str
    n_examples: int
    steps: int
    seed: int
    student_config: Any = None
    teacher_config: Any = None
    label_ids: tuple[int, ...] | None = None  # gold label index per training example (classification tasks)


class Loss(torch.nn.Module):
    name: ClassVar[str]
    needs: ClassVar[frozenset[str]]
    uses_labels: ClassVar[bool] = False
    token_aligned: ClassVar[bool] = False  # compares student and teacher token by token
    stages: ClassVar[tuple[str, ...]] = ("stage1", "stage2")

    def __init__(self, weight: float = 1.0, start: float = 0.0, stop: float = 1.0) -> None:
        super().__init__()
        if not 0.0 <= start < stop <= 1.0:
            raise TypeError(f"start {start} / stop {stop}: expected 0 <= start < stop <= 1 (fractions of the steps)")
        self.weight, self.start, self.stop = weight, start, stop

    def bind(self, context: LossContext) -> None:
        """Create parameters/buffers that depend on the data or the models (called once, before training)."""

    def active(self, progress: float) -> bool:
        return self.start <= progress < self.stop

    def forward(self, tensors: dict[str, Any]) -> torch.Tensor:
        raise NotImplementedError

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if getattr(cls, "name", None):
            unknown = cls.needs - NEEDS
            if unknown:
                raise TypeError(f"loss {cls.name} needs unknown tensors {sorted(unknown)}")
            REGISTRY[cls.name] = cls


def preset(name: str):
    """Register ``fn(weight, stage, **settings) -> {loss: settings}`` as a named combination of losses."""

    def register(fn):
        PRESETS[name] = fn
        return fn

    return register


def expand_presets(spec: dict[str, dict[str, Any]], stage: str) -> dict[str, dict[str, Any]]:
    """Replace preset names by the losses they stand for; a loss named twice is an error."""
    out: dict[str, dict[str, Any]] = {}
    for name, settings in spec.items():
        settings = dict(settings or {})
        if name in PRESETS:
            try:
                parts = PRESETS[name](settings.pop("weight", 1.0), stage, **settings)
            except TypeError as exc:
                raise ConfigError(f"preset '{name}': {exc}") from None
        else:
            parts = {name: settings}
        for part, part_settings in parts.items():
            if part in out:
                raise ConfigError(f"loss '{part}' is named twice in {stage} (directly or through a preset)")
            out[part] = part_settings
    return out


def build_losses(spec: dict[str, dict[str, Any]], stage: str = "stage2") -> list[Loss]:
    """``{name: {weight: w, ...settings}}`` -> loss objects; an unknown name or setting is an error."""
    losses = []
    for name, settings in expand_presets(spec, stage).items():
        if name not in REGISTRY:
            known = ", ".join(sorted([*REGISTRY, *PRESETS]))
            raise ConfigError(f"unknown loss '{name}' (registered losses and presets: {known})")
        cls = REGISTRY[name]
        if stage not in cls.stages:
            raise ConfigError(f"loss '{name}' works in {' and '.join(cls.stages)} only, not in {stage}")
        try:
            losses.append(cls(**(settings or {})))
        except TypeError as exc:
            raise ConfigError(f"loss '{name}': {exc}") from None
    return losses
