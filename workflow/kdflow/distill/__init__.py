"""Rules `distill_stage1` / `distill_stage2`: one engine for every run. It builds the run's losses from
config and computes only the inputs the losses active at a step need: no candidate scores without a loss on
them, no word-prediction logits without a word loss, hidden states / attentions / query-key-value projections
only for representation losses, and the teacher online only when a loss needs its internals (or, in stage 1,
when `teacher: online`).

Two tracks share the engine. Word-prediction students (the GLMD track) score tasks by candidates and take
the teacher's outputs from the logit cache. Classification students (the encoder track): when the stage-2
teacher folder is a ``*ForSequenceClassification`` model, the student gets a classification head (started
from the teacher's), and the teacher runs online: its logits and representations cost one small forward
pass per batch, which is why the encoder track has no cache.

The rooms: ``job`` (what a job is), ``phases`` (a stage's trainings), ``engine`` (one training and its step),
``producers`` (need -> producer tables; the losses read ``losses.inputs.StepInputs``), ``stage1`` (corpus
data), ``stage2`` (task data, Theseus's hybrid scores), ``perturb`` (LRC-BERT's gradient perturbation: a step on
clean, then on perturbed embeddings), ``teacher`` and ``student`` (loading and saving)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..runtime import Runtime
from .job import DistillJob
from .phases import run_job

__all__ = ["DistillJob", "distill", "run_job"]


def distill(
    stage: str,
    student_dir: str | Path,
    out_dir: str | Path,
    work_dir: str | Path,
    run: dict[str, Any],
    settings: dict[str, Any],
    data: dict[str, Any],
    deepspeed: dict[str, Any] | None,
    seed: int,
    runtime: Runtime | None = None,
) -> dict[str, Any]:
    """Train ``student_dir`` with the run's losses for ``stage`` (stage1: corpus, stage2: task) into
    ``out_dir``, on the runtime's device (default: resolved from the environment, `device: auto`); see
    ``run_job``."""
    job = DistillJob(
        stage,
        Path(student_dir),
        Path(out_dir),
        Path(work_dir),
        run,
        settings,
        data,
        deepspeed,
        seed,
        runtime or Runtime.create(),
    )
    return run_job(job)
