"""How a step's inputs are made: each stage's data source keeps a table from every need it can produce to
the producer that makes it; the producers asked for by a step's needs run once each, in table order, on the
batch the source moved to the device."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from ..errors import ConfigError
from ..features import Features


@dataclass(frozen=True)
class Step:
    """What the producers of one step share."""

    student: torch.nn.Module
    indices: list[int]
    batch: dict[str, Any]  # on the device
    needs: frozenset[str]
    step: int = 0
    progress: float = 0.0
    teacher: int = 0  # which teacher the teacher-side producers run (a multi-teacher stage's index)


@dataclass(frozen=True)
class Produced:
    """Step inputs made by one producer, and the tokens its student forward passes read."""

    values: dict[str, Any] = field(default_factory=dict)
    tokens: int = 0


Producer = Callable[[Step], Produced]


class StageData(Protocol):
    """The data of one stage: its examples, their batches and the producers of its step inputs."""

    n_examples: int
    teacher: torch.nn.Module | None
    label_ids: tuple[int, ...] | None  # gold label index per example (classification tasks)
    cache_temperatures: tuple[float, ...]
    producers: Mapping[str, Producer]

    def batch(self, indices: list[int], needs: frozenset[str]) -> dict[str, Any]:
        """Everything the needs read from the data, on the device (the one place a batch goes there)."""
        ...


def example_ids(step: Step) -> Produced:
    """The dataset indices of the batch (CoDIR's memory banks)."""
    return Produced({"example_ids": step.batch["example_ids"]})


def produce(producers: Mapping[str, Producer], step: Step) -> Produced:
    """Run every producer one of ``step.needs`` maps to, once, in table order; keep only what was needed."""
    missing = step.needs - set(producers)
    if missing:
        raise KeyError(f"no producer for {sorted(missing)} in this stage")
    ran: list[Producer] = []
    values: dict[str, Any] = {}
    tokens = 0
    for need, producer in producers.items():
        if need not in step.needs or producer in ran:
            continue
        ran.append(producer)
        made = producer(step)
        values.update({k: v for k, v in made.values.items() if k in step.needs})
        tokens += made.tokens
    return Produced(values, tokens)


def _features(values: dict[str, Any], side: str) -> Features | None:
    return next((v for k, v in values.items() if k.startswith(f"{side}_") and isinstance(v, Features)), None)


def check_alignment(values: dict[str, Any], losses: list[Any]) -> None:
    """Refuse per-token representation losses when the student and the teacher tokenise differently."""
    s, t = _features(values, "student"), _features(values, "teacher")
    if s is None or t is None or s.mask.shape == t.mask.shape or not any(loss.token_aligned for loss in losses):
        return
    raise ConfigError(
        "per-token representation losses need the student to share the teacher's "
        f"tokenisation (masks {tuple(s.mask.shape)} vs {tuple(t.mask.shape)})"
    )
