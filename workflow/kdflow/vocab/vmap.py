"""The vocabulary map artifact: which teacher ids are kept, and the new id of every teacher id."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError
from ..jsonio import read_json, write_json

RESERVED = -1  # a kept row with no teacher token: the reserved unknown token of a vocabulary without one


@dataclass
class VocabMap:
    """``kept[new_id]`` is the teacher id (or RESERVED); ``old_to_new[old_id]`` its new id or its replacement's."""

    kept: np.ndarray
    old_to_new: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.kept)

    @property
    def teacher_size(self) -> int:
        return len(self.old_to_new)

    @property
    def reserved(self) -> int | None:
        hits = np.flatnonzero(self.kept == RESERVED)
        return int(hits[0]) if len(hits) else None

    def kept_mask(self) -> np.ndarray:
        mask = np.zeros(self.teacher_size, dtype=bool)
        mask[self.kept[self.kept != RESERVED]] = True
        return mask

    def remap(self, ids: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Teacher ids -> student ids (dropped ids become their replacement)."""
        if isinstance(ids, torch.Tensor):
            return torch.as_tensor(self.old_to_new, device=ids.device)[ids.long()]
        return self.old_to_new[np.asarray(ids, dtype=np.int64)]

    def unmap(self, ids: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Student ids -> teacher ids (the reserved row has none and stays RESERVED)."""
        if isinstance(ids, torch.Tensor):
            return torch.as_tensor(self.kept, device=ids.device)[ids.long()]
        return self.kept[np.asarray(ids, dtype=np.int64)]

    def project_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Teacher logits (..., V) -> (..., N) on the kept columns; a softmax then renormalises over them.

        The reserved column, when present, gets the log-sum-exp of every dropped column (their total mass).
        """
        kept = torch.as_tensor(self.kept, device=logits.device)
        real = kept.clamp(min=0)
        out = logits.index_select(-1, real)
        if self.reserved is not None:
            dropped = torch.as_tensor(np.flatnonzero(~self.kept_mask()), device=logits.device)
            out[..., self.reserved] = torch.logsumexp(logits.index_select(-1, dropped), dim=-1)
        return out

    def save(self, path: str | Path) -> None:
        write_json(path, {**self.meta, "kept": self.kept.tolist(), "old_to_new": self.old_to_new.tolist()})

    @classmethod
    def load(cls, path: str | Path, tokenizer_sha256: str | None = None) -> VocabMap:
        """Read a map; refuse it when ``tokenizer_sha256`` is given and differs from the map's."""
        data = read_json(path)
        if tokenizer_sha256 is not None and data.get("tokenizer_sha256") != tokenizer_sha256:
            raise DataError(
                f"{path}: vocabulary map was built for tokenizer {str(data.get('tokenizer_sha256'))[:12]}, "
                f"not for this one ({tokenizer_sha256[:12]}); rebuild it with compress_vocab"
            )
        kept = np.asarray(data.pop("kept"), dtype=np.int64)
        old_to_new = np.asarray(data.pop("old_to_new"), dtype=np.int64)
        return cls(kept, old_to_new, data)
