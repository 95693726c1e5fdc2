"""How a multi-teacher run combines its teachers' losses (``stage2.multi_teacher``), checked without torch.
The methods follow GKD/GLMKD (aitsc/GLMKD distill/multi_teacher_model.py: AvgTeacher, MT_BERT, Uncertainty,
RL_KD) and its recorded DGKD run; ``kdflow.losses.multi_teacher`` computes them. Per teacher i the engine
hands the combination the teacher's weighted per-example losses (a [B] vector, from the losses that have
per-example values) and ``rest_i``, its other teacher-dependent weighted losses (a scalar)."""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, ClassVar

from .values import SettingError, Settings, number

Problem = tuple[str, str]
KEY = "multi_teacher"
INPUTS = frozenset({"student_scores", "teacher_scores", "labels"})

MULTI_TEACHER: dict[str, type[MultiTeacherSpec]] = {}
# The losses with per-example values (``Loss.has_per_example`` in kdflow.losses.prediction; a test holds the two
# equal): the ones a per-example method (mt_bert, uncertainty, rl_kd) weights example by example.
PER_EXAMPLE = frozenset({"candidate_kd", "kd", "ce", "mse_logits"})


@dataclass(frozen=True)
class MultiTeacherSpec(Settings):
    """A combination method and its checked settings (the dataclass fields)."""

    method: ClassVar[str] = ""
    needs: ClassVar[frozenset[str]] = frozenset()  # step inputs the combination itself reads
    per_example: ClassVar[bool] = False  # weights examples: the run needs a loss with per-example values
    uses_labels: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.needs - INPUTS:
            raise TypeError(f"multi-teacher method {cls.method} needs unknown inputs {sorted(cls.needs - INPUTS)}")
        if cls.method:
            MULTI_TEACHER[cls.method] = cls

    def values(self) -> dict[str, Any]:
        """The settings as plain (JSON-ready) values."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in super().values().items()}

    def teacher_problems(self, n_teachers: int) -> list[Problem]:
        """Problems of these settings with ``n_teachers`` teachers (known only once the run's teachers are)."""
        if n_teachers < 1:
            return [(KEY, f"combining teachers needs at least one teacher, got {n_teachers}")]
        return []


@dataclass(frozen=True)
class TMKD(MultiTeacherSpec):
    """GLMKD AvgTeacher: the mean over teachers of each teacher's losses."""

    method: ClassVar[str] = "tmkd"


@dataclass(frozen=True)
class MTBert(MultiTeacherSpec):
    """GLMKD MT_BERT: the sum over teachers, each example's prediction loss divided by 1 + the teacher's CE with
    the gold label. GLMKD's fit_dense (mt_hidden_size) and layernorm (mt_bert_fix_layernorm) options are left out;
    its added hard loss is the recipe's own ``ce``."""

    method: ClassVar[str] = "mt_bert"
    needs: ClassVar[frozenset[str]] = frozenset({"teacher_scores", "labels"})
    per_example: ClassVar[bool] = True
    uses_labels: ClassVar[bool] = True


@dataclass(frozen=True)
class Uncertainty(MultiTeacherSpec):
    """GLMKD Uncertainty (no uncertainty_hard, no inter_entropy): each example's prediction losses weighted by
    teacher from the student's normalised entropy. ``order``: the rank of each teacher (GLMKD's
    uncertainty_teacher_seq), a permutation of 0..n-1; null is the list order."""

    method: ClassVar[str] = "uncertainty"
    needs: ClassVar[frozenset[str]] = frozenset({"student_scores"})
    per_example: ClassVar[bool] = True
    order: tuple[int, ...] | None = None

    def check(self) -> None:
        if self.order is None:
            return
        order = self.order
        if not isinstance(order, (list, tuple)) or not order:
            raise SettingError("order", f"expected a list of teacher ranks 0..n-1, got {order!r}")
        if any(isinstance(j, bool) or not isinstance(j, numbers.Integral) for j in order):
            raise SettingError("order", f"{list(order)}: expected integers")
        if sorted(order) != list(range(len(order))):
            raise SettingError("order", f"{list(order)}: expected each of 0..{len(order) - 1} once")
        self.set(order=tuple(int(j) for j in order))

    def teacher_problems(self, n_teachers: int) -> list[Problem]:
        problems = super().teacher_problems(n_teachers)
        if not problems and self.order is not None and len(self.order) != n_teachers:
            problems.append((f"{KEY}.order", f"{list(self.order)}: expected one rank per teacher ({n_teachers})"))
        return problems


@dataclass(frozen=True)
class RLKD(MultiTeacherSpec):
    """GLMKD RL_KD without a semantic model (rl_kd_only_avg false, rl_kd_reward 1): a trained agent draws which
    teachers teach each example, rewarded by the student's CE with the gold labels."""

    method: ClassVar[str] = "rl_kd"
    needs: ClassVar[frozenset[str]] = frozenset({"student_scores", "teacher_scores", "labels"})
    per_example: ClassVar[bool] = True
    uses_labels: ClassVar[bool] = True


@dataclass(frozen=True)
class DGKD(MultiTeacherSpec):
    """Stochastic DGKD (Son et al. 2021; GLMKD's run: avg model, avgmt_sum_loss, avgmt_teacher_survival_p=0.75):
    the sum over the teachers that survive a step's draw, each with probability ``survival``."""

    method: ClassVar[str] = "dgkd"
    survival: float = 0.75

    def check(self) -> None:
        survival = number("survival", self.survival)
        if not 0.0 < survival <= 1.0:
            raise SettingError("survival", f"expected a probability in (0, 1], got {survival:g}")
        self.set(survival=survival)


def resolve_multi_teacher(spec: dict[str, Any] | None) -> tuple[MultiTeacherSpec | None, list[Problem]]:
    """``{method: ..., settings}`` (None: tmkd) -> the checked settings, or None and the problems found."""
    if spec is None:
        return TMKD(), []
    known = ", ".join(sorted(MULTI_TEACHER))
    if not isinstance(spec, dict):
        return None, [(KEY, f"expected a mapping with a 'method' ({known}), got {spec!r}")]
    settings = dict(spec)
    method = settings.pop("method", None)
    if method not in MULTI_TEACHER:
        what = "missing" if method is None else f"unknown method {method!r}"
        return None, [(f"{KEY}.method", f"{what} (the methods: {known})")]
    cls = MULTI_TEACHER[method]
    allowed = cls.setting_names()
    unknown = [
        (f"{KEY}.{k}", f"unknown setting of method '{method}' (its settings: {', '.join(allowed) or 'none'})")
        for k in settings
        if k not in allowed
    ]
    if unknown:
        return None, unknown
    try:
        return cls(**settings), []
    except SettingError as exc:
        return None, [(f"{KEY}.{exc.key}", f"method '{method}': {exc}")]
