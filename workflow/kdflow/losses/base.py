"""A loss declares the tensors it needs; the engine computes only the union of what a run's losses need.

Losses are ``torch.nn.Module``s: those with learned projections (TinyBERT, CoDIR) or state (CoDIR's memory
banks) train and checkpoint with the student. ``bind`` is called once before training with the sizes they
depend on; ``start``/``stop`` (fractions of the stage's steps) switch a loss on and off, e.g. TinyBERT's
intermediate-layer phase followed by its prediction-layer phase."""

from __future__ import annotations

import inspect
import numbers
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from ..errors import ConfigError

if TYPE_CHECKING:
    from .inputs import StepInputs

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


class SettingError(ConfigError):
    """A loss or preset setting with a bad value; ``key`` names the setting."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def number(key: str, value: Any) -> float:
    """``value`` as a float; a string, a boolean or ``None`` is a SettingError naming ``key``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise SettingError(key, f"expected a number, got {type(value).__name__} {value!r}")
    return float(value)


def positive(key: str, value: Any) -> float:
    """A number > 0 (temperatures, scales)."""
    value = number(key, value)
    if not value > 0:
        raise SettingError(key, f"expected a number > 0, got {value:g}")
    return value


def count(key: str, value: Any, minimum: int = 1) -> int:
    """An integer >= ``minimum`` (negatives, dimensions, heads)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise SettingError(key, f"expected an integer >= {minimum}, got {value!r}")
    return int(value)


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
        weight, start, stop = number("weight", weight), number("start", start), number("stop", stop)
        if not 0.0 <= start < stop <= 1.0:
            raise SettingError("start", f"start {start:g} / stop {stop:g}: expected 0 <= start < stop <= 1 "
                                        "(fractions of the steps)")  # fmt: skip
        self.weight, self.start, self.stop = weight, start, stop

    def bind(self, context: LossContext) -> None:
        """Create parameters/buffers that depend on the data or the models (called once, before training)."""

    def prepare_student(self, student: torch.nn.Module) -> None:
        """Adjust what of the student trains (called once, before the optimizer is built); default: all."""

    def active(self, progress: float) -> bool:
        return self.start <= progress < self.stop

    def forward(self, inputs: StepInputs) -> torch.Tensor:
        """The loss of one step from the inputs it declared in ``needs`` (reading any other one raises)."""
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


def _parameters(fn: Any) -> list[str]:
    return [p.name for p in inspect.signature(fn).parameters.values()
            if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name != "self"]  # fmt: skip


def loss_settings(cls: type[Loss]) -> list[str]:
    """Every setting a loss class accepts (its constructors' named parameters, base classes included)."""
    names: list[str] = []
    for klass in reversed(cls.__mro__):
        if isinstance(klass, type) and issubclass(klass, Loss) and "__init__" in vars(klass):
            names += [n for n in _parameters(vars(klass)["__init__"]) if n not in names]
    return names


def preset_settings(name: str) -> list[str]:
    return [n for n in _parameters(PRESETS[name]) if n != "stage"]


Problem = tuple[str, str]  # (the setting's key below the loss group, e.g. "word_kl.temperature"; the message)


def _unknown(key: str, settings: dict[str, Any], allowed: list[str], what: str) -> list[Problem]:
    return [(f"{key}.{k}", f"unknown setting of {what} (its settings: {', '.join(allowed)})")
            for k in settings if k not in allowed]  # fmt: skip


def _expand(spec: dict[str, Any], stage: str) -> tuple[dict[str, tuple[str, dict[str, Any]]], list[Problem]]:
    """Presets replaced by their losses: {loss: (the config key it came from, settings)}, and the problems."""
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    problems: list[Problem] = []
    for name, settings in spec.items():
        settings = dict(settings or {})
        if name in PRESETS:
            bad = _unknown(name, settings, preset_settings(name), f"preset '{name}'")
            if bad:
                problems += bad
                continue
            try:
                parts = PRESETS[name](number("weight", settings.pop("weight", 1.0)), stage, **settings)
            except SettingError as exc:
                problems.append((f"{name}.{exc.key}", f"preset '{name}': {exc}"))
                continue
            except ConfigError as exc:
                problems.append((name, str(exc)))
                continue
        elif name in REGISTRY:
            parts = {name: settings}
        else:
            known = ", ".join(sorted([*REGISTRY, *PRESETS]))
            problems.append((name, f"unknown loss '{name}' (registered losses and presets: {known})"))
            continue
        for part, part_settings in parts.items():
            if part in out:
                problems.append((name, f"loss '{part}' is named twice in {stage} (directly or through a preset)"))
            out[part] = (name, part_settings)
    return out, problems


def expand_presets(spec: dict[str, dict[str, Any]], stage: str) -> dict[str, dict[str, Any]]:
    """Replace preset names by the losses they stand for; a loss named twice is an error."""
    parts, problems = _expand(spec, stage)
    if problems:
        raise ConfigError(problems[0][1])
    return {part: settings for part, (_, settings) in parts.items()}


def _construct(part: str, origin: str, settings: dict[str, Any], stage: str) -> tuple[Loss | None, list[Problem]]:
    cls = REGISTRY[part]
    what = f"loss '{part}'" if part == origin else f"loss '{part}' (from preset '{origin}')"
    if stage not in cls.stages:
        return None, [(origin, f"{what} works in {' and '.join(cls.stages)} only, not in {stage}")]
    if part == origin:
        bad = _unknown(origin, settings, loss_settings(cls), what)
        if bad:
            return None, bad
    try:
        return cls(**settings), []
    except SettingError as exc:
        key = f"{origin}.{exc.key}" if part == origin or exc.key in preset_settings(origin) else origin
        return None, [(key, f"{what}: {exc}")]
    except ConfigError as exc:
        return None, [(origin, f"{what}: {exc}")]


def _uncovered(losses: list[Loss]) -> float | None:
    """The first fraction of the steps from which no loss is active, or None when every step has one."""
    edge = 0.0
    for start, stop in sorted((loss.start, loss.stop) for loss in losses):
        if start > edge:
            break
        edge = max(edge, stop)
    return None if edge >= 1.0 else edge


def check_losses(spec: dict[str, Any], stage: str) -> tuple[list[Loss], list[Problem]]:
    """Build ``{name: settings}`` (presets expanded) without parameters: the losses, and every problem found
    (unknown loss or setting, a bad value, a loss outside its stages, a step without an active loss)."""
    parts, problems = _expand(spec, stage)
    losses = []
    for part, (origin, settings) in parts.items():
        loss, found = _construct(part, origin, settings, stage)
        problems += found
        if loss is not None:
            losses.append(loss)
    if not problems and losses:
        edge = _uncovered(losses)
        if edge is not None:
            problems.append(("", f"no loss is active from {edge:.2f} of the steps on (check start/stop)"))
    return losses, problems


def build_losses(spec: dict[str, dict[str, Any]], stage: str = "stage2") -> list[Loss]:
    """``{name: {weight: w, ...settings}}`` -> loss objects; any problem of ``check_losses`` is an error."""
    losses, problems = check_losses(spec, stage)
    if problems:
        raise ConfigError("; ".join(f"{stage}.losses.{key}: {message}" if key else f"{stage}: {message}"
                                    for key, message in problems))  # fmt: skip
    return losses
