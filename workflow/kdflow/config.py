"""Load and validate an experiment config against workflow/schemas/config.schema.yaml."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from .data.prompt_sets import PROMPT_SETS
from .data.tasks import TASKS
from .errors import ConfigError

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "config.schema.yaml"

_TYPE_NAMES = {
    "object": "a mapping",
    "array": "a list",
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true/false",
    "null": "null",
}


def load_schema() -> dict[str, Any]:
    with open(SCHEMA_PATH, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def _key(path: Any) -> str:
    parts = [str(p) if not isinstance(p, int) else f"[{p}]" for p in path]
    return ".".join(parts).replace(".[", "[") or "<top level>"


def _describe(error: ValidationError) -> str:
    where = list(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = [k for k in error.instance if k not in allowed]
        keys = ", ".join(f"'{_key(where + [k])}'" for k in extra)
        hint = f" (allowed here: {', '.join(allowed)})" if allowed else ""
        return f"unknown config key {keys}{hint}"
    if error.validator == "type":
        expected = error.validator_value
        expected = expected if isinstance(expected, list) else [expected]
        names = " or ".join(_TYPE_NAMES.get(t, t) for t in expected)
        return (
            f"config key '{_key(where)}': expected {names}, "
            f"got {type(error.instance).__name__} {error.instance!r}"
        )
    if error.validator == "required":
        return f"config key '{_key(where)}': {error.message}"
    return f"config key '{_key(where)}': {error.message}"


def _fill_defaults(schema: dict[str, Any], instance: Any, root: dict[str, Any]) -> None:
    """Insert `default` values of object properties, recursively (also into name->spec maps)."""
    if "$ref" in schema:
        schema = _resolve(schema["$ref"], root)
    if not isinstance(instance, dict):
        return
    for key, sub in schema.get("properties", {}).items():
        sub_resolved = _resolve(sub["$ref"], root) if "$ref" in sub else sub
        default = sub.get("default", sub_resolved.get("default"))  # a default beside a $ref wins
        if key not in instance and (default is not None or "default" in sub):
            instance[key] = copy.deepcopy(default)
        if key in instance:
            _fill_defaults(sub_resolved, instance[key], root)
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        known = set(schema.get("properties", {}))
        for key, value in instance.items():
            if key not in known:
                _fill_defaults(extra, value, root)


def _resolve(ref: str, root: dict[str, Any]) -> dict[str, Any]:
    node: Any = root
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


RESERVED_MODEL_NAMES = {"teacher_finetuned": "the teacher fine-tuned on each task", "runs": "the runs' students",
                        "classifiers": "the encoders fine-tuned with a classification head"}  # fmt: skip


def _check_references(config: dict[str, Any]) -> list[str]:
    """Cross-key checks that a schema cannot express (names that must exist)."""
    problems = []
    models, tasks = config.get("models", {}), config.get("tasks", {})
    if config.get("teacher") not in models:
        problems.append(
            f"config key 'teacher': '{config.get('teacher')}' is not a key of 'models' "
            f"(defined: {', '.join(models)})"
        )
    for name in models:
        if name in RESERVED_MODEL_NAMES:
            problems.append(f"config key 'models.{name}': '{name}' is reserved (results/metrics/{name} holds "
                            f"{RESERVED_MODEL_NAMES[name]}); rename the model")  # fmt: skip
    for i, name in enumerate(config.get("evaluate", {}).get("models", [])):
        if name not in models:
            problems.append(f"config key 'evaluate.models[{i}]': unknown model '{name}'")
    for i, name in enumerate(config.get("evaluate", {}).get("tasks", [])):
        if name not in tasks:
            problems.append(f"config key 'evaluate.tasks[{i}]': unknown task '{name}'")
        elif tasks[name].get("name") in TASKS and not evaluable(tasks[name]):
            problems.append(f"config key 'evaluate.tasks[{i}]': task '{name}' ({tasks[name]['name']}) has no labelled "
                            f"split to evaluate on; leave it out (with evaluate.test_submissions its test split is "
                            f"still written for submission)")  # fmt: skip
    tok_model = config.get("preprocess", {}).get("tokenizer_model")
    if tok_model is not None and tok_model not in models:
        problems.append(f"config key 'preprocess.tokenizer_model': unknown model '{tok_model}'")
    corpora = config.get("corpora", {})
    for name, vocab in config.get("vocabularies", {}).items():
        corpus = vocab.get("corpus")
        if corpus is None and not corpora:
            problems.append(f"config key 'vocabularies.{name}': needs a corpus, and 'corpora' is empty")
        elif corpus is not None and corpus not in corpora:
            problems.append(f"config key 'vocabularies.{name}.corpus': unknown corpus '{corpus}'")
        for i, task in enumerate(vocab.get("count_tasks", [])):
            if task not in tasks:
                problems.append(f"config key 'vocabularies.{name}.count_tasks[{i}]': unknown task '{task}'")
    if config.get("teacher_finetune", {}).get("models"):
        problems.append("config key 'teacher_finetune.models': only classifier_finetune lists models")
    for i, name in enumerate(config.get("classifier_finetune", {}).get("models", [])):
        if name not in models:
            problems.append(f"config key 'classifier_finetune.models[{i}]': unknown model '{name}'")
    for name, corpus in corpora.items():
        if corpus.get("tokenizer_model") is not None and corpus["tokenizer_model"] not in models:
            problems.append(f"config key 'corpora.{name}.tokenizer_model': unknown model '{corpus['tokenizer_model']}'")
    for section in ("teacher_finetune", "classifier_finetune", "cache"):
        for i, task in enumerate(config.get(section, {}).get("tasks", [])):
            if task not in tasks:
                problems.append(f"config key '{section}.tasks[{i}]': unknown task '{task}'")
    for i, corpus in enumerate(config.get("cache", {}).get("corpora", [])):
        if corpus not in corpora:
            problems.append(f"config key 'cache.corpora[{i}]': unknown corpus '{corpus}'")
    for i, vocab in enumerate(config.get("cache", {}).get("vocabularies", [])):
        if vocab != "full" and vocab not in config.get("vocabularies", {}):
            problems.append(f"config key 'cache.vocabularies[{i}]': '{vocab}' is neither 'full' nor a vocabulary")
    students = config.get("students", {})
    for name, student in students.items():
        vocab = student.get("vocabulary", "full")
        if vocab != "full" and vocab not in config.get("vocabularies", {}):
            problems.append(f"config key 'students.{name}.vocabulary': '{vocab}' is neither 'full' nor a vocabulary")
        teacher = student.get("teacher")
        if teacher is not None and teacher not in models:
            problems.append(f"config key 'students.{name}.teacher': unknown model '{teacher}'")
        if teacher not in (None, config.get("teacher")) and vocab != "full":
            problems.append(f"config key 'students.{name}.vocabulary': vocabularies are built for the teacher's "
                            f"tokenizer; a student of '{teacher}' needs 'full'")  # fmt: skip
        layers = student.get("layers", {})
        if layers.get("strategy", "uniform") == "explicit" and not layers.get("list"):
            problems.append(f"config key 'students.{name}.layers.list': needed with strategy 'explicit'")
        elif layers.get("strategy", "uniform") != "explicit" and "count" not in layers:
            problems.append(f"config key 'students.{name}.layers.count': needed with strategy '{layers.get('strategy', 'uniform')}'")
    from .losses import REGISTRY, check_losses, expand_presets

    classifiers = set(config.get("classifier_finetune", {}).get("models", []))
    for name, run in config.get("runs", {}).items():
        if run.get("student") not in students:
            problems.append(f"config key 'runs.{name}.student': unknown student '{run.get('student')}'")
        if "stage2" not in run:
            problems.append(f"config key 'runs.{name}.stage2': every run needs a stage 2 (the task)")
        if "task_losses" in run.get("stage1", {}):
            problems.append(f"config key 'runs.{name}.stage1.task_losses': stage 1 trains on a corpus, not a task")
        encoder_track = run.get("student") in students and student_teacher(config, run["student"]) in classifiers
        for stage in ("stage1", "stage2"):
            spec = run.get(stage)
            if spec is None:
                continue
            if ("losses" in spec) == ("phases" in spec):
                problems.append(f"config key 'runs.{name}.{stage}': give either 'losses' or 'phases' (a list of "
                                "{losses: ...} trained one after the other), not both or neither")  # fmt: skip
                continue
            groups = {f"phases[{i}].losses": p["losses"] for i, p in enumerate(spec.get("phases", []))}
            groups.update({"losses": spec["losses"]} if "losses" in spec else {})
            groups.update({f"task_losses.{t}": losses for t, losses in spec.get("task_losses", {}).items()})
            for task in spec.get("task_losses", {}):
                if task not in config.get("tasks", {}):
                    problems.append(f"config key 'runs.{name}.{stage}.task_losses.{task}': unknown task '{task}'")
            for key, losses in groups.items():
                where = f"runs.{name}.{stage}.{key}"
                found = check_losses(losses, stage)[1]
                problems += [f"config key '{where}{'.' + k if k else ''}': {message}" for k, message in found]
                if found or not (stage == "stage2" and encoder_track):
                    continue
                words = [loss for loss in expand_presets(losses, stage)
                         if REGISTRY[loss].needs & {"word_logits", "word_targets", "word_labels"}]  # fmt: skip
                if words:
                    problems.append(f"config key '{where}': {', '.join(words)} learn(s) word predictions, and the "
                                    f"student of run '{name}' is a classifier in stage 2 (its teacher "
                                    f"'{student_teacher(config, run['student'])}' is in classifier_finetune.models)")  # fmt: skip
        corpus = run.get("stage1", {}).get("corpus")
        if corpus is not None and corpus not in corpora:
            problems.append(f"config key 'runs.{name}.stage1.corpus': unknown corpus '{corpus}'")
        elif "stage1" in run and run.get("student") in students:
            teacher = student_teacher(config, run["student"])
            corpus = stage1_corpus(config, name)
            if corpus is not None and corpus_tokenizer(config, corpus) != teacher:
                problems.append(f"config key 'runs.{name}.stage1': corpus '{corpus}' is tokenised by "
                                f"'{corpus_tokenizer(config, corpus)}', the student's teacher is '{teacher}' (add a "
                                f"corpus with tokenizer_model: {teacher}, or set runs.{name}.stage1.corpus)")  # fmt: skip
        if run.get("stage2", {}).get("corpus") is not None:
            problems.append(f"config key 'runs.{name}.stage2.corpus': stage 2 trains on the task, not a corpus")
    comparable = {*config.get("models", {}), "teacher_finetuned", *(f"runs/{r}" for r in config.get("runs", {})),
                 *(f"classifiers/{m}" for m in config.get("classifier_finetune", {}).get("models", []))}  # fmt: skip
    for i, entry in enumerate(config.get("published", [])):
        if entry["compare_with"] not in comparable:
            problems.append(f"config key 'published[{i}].compare_with': '{entry['compare_with']}' is not a model "
                            f"of this experiment (have: {', '.join(sorted(comparable))})")  # fmt: skip
        for task in entry["scores"]:
            if task not in config.get("tasks", {}):
                problems.append(f"config key 'published[{i}].scores.{task}': unknown task '{task}'")
    if config.get("runs") and not config.get("distill", {}).get("tasks"):
        problems.append("config key 'distill.tasks': runs are defined but no task to distil on")
    for i, task in enumerate(config.get("distill", {}).get("tasks", [])):
        if task not in tasks:
            problems.append(f"config key 'distill.tasks[{i}]': unknown task '{task}'")
    for name, task in tasks.items():
        if task.get("name") not in TASKS:
            problems.append(
                f"config key 'tasks.{name}.name': unknown task type '{task.get('name')}' "
                f"(known: {', '.join(sorted(TASKS))})"
            )
            continue
        prompt_set = task.get("prompts") or config.get("prompts", "pet")
        if task["name"] not in PROMPT_SETS[prompt_set]:
            problems.append(f"config key 'tasks.{name}.prompts': prompt set '{prompt_set}' has no template for "
                            f"{task['name']} (it has: {', '.join(PROMPT_SETS[prompt_set])}); set prompts: pet "
                            f"for this task")  # fmt: skip
    return problems


def evaluable(spec: dict[str, Any]) -> bool:
    """Whether `evaluate` can score a task entry: its dev split (or the split `splits.dev` reads) is labelled,
    or, without a dev split, its release labels the test file (AX-b, AX-g); GLUE AX cannot be scored."""
    task = TASKS[spec["name"]]
    origin = (spec.get("splits") or {}).get("dev")
    if origin is not None:
        return origin in task.files and task.labelled(origin)
    return task.eval_split is not None


def student_teacher(config: dict[str, Any], student: str) -> str:
    """The model a student is cut from and taught by."""
    return config["students"][student].get("teacher") or config["teacher"]


def corpus_tokenizer(config: dict[str, Any], corpus: str) -> str:
    """The model whose tokenizer tokenises ``corpus``."""
    return (config["corpora"][corpus].get("tokenizer_model") or config.get("preprocess", {}).get("tokenizer_model")
            or config["teacher"])  # fmt: skip


def stage1_corpus(config: dict[str, Any], run: str) -> str | None:
    """A run's stage-1 corpus: its own, distill.corpus, else the first corpus tokenised for its teacher."""
    spec = config["runs"][run]
    explicit = spec.get("stage1", {}).get("corpus") or config.get("distill", {}).get("corpus")
    if explicit:
        return explicit
    teacher = student_teacher(config, spec["student"])
    corpora = list(config.get("corpora", {}))
    return next((c for c in corpora if corpus_tokenizer(config, c) == teacher), corpora[0] if corpora else None)


def run_recipe(config: dict[str, Any], run: str, task: str | None) -> dict[str, Any]:
    """A run as its distill job sees it: on `task`, stage 2's `task_losses[task]` replaces its losses (or
    its phases, by one phase)."""
    recipe = copy.deepcopy(config["runs"][run])
    for stage in ("stage1", "stage2"):
        if stage in recipe:
            per_task = recipe[stage].pop("task_losses", {})
            if task in per_task:
                recipe[stage].pop("phases", None)
                recipe[stage]["losses"] = per_task[task]
    return recipe


def stage_phases(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """A stage's loss specs in training order: its ``phases`` one after the other, or ``losses`` alone."""
    return [phase["losses"] for phase in spec["phases"]] if "phases" in spec else [spec["losses"]]


def validate_config(config: dict[str, Any], source: str = "config") -> dict[str, Any]:
    """Return a validated copy of ``config`` with defaults filled; raise ConfigError listing every problem."""
    schema = load_schema()
    config = copy.deepcopy(config)
    validator = Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    problems = [_describe(e) for e in errors]
    if not problems:
        _fill_defaults(schema, config, schema)
        for task in config["tasks"].values():
            task.setdefault("prompts", config["prompts"])
        problems = _check_references(config)
    if problems:
        raise ConfigError(f"invalid {source}:\n  - " + "\n  - ".join(problems))
    return config


def load_config(path: str | Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        raw = yaml.safe_load(fh) or {}
    return validate_config(raw, source=str(path))
