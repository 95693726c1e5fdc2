"""One training of a student on a set of losses: the stage's data and teacher, the losses bound to the
models, and the step that produces exactly the inputs the active losses need and hands each loss its own."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..classify import has_classification_head
from ..errors import ConfigError
from ..features import release_attentions, require_attentions
from ..losses import Loss, LossContext, build_losses
from ..losses.inputs import StepInputs, feature_flags
from ..losses.multi_teacher import MultiTeacher, build_multi_teacher
from ..prepare import load_prepared
from ..train.loop import train
from ..train.settings import TrainSettings, seed_everything, steps_for
from ..train.workdir import WorkDir
from ..vocab.factorised import merge_factorised
from .job import DistillJob
from .multi import check_multi_teacher, multi_teacher_step
from .perturb import perturbed_step, step_perturbation
from .producers import StageData, Step, check_alignment, produce
from .stage1 import corpus_data
from .stage2 import Student, TaskData, interchange_settings, replace_schedule
from .student import classifier_student, load_student, save_student
from .teacher import load_teacher

INTERNALS = frozenset({"student_hidden", "teacher_hidden", "student_qkv", "teacher_qkv"})


class DistillModule(torch.nn.Module):
    """The student and the run's losses (their projections and memory banks train and checkpoint with it).
    ``forward(step_fn)`` runs ``step_fn(self)``, so data-parallel wrappers see one forward per step."""

    def __init__(self, student: torch.nn.Module, losses: list[Loss], combiner: MultiTeacher | None = None) -> None:
        super().__init__()
        self.student = student
        self.losses = torch.nn.ModuleList(losses)
        self.combiner = combiner  # a multi-teacher stage's method (RL-KD's agent trains with the student)

    def forward(self, step_fn: Callable[[DistillModule], Any]) -> Any:
        return step_fn(self)


@dataclass(frozen=True)
class StepRunner:
    """The loss of one micro-batch: the active losses' needs produced on the stage's data, each loss computed
    on the inputs it declared (twice, on clean then perturbed embeddings, where a loss asks for LRC-BERT's
    gradient perturbation: ``kdflow.distill.perturb``)."""

    data: StageData
    steps: int

    def run(self, module: DistillModule, indices: list[int], step: int) -> tuple[torch.Tensor, dict[str, float], int]:
        active = [loss for loss in module.losses if loss.active(step / self.steps)]
        once = functools.partial(self._once, module, active, indices, step)
        epsilon = step_perturbation(active)  # LRC-BERT's: the step runs on clean, then on perturbed embeddings
        return perturbed_step(once, module.student, epsilon) if epsilon else once()

    def _once(
        self, module: DistillModule, active: list[Loss], indices: list[int], step: int
    ) -> tuple[torch.Tensor, dict[str, float], int]:
        progress = step / self.steps
        if module.combiner is not None:
            return multi_teacher_step(self.data, module, active, indices, step, self.steps)
        needs = frozenset().union(*(loss.needs for loss in active))
        batch = self.data.batch(indices, needs)
        made = produce(self.data.producers, Step(module.student, indices, batch, needs, step, progress))
        check_alignment(made.values, active)
        inputs = StepInputs(
            step=step, progress=progress, cache_temperatures=self.data.cache_temperatures, **made.values
        )
        parts = {loss.name: loss(inputs.restricted(loss.needs)) for loss in active}
        total = sum(loss.weight * parts[loss.name] for loss in active)
        report = {loss.name: float(parts[loss.name].detach()) if loss in active else 0.0 for loss in module.losses}
        return total, {"loss": float(total.detach()), **report}, made.tokens

    def loss_fn(
        self, module: torch.nn.Module, indices: list[int], step: int
    ) -> tuple[torch.Tensor, dict[str, float], int]:
        """The training loop's loss function: one forward of the (possibly wrapped) ``DistillModule``."""
        return module(functools.partial(self.run, indices=indices, step=step))


def _stage_data(job: DistillJob, losses: list[Loss]) -> tuple[torch.nn.Module, StageData, bool]:
    """The student model, the stage's data (holding the teacher when one is needed), and whether the student
    is a classifier (the stage-2 teacher has a classification head)."""
    all_needs = frozenset().union(*(loss.needs for loss in losses))
    model, tokenizer, family = load_student(job.student_dir, job.deepspeed)
    if job.stage == "stage1":
        return model, corpus_data(all_needs, job.data, job.vocab_map, job.settings, job.seed, job.runtime), False
    classifier = has_classification_head(job.data["teacher"])
    replace = replace_schedule(losses)
    wants_teacher = classifier or replace is not None or any(feature_flags(all_needs, "teacher").values())
    folders = job.data.get("teachers") or [job.data["teacher"]]
    ds = job.settings.get("teacher_deepspeed")
    teachers = [load_teacher(f, ds, job.runtime) for f in folders] if wants_teacher else []
    teacher = teachers if len(teachers) > 1 else teachers[0] if teachers else None
    if classifier:
        model = classifier_student(job.student_dir, teachers[0])
    student = Student(model, tokenizer, family, classifier)
    transfer_set = bool(job.run.get("stage2", {}).get("transfer_set"))
    args = (job.data, student, teacher, all_needs, job.settings, job.vocab_map, job.seed, job.runtime, replace)
    data = TaskData(*args, transfer_set, interchange_settings(losses))
    return model, data, classifier


def _bind_losses(job: DistillJob, losses: list[Loss], model: torch.nn.Module, data: StageData, steps: int) -> None:
    """Size each loss by the data and the two models, and let it choose what of the student trains."""
    teacher = data.teacher
    if any(loss.needs & {"student_attentions", "teacher_attentions"} for loss in losses):
        require_attentions(model)
        if teacher is not None:
            require_attentions(teacher)
    context = LossContext(
        stage=job.stage,
        n_examples=data.n_examples,
        steps=steps,
        seed=job.seed,
        student_config=model.config,
        teacher_config=teacher.config if teacher is not None else None,
        label_ids=data.label_ids,
        examples_per_step=job.settings["batch_size"] * job.settings["grad_accum"] * job.runtime.ranks.size,
    )
    for loss in losses:
        if loss.needs & INTERNALS and teacher is None:
            raise ConfigError(f"loss '{loss.name}' needs the teacher's internals, and no teacher is loaded")
        loss.bind(context)
        loss.prepare_student(model)


def _combiner(job: DistillJob, losses: list[Loss], model: torch.nn.Module, data: StageData) -> MultiTeacher | None:
    """A multi-teacher stage's method (`stage2.multi_teacher`, default tmkd), bound to the task's classes."""
    n = len(getattr(data, "teachers", ()))
    if n < 2:
        return None
    combiner = build_multi_teacher(job.run.get("stage2", {}).get("multi_teacher"), n, job.seed)
    check_multi_teacher(losses, combiner)
    combiner.bind(model.config.num_labels)
    return combiner


def train_phase(job: DistillJob, spec: dict[str, Any], phase: int | None = None) -> dict[str, Any]:
    """One training of ``job.student_dir`` on the losses ``spec``; the student is written to ``job.out_dir``."""
    seed_everything(job.seed)  # loss projections, memory banks and heads start from the seed, not the clock
    losses = build_losses(spec, job.stage)
    model, data, classifier = _stage_data(job, losses)
    settings = job.settings
    steps = steps_for(
        data.n_examples, settings["epochs"], settings["batch_size"], settings["grad_accum"], settings.get("max_steps")
    )
    _bind_losses(job, losses, model, data, steps)
    combiner = _combiner(job, losses, model, data)
    runner = StepRunner(data, steps)
    main = job.runtime.ranks.main
    with WorkDir(job.work_dir, job.identity(phase), main) as work:
        trained = train(
            DistillModule(model, losses, combiner),
            runner.loss_fn,
            data.n_examples,
            TrainSettings.from_config(settings, steps, job.seed),
            work,
            job.deepspeed,
            job.runtime,
            data.lengths() if settings.get("group_by_length") and hasattr(data, "lengths") else None,
        )
        trained = getattr(trained, "student", trained)
        if not main:  # data-parallel helpers: the main process writes the student
            return {"stage": job.stage, "steps": steps}
        release_attentions(trained)
        trained = merge_factorised(trained)
        trained.requires_grad_(True)
        info = {
            "run": job.run.get("name"),
            "stage": job.stage,
            "description": job.run.get("description"),
            "losses": spec,
            "steps": steps,
            "training_examples": data.n_examples,
            "settings": settings,
        }
        if classifier:
            info.update(
                task_type=load_prepared(job.data["task"], "dev").task.name,
                head="classification",
                teacher=str(job.data["teacher"]),
            )
        if combiner is not None:
            method = {"method": combiner.settings.method, **combiner.settings.values()}
            info.update(teachers=[str(t) for t in job.data["teachers"]], multi_teacher=method)
        meta = save_student(trained, job.student_dir, job.out_dir, work.log_csv, info)
        work.remove()
    return meta
