"""What a training run is told: its settings, the seeding, and the deterministic batch of every step."""

from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class TrainSettings:
    steps: int
    batch_size: int
    grad_accum: int = 1
    lr: float = 2e-5
    warmup_ratio: float = 0.06
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    checkpoint_every: int = 50
    seed: int = 0
    divergence_factor: float | None = 100.0
    group_by_length: bool = False

    @classmethod
    def from_config(cls, cfg: dict[str, Any], steps: int, seed: int) -> TrainSettings:
        keys = (
            "batch_size",
            "grad_accum",
            "lr",
            "warmup_ratio",
            "weight_decay",
            "max_grad_norm",
            "checkpoint_every",
            "divergence_factor",
            "group_by_length",
        )
        return cls(steps=steps, seed=seed, **{k: cfg[k] for k in keys if k in cfg})


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@functools.lru_cache(maxsize=4)
def _permutation(seed: int, epoch: int, n: int, lengths: tuple[int, ...] | None, batch_size: int) -> np.ndarray:
    """Epoch ``epoch``'s order of the ``n`` examples: a seeded permutation; with ``lengths``, grouped by length
    as transformers' LengthGroupedSampler (trainer_pt_utils.get_length_grouped_indices) does: the permutation
    cut into groups of batches, each sorted longest first, the longest example of all swapped to the front
    (a step that runs out of memory does so at once); a group is min(50, n // (4 x batch_size)) batches (at least
    one), transformers' default. Batches then hold examples of similar length, with less padding, and their
    order stays random from group to group."""
    order = np.random.default_rng([seed, epoch]).permutation(n)
    if lengths is None:
        return order
    size = max(1, min(50, n // (4 * batch_size))) * batch_size
    groups = [sorted(order[i : i + size], key=lambda k: -lengths[k]) for i in range(0, n, size)]
    longest = max(range(len(groups)), key=lambda g: lengths[groups[g][0]])
    groups[0][0], groups[longest][0] = groups[longest][0], groups[0][0]
    return np.asarray([k for group in groups for k in group], dtype=np.int64)


def batch_indices(
    n: int, step: int, micro: int, settings: TrainSettings, lengths: tuple[int, ...] | None = None
) -> list[int]:
    """Example indices of micro-batch ``micro`` of optimizer step ``step``: epochs of seeded permutations,
    grouped by the examples' ``lengths`` when ``settings.group_by_length``."""
    per_step = settings.batch_size * settings.grad_accum
    start = step * per_step + micro * settings.batch_size
    grouped = lengths if settings.group_by_length else None
    orders: dict[int, np.ndarray] = {}  # one lookup per epoch the batch touches (hashing `lengths` is O(n))
    out = []
    for position in range(start, start + settings.batch_size):
        epoch, offset = divmod(position, n)
        if epoch not in orders:
            orders[epoch] = _permutation(settings.seed, epoch, n, grouped, settings.batch_size)
        out.append(int(orders[epoch][offset]))
    return out


def steps_for(n_examples: int, epochs: float, batch_size: int, grad_accum: int, max_steps: int | None) -> int:
    steps = math.ceil(epochs * n_examples / (batch_size * grad_accum))
    return max(1, min(steps, max_steps) if max_steps else steps)
