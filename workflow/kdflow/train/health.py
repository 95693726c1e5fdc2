"""Health checks of a training run: non-finite losses and tensors, a diverging loss."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ..errors import KdflowError
from .workdir import WorkDir


class TrainingError(KdflowError):
    """Training stopped (non-finite loss, bad settings)."""


def first_non_finite(tensors: Iterator[tuple[str, torch.Tensor]]) -> str | None:
    """The name of the first tensor holding a NaN or an infinity, or None."""
    for name, tensor in tensors:
        if tensor.numel() and not bool(torch.isfinite(tensor.detach()).all()):
            return name
    return None


class DivergenceGuard:
    """Stops a run whose loss (mean of the last ``window`` steps) exceeds ``factor`` times its starting loss
    (mean of the first ``window`` steps) and ``factor`` times 1.0: finite, but growing by orders of magnitude."""

    window = 5

    def __init__(self, factor: float | None) -> None:
        self.factor = factor
        self.first: list[float] = []
        self.last: list[float] = []

    def check(self, step: int, loss: float) -> None:
        if self.factor is None:
            return
        if len(self.first) < self.window:
            self.first.append(loss)
        self.last = [*self.last[-(self.window - 1) :], loss]
        if len(self.first) < self.window:
            return
        start, now = sum(self.first) / self.window, sum(self.last) / len(self.last)
        if abs(now) > self.factor * max(abs(start), 1.0):
            raise TrainingError(
                f"the loss diverged: {now:.4g} over steps {step - len(self.last) + 1}-{step} against {start:.4g} over "
                f"steps 1-{self.window} (more than divergence_factor = {self.factor:g} times); lower the learning "
                "rate, or raise or unset `divergence_factor` in this rule's training settings"
            )


def checkpoint_note(work: WorkDir, saved: int) -> str:
    if saved:
        return f"the last finite checkpoint (step {saved}) is kept in {work.checkpoint}"
    return "no checkpoint was written yet"
