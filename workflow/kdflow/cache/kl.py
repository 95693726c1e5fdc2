"""KL divergence between cached teacher targets and student logits: dense, or top-k + one tail bucket."""

from __future__ import annotations

import torch


def teacher_logprobs_topk(values: torch.Tensor, log_norm_t: torch.Tensor, temperature: float) -> torch.Tensor:
    """log p_T of the cached top-k entries: lp / T - c_T."""
    return values / temperature - log_norm_t[..., None]


def sparse_kl(
    student_logits: torch.Tensor, values: torch.Tensor, ids: torch.Tensor, log_norm_t: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Per-position KL(p_T || q_T) over the teacher's top-k tokens plus one bucket for the rest.

    By the log-sum inequality this is a lower bound of the full KL; it equals it when k = vocabulary size.
    """
    log_q = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p_top = teacher_logprobs_topk(values, log_norm_t, temperature)
    p_top = log_p_top.exp()
    log_q_top = log_q.gather(-1, ids)
    kl_top = (p_top * (log_p_top - log_q_top)).sum(-1)
    p_tail = (1 - p_top.sum(-1)).clamp(min=0)
    q_tail = (1 - log_q_top.exp().sum(-1)).clamp(min=1e-12)
    kl_tail = torch.where(p_tail > 0, p_tail * (p_tail.clamp(min=1e-12).log() - q_tail.log()), torch.zeros_like(p_tail))
    return kl_top + kl_tail


def dense_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    log_p = torch.log_softmax(teacher_logits.float() / temperature, dim=-1)
    log_q = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def reconstruct(
    values: torch.Tensor, ids: torch.Tensor, log_norm_t: torch.Tensor, temperature: float, vocab: int
) -> torch.Tensor:
    """A full distribution from the cache: exact top-k probabilities, the exact tail mass spread evenly."""
    log_p_top = teacher_logprobs_topk(values, log_norm_t, temperature)
    p_top = log_p_top.exp()
    tail = (1 - p_top.sum(-1, keepdim=True)).clamp(min=0) / (vocab - ids.shape[-1])
    probs = tail.expand(*ids.shape[:-1], vocab).clone()
    return probs.scatter(-1, ids, p_top)
