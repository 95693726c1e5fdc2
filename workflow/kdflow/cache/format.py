"""On-disk format of a logit cache: sparse top-k log-probabilities + per-position log-normalisers.

For every cached position the teacher's logits are projected onto the kept vocabulary (when a map is
given) and turned into log-probabilities ``lp`` at T = 1. Stored:

* ``topk_values`` (P, k): the k largest ``lp`` (bf16 / fp16 / fp32);
* ``topk_ids`` (P, k): their ids in the student's (kept) vocabulary (uint16 when it fits, else int32);
* ``log_norm`` (P, len(temperatures)): ``c_T = logsumexp(lp / T)`` over the whole kept vocabulary.

Then ``p_T(i) = exp(lp_i / T - c_T)`` exactly for the top-k, and the tail mass ``1 - sum(top-k)`` is exact
too, so a KL over "top-k + one tail bucket" is a faithful lower bound of the full KL at every T.
``dense`` mode stores the whole ``lp`` row instead (small vocabularies).
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from ..safeio import write_bytes
from .topk import row_topk


def id_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 65536 else np.dtype(np.int32)


def encode_values(values: torch.Tensor, dtype: str) -> np.ndarray:
    """Values as stored (host memory): bf16 bits as int16, or fp16 / fp32."""
    if dtype == "bf16":
        return values.detach().to(torch.bfloat16).cpu().view(torch.int16).numpy()
    return values.detach().to(torch.float16 if dtype == "fp16" else torch.float32).cpu().numpy()


def decode_values(array: np.ndarray, dtype: str) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if dtype == "bf16":
        return tensor.view(torch.bfloat16).float()
    return tensor.float()


def log_normalisers(logprobs: torch.Tensor, temperatures: list[float]) -> torch.Tensor:
    """``c_T = logsumexp(lp / T)`` for every T, shape (..., len(temperatures)), float32 (``c_1`` is 0)."""
    return torch.stack(
        [
            torch.zeros(logprobs.shape[:-1], device=logprobs.device)
            if t == 1
            else torch.logsumexp(logprobs.float() / t, dim=-1)
            for t in temperatures
        ],
        dim=-1,
    )


def sparse_targets(
    logits: torch.Tensor,
    k: int,
    temperatures: list[float],
    overwrite: bool = False,
    scratch: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Top-k log-probabilities (T = 1), their ids and the log-normalisers of ``logits`` (..., N).

    Works on the raw logits ``z`` (no full log-softmax is materialised) and shares the work: the top-k's first
    value is the row's maximum ``m``, ``S_T = sum(exp((z - m) / T))``, so ``lp = z - m - log S_1`` and
    ``c_T = log S_T - log S_1 / T`` (``c_1`` is exactly 0); ``z - m`` and one exp buffer are the only full-size
    temporaries, and the last temperature other than 1 divides ``z - m`` in place (``overwrite``: ``z - m`` is
    formed in ``logits`` itself, an fp32 buffer the caller gives up and finds overwritten; ``scratch``: the exp
    buffer, fp32 of the logits' shape, given by the caller to reuse). The top-k is ``topk.row_topk``.
    """
    logits = logits.float()
    values, ids = row_topk(logits, min(k, logits.shape[-1]))
    shifted = logits.sub_(values[..., :1]) if overwrite else logits - values[..., :1]
    scratch = torch.exp(shifted) if scratch is None else torch.exp(shifted, out=scratch)
    log_s1 = scratch.sum(-1).log()
    scaled = [i for i, t in enumerate(temperatures) if t != 1]
    norms = []
    for i, t in enumerate(temperatures):
        if t == 1:
            norms.append(torch.zeros_like(log_s1))
        else:
            divided = shifted.div_(t) if i == scaled[-1] else torch.div(shifted, t, out=scratch)
            norms.append(divided.exp_().sum(-1).log() - log_s1 / t)
    return {"values": values - values[..., :1] - log_s1[..., None], "ids": ids, "log_norm": torch.stack(norms, -1)}


def bytes_per_position(k: int, value_dtype: str, vocab_size: int, temperatures: int) -> int:
    value_bytes = {"bf16": 2, "fp16": 2, "fp32": 4}[value_dtype]
    return k * (value_bytes + id_dtype(vocab_size).itemsize) + 4 * temperatures


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_shard(path: Path, arrays: dict[str, np.ndarray]) -> str:
    """Write an uncompressed .npz atomically (temp file + rename); return its sha256."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    data = buffer.getvalue()
    write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def read_shard(path: Path, sha256: str | None) -> dict[str, np.ndarray]:
    """Load a shard; a missing, truncated or altered shard is reported by name."""
    if not path.exists():
        raise DataError(f"{path}: cache shard is missing")
    if sha256 is not None and file_sha256(path) != sha256:
        raise DataError(f"{path}: cache shard is corrupted or truncated (checksum mismatch)")
    try:
        with np.load(path) as npz:
            return {name: npz[name] for name in npz.files}
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path}: cache shard cannot be read ({exc})") from None
