"""Render PET-style cloze prompts: pattern + verbalizer (or per-example candidates) for any task."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .data.tasks import Example, Prompt, TaskType
from .errors import ConfigError

_MASK = "\x00MASK\x00"


@dataclass(frozen=True)
class Cloze:
    """One example as a cloze: text before and after the slot, and the strings that may fill it."""

    prefix: str
    suffix: str
    candidates: list[str]
    continue_suffix: bool  # causal LMs also score the text after the slot (ReCoRD, COPA)


def resolve_prompt(task: TaskType, override: dict[str, Any] | None) -> Prompt:
    """The task's default prompt with the config's `prompt:` keys applied."""
    prompt = task.prompt
    if not override:
        return prompt
    pattern = override.get("pattern", prompt.pattern)
    verbalizer = override.get("verbalizer", prompt.verbalizer)
    if verbalizer is not None and prompt.verbalizer is not None and set(verbalizer) != set(prompt.verbalizer):
        raise ConfigError(
            f"task {task.name}: prompt.verbalizer must map exactly the labels "
            f"{sorted(prompt.verbalizer)}, got {sorted(verbalizer)}"
        )
    return Prompt(pattern, verbalizer)


def label_order(task: TaskType, prompt: Prompt) -> list[str]:
    """Labels in the order of the verbalizer candidates (regression: the verbalizer's keys)."""
    if prompt.verbalizer is None:
        return []
    return list(task.labels) if task.labels else list(prompt.verbalizer)


def to_cloze(task: TaskType, prompt: Prompt, example: Example) -> Cloze:
    fields = dict(example["fields"])
    pattern = prompt.pattern
    if task.kind == "record":
        fields["passage"] = fields["passage"].replace("@highlight\n", "- ")
        fields["query"] = fields["query"].replace("@placeholder", "{mask}")
    try:
        text = pattern.format(**fields, mask=_MASK)
        if task.kind == "record":
            text = text.replace("{mask}", _MASK)
    except KeyError as exc:
        raise ConfigError(
            f"task {task.name}: pattern {pattern!r} names field {exc} (fields: {', '.join(fields)})"
        ) from None
    if text.count(_MASK) != 1:
        raise ConfigError(f"task {task.name}: pattern {pattern!r} must contain exactly one {{mask}}")
    prefix, suffix = text.split(_MASK)
    if prompt.verbalizer is not None:
        candidates = [prompt.verbalizer[label] for label in label_order(task, prompt)]
    else:
        candidates = list(example.get("candidates") or [])
        if not candidates:
            raise ConfigError(f"task {task.name}: example {example['idx']} has no candidates")
    return Cloze(prefix, suffix, candidates, continue_suffix=prompt.verbalizer is None)


def answer_strings(task: TaskType, prompt: Prompt, examples: list[Example]) -> list[str]:
    """Every verbalizer word, and for candidate tasks every candidate, that a model must be able to predict."""
    words = set(prompt.verbalizer.values()) if prompt.verbalizer else set()
    if prompt.verbalizer is None:
        for ex in examples:
            words.update(ex.get("candidates") or [])
    return sorted(words)
