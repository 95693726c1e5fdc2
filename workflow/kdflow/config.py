"""Load and validate an experiment config against workflow/schemas/config.schema.yaml."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

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


RESERVED_MODEL_NAMES = {"teacher_finetuned": "the teacher fine-tuned on each task", "runs": "the runs' students"}


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
    for section in ("teacher_finetune", "cache"):
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
        layers = student.get("layers", {})
        if layers.get("strategy", "uniform") == "explicit" and not layers.get("list"):
            problems.append(f"config key 'students.{name}.layers.list': needed with strategy 'explicit'")
        elif layers.get("strategy", "uniform") != "explicit" and "count" not in layers:
            problems.append(f"config key 'students.{name}.layers.count': needed with strategy '{layers.get('strategy', 'uniform')}'")
    from .losses import REGISTRY

    for name, run in config.get("runs", {}).items():
        if run.get("student") not in students:
            problems.append(f"config key 'runs.{name}.student': unknown student '{run.get('student')}'")
        if "stage2" not in run:
            problems.append(f"config key 'runs.{name}.stage2': every run needs a stage 2 (the task)")
        for stage in ("stage1", "stage2"):
            for loss in run.get(stage, {}).get("losses", {}):
                if loss not in REGISTRY:
                    problems.append(f"config key 'runs.{name}.{stage}.losses.{loss}': unknown loss "
                                    f"(registered: {', '.join(sorted(REGISTRY))})")  # fmt: skip
    if config.get("runs") and not config.get("distill", {}).get("tasks"):
        problems.append("config key 'distill.tasks': runs are defined but no task to distil on")
    for i, task in enumerate(config.get("distill", {}).get("tasks", [])):
        if task not in tasks:
            problems.append(f"config key 'distill.tasks[{i}]': unknown task '{task}'")
    from .data.tasks import TASKS

    for name, task in tasks.items():
        if task.get("name") not in TASKS:
            problems.append(
                f"config key 'tasks.{name}.name': unknown task type '{task.get('name')}' "
                f"(known: {', '.join(sorted(TASKS))})"
            )
    return problems


def validate_config(config: dict[str, Any], source: str = "config") -> dict[str, Any]:
    """Return a validated copy of ``config`` with defaults filled; raise ConfigError listing every problem."""
    schema = load_schema()
    config = copy.deepcopy(config)
    validator = Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    problems = [_describe(e) for e in errors]
    if not problems:
        _fill_defaults(schema, config, schema)
        problems = _check_references(config)
    if problems:
        raise ConfigError(f"invalid {source}:\n  - " + "\n  - ".join(problems))
    return config


def load_config(path: str | Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        raw = yaml.safe_load(fh) or {}
    return validate_config(raw, source=str(path))
