"""Combining the losses of several teachers (``stage2.multi_teacher``), after GKD/GLMKD's multi-teacher models
(aitsc/GLMKD distill/multi_teacher_model.py) and stochastic DGKD (Son et al. 2021). Settings are declared and
checked in ``kdflow.recipes.specs_teachers``.

Per teacher i the engine hands over ``TeacherTerms``: ``per_example`` ([B], the teacher's weighted losses with
per-example values; None counts as zeros) and ``rest`` (0-dim, its other teacher-dependent weighted losses).
Below, P is the [n, B] matrix of per-example terms and R the [n] vector of rests. The gold-label CE of the
student is the recipe's own ``ce`` loss, added by the engine; only RL-KD reads it (as its reward)."""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..errors import ConfigError
from ..recipes import specs_teachers as specs
from ..recipes.specs_teachers import MultiTeacherSpec, Problem, resolve_multi_teacher
from .base import target_cross_entropy

__all__ = ["COMBINERS", "CombineInputs", "MultiTeacher", "TeacherTerms", "build_multi_teacher", "step_generator"]

COMBINERS: dict[str, type[MultiTeacher]] = {}


@dataclass(frozen=True)
class TeacherTerms:
    per_example: torch.Tensor | None  # [B]: this teacher's weighted per-example losses, None when no loss has them
    rest: torch.Tensor  # 0-dim: this teacher's other teacher-dependent weighted losses


@dataclass(frozen=True)
class CombineInputs:
    terms: list[TeacherTerms]  # one per teacher, in the run's order
    step: int
    student_scores: list[torch.Tensor] | None = None
    teacher_scores: list[list[torch.Tensor]] | None = None  # [teacher][example] -> [C]
    labels: list[torch.Tensor] | None = None


# ---- the maths: small pure functions ---------------------------------------------------------------------


def step_generator(seed: int, step: int) -> torch.Generator:
    """The CPU generator of a combination's random draws at optimizer step ``step`` of a run seeded ``seed``:
    seeded with the first 8 bytes of sha256("kdflow-multi-teacher:{seed}:{step}") (big-endian) shifted right
    by one bit, so the draws depend on (seed, step) only: not on the global RNG, the device or the process."""
    digest = hashlib.sha256(f"kdflow-multi-teacher:{seed}:{step}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "big") >> 1)


def gold_ce(scores: list[torch.Tensor], labels: list[torch.Tensor]) -> torch.Tensor:
    """[B]: each example's cross-entropy -sum(y * log_softmax(scores)) with its gold distribution."""
    return torch.stack([target_cross_entropy(y.float(), s.float()) for s, y in zip(scores, labels)])


def normalised_entropy(scores: list[torch.Tensor]) -> torch.Tensor:
    """[B]: the entropy of softmax(scores) of each example over log(C), in [0, 1] (with gradient)."""
    if any(s.shape[-1] < 2 for s in scores):
        raise ValueError("the normalised entropy needs at least two classes")
    rows = []
    for s in scores:
        log_p = torch.log_softmax(s.float(), -1)
        rows.append(-(log_p.exp() * log_p).sum() / math.log(s.shape[-1]))
    return torch.stack(rows)


def uncertainty_rates(entropy: torch.Tensor, n: int) -> torch.Tensor:
    """[B, n]: rank j's weight H + (1 - 2H) j / (n - 1), normalised over the ranks; all ones for one teacher."""
    if n == 1:
        return entropy.new_ones(len(entropy), 1)
    ranks = torch.arange(n, dtype=entropy.dtype, device=entropy.device) / (n - 1)
    rate = entropy[:, None] + (1 - 2 * entropy[:, None]) * ranks
    return rate / rate.sum(-1, keepdim=True)


def survivors(n: int, survival: float, generator: torch.Generator) -> torch.Tensor:
    """[n] bool: each teacher kept when its uniform draw is < ``survival``; when none is, one drawn uniformly."""
    keep = torch.rand(n, generator=generator) < survival
    if not keep.any():
        keep[int(torch.randint(n, (1,), generator=generator))] = True
    return keep


def tmkd_loss(per_example: torch.Tensor, rest: torch.Tensor) -> torch.Tensor:
    """mean_i (mean_b P[i, b] + R[i])."""
    return (per_example.mean(1) + rest).mean()


def mt_bert_loss(per_example: torch.Tensor, rest: torch.Tensor, teacher_ce: torch.Tensor) -> torch.Tensor:
    """sum_i (mean_b P[i, b] / (1 + CE_i[b]) + R[i]), CE [n, B] the teachers' gold-label cross-entropies."""
    return ((per_example / (1 + teacher_ce)).mean(1) + rest).sum()


def uncertainty_loss(
    per_example: torch.Tensor, rest: torch.Tensor, rates: torch.Tensor, order: list[int]
) -> torch.Tensor:
    """mean_i (mean_b rates[b, order[i]] P[i, b] + R[i])."""
    return ((rates[:, order].T * per_example).mean(1) + rest).mean()


def selected_loss(per_example: torch.Tensor, rest: torch.Tensor, select: torch.Tensor) -> torch.Tensor:
    """mean over [b, i] of (P[i, b] + R[i]) select[b, i]."""
    return ((per_example.T + rest) * select).mean()


def reinforce_loss(probs: torch.Tensor, select: torch.Tensor, reward: torch.Tensor) -> torch.Tensor:
    """-sum(pi) reward with pi = s a + (1 - s)(1 - a): GLMKD's RL-KD uses pi itself, not log pi."""
    select = select.to(probs.dtype)
    return -(probs * select + (1 - probs) * (1 - select)).sum() * reward.detach()


def dgkd_loss(per_example: torch.Tensor, rest: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """sum over the surviving teachers i of (mean_b P[i, b] + R[i])."""
    return (per_example.mean(1) + rest)[keep.to(rest.device)].sum()


def batch_size(x: CombineInputs) -> int:
    """The number of examples: of the student's scores, else of any per-example vector, teacher scores or labels;
    1 when none is given (all terms are then scalars, and a batch of zeros of any size means the same)."""
    given = [t.per_example for t in x.terms if t.per_example is not None]
    sized = [x.student_scores, *given, *(x.teacher_scores or []), x.labels]
    return next((len(v) for v in sized if v is not None), 1)


def stacked_terms(x: CombineInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """(P [n, B], R [n]) of the inputs, a missing per-example vector as zeros of the batch size."""
    given = [t.per_example for t in x.terms if t.per_example is not None]
    batch = batch_size(x)
    dtype = functools.reduce(torch.promote_types, [t.dtype for t in given + [t.rest for t in x.terms]])
    rest = torch.stack([t.rest.to(dtype) for t in x.terms])
    zeros = rest.new_zeros(batch)
    return torch.stack([zeros if t.per_example is None else t.per_example.to(dtype) for t in x.terms]), rest


# ---- the modules -------------------------------------------------------------------------------------------


def _message(problems: list[Problem]) -> str:
    return "; ".join(f"{key}: {message}" for key, message in problems)


class MultiTeacher(torch.nn.Module):
    """Combines the teachers' terms of one step into the distillation loss (one subclass per method)."""

    spec: ClassVar[type[MultiTeacherSpec]]

    def __init__(self, settings: MultiTeacherSpec, n_teachers: int, seed: int) -> None:
        super().__init__()
        problems = settings.teacher_problems(n_teachers)
        if problems:
            raise ConfigError(_message(problems))
        self.settings, self.n_teachers, self.seed = settings, n_teachers, seed

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "spec" in vars(cls):
            COMBINERS[cls.spec.method] = cls

    def bind(self, n_classes: int) -> None:
        """Create the parameters that depend on the number of classes (called once, before training)."""

    def forward(self, x: CombineInputs) -> torch.Tensor:
        if len(x.terms) != self.n_teachers:
            raise ValueError(f"{len(x.terms)} teachers' terms for a combination of {self.n_teachers}")
        for name in self.spec.needs:
            if getattr(x, name) is None:
                raise ValueError(f"multi-teacher method {self.spec.method} reads {name}, which was not given")
        per_example, rest = stacked_terms(x)
        return self.combine(x, per_example, rest)

    def combine(self, x: CombineInputs, per_example: torch.Tensor, rest: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class TMKD(MultiTeacher):
    spec = specs.TMKD

    def combine(self, x: CombineInputs, per_example: torch.Tensor, rest: torch.Tensor) -> torch.Tensor:
        return tmkd_loss(per_example, rest)


class MTBert(MultiTeacher):
    spec = specs.MTBert

    def combine(self, x: CombineInputs, per_example: torch.Tensor, rest: torch.Tensor) -> torch.Tensor:
        teacher_ce = torch.stack([gold_ce(t, x.labels) for t in x.teacher_scores]).detach()
        return mt_bert_loss(per_example, rest, teacher_ce.to(per_example))


class Uncertainty(MultiTeacher):
    spec = specs.Uncertainty

    def __init__(self, settings: MultiTeacherSpec, n_teachers: int, seed: int) -> None:
        super().__init__(settings, n_teachers, seed)
        self.order = list(settings.order) if settings.order is not None else list(range(n_teachers))

    def combine(self, x: CombineInputs, per_example: torch.Tensor, rest: torch.Tensor) -> torch.Tensor:
        # GLMKD's Uncertainty takes the entropy of s_out['logits'] without detaching them (norm_entropy_f), so
        # the weights carry gradient to the student's scores; so do they here
        rates = uncertainty_rates(normalised_entropy(x.student_scores), self.n_teachers)
        return uncertainty_loss(per_example, rest, rates.to(per_example), self.order)


class RLKD(MultiTeacher):
    """The agent (two Linear layers, trained with the student; built by ``bind``, which is to be called before
    the module is moved to its device) scores each (example, teacher) from the teachers' gold-label CE [B, n]
    and concatenated logits [B, n*C] (detached); the teachers of an example are drawn with those probabilities.
    From the second call on, the previous call's inputs and draws are re-scored by the current agent for the
    REINFORCE term, rewarded by minus the student's batch-mean gold-label CE of this call. That previous state is
    module state (non-persistent buffers), not parameters: a resumed run starts it afresh."""

    spec = specs.RLKD

    def __init__(self, settings: MultiTeacherSpec, n_teachers: int, seed: int) -> None:
        super().__init__(settings, n_teachers, seed)
        self.agent_ce: torch.nn.Linear | None = None
        self.agent_logits: torch.nn.Linear | None = None
        for name in ("previous_ce", "previous_logits", "previous_select"):
            self.register_buffer(name, None, persistent=False)

    def bind(self, n_classes: int) -> None:
        n = self.n_teachers
        with torch.random.fork_rng(devices=[]):  # initialised from the run's seed, the global RNG untouched
            torch.manual_seed(self.seed)
            self.agent_ce = torch.nn.Linear(n, n)
            self.agent_logits = torch.nn.Linear(n * n_classes, n)

    def agent_probs(self, teacher_ce: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """[B, n]: sigmoid(agent_ce(CE) + agent_logits(logits))."""
        if self.agent_ce is None or self.agent_logits is None:
            raise RuntimeError("rl_kd: bind(n_classes) builds the agent before the first step")
        w = self.agent_ce.weight
        return torch.sigmoid(self.agent_ce(teacher_ce.to(w)) + self.agent_logits(teacher_logits.to(w)))

    def combine(self, x: CombineInputs, per_example: torch.Tensor, rest: torch.Tensor) -> torch.Tensor:
        teacher_ce = torch.stack([gold_ce(t, x.labels) for t in x.teacher_scores], -1).detach()
        teacher_logits = torch.cat([torch.stack(t).float() for t in x.teacher_scores], -1).detach()
        with torch.no_grad():
            probs = self.agent_probs(teacher_ce, teacher_logits)
        draws = torch.rand(probs.shape, generator=step_generator(self.seed, x.step)).to(probs.device)
        select = draws < probs
        loss = selected_loss(per_example, rest, select.to(per_example))
        if self.previous_select is not None:
            reward = -gold_ce(x.student_scores, x.labels).mean()
            previous = self.agent_probs(self.previous_ce, self.previous_logits)
            loss = loss + reinforce_loss(previous, self.previous_select, reward).to(loss)
        self.previous_ce, self.previous_logits, self.previous_select = teacher_ce, teacher_logits, select
        return loss


class DGKD(MultiTeacher):
    """Stochastic DGKD. When no teacher survives a step's draw, one teacher, drawn uniformly (from the same
    generator), is kept: our choice, as the code of GLMKD's avgmt_* options is not in the stored sources."""

    spec = specs.DGKD

    def combine(self, x: CombineInputs, per_example: torch.Tensor, rest: torch.Tensor) -> torch.Tensor:
        keep = survivors(self.n_teachers, self.settings.survival, step_generator(self.seed, x.step))
        return dgkd_loss(per_example, rest, keep)


def build_multi_teacher(spec: dict[str, Any] | None, n_teachers: int, seed: int) -> MultiTeacher:
    """The combination of ``stage2.multi_teacher`` (None: tmkd) for ``n_teachers``; ConfigError on problems."""
    settings, problems = resolve_multi_teacher(spec)
    if problems or settings is None:
        raise ConfigError(_message(problems))
    return COMBINERS[settings.method](settings, n_teachers, seed)
