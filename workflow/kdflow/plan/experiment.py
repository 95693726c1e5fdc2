"""The experiment worked out once from a validated config: models, corpora, tasks, vocabularies, students,
every run's stage jobs, the evaluated pairs and the workflow's targets."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..recipes import recipe_needs
from . import names
from .names import FINETUNED, classifier_model, model_folder, run_model
from .settings import stage_settings
from .teachers import stage2_teachers

EMBEDDED_TASKS = frozenset({"embedded:rotten-tomatoes"})
EMBEDDED_CORPORA = frozenset({"embedded:package-texts"})


def tracked(source: str) -> tuple[str, ...]:
    """The file or folder of a source that the DAG tracks; nothing for hub datasets (hf:...), which are streamed."""
    return () if source.startswith("hf") else (source,)


def vocab_map(results: str, vocab: str) -> tuple[str, ...]:
    """The vocabulary map a job reads: none for the full vocabulary."""
    return () if vocab == "full" else (f"{results}/vocab/{vocab}/map.json",)


@dataclass(frozen=True)
class Model:
    """A model by name: an asset (one folder) or a per-task model (`teacher_finetuned`, `classifiers/M`, `runs/R`)."""

    name: str
    results: str
    local_source: tuple[str, ...] = ()  # an asset's local folder, tracked by build_model

    def folder(self, task: str | None = None) -> str:
        return model_folder(self.results, self.name, task)


@dataclass(frozen=True)
class Corpus:
    """A corpus: where preprocess_corpus reads it (embedded asset file, path or hf:...) and whose tokenizer."""

    name: str
    source: str
    tokenizer: str
    tokenizer_folder: str
    inputs: tuple[str, ...]
    folder: str


@dataclass(frozen=True)
class Task:
    """A task: where prepare_task reads it, the splits the experiment uses (`train`, `dev`, `test`) and its
    teacher (fine-tuned on it, or the base teacher)."""

    name: str
    source: str
    inputs: tuple[str, ...]
    splits: tuple[str, ...]
    folder: str
    teacher: str


@dataclass(frozen=True)
class Vocabulary:
    """A compressed vocabulary: the corpus and tokenizer whose counts rank it, the tasks counted too."""

    name: str
    corpus: str
    tokenizer_folder: str
    count_tasks: tuple[str, ...]
    map: str


@dataclass(frozen=True)
class Student:
    """A student: the teacher it is cut from (model name and folder), its vocabulary and its map."""

    name: str
    teacher: str
    teacher_folder: str
    vocabulary: str
    vocab_map: tuple[str, ...]
    folder: str

    def inputs(self) -> dict[str, Any]:
        """init_student's inputs: the teacher folder and (unless `full`) the vocabulary map."""
        return {"teacher": self.teacher_folder, "vmap": list(self.vocab_map)}


@dataclass(frozen=True)
class StageJob:
    """One distillation job: a run's stage 1 (on a corpus) or its stage 2 on one task."""

    run: str
    stage: str
    task: str | None
    start: str  # the student folder the job starts from
    data: str  # the prepared corpus or task folder
    teacher: str  # model name
    teacher_folder: str
    vocabulary: str
    cache: str | None  # the teacher-logit cache manifest the job reads, if any
    out: str
    transfer_set: bool = False  # stage 2 on every training input of the task, the unlabelled ones too
    settings: dict[str, Any] = field(default_factory=dict)  # the job's training settings (`stage_settings`)
    more_teachers: tuple[str, ...] = ()  # the folders of the other teachers of a multi-teacher stage 2

    def inputs(self) -> dict[str, Any]:
        """The job's input files by role, in the order the distill rules name them (`teacher`: one folder, or
        the list of a multi-teacher stage's teachers, first the one ``teacher`` names)."""
        data = "corpus" if self.stage == "stage1" else "task"
        cache = [self.cache] if self.cache else []
        teacher = [self.teacher_folder, *self.more_teachers] if self.more_teachers else self.teacher_folder
        return {"student": self.start, data: self.data, "teacher": teacher, "cache": cache}


@dataclass(frozen=True)
class Run:
    """A trained run: its configured run (``base``, itself but for the other seeds' instances) and seed, its
    student, teacher and vocabulary, stage 1 (if any) and its stage-2 job on each task."""

    name: str
    base: str
    seed: int
    student: str
    teacher: str
    vocabulary: str
    stage1: StageJob | None
    stage2: dict[str, StageJob]

    @property
    def model(self) -> str:
        return run_model(self.name)


def build_student(config: dict[str, Any], results: str, name: str) -> Student:
    teacher, vocab = names.student_teacher(config, name), config["students"][name]["vocabulary"]
    return Student(
        name, teacher, model_folder(results, teacher), vocab, vocab_map(results, vocab), f"{results}/students/{name}"
    )


def _needs(run: dict[str, Any], stage: str) -> frozenset[str]:
    """The tensors a run's losses need in a stage (presets expanded, every phase)."""
    return frozenset().union(*(recipe_needs(spec, stage) for spec in names.stage_phases(run[stage])))


def stage1_job(config: dict[str, Any], results: str, run: str) -> StageJob | None:
    """A run's stage-1 job; its corpus cache only when the teacher is cached and a loss needs word targets."""
    spec = names.run_spec(config, run)
    if "stage1" not in spec:
        return None
    corpus, teacher = names.stage1_corpus(config, run), names.student_teacher(config, spec["student"])
    vocab = config["students"][spec["student"]]["vocabulary"]
    teacher_mode = stage_settings(config, spec, "stage1", None)["teacher"]
    cached = teacher_mode == "cached" and "word_targets" in _needs(spec, "stage1")
    cache = f"{results}/cache/corpus/{corpus}/{vocab}/manifest.json"
    return StageJob(
        run,
        "stage1",
        None,
        f"{results}/students/{spec['student']}",
        f"{results}/corpus/{corpus}",
        teacher,
        model_folder(results, teacher),
        vocab,
        cache if cached else None,
        f"{results}/runs/{run}/stage1",
        settings=stage_settings(config, spec, "stage1", None),
    )


def stage2_job(config: dict[str, Any], results: str, run: str, task: str) -> StageJob:
    """A run's stage-2 job on ``task``: from its stage-1 student (else the initial one), with the task's
    logit cache unless the teacher is a classifier."""
    spec = names.run_spec(config, run)
    start = f"{results}/runs/{run}/stage1" if "stage1" in spec else f"{results}/students/{spec['student']}"
    teacher, *others = stage2_teachers(config, run, task)
    vocab = config["students"][spec["student"]]["vocabulary"]
    classifier = names.student_teacher(config, spec["student"]) in config["classifier_finetune"]["models"]
    cache = None if classifier else f"{results}/cache/task/{task}/{vocab}/manifest.json"
    return StageJob(
        run,
        "stage2",
        task,
        start,
        f"{results}/tasks/{task}",
        teacher,
        model_folder(results, teacher, task),
        vocab,
        cache,
        f"{results}/runs/{run}/{task}",
        bool(spec["stage2"].get("transfer_set")),
        stage_settings(config, spec, "stage2", task),
        tuple(model_folder(results, m, task) for m in others),
    )


def build_run(config: dict[str, Any], results: str, name: str) -> Run:
    base, seed = names.run_instances(config)[name]
    spec = config["runs"][base]
    student = config["students"][spec["student"]]
    stage2 = {t: stage2_job(config, results, name, t) for t in names.run_tasks(config, name)}
    return Run(
        name,
        base,
        seed,
        spec["student"],
        names.student_teacher(config, spec["student"]),
        student["vocabulary"],
        stage1_job(config, results, name),
        stage2,
    )


def build_models(config: dict[str, Any], results: str) -> dict[str, Model]:
    """Every model by name; an asset given by an existing local path tracks that folder."""
    models = {}
    for name in names.model_names(config):
        source = config["models"].get(name, {}).get("source", "random")
        local = source != "random" and not source.startswith(("embedded:", "hf:")) and Path(source).exists()
        models[name] = Model(name, results, (source,) if local else ())
    return models


def build_corpus(config: dict[str, Any], results: str, name: str) -> Corpus:
    source = config["corpora"][name]["source"]
    source = f"{results}/assets/corpora/{name}.jsonl" if source in EMBEDDED_CORPORA else source
    tokenizer = names.corpus_tokenizer(config, name)
    return Corpus(
        name, source, tokenizer, model_folder(results, tokenizer), tracked(source), f"{results}/corpus/{name}"
    )


def trained_tasks(config: dict[str, Any]) -> set[str]:
    """The tasks whose train split some job reads."""
    return {
        *config["teacher_finetune"]["tasks"],
        *config["classifier_finetune"]["tasks"],
        *config["cache"]["tasks"],
        *(t for r in config["runs"] for t in names.run_tasks(config, r)),
        *(t for v in config["vocabularies"].values() for t in v["count_tasks"]),
    }


def build_task(config: dict[str, Any], results: str, name: str, evaluated: set[str]) -> Task:
    """A task; `test` is required of evaluated tasks when `evaluate.test_submissions` is set."""
    source = config["tasks"][name]["source"]
    source = f"{results}/assets/tasks/{name}" if source in EMBEDDED_TASKS else source
    splits = ["train"] if name in trained_tasks(config) else []
    if name in evaluated:
        splits += ["dev", "test"] if config["evaluate"]["test_submissions"] else ["dev"]
    return Task(
        name, source, tracked(source), tuple(splits), f"{results}/tasks/{name}", names.task_teacher_name(config, name)
    )


def build_vocabulary(config: dict[str, Any], results: str, name: str) -> Vocabulary:
    corpus = names.vocab_corpus(config, name)
    tokenizer = model_folder(results, names.corpus_tokenizer(config, corpus))
    return Vocabulary(
        name, corpus, tokenizer, tuple(config["vocabularies"][name]["count_tasks"]), f"{results}/vocab/{name}/map.json"
    )


def eval_models(config: dict[str, Any]) -> list[str]:
    """`evaluate.models`, else the teacher."""
    return config["evaluate"].get("models") or [config["teacher"]]


def eval_tasks(config: dict[str, Any]) -> list[str]:
    """`evaluate.tasks`, else every task with a labelled split to score (not GLUE AX)."""
    return config["evaluate"].get("tasks") or [t for t, spec in config["tasks"].items() if names.evaluable(spec)]


def eval_pairs(config: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """Every evaluated (model, task): listed models, the fine-tuned teachers, the classifiers, every run's students."""
    pairs = [(m, t) for m in eval_models(config) for t in eval_tasks(config)]
    pairs += [(FINETUNED, t) for t in config["teacher_finetune"]["tasks"]]
    classifier = config["classifier_finetune"]
    pairs += [(classifier_model(m), t) for m in classifier["models"] for t in classifier["tasks"]]
    pairs += [(run_model(r), t) for r in names.run_instances(config) for t in names.run_tasks(config, r)]
    return tuple(dict.fromkeys(pairs))


def submit_pairs(config: dict[str, Any], evaluated: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    """Test-split submissions: every evaluated pair, and the evaluated models on the tasks that have no
    labelled split (GLUE AX), which are never evaluated."""
    unscored = [t for t, spec in config["tasks"].items() if not names.evaluable(spec)]
    return evaluated + tuple((m, t) for m in eval_models(config) for t in unscored)
