"""What each loss declares, without torch: its name, the tensors it needs, its stages, and its settings with
their defaults and checks. The loss classes in ``kdflow.losses`` take their declaration from here, so a
recipe is checked in full (names, settings, values, stages) before any model or tensor exists."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from .values import POOLINGS, SettingError, Settings, choice, count, flag, layer_spec, number, optional_count, positive

# Tensor names a loss may need (the distillation step produces each):
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
#   interchange_scores  student and teacher task scores after an interchange intervention (DIITO)
#   example_ids         dataset indices of the batch (memory banks)
NEEDS = frozenset(
    {
        "word_logits",
        "word_targets",
        "word_labels",
        "student_scores",
        "teacher_scores",
        "labels",
        "student_hidden",
        "teacher_hidden",
        "student_attentions",
        "teacher_attentions",
        "student_qkv",
        "teacher_qkv",
        "hybrid_scores",
        "interchange_scores",
        "example_ids",
    }
)

SPECS: dict[str, type[LossSpec]] = {}


@dataclass(frozen=True)
class LossSpec(Settings):
    """A loss's declaration and its checked settings: ``weight`` and the ``start``/``stop`` window
    (fractions of the stage's steps) for every loss, plus what ``check`` adds for each."""

    name: ClassVar[str] = ""
    needs: ClassVar[frozenset[str]] = frozenset()
    stages: ClassVar[tuple[str, ...]] = ("stage1", "stage2")
    uses_labels: ClassVar[bool] = False
    token_aligned: ClassVar[bool] = False  # compares student and teacher token by token

    weight: float = 1.0
    start: float = 0.0
    stop: float = 1.0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            unknown = cls.needs - NEEDS
            if unknown:
                raise TypeError(f"loss {cls.name} needs unknown tensors {sorted(unknown)}")
            SPECS[cls.name] = cls

    def __post_init__(self) -> None:
        self.set(
            weight=number("weight", self.weight), start=number("start", self.start), stop=number("stop", self.stop)
        )
        if not 0.0 <= self.start < self.stop <= 1.0:
            raise SettingError(
                "start",
                f"start {self.start:g} / stop {self.stop:g}: expected 0 <= start < stop <= 1 (fractions of the steps)",
            )
        self.check()


@dataclass(frozen=True)
class _Temperature(LossSpec):
    temperature: float = 1.0

    def check(self) -> None:
        self.set(temperature=positive("temperature", self.temperature))


@dataclass(frozen=True)
class WordKL(_Temperature):
    name: ClassVar[str] = "word_kl"
    needs: ClassVar[frozenset[str]] = frozenset({"word_logits", "word_targets"})
    temperature: float = 15.0


@dataclass(frozen=True)
class CandidateKD(_Temperature):
    name: ClassVar[str] = "candidate_kd"
    needs: ClassVar[frozenset[str]] = frozenset({"student_scores", "teacher_scores"})
    stages: ClassVar[tuple[str, ...]] = ("stage2",)
    per_candidate: bool = False

    def check(self) -> None:
        super().check()
        flag("per_candidate", self.per_candidate)


@dataclass(frozen=True)
class HintonKD(_Temperature):
    name: ClassVar[str] = "kd"
    needs: ClassVar[frozenset[str]] = frozenset({"student_scores", "teacher_scores"})
    stages: ClassVar[tuple[str, ...]] = ("stage2",)
    temperature: float = 2.0


@dataclass(frozen=True)
class GoldCE(LossSpec):
    name: ClassVar[str] = "ce"
    needs: ClassVar[frozenset[str]] = frozenset({"student_scores", "labels"})
    stages: ClassVar[tuple[str, ...]] = ("stage2",)
    uses_labels: ClassVar[bool] = True


@dataclass(frozen=True)
class LogitMSE(LossSpec):
    name: ClassVar[str] = "mse_logits"
    needs: ClassVar[frozenset[str]] = frozenset({"student_scores", "teacher_scores"})
    stages: ClassVar[tuple[str, ...]] = ("stage2",)


@dataclass(frozen=True)
class LanguageModelling(LossSpec):
    name: ClassVar[str] = "lm"
    needs: ClassVar[frozenset[str]] = frozenset({"word_logits", "word_labels"})
    stages: ClassVar[tuple[str, ...]] = ("stage1",)


HIDDEN = frozenset({"student_hidden", "teacher_hidden"})


@dataclass(frozen=True)
class _Layers(LossSpec):
    """Student layer i is matched to the teacher layer ``layers`` names (uniform, last, or a list)."""

    layers: str | list[int] = "uniform"

    def check(self) -> None:
        layer_spec(self.layers)


@dataclass(frozen=True)
class _Pooled(_Layers):
    """... and compared through one pooled vector per example."""

    pooling: str = "auto"

    def check(self) -> None:
        super().check()
        choice("pooling", self.pooling, POOLINGS)


@dataclass(frozen=True)
class PKD(_Pooled):
    name: ClassVar[str] = "pkd"
    needs: ClassVar[frozenset[str]] = HIDDEN
    exclude_last: bool = True

    def check(self) -> None:
        super().check()
        flag("exclude_last", self.exclude_last)


@dataclass(frozen=True)
class InBatchContrastive(_Pooled):
    name: ClassVar[str] = "lrc"
    needs: ClassVar[frozenset[str]] = HIDDEN
    temperature: float = 0.1

    def check(self) -> None:
        super().check()
        self.set(temperature=positive("temperature", self.temperature))


@dataclass(frozen=True)
class HiddenCosine(LossSpec):
    name: ClassVar[str] = "hidden_cosine"
    needs: ClassVar[frozenset[str]] = HIDDEN
    token_aligned: ClassVar[bool] = True


@dataclass(frozen=True)
class TinyBERTHidden(_Layers):
    name: ClassVar[str] = "tinybert_hidden"
    needs: ClassVar[frozenset[str]] = HIDDEN
    token_aligned: ClassVar[bool] = True
    embeddings: bool = False

    def check(self) -> None:
        super().check()
        flag("embeddings", self.embeddings)


@dataclass(frozen=True)
class TinyBERTAttention(_Layers):
    name: ClassVar[str] = "tinybert_attention"
    needs: ClassVar[frozenset[str]] = frozenset({"student_attentions", "teacher_attentions"})
    token_aligned: ClassVar[bool] = True


@dataclass(frozen=True)
class MiniLM(LossSpec):
    name: ClassVar[str] = "minilm"
    needs: ClassVar[frozenset[str]] = frozenset(
        {"student_attentions", "teacher_attentions", "student_qkv", "teacher_qkv"}
    )
    token_aligned: ClassVar[bool] = True
    relation_heads: int | None = None  # default: the teacher's key/value heads

    def check(self) -> None:
        self.set(relation_heads=optional_count("relation_heads", self.relation_heads))


@dataclass(frozen=True)
class MiniLMv2(LossSpec):
    name: ClassVar[str] = "minilmv2"
    needs: ClassVar[frozenset[str]] = frozenset({"student_qkv", "teacher_qkv"})
    token_aligned: ClassVar[bool] = True
    relation_heads: int | None = None  # default: 48, or 64 for teachers 1024 wide or wider
    teacher_layer: int | None = None  # default: the last

    def check(self) -> None:
        self.set(
            relation_heads=optional_count("relation_heads", self.relation_heads),
            teacher_layer=optional_count("teacher_layer", self.teacher_layer),
        )


@dataclass(frozen=True)
class Theseus(LossSpec):
    name: ClassVar[str] = "theseus"
    needs: ClassVar[frozenset[str]] = frozenset({"hybrid_scores", "labels"})
    stages: ClassVar[tuple[str, ...]] = ("stage2",)
    uses_labels: ClassVar[bool] = True
    replace_start: float = 0.5
    replace_full_at: float = 0.8

    def check(self) -> None:
        self.set(
            replace_start=number("replace_start", self.replace_start),
            replace_full_at=number("replace_full_at", self.replace_full_at),
        )
        if not 0.0 <= self.replace_start <= 1.0:
            raise SettingError("replace_start", f"expected a value in [0, 1], got {self.replace_start:g}")
        if not 0.0 < self.replace_full_at <= 1.0:
            raise SettingError("replace_full_at", f"expected a value in (0, 1], got {self.replace_full_at:g}")


@dataclass(frozen=True)
class CoDIR(LossSpec):
    name: ClassVar[str] = "codir"
    needs: ClassVar[frozenset[str]] = HIDDEN | {"example_ids"}
    dim: int = 128
    negatives: int = 100
    temperature: float = 0.07
    momentum: float = 0.5
    layers: str | list[int] = "odd"  # the reference's inner_states[1::2]: teacher layers 1, 3, 5, ...
    pooling: str = "auto"
    negatives_from: str = "auto"
    batch_scaled: bool = True  # the reference's fairseq trainer divides the term by the batch size again

    def check(self) -> None:
        choice("negatives_from", self.negatives_from, ("auto", "other_label", "any"))
        momentum = number("momentum", self.momentum)
        if not 0.0 <= momentum < 1.0:
            raise SettingError("momentum", f"{momentum:g}: expected a value in [0, 1)")
        choice("pooling", self.pooling, POOLINGS)
        layer_spec(self.layers, ("odd", "uniform", "last"))
        flag("batch_scaled", self.batch_scaled)
        self.set(
            dim=count("dim", self.dim),
            negatives=count("negatives", self.negatives),
            temperature=positive("temperature", self.temperature),
            momentum=momentum,
        )
