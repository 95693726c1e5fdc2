"""Load and validate an experiment config against the schema shipped in the package (config.schema.yaml):
schema errors, then the cross-key checks of `config_checks`; the defaults resolved from a config live in
`kdflow.plan.names` (re-exported here)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from .config_checks import check_references
from .errors import ConfigError
from .plan.names import corpus_tokenizer, evaluable, run_spec, stage1_corpus, stage_phases, student_teacher

__all__ = [
    "SCHEMA_PATH",
    "corpus_tokenizer",
    "evaluable",
    "load_config",
    "load_schema",
    "run_recipe",
    "stage1_corpus",
    "stage_phases",
    "student_teacher",
    "validate_config",
]

SCHEMA_PATH = Path(__file__).resolve().parent / "config.schema.yaml"

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
    """The schema, with `$defs/training_override`: the training settings without their defaults (a run's
    `stageN.training` replaces only the settings it names)."""
    with open(SCHEMA_PATH, encoding="utf-8") as fh:
        schema = yaml.safe_load(fh)
    training = copy.deepcopy(schema["$defs"]["training"])
    for sub in training["properties"].values():
        sub.pop("default", None)
    schema["$defs"]["training_override"] = training
    return schema


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
        return f"config key '{_key(where)}': expected {names}, got {type(error.instance).__name__} {error.instance!r}"
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


def run_recipe(config: dict[str, Any], run: str, task: str | None) -> dict[str, Any]:
    """A run as its distill job sees it: on `task`, stage 2's `task_losses[task]` replaces its losses (or
    its phases, by one phase)."""
    recipe = copy.deepcopy(run_spec(config, run))
    for stage in ("stage1", "stage2"):
        if stage in recipe:
            per_task = recipe[stage].pop("task_losses", {})
            if task in per_task:
                recipe[stage].pop("phases", None)
                recipe[stage]["losses"] = per_task[task]
    return recipe


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
        problems = check_references(config)
    if problems:
        raise ConfigError(f"invalid {source}:\n  - " + "\n  - ".join(problems))
    return config


def load_config(path: str | Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        raw = yaml.safe_load(fh) or {}
    return validate_config(raw, source=str(path))
