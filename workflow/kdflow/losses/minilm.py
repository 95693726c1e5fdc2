"""MiniLM and MiniLMv2: self-attention distributions and relations (softmax(x x^T / sqrt(d)) of queries, keys
and values, split into relation heads) of the student's last layer against a teacher layer, compared by KL."""

from __future__ import annotations

import math
from typing import Any

import torch

from ..errors import ConfigError
from ..recipes import specs
from .base import Loss, LossContext
from .inputs import StepInputs
from .representation import heads_alike


def relation_logprobs(x: torch.Tensor, heads: int, mask: torch.Tensor) -> torch.Tensor:
    """MiniLM relations: log softmax(x_h x_h^T / sqrt(d_h)) per head h; [b, l, w] -> [b, heads, l, l]."""
    b, length, width = x.shape
    if width % heads:
        raise ConfigError(f"relation heads {heads} do not divide the width {width}")
    xh = x.float().view(b, length, heads, width // heads).transpose(1, 2)
    scores = xh @ xh.transpose(-1, -2) / math.sqrt(width // heads)
    scores = scores.masked_fill(mask[:, None, None, :] == 0, float("-inf"))
    return torch.log_softmax(scores, -1)


def relation_kl(teacher_logp: torch.Tensor, student_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) per query row, averaged over heads and real query tokens."""
    p = teacher_logp.exp()
    kl = (p * (teacher_logp - student_logp)).nan_to_num(0.0).sum(-1)  # [b, heads, l]
    rows = mask[:, None, :].float().expand_as(kl)
    return (kl * rows).sum() / rows.sum().clamp_min(1.0)


def _widths(config: Any) -> tuple[int, int]:
    """(query width, key/value width) of a model's attention: fewer key/value heads under grouped-query attention."""
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return heads * head_dim, (getattr(config, "num_key_value_heads", None) or heads) * head_dim


def _check_heads(key: str, heads: int, widths: dict[str, int]) -> None:
    for what, width in widths.items():
        if width % heads:
            raise ConfigError(f"{key} {heads} does not divide the {what} width {width}: set {key} to a divisor")


class MiniLM(Loss):
    """MiniLM (Wang et al. 2020, eqs. 7-9): KL between the teacher's and the student's last-layer
    self-attention distributions (before dropout) plus KL between their value relations softmax(V V^T /
    sqrt(d)), each averaged over heads and real query tokens. Value relations are split into
    ``relation_heads`` (default: the teacher's key/value heads, i.e. its attention heads without
    grouped-query attention, where each key/value head serves several query heads)."""

    spec = specs.MiniLM

    def bind(self, context: LossContext) -> None:
        s, t = context.student_config, context.teacher_config
        self.relation_heads = self.relation_heads or getattr(t, "num_key_value_heads", None) or t.num_attention_heads
        _check_heads(
            "minilm.relation_heads",
            self.relation_heads,
            {"student value": _widths(s)[1], "teacher value": _widths(t)[1]},
        )

    def forward(self, inputs: StepInputs) -> torch.Tensor:
        s, t = inputs.student_attentions, inputs.teacher_attentions
        if s.scores[-1].shape[1] == t.scores[-1].shape[1]:
            logp_s, logp_t = torch.log_softmax(s.scores[-1].float(), -1), torch.log_softmax(t.scores[-1].float(), -1)
        else:  # different head counts: the head-averaged distributions
            a_s, a_t = heads_alike(s.attentions[-1].float(), t.attentions[-1].float())
            logp_s, logp_t = a_s.clamp_min(1e-12).log(), a_t.clamp_min(1e-12).log()
        attention = relation_kl(logp_t, logp_s, s.mask)
        s_qkv, t_qkv = inputs.student_qkv, inputs.teacher_qkv
        values = relation_kl(
            relation_logprobs(t_qkv.qkv[-1][2], self.relation_heads, t_qkv.mask),
            relation_logprobs(s_qkv.qkv[-1][2], self.relation_heads, s_qkv.mask),
            s.mask,
        )
        return attention + values


class MiniLMv2(Loss):
    """MiniLMv2 (Wang et al. 2021, eqs. 4-6): query-query, key-key and value-value relations of the
    student's last layer and a teacher layer (``teacher_layer``, 1-based, default the last), each split into
    ``relation_heads`` (default 48, the paper's choice for base-size teachers; 64 for teachers 1024 wide or
    wider), KL averaged over heads and real query tokens, summed over the three relations."""

    spec = specs.MiniLMv2

    def bind(self, context: LossContext) -> None:
        s, t = context.student_config, context.teacher_config
        self.relation_heads = self.relation_heads or (64 if t.hidden_size >= 1024 else 48)
        (sq, skv), (tq, tkv) = _widths(s), _widths(t)
        _check_heads(
            "minilmv2.relation_heads",
            self.relation_heads,
            {"student query": sq, "student key/value": skv, "teacher query": tq, "teacher key/value": tkv},
        )
        n = t.num_hidden_layers
        self.teacher_layer = self.teacher_layer or n
        if not 1 <= self.teacher_layer <= n:
            raise ConfigError(f"minilmv2.teacher_layer {self.teacher_layer}: the teacher has layers 1..{n}")

    def forward(self, inputs: StepInputs) -> torch.Tensor:
        s, t = inputs.student_qkv, inputs.teacher_qkv
        terms = [
            relation_kl(
                relation_logprobs(t.qkv[self.teacher_layer - 1][r], self.relation_heads, t.mask),
                relation_logprobs(s.qkv[-1][r], self.relation_heads, s.mask),
                s.mask,
            )
            for r in range(3)
        ]
        return torch.stack(terms).sum()
