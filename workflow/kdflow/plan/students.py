"""Students' config (`students.NAME`): vocabulary, teacher, layers and ALBERT layer sharing. Torch-free: the
config check reads it."""

from __future__ import annotations

from typing import Any

Config = dict[str, Any]


def layer_count(student: dict[str, Any]) -> int | None:
    """How many transformer layers the student has (None when its `layers` are incomplete)."""
    layers = student.get("layers", {})
    if layers.get("strategy", "uniform") == "explicit":
        return len(layers["list"]) if layers.get("list") else None
    return layers.get("count")


def check_students(config: Config) -> list[str]:
    """Each student's vocabulary, teacher, layers and layer sharing."""
    problems = []
    for name, student in config.get("students", {}).items():
        vocab, teacher = student.get("vocabulary", "full"), student.get("teacher")
        if vocab != "full" and vocab not in config.get("vocabularies", {}):
            problems.append(f"config key 'students.{name}.vocabulary': '{vocab}' is neither 'full' nor a vocabulary")
        if teacher is not None and teacher not in config.get("models", {}):
            problems.append(f"config key 'students.{name}.teacher': unknown model '{teacher}'")
        if teacher not in (None, config.get("teacher")) and vocab != "full":
            problems.append(
                f"config key 'students.{name}.vocabulary': vocabularies are built for the teacher's "
                f"tokenizer; a student of '{teacher}' needs 'full'"
            )
        strategy = student.get("layers", {}).get("strategy", "uniform")
        if strategy == "explicit" and not student.get("layers", {}).get("list"):
            problems.append(f"config key 'students.{name}.layers.list': needed with strategy 'explicit'")
        elif strategy != "explicit" and "count" not in student.get("layers", {}):
            problems.append(f"config key 'students.{name}.layers.count': needed with strategy '{strategy}'")
        count = layer_count(student)
        if student.get("share_layers") and count is not None and count < 2:
            problems.append(
                f"config key 'students.{name}.share_layers': sharing one set of parameters across layers needs 2 "
                f"or more layers, and the student has {count}"
            )
    return problems
