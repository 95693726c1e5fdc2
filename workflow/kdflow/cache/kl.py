"""KL divergence between cached teacher targets and student logits: dense, or top-k + one tail bucket."""

from __future__ import annotations

import torch


def teacher_logprobs_topk(values: torch.Tensor, log_norm_t: torch.Tensor, temperature: float) -> torch.Tensor:
    """log p_T of the cached top-k entries: lp / T - c_T."""
    return values / temperature - log_norm_t[..., None]


def log_softmax_at(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """log softmax(logits / T) in fp32 (no division at T = 1: a pass over the vocabulary saved)."""
    logits = logits.float()
    return torch.log_softmax(logits / temperature if temperature != 1 else logits, dim=-1)


def sparse_kl(
    student_logits: torch.Tensor, values: torch.Tensor, ids: torch.Tensor, log_norm_t: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Per-position KL(p_T || q_T) over the teacher's top-k tokens plus one bucket for the rest.

    By the log-sum inequality this is a lower bound of the full KL; it equals it when k = vocabulary size.
    """
    log_q = log_softmax_at(student_logits, temperature)
    log_p_top = teacher_logprobs_topk(values, log_norm_t, temperature)
    p_top = log_p_top.exp()
    log_q_top = log_q.gather(-1, ids)
    kl_top = (p_top * (log_p_top - log_q_top)).sum(-1)
    p_tail = (1 - p_top.sum(-1)).clamp(min=0)
    q_tail = (1 - log_q_top.exp().sum(-1)).clamp(min=1e-12)
    kl_tail = torch.where(p_tail > 0, p_tail * (p_tail.clamp(min=1e-12).log() - q_tail.log()), torch.zeros_like(p_tail))
    return kl_top + kl_tail


def dense_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    log_p = log_softmax_at(teacher_logits, temperature)
    log_q = log_softmax_at(student_logits, temperature)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def log_softmax_(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``logits`` (fp32) replaced by log softmax(logits / T), in place: no buffer beyond the one given."""
    if temperature != 1:
        logits.div_(temperature)
    return torch.log_softmax(logits, -1, out=logits)


def dense_kl_and_grad_(
    teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float, p: torch.Tensor, d: torch.Tensor
) -> torch.Tensor:
    """``dense_kl`` per position [n], with its gradient with respect to the student logits in closed form,
    ``(q_T - p_T) / T`` (d/ds of sum_v p_v log q_v with q = softmax(s / T)), written over ``student_logits``
    (fp32 [n, V]); ``p`` and ``d`` are two fp32 buffers of that shape it overwrites. It makes no other [n, V]
    buffer (a fused loss reuses the three from chunk to chunk: on a CPU a fresh one costs more than a pass over it)
    and about half the passes over the vocabulary that autograd's graph of ``dense_kl`` makes."""
    log_q = log_softmax_(student_logits, temperature)
    log_p = log_softmax_(d.copy_(teacher_logits), temperature)
    torch.exp(log_p, out=p)
    kl = log_p.sub_(log_q).mul_(p).sum(-1)
    grad = log_q.exp_().sub_(p)
    if temperature != 1:
        grad.div_(temperature)
    return kl


def reconstruct(
    values: torch.Tensor, ids: torch.Tensor, log_norm_t: torch.Tensor, temperature: float, vocab: int
) -> torch.Tensor:
    """A full distribution from the cache: exact top-k probabilities, the exact tail mass spread evenly."""
    log_p_top = teacher_logprobs_topk(values, log_norm_t, temperature)
    p_top = log_p_top.exp()
    tail = (1 - p_top.sum(-1, keepdim=True)).clamp(min=0) / (vocab - ids.shape[-1])
    probs = tail.expand(*ids.shape[:-1], vocab).clone()
    return probs.scatter(-1, ids, p_top)
