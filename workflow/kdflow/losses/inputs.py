"""What the losses of one step read (the distillation engine produces it): ``StepInputs``, whose fields are the
``needs`` vocabulary (``kdflow.recipes.NEEDS``) plus three fields every step has (``ALWAYS_PRESENT``).

A need nobody produced at a step holds ``NOT_PRODUCED``, and reading it raises ``UndeclaredInputError``; each
loss is handed ``inputs.restricted(loss.needs)``, so a loss reading a field it did not declare fails even when
another loss of the step asked for it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from ..features import Features
from ..interchange import Counterfactual

ALWAYS_PRESENT = ("step", "progress", "cache_temperatures")
FEATURE_KINDS = ("hidden", "attentions", "qkv")


class UndeclaredInputError(LookupError):
    """A loss read a step input it did not declare in ``needs`` (or that no producer made)."""


class _NotProduced:
    def __repr__(self) -> str:
        return "NOT_PRODUCED"


NOT_PRODUCED: Any = _NotProduced()


@dataclass(frozen=True, eq=False)
class StepInputs:
    """The tensors of one step. Feature needs (``student_hidden``, ``teacher_qkv``, ...) hold the side's
    ``Features`` of one forward pass (the same object for every kind asked of that side); scores are lists of
    one tensor per example; ``word_targets`` is the dict of cached or online targets; ``interchange_scores``
    DIITO's ``Counterfactual`` outputs."""

    step: int = 0  # 0-based optimizer step
    progress: float = 0.0  # fraction of the stage's steps done, in [0, 1)
    cache_temperatures: tuple[float, ...] = ()  # temperatures of the teacher's cached word targets
    word_logits: torch.Tensor = NOT_PRODUCED
    word_targets: dict[str, torch.Tensor] = NOT_PRODUCED
    word_labels: torch.Tensor = NOT_PRODUCED
    student_scores: list[torch.Tensor] = NOT_PRODUCED
    teacher_scores: list[torch.Tensor] = NOT_PRODUCED
    labels: list[torch.Tensor] = NOT_PRODUCED
    student_hidden: Features = NOT_PRODUCED
    teacher_hidden: Features = NOT_PRODUCED
    student_attentions: Features = NOT_PRODUCED
    teacher_attentions: Features = NOT_PRODUCED
    student_qkv: Features = NOT_PRODUCED
    teacher_qkv: Features = NOT_PRODUCED
    hybrid_scores: list[torch.Tensor] = NOT_PRODUCED
    interchange_scores: Counterfactual = NOT_PRODUCED
    example_ids: torch.Tensor = NOT_PRODUCED

    def __getattribute__(self, name: str) -> Any:
        value = object.__getattribute__(self, name)
        if value is NOT_PRODUCED:
            raise UndeclaredInputError(
                f"step input '{name}' was not produced for this loss: a loss reads only what it declares in `needs`"
            )
        return value

    def __repr__(self) -> str:
        made = [f.name for f in dataclasses.fields(self) if object.__getattribute__(self, f.name) is not NOT_PRODUCED]
        return f"StepInputs({', '.join(made)})"

    def restricted(self, needs: frozenset[str]) -> StepInputs:
        """The same inputs with every need outside ``needs`` hidden (the always-present fields stay)."""
        keep = set(needs) | set(ALWAYS_PRESENT)
        values = {
            f.name: object.__getattribute__(self, f.name) if f.name in keep else NOT_PRODUCED
            for f in dataclasses.fields(self)
        }
        return StepInputs(**values)


def need_names() -> frozenset[str]:
    """The fields of ``StepInputs`` that are needs (every field but the always-present ones)."""
    return frozenset(f.name for f in dataclasses.fields(StepInputs)) - set(ALWAYS_PRESENT)


def feature_flags(needs: frozenset[str], side: str) -> dict[str, bool]:
    """``forward_features`` switches for ``side`` ("student" or "teacher"): which kinds of features are needed."""
    return {kind: f"{side}_{kind}" in needs for kind in FEATURE_KINDS}


def feature_fields(needs: frozenset[str], side: str, features: Features) -> dict[str, Features]:
    """``{side_kind: features}`` for every kind of ``side`` in ``needs``."""
    return {f"{side}_{kind}": features for kind in FEATURE_KINDS if f"{side}_{kind}" in needs}
