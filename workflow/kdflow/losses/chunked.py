"""A word-prediction loss over the vocabulary, computed a chunk of positions at a time: the student's head and
the loss are fused so that the [positions, vocabulary] logits (and their gradient) never exist at once.

Like Liger-Kernel's fused linear cross-entropy/JSD, the gradient is formed during the forward pass, chunk by
chunk: for each chunk the logits ``h W^T + b`` are computed, the per-position loss and its gradient with respect
to those logits come from autograd (so any per-position loss fuses) or, for the dense word KL, in closed form
(``cache.kl.dense_kl_and_grad``: fewer passes over the vocabulary), and the gradients of ``h``, ``W`` and ``b``
are accumulated by two matrix products; the backward pass only scales them. Peak memory is one chunk's logits
instead of all of them, at the cost of nothing but the loop (no recomputation)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..heads import HeadRows

PerPosition = Callable[[torch.Tensor, slice], torch.Tensor]  # (logits of a chunk [n, V] fp32, its rows) -> [n]
# the same losses [n] with their sum's gradient with respect to the logits [n, V], in closed form
PerPositionGrad = Callable[[torch.Tensor, slice], tuple[torch.Tensor, torch.Tensor]]


def _autograd(per_position: PerPosition) -> PerPositionGrad:
    """``per_position`` with its gradient from autograd (any per-position loss)."""

    def value_and_grad(logits: torch.Tensor, rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
        logits = logits.detach().requires_grad_()
        with torch.enable_grad():
            loss = per_position(logits, rows)
            (grad,) = torch.autograd.grad(loss.sum(), logits)
        return loss.detach(), grad

    return value_and_grad


def _add_weight_grad(grad_w: torch.Tensor | None, grad_logits: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``grad_w + grad_logits.T @ h`` in fp32; the first chunk's product is the buffer (no zero-filled [V, d] plus
    it). Under autocast the product is formed in autocast's dtype, as the unfused head's backward forms it, and
    added to the fp32 sum."""
    if torch.is_autocast_enabled(h.device.type):
        part = grad_logits.T @ h
        return part.float() if grad_w is None else grad_w.add_(part)
    if grad_w is None:
        return grad_logits.T @ h.float()
    return grad_w.addmm_(grad_logits.T, h.float())


class _FusedHeadLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, value_and_grad: PerPositionGrad, chunk: int):  # noqa: ANN001, ANN205
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_h = torch.empty_like(hidden)
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if hidden.shape[0] == 0 else None
        grad_b = torch.zeros_like(bias, dtype=torch.float32) if bias is not None else None
        for start in range(0, hidden.shape[0], chunk):
            rows = slice(start, min(start + chunk, hidden.shape[0]))
            h = hidden[rows]
            loss, grad_logits = value_and_grad(torch.nn.functional.linear(h, weight, bias).float(), rows)
            total += loss.sum()
            grad_h[rows] = grad_logits.to(weight.dtype) @ weight
            grad_w = _add_weight_grad(grad_w, grad_logits, h)
            if grad_b is not None:
                grad_b += grad_logits.sum(0)
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        ctx.dtypes = (weight.dtype, bias.dtype if bias is not None else None)
        return total

    @staticmethod
    def backward(ctx, grad_out):  # noqa: ANN001, ANN205
        grad_h, grad_w, grad_b = ctx.saved_tensors
        w_dtype, b_dtype = ctx.dtypes
        gb = (grad_b * grad_out).to(b_dtype) if grad_b is not None else None
        return grad_h * grad_out.to(grad_h.dtype), (grad_w * grad_out).to(w_dtype), gb, None, None


def fused_head_loss(
    rows: HeadRows, per_position: PerPosition, chunk: int, closed_form: PerPositionGrad | None = None
) -> torch.Tensor:
    """The sum over positions of ``per_position(logits of the chunk, chunk rows)``, where the logits are
    ``rows.hidden @ rows.weight.T + rows.bias`` formed ``chunk`` positions at a time (fp32 loss, gradients to
    the hidden states, the head weight and bias as an unfused computation would give them). The logits'
    gradient comes from ``closed_form`` where given (the same losses with their gradient), else autograd."""
    if chunk < 1:
        raise ValueError(f"chunk must be a positive number of positions, not {chunk}")
    value_and_grad = closed_form or _autograd(per_position)
    return _FusedHeadLoss.apply(rows.hidden, rows.weight, rows.bias, value_and_grad, chunk)
