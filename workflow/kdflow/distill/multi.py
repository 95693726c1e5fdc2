"""A multi-teacher step (`stage2.teachers` with two or more): the student's inputs are made once and each
teacher's once per teacher; the losses that read no teacher are computed once, every other loss once per
teacher (per example where it has per-example values), and the run's `multi_teacher` method combines the
teachers' terms (GLMKD's multi_teacher_model.py: each teacher's pre_loss + inter_loss, then the method)."""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ConfigError
from ..losses import Loss
from ..losses.inputs import StepInputs
from ..losses.multi_teacher import CombineInputs, MultiTeacher, TeacherTerms
from ..plan.teachers import SINGLE_TEACHER_NEEDS, TEACHER_SIDE
from .producers import StageData, Step, check_alignment, produce


def check_multi_teacher(losses: list[Loss], combiner: MultiTeacher) -> None:
    """Refuse what cannot be combined over teachers: Theseus's hybrid scores, DIITO's interchange and
    word-prediction losses (one teacher's layers or cache), and a per-example method without any per-example loss."""
    single = [loss.name for loss in losses if loss.needs & SINGLE_TEACHER_NEEDS]
    if single:
        raise ConfigError(f"losses {single} read one teacher's layers or cache; a multi-teacher stage cannot run them")
    if not any(loss.needs & TEACHER_SIDE for loss in losses):
        raise ConfigError("a multi-teacher stage needs a loss that reads the teachers (kd, candidate_kd, ...)")
    method = combiner.settings
    if method.per_example and not any(loss.has_per_example and loss.needs & TEACHER_SIDE for loss in losses):
        per_example = "candidate_kd, kd, mse_logits"
        raise ConfigError(
            f"multi_teacher method '{method.method}' weights each example's prediction loss: the run needs one of "
            f"{per_example} (losses with per-example values that read the teacher)"
        )


def _terms(bound: list[Loss], inputs: StepInputs) -> tuple[TeacherTerms, dict[str, float]]:
    """One teacher's terms: its per-example losses (weighted, summed) and the weighted sum of the others."""
    per_example, rest, report = [], [], {}
    for loss in bound:
        own = inputs.restricted(loss.needs)
        if loss.has_per_example:
            values = loss.per_example(own)
            per_example.append(loss.weight * values)
            report[loss.name] = float(values.detach().mean())
        else:
            value = loss(own)
            rest.append(loss.weight * value)
            report[loss.name] = float(value.detach())
    summed = torch.stack(per_example).sum(0) if per_example else None
    rest_sum = torch.stack(rest).sum() if rest else per_example[0].new_zeros(())
    return TeacherTerms(summed, rest_sum), report


def multi_teacher_step(
    data: StageData,
    module: Any,
    active: list[Loss],
    indices: list[int],
    step: int,
    steps: int,
) -> tuple[torch.Tensor, dict[str, float], int]:
    """The loss of one micro-batch against every teacher of ``data``, combined by ``module.combiner``."""
    progress, combiner = step / steps, module.combiner
    needs = frozenset().union(*(loss.needs for loss in active), combiner.settings.needs)
    batch = data.batch(indices, needs)
    student = produce(data.producers, Step(module.student, indices, batch, needs - TEACHER_SIDE, step, progress))
    bound = [loss for loss in active if loss.needs & TEACHER_SIDE]
    free = [loss for loss in active if not loss.needs & TEACHER_SIDE]
    terms, reports, teacher_scores = [], [], []
    for i in range(len(data.teachers)):
        made = produce(data.producers, Step(module.student, indices, batch, needs & TEACHER_SIDE, step, progress, i))
        values = {**student.values, **made.values}
        check_alignment(values, active)
        inputs = StepInputs(step=step, progress=progress, cache_temperatures=data.cache_temperatures, **values)
        term, report = _terms(bound, inputs)
        terms.append(term)
        reports.append(report)
        teacher_scores.append(values.get("teacher_scores"))
    first = StepInputs(step=step, progress=progress, cache_temperatures=data.cache_temperatures, **student.values)
    parts = {loss.name: loss(first.restricted(loss.needs)) for loss in free}
    combined = combiner(
        CombineInputs(
            terms,
            step,
            student_scores=student.values.get("student_scores"),
            teacher_scores=teacher_scores if "teacher_scores" in needs else None,
            labels=student.values.get("labels"),
        )
    )
    total = combined + sum(loss.weight * parts[loss.name] for loss in free)
    report = {name: sum(r[name] for r in reports) / len(reports) for name in reports[0]}
    report.update({name: float(value.detach()) for name, value in parts.items()})
    report = {loss.name: report.get(loss.name, 0.0) for loss in module.losses}
    return total, {"loss": float(total.detach()), "multi_teacher": float(combined.detach()), **report}, student.tokens
