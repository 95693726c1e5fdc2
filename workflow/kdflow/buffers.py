"""Buffers reused from chunk to chunk (and batch to batch) for the vocabulary-wide work of the word losses and
the logit cache: on a CPU a fresh [rows, vocabulary] tensor costs more than a pass over it, since its pages are
faulted in and zeroed again every time (a fresh 200 MB ``exp`` took 220 ms against 19 ms in place on the 2-core
development machine, 2026-12-04; README, "Benchmarks")."""

from __future__ import annotations

import math

import torch


class ChunkBuffers:
    """Buffers by name on one device, made (or made larger) when first needed and reused after."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._buffers: dict[str, torch.Tensor] = {}

    def take(self, name: str, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """A contiguous tensor of ``shape`` over the buffer ``name``; its values are whatever the last user left."""
        size = math.prod(shape)
        buf = self._buffers.get(name)
        if buf is None or buf.dtype != dtype or buf.numel() < size:
            buf = self._buffers[name] = torch.empty(size, dtype=dtype, device=self.device)
        return buf[:size].view(shape)


def linear_into(
    h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, buffers: ChunkBuffers
) -> torch.Tensor:
    """``h weight^T + bias`` in fp32 in the buffer ``logits``: the product in ``h``'s dtype (a lower precision
    goes through the buffer ``low`` and is converted once), as ``torch.nn.functional.linear`` in that dtype."""
    shape = (h.shape[0], weight.shape[0])
    out = buffers.take("logits", shape)
    w = weight.to(h.dtype)
    if h.dtype == torch.float32:
        torch.mm(h, w.t(), out=out)
    else:
        out.copy_(torch.mm(h, w.t(), out=buffers.take("low", shape, h.dtype)))
    return out.add_(bias) if bias is not None else out
