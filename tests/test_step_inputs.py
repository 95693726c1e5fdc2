"""The distillation step's typed inputs: ``StepInputs`` is the ``needs`` vocabulary, a loss reads only what it
declared, and the producers of a step run once each, in their table's order."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import pytest
import torch

from kdflow.distill.producers import Produced, Step, produce
from kdflow.losses import build_losses
from kdflow.losses.base import NEEDS, Loss
from kdflow.losses.inputs import ALWAYS_PRESENT, StepInputs, UndeclaredInputError, need_names
from kdflow.recipes import LossSpec


def test_step_inputs_fields_are_the_needs_vocabulary_and_the_always_present_fields():
    fields = {f.name for f in dataclasses.fields(StepInputs)}
    assert fields == NEEDS | set(ALWAYS_PRESENT)
    assert need_names() == NEEDS


@dataclasses.dataclass(frozen=True)
class _PeekingSpec(LossSpec):  # no name: not registered
    needs: ClassVar[frozenset[str]] = frozenset({"student_scores"})


class _Peeking(Loss):
    spec = _PeekingSpec

    def forward(self, inputs: StepInputs) -> torch.Tensor:
        return inputs.teacher_scores[0].sum()


def test_a_loss_reading_an_input_it_did_not_declare_fails_loudly():
    scores = [torch.tensor([0.2, 0.8])]
    inputs = StepInputs(step=3, student_scores=scores, teacher_scores=scores)
    loss = _Peeking()
    with pytest.raises(UndeclaredInputError, match="teacher_scores"):
        loss(inputs.restricted(loss.needs))
    with pytest.raises(UndeclaredInputError, match="labels"):
        StepInputs().labels  # noqa: B018 (never produced)
    kd = build_losses({"kd": {"temperature": 2.0}})[0]
    assert torch.isclose(kd(inputs.restricted(kd.needs)), torch.tensor(0.0), atol=1e-7)
    assert inputs.restricted(kd.needs).step == 3  # always-present fields stay


def test_producers_run_once_each_in_table_order_and_only_needed_values_are_kept():
    calls: list[str] = []

    def student(step: Step) -> Produced:
        calls.append("student")
        return Produced({"student_hidden": 1, "student_qkv": 2, "word_logits": 3}, tokens=5)

    def labels(step: Step) -> Produced:
        calls.append("labels")
        return Produced({"labels": 4})

    table = {"word_logits": student, "student_hidden": student, "student_qkv": student, "labels": labels}
    needs = frozenset({"labels", "student_hidden", "word_logits"})
    made = produce(table, Step(torch.nn.Identity(), [0], {}, needs))
    assert calls == ["student", "labels"]
    assert made.values == {"student_hidden": 1, "word_logits": 3, "labels": 4} and made.tokens == 5
    with pytest.raises(KeyError, match="hybrid_scores"):
        produce(table, Step(torch.nn.Identity(), [0], {}, frozenset({"hybrid_scores"})))
