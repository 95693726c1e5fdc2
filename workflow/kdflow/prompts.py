"""Render PET-style cloze prompts: pattern + verbalizer (or per-example candidates) for any task.

A pattern is text with ``{field}`` slots (``{{``/``}}`` for literal braces) and one ``{mask}``. A slot may
slice and filter its value, left to right: ``{sentence1[start1:end1]}`` (bounds: integers, or names of
integer fields or metadata such as WiC's character offsets), ``{premise|strip[:-1]}``,
``{question|cause=because,effect=therefore}`` (a value map), ``{mask|lower_first}`` (applied to every
candidate). Filters: ``strip``, ``lower_first``, ``upper_first``, and value maps.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .data.prompt_sets import PROMPT_SETS
from .data.tasks import Example, Prompt, TaskType
from .errors import ConfigError

_MASK = "\x00MASK\x00"
_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_NAME = re.compile(r"[A-Za-z_]\w*")
_STEP = re.compile(r"\[(-?\w*):(-?\w*)\]|\|([^|\[\]]+)")
_FILTERS: dict[str, Callable[[str], str]] = {
    "strip": str.strip,
    "lower_first": lambda s: s[:1].lower() + s[1:],
    "upper_first": lambda s: s[:1].upper() + s[1:],
}
Step = tuple[str | None, str | None, str | None]  # (slice start, slice end, filter)


def _steps(task: TaskType, pattern: str, expr: str) -> tuple[str, list[Step]]:
    """``name[a:b]|filter...`` -> (name, steps); a ConfigError names what cannot be read."""
    name = _NAME.match(expr)
    if name is None:
        raise ConfigError(f"task {task.name}: pattern {pattern!r}: slot {{{expr}}} should start with a field name")
    steps, pos = [], name.end()
    while pos < len(expr):
        step = _STEP.match(expr, pos)
        if step is None:
            raise ConfigError(
                f"task {task.name}: pattern {pattern!r}: cannot read {expr[pos:]!r} in slot {{{expr}}} "
                f"(expected [start:end] or |filter, filters: {', '.join(_FILTERS)} or a map a=b,c=d)"
            )
        steps.append(step.groups())
        pos = step.end()
    return name.group(), steps


def _apply(task: TaskType, pattern: str, value: Any, steps: list[Step], lookup: dict[str, Any]) -> str:
    """Slice and filter ``value`` as the slot says."""
    value = str(value)
    for start, end, name in steps:
        if name is None:
            value = value[_bound(task, pattern, start, lookup) : _bound(task, pattern, end, lookup)]
        elif "=" in name:
            mapping = dict(item.split("=", 1) for item in name.split(","))
            if value not in mapping:
                raise ConfigError(f"task {task.name}: pattern {pattern!r}: the map |{name} has no entry for {value!r}")
            value = mapping[value]
        elif name in _FILTERS:
            value = _FILTERS[name](value)
        else:
            raise ConfigError(
                f"task {task.name}: pattern {pattern!r}: unknown filter |{name} "
                f"(known: {', '.join(_FILTERS)}, or a map a=b,c=d)"
            )
    return value


def _bound(task: TaskType, pattern: str, bound: str | None, lookup: dict[str, Any]) -> int | None:
    if not bound:
        return None
    if re.fullmatch(r"-?\d+", bound):
        return int(bound)
    value = lookup.get(bound)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(
            f"task {task.name}: pattern {pattern!r}: slice bound {bound!r} should be an integer or "
            f"the name of an integer field, got {value!r}"
        )
    return value


def render(task: TaskType, pattern: str, example: Example) -> tuple[str, list[Step]]:
    """The pattern filled from the example's fields (then its metadata), ``{mask}`` as a marker; and the
    steps of the mask slot, which `to_cloze` applies to every candidate."""
    lookup = {**example.get("meta", {}), **example["fields"]}
    out: list[str] = []
    mask_steps: list[Step] = []
    last = 0
    for token in _TOKEN.finditer(pattern):
        out.append(pattern[last : token.start()])
        last = token.end()
        text = token.group()
        if text in ("{{", "}}"):
            out.append(text[0])
            continue
        if token.group(1) is None:
            raise ConfigError(
                f"task {task.name}: pattern {pattern!r} has a single {text!r} at {token.start()}; "
                f"write {text * 2!r} for a literal brace"
            )
        name, steps = _steps(task, pattern, token.group(1))
        if name == "mask":
            out.append(_MASK)
            mask_steps = steps
        elif name in lookup:
            out.append(_apply(task, pattern, lookup[name], steps, lookup))
        else:
            raise ConfigError(
                f"task {task.name}: pattern {pattern!r} names field '{name}' (fields: {', '.join(example['fields'])})"
            )
    out.append(pattern[last:])
    return "".join(out), mask_steps


@dataclass(frozen=True)
class Cloze:
    """One example as a cloze: text before and after the slot, and the strings that may fill it."""

    prefix: str
    suffix: str
    candidates: list[str]
    continue_suffix: bool  # causal LMs also score the text after the slot (ReCoRD, COPA)


def resolve_prompt(task: TaskType, override: dict[str, Any] | None, prompt_set: str = "pet") -> Prompt:
    """The task's prompt in the named set (`prompts:`) with the config's `prompt:` keys applied."""
    if prompt_set not in PROMPT_SETS:
        raise ConfigError(f"unknown prompt set '{prompt_set}' (known: {', '.join(PROMPT_SETS)})")
    if task.name not in PROMPT_SETS[prompt_set]:
        raise ConfigError(
            f"task type {task.name}: prompt set '{prompt_set}' has no template for it (it has: "
            f"{', '.join(PROMPT_SETS[prompt_set])}); set the task's prompts: pet"
        )
    prompt = PROMPT_SETS[prompt_set][task.name]
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
    text, mask_steps = render(task, pattern, {**example, "fields": fields})
    if task.kind == "record":
        text = text.replace("{mask}", _MASK)
    if text.count(_MASK) != 1:
        raise ConfigError(f"task {task.name}: pattern {pattern!r} must contain exactly one {{mask}}")
    prefix, suffix = text.split(_MASK)
    if prompt.verbalizer is not None:
        candidates = [prompt.verbalizer[label] for label in label_order(task, prompt)]
    else:
        candidates = list(example.get("candidates") or [])
        if not candidates:
            raise ConfigError(f"task {task.name}: example {example['idx']} has no candidates")
    lookup = {**example.get("meta", {}), **fields}
    candidates = [_apply(task, pattern, c, mask_steps, lookup) for c in candidates] if mask_steps else candidates
    return Cloze(prefix, suffix, candidates, continue_suffix=prompt.verbalizer is None)


def answer_strings(task: TaskType, prompt: Prompt, examples: list[Example]) -> list[str]:
    """Every verbalizer word, and for candidate tasks every candidate (as the pattern writes them), that a
    model must be able to predict."""
    if prompt.verbalizer is not None:
        slots = [_steps(task, prompt.pattern, t.group(1)) for t in _TOKEN.finditer(prompt.pattern) if t.group(1)]
        steps = next((steps for name, steps in slots if name == "mask"), [])
        return sorted({_apply(task, prompt.pattern, w, steps, {}) for w in prompt.verbalizer.values()})
    return sorted({c for ex in examples for c in to_cloze(task, prompt, ex).candidates})
