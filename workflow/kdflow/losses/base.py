"""A loss declares the tensors it needs; the engine computes only the union of what a run's losses need.

Each loss class takes its declaration (name, needs, stages, settings and their checks) from its entry in
``kdflow.recipes.specs``, so recipes are checked without torch; this module builds them. Losses are
``torch.nn.Module``s: those with learned projections (TinyBERT, CoDIR) or state (CoDIR's memory banks) train
and checkpoint with the student. ``bind`` is called once before training with the sizes they depend on;
``start``/``stop`` (fractions of the stage's steps) switch a loss on and off, e.g. TinyBERT's
intermediate-layer phase followed by its prediction-layer phase."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from ..errors import ConfigError
from ..recipes import NEEDS, LossSpec, Problem, resolve

if TYPE_CHECKING:
    from .inputs import StepInputs

__all__ = ["NEEDS", "REGISTRY", "Loss", "LossContext", "build_losses", "check_losses"]

REGISTRY: dict[str, type[Loss]] = {}


def target_cross_entropy(target: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """The cross-entropy of ``logits`` with a target distribution over the last dimension:
    -sum(target * log_softmax(logits)) (gold labels as one-hot rows, or a teacher's softened scores)."""
    return -(target * torch.log_softmax(logits, -1)).sum(-1)


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
    examples_per_step: int = 1  # batch size x gradient accumulation x data-parallel processes


class Loss(torch.nn.Module):
    """A loss built from its checked settings (``spec``), which also become attributes of the same names."""

    spec: ClassVar[type[LossSpec]]
    name: ClassVar[str]
    needs: ClassVar[frozenset[str]]
    uses_labels: ClassVar[bool] = False
    token_aligned: ClassVar[bool] = False
    stages: ClassVar[tuple[str, ...]] = ("stage1", "stage2")
    has_per_example: ClassVar[bool] = False  # ``per_example`` gives each example's value (multi-teacher weights)

    def __init__(self, settings: LossSpec | None = None, **values: Any) -> None:
        super().__init__()
        self.settings = settings if settings is not None else self.spec(**values)
        for key, value in self.settings.values().items():
            setattr(self, key, value)

    def bind(self, context: LossContext) -> None:
        """Create parameters/buffers that depend on the data or the models (called once, before training)."""

    def prepare_student(self, student: torch.nn.Module) -> None:
        """Adjust what of the student trains (called once, before the optimizer is built); default: all."""

    def active(self, progress: float) -> bool:
        return self.start <= progress < self.stop

    def embedding_perturbation(self) -> float:
        """The per-token norm of the gradient perturbation of the student's embedding output that this loss asks
        of the steps where it is active (LRC-BERT, ``kdflow.distill.perturb``); 0: none."""
        return 0.0

    def forward(self, inputs: StepInputs) -> torch.Tensor:
        """The loss of one step from the inputs it declared in ``needs`` (reading any other one raises)."""
        raise NotImplementedError

    def per_example(self, inputs: StepInputs) -> torch.Tensor:
        """[B]: each example's loss, whose mean is ``forward`` (losses with ``has_per_example``)."""
        raise NotImplementedError(f"loss {self.name} has no per-example values")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        spec = vars(cls).get("spec")
        if spec is not None:
            cls.name, cls.needs, cls.stages = spec.name, spec.needs, spec.stages
            cls.uses_labels, cls.token_aligned = spec.uses_labels, spec.token_aligned
            if spec.name:  # an unnamed spec (a test's loss) is not registered
                REGISTRY[cls.name] = cls


def check_losses(spec: dict[str, Any], stage: str) -> tuple[list[Loss], list[Problem]]:
    """``kdflow.recipes.resolve`` with the losses built (without their ``bind``-time parameters)."""
    specs, problems = resolve(spec, stage)
    return [REGISTRY[s.name](s) for s in specs], problems


def build_losses(spec: dict[str, dict[str, Any]], stage: str = "stage2") -> list[Loss]:
    """``{name: {weight: w, ...settings}}`` -> loss objects; any problem of the recipe is an error."""
    losses, problems = check_losses(spec, stage)
    if problems:
        raise ConfigError(
            "; ".join(f"{stage}.losses.{key}: {message}" if key else f"{stage}: {message}" for key, message in problems)
        )
    return losses
