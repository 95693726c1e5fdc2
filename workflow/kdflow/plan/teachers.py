"""A run's stage-2 teachers: by default the one teacher its student's track has; `stage2.teacher: MODEL` for
another one, e.g. `runs/NAME` (a teacher-assistant chain, TAKD: that run's student on each task teaches this
run there); `stage2.teachers: [MODEL, ...]` for several, combined by `stage2.multi_teacher` (TMKD, MT-BERT,
RL-KD, Uncertainty, DGKD). Torch-free: the config check and the plan read it."""

from __future__ import annotations

from typing import Any

from ..recipes import SPECS, check_recipe, expand_presets
from ..recipes.specs_teachers import PER_EXAMPLE, resolve_multi_teacher
from . import names

Config = dict[str, Any]
TEACHER_SIDE = frozenset({"teacher_scores", "teacher_hidden", "teacher_attentions", "teacher_qkv"})
SINGLE_TEACHER_NEEDS = frozenset({"hybrid_scores", "interchange_scores", "word_logits", "word_targets"})  # one teacher


def configured(stage2: dict[str, Any]) -> list[str] | None:
    """The teachers a run's stage 2 names (`teacher` or `teachers`), else None (the track's default)."""
    if stage2.get("teachers") is not None:
        return list(stage2["teachers"])
    return [stage2["teacher"]] if stage2.get("teacher") is not None else None


def seed_instance(config: Config, run: str, seed: int) -> str:
    """The instance of configured run ``run`` trained with ``seed`` (its own name for the first seed)."""
    return run if seed == names.seeds(config)[0] else f"{run}.seed{seed}"


def stage2_teachers(config: Config, run: str, task: str) -> list[str]:
    """The model names teaching ``run`` (an instance) on ``task``, in order; `runs/R` names R's instance of the
    same seed, so that every seed's chain stays within that seed."""
    chosen = configured(names.run_spec(config, run).get("stage2", {}))
    if chosen is None:
        return [names.stage2_teacher_name(config, run, task)]
    seed = names.run_instances(config)[run][1]
    return [
        names.run_model(seed_instance(config, names.run_of(m), seed)) if names.run_of(m) is not None else m
        for m in chosen
    ]


def _classifier_model(config: Config, model: str) -> bool:
    """Whether ``model`` is a classification model on the encoder track (a classifier or such a run's student)."""
    run = names.run_of(model)
    if run is not None:
        spec = config["runs"].get(run, {})
        teacher = names.student_teacher(config, spec["student"]) if spec.get("student") in config["students"] else None
        return teacher in config["classifier_finetune"]["models"]
    return (
        model.startswith(names.CLASSIFIERS)
        and model.removeprefix(names.CLASSIFIERS) in (config["classifier_finetune"]["models"])
    )


def _taught_by(config: Config, run: str) -> list[str]:
    """The runs whose students teach ``run`` in stage 2."""
    teachers = configured(config["runs"].get(run, {}).get("stage2") or {}) or []
    return [r for m in teachers if (r := names.run_of(m)) in config["runs"]]


def _chain_cycle(config: Config, run: str, path: tuple[str, ...] = ()) -> list[str] | None:
    """A teacher-assistant cycle through ``run`` (runs/A teaching B teaching A), else None."""
    if run in path:
        return [*path[path.index(run) :], run]
    for teacher in _taught_by(config, run):
        cycle = _chain_cycle(config, teacher, (*path, run))
        if cycle is not None:
            return cycle
    return None


def _check_run(config: Config, run: str, stage2: dict[str, Any]) -> list[str]:
    key = f"runs.{run}.stage2"
    if stage2.get("teacher") is not None and stage2.get("teachers") is not None:
        return [f"config key '{key}': give 'teacher' or 'teachers', not both"]
    chosen, given = configured(stage2), f"{key}.{'teachers' if stage2.get('teachers') is not None else 'teacher'}"
    if chosen is None:
        return (
            [f"config key '{key}.multi_teacher': the run has one teacher (set stage2.teachers)"]
            if stage2.get("multi_teacher") is not None
            else []
        )
    problems = []
    if len(set(chosen)) != len(chosen):
        problems.append(f"config key '{given}': a teacher is named twice")
    if stage2.get("multi_teacher") is not None and len(chosen) < 2:
        problems.append(f"config key '{key}.multi_teacher': combining teachers needs at least two in stage2.teachers")
    student = config["runs"][run].get("student")
    if student not in config["students"]:
        return problems  # reported by check_runs
    known = set(names.model_names(config)) | {names.run_model(r) for r in config["runs"]}
    for model in chosen:
        if model not in known or names.run_of(model) == run:
            why = "a run cannot teach itself" if names.run_of(model) == run else "unknown model"
            problems.append(f"config key '{given}': {why} '{model}' (models: {', '.join(sorted(known))})")
        elif not _classifier_model(config, model):
            problems.append(
                f"config key '{given}': '{model}' is not a classification model of the encoder track "
                "(classifiers/MODEL or runs/RUN of an encoder student): on the word-prediction track stage 2 reads "
                "its teacher from the task cache, which is built from the task's teacher only"
            )
    if not _classifier_model(config, names.run_model(run)):
        problems.append(
            f"config key '{key}': other teachers are supported on the encoder track only (the student of run "
            f"'{run}' learns word predictions, whose stage 2 reads the task's cached teacher)"
        )
    problems += _check_method(config, run, stage2, len(chosen))
    cycle = _chain_cycle(config, run)
    if cycle is not None and cycle[0] == run:  # reported once, at the run that starts it
        problems.append(f"config key '{given}': teacher-assistant runs form a cycle {' -> '.join(cycle)}")
    return problems


def _check_method(config: Config, run: str, stage2: dict[str, Any], n_teachers: int) -> list[str]:
    """`multi_teacher`: a known method with sound settings, per-example losses where it weights examples, gold
    labels where it reads them."""
    if n_teachers < 2:
        return []
    key = f"runs.{run}.stage2"
    method, found = resolve_multi_teacher(stage2.get("multi_teacher"))
    found = found or (method.teacher_problems(n_teachers) if method is not None else [])
    problems = [f"config key '{key}.{k}': {message}" for k, message in found]
    if method is None or problems:
        return problems
    groups = [*(p["losses"] for p in stage2.get("phases", [])), *stage2.get("task_losses", {}).values()]
    groups += [stage2["losses"]] if "losses" in stage2 else []
    if any(check_recipe(group, "stage2") for group in groups):
        return []  # reported with the run's recipes
    losses = set().union(*(expand_presets(group, "stage2") for group in groups))
    single = sorted(n for n in losses if SPECS[n].needs & SINGLE_TEACHER_NEEDS)
    if single:
        problems.append(
            f"config key '{key}.teachers': {', '.join(single)} read(s) one teacher's layers or cache, which several "
            "teachers cannot share"
        )
    if not any(SPECS[n].needs & TEACHER_SIDE for n in losses):
        problems.append(f"config key '{key}.teachers': no loss of the run reads a teacher")
    weighted = sorted(n for n in PER_EXAMPLE if "teacher_scores" in SPECS[n].needs)
    if method.per_example and not losses & set(weighted):
        problems.append(
            f"config key '{key}.multi_teacher.method': '{method.method}' weights each example's prediction loss "
            f"against each teacher; the run has none ({', '.join(weighted)})"
        )
    if method.uses_labels and stage2.get("transfer_set"):
        problems.append(
            f"config key '{key}.multi_teacher.method': '{method.method}' reads gold labels, and the run distils on "
            "a transfer set (stage2.transfer_set), whose inputs have none"
        )
    return problems


def check_teachers(config: Config) -> list[str]:
    """Every run's stage-2 teachers: known classification models, no run teaching itself, no cycle."""
    problems = []
    for run, spec in config.get("runs", {}).items():
        problems += _check_run(config, run, spec.get("stage2") or {})
    return problems
