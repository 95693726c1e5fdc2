"""Quantised head inputs for a ``hidden`` cache (``value_dtype`` ``int8`` / ``int4``).

Each position's vector of d values is cut into groups of consecutive channels (``group_size``); a group is
stored as symmetric integers ``q`` in [-L, L] (L = 127 for int8, 7 for int4) with one float16 scale
``s = absmax / L``, and read back as ``q * s``: every value is within ``s / 2`` of the teacher's. int4 packs
two values per byte (``q + 8`` in each nibble, the even channel in the low one). Stored per position:
``d`` bytes + 2 per group (int8), ``d / 2`` bytes + 2 per group (int4).
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import ConfigError, DataError
from .format import decode_values, encode_values

GROUP = {"int8": 64, "int4": 144}  # channels per scale: 576 + 18 and 288 + 8 bytes per SmolLM2 position
LEVELS = {"int8": 127, "int4": 7}


def check_value_dtype(settings: dict) -> None:
    """Integer value dtypes exist for the head inputs of mode ``hidden`` only."""
    if settings["value_dtype"] in GROUP and settings["mode"] != "hidden":
        raise ConfigError(
            f"cache value_dtype {settings['value_dtype']} quantises head inputs: it needs mode 'hidden', not "
            f"'{settings['mode']}' (use bf16, fp16 or fp32)"
        )


def group_size(dtype: str, d: int) -> int:
    """Channels per scale for vectors of ``d`` values: the largest divisor of d not above the dtype's group."""
    return max(g for g in range(1, min(GROUP[dtype], d) + 1) if d % g == 0)


def bytes_per_vector(dtype: str, d: int) -> int:
    """Stored bytes of one position's vector (+ its scales)."""
    if dtype not in GROUP:
        return d * {"bf16": 2, "fp16": 2, "fp32": 4}[dtype]
    values = d if dtype == "int8" else d // 2
    return values + 2 * (d // group_size(dtype, d))


def quantise(hidden: torch.Tensor, dtype: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``hidden`` [P, d] as integers [P, d] (int8, in [-L, L]) and float16 scales [P, d / group]."""
    rows, d = hidden.shape
    if dtype == "int4" and d % 2:
        raise DataError(f"value_dtype int4 packs two values per byte: the head's inputs have an odd size {d}")
    groups = hidden.detach().float().reshape(rows, -1, group_size(dtype, d))
    scale = (groups.abs().amax(-1, keepdim=True) / LEVELS[dtype]).half()
    if not torch.isfinite(scale).all():
        raise DataError(f"value_dtype {dtype}: the head's inputs exceed the float16 range of the scales")
    s = scale.float()
    q = torch.where(s > 0, groups / s.clamp(min=torch.finfo(torch.float32).tiny), torch.zeros_like(groups))
    q = q.round().clamp(-LEVELS[dtype], LEVELS[dtype]).to(torch.int8)
    return q.reshape(rows, d), scale.reshape(rows, -1)


def dequantise(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """float32 [P, d] from integers [P, d] and scales [P, groups]."""
    rows, d = q.shape
    return (q.float().reshape(rows, scale.shape[1], -1) * scale.float()[..., None]).reshape(rows, d)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """[P, d] integers in [-7, 7] as [P, d / 2] bytes."""
    nibbles = (q.to(torch.int16) + 8).to(torch.uint8)
    return nibbles[:, 0::2] | (nibbles[:, 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """[P, d / 2] bytes as [P, d] int8 integers."""
    low = (packed & 0x0F).to(torch.int8) - 8
    high = (packed >> 4).to(torch.int8) - 8
    return torch.stack([low, high], -1).reshape(packed.shape[0], -1)


def encode_hidden(hidden: torch.Tensor, dtype: str) -> dict[str, np.ndarray]:
    """The arrays a ``hidden`` cache stores for rows ``hidden`` [P, d] (host memory)."""
    if dtype not in GROUP:
        return {"hidden": encode_values(hidden, dtype)}
    q, scale = quantise(hidden, dtype)
    stored = pack_int4(q) if dtype == "int4" else q
    return {"hidden": stored.cpu().numpy(), "hidden_scale": scale.cpu().numpy()}


def decode_hidden(arrays: dict[str, np.ndarray], rows: slice, dtype: str) -> torch.Tensor:
    """float32 head inputs of ``rows`` from what ``encode_hidden`` stored."""
    if dtype not in GROUP:
        return decode_values(arrays["hidden"][rows], dtype)
    stored = torch.from_numpy(np.ascontiguousarray(arrays["hidden"][rows]))
    scale = torch.from_numpy(np.ascontiguousarray(arrays["hidden_scale"][rows]))
    return dequantise(unpack_int4(stored) if dtype == "int4" else stored, scale)
