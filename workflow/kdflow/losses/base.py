"""A loss declares the tensors it needs; the engine computes only the union of what a run's losses need."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from ..errors import ConfigError

# Tensor names a loss may need (the engine knows how to produce each):
#   word_logits       student logits at the positions with word-prediction targets
#   word_targets      the teacher's word-prediction targets there (cached top-k/dense/hidden, or online logits)
#   student_scores    the student's candidate/verbalizer scores (one row per example)
#   teacher_scores    the teacher's candidate scores (cached)
#   labels            gold target distributions over the candidates
NEEDS = frozenset({"word_logits", "word_targets", "student_scores", "teacher_scores", "labels"})

REGISTRY: dict[str, type[Loss]] = {}


class Loss:
    name: ClassVar[str]
    needs: ClassVar[frozenset[str]]
    uses_labels: ClassVar[bool] = False

    def __init__(self, weight: float = 1.0, **settings: Any) -> None:
        self.weight = weight
        self.settings = settings

    def __call__(self, tensors: dict[str, Any]) -> torch.Tensor:
        raise NotImplementedError

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if getattr(cls, "name", None):
            unknown = cls.needs - NEEDS
            if unknown:
                raise TypeError(f"loss {cls.name} needs unknown tensors {sorted(unknown)}")
            REGISTRY[cls.name] = cls


def build_losses(spec: dict[str, dict[str, Any]]) -> list[Loss]:
    """``{name: {weight: w, ...settings}}`` -> loss objects; an unknown name or setting is an error."""
    losses = []
    for name, settings in spec.items():
        if name not in REGISTRY:
            raise ConfigError(f"unknown loss '{name}' (registered: {', '.join(sorted(REGISTRY))})")
        try:
            losses.append(REGISTRY[name](**(settings or {})))
        except TypeError as exc:
            raise ConfigError(f"loss '{name}': {exc}") from None
    return losses
