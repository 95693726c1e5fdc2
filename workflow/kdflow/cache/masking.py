"""Deterministic masking of corpus blocks for masked-LM teachers: the student sees exactly this."""

from __future__ import annotations

import numpy as np


def mask_block(
    ids: np.ndarray,
    seed: int,
    block_index: int,
    mask_id: int,
    vocab_size: int,
    special_ids: set[int],
    prob: float = 0.15,
) -> tuple[np.ndarray, np.ndarray]:
    """BERT-style 80/10/10 masking from a generator seeded by (seed, block index); returns (inputs, positions)."""
    rng = np.random.default_rng([seed, block_index])
    eligible = ~np.isin(ids, list(special_ids))
    draw = rng.random(len(ids))
    chosen = eligible & (draw < prob)
    if not chosen.any() and eligible.any():
        chosen[np.flatnonzero(eligible)[rng.integers(eligible.sum())]] = True
    positions = np.flatnonzero(chosen)
    inputs = ids.astype(np.int64).copy()
    kind = rng.random(len(positions))
    random_tokens = rng.integers(0, vocab_size, len(positions))
    inputs[positions[kind < 0.8]] = mask_id
    swap = (kind >= 0.8) & (kind < 0.9)
    inputs[positions[swap]] = random_tokens[swap]
    return inputs, positions
