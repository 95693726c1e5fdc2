"""CoDIR (Sun et al., EMNLP 2020): contrastive distillation on intermediate representations, as the
reference code computes it (intersun/CoDIR crd/criterion.py, crd/memory.py and
fairseq/criterions/sentence_prediction_crd.py).

Per example, the pooled hidden states of every student layer (concatenated) and of the teacher layers
``[1::2]`` (1, 3, 5, ...: the reference's ``inner_states[1::2]``) are projected to ``dim`` and
L2-normalised. Two memory banks hold the student and teacher features of every training example; like
CRD's ContrastMemory they start uniform in [-a, a], a = 1/sqrt(dim/3), and are updated with momentum after
each step. The objective is CRD's memory-based NCE, symmetric: the student feature must pick the teacher's
bank entry of its own example out of K negatives, and the teacher feature the student's; the two sides
are averaged (CRDLoss returns their sum / 2). Negatives are drawn without replacement (as
``np.random.choice(..., replace=False)`` in the reference; with replacement only when K is not smaller
than the smallest pool) from the examples with a different gold label (fine-tuning) or from every other
example, i.e. other corpus blocks (pre-training). The reference's fairseq criterion sums CE and KD over
the batch and divides the gradient by the batch size, which divides the (already batch-averaged)
contrastive term by the batch size once more: with ``batch_scaled: true`` (default) this loss does the
same, so ``weight`` is the reference's ``--crd_weight`` next to batch-averaged ``ce``/``kd``.

The functions below are the objective on explicit tensors (what the numeric tests check); ``CoDIR`` is
the registered loss that owns the projections, the banks and the negative sampling."""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..features import default_pooling, map_layers, pool
from ..recipes import specs
from .base import Loss, LossContext
from .inputs import StepInputs

EPS = 1e-7
log = logging.getLogger(__name__)


def nce_scores(anchor: torch.Tensor, memory: torch.Tensor, indices: torch.Tensor, temperature: float) -> torch.Tensor:
    """exp(<memory[indices], anchor> / T): [batch, dim] x [n, dim] x [batch, 1 + K] -> [batch, 1 + K]."""
    return torch.exp(torch.einsum("bkd,bd->bk", memory[indices].to(anchor.dtype), anchor) / temperature)


def nce_loss(scores: torch.Tensor, n_data: int) -> torch.Tensor:
    """NCE with noise distribution 1/n: column 0 holds the positive, the rest K negatives (normalised
    scores). -[log P(D=1|pos) + sum log P(D=0|neg)], averaged over the batch."""
    k = scores.shape[1] - 1
    noise = k / n_data
    first = torch.where(scores[:, 0] == 0, torch.full_like(scores[:, 0], EPS), scores[:, 0])
    log_pos = torch.log(first / (first + noise + EPS))
    log_neg = torch.log(noise / (scores[:, 1:] + noise + EPS))
    return -(log_pos.sum() + log_neg.sum()) / scores.shape[0]


def momentum_update(memory: torch.Tensor, indices: torch.Tensor, features: torch.Tensor, momentum: float) -> None:
    """memory[i] <- normalise(momentum * memory[i] + (1 - momentum) * feature), in place."""
    mixed = memory[indices] * momentum + features.detach().to(memory.dtype) * (1.0 - momentum)
    memory[indices] = F.normalize(mixed, dim=-1)


def negative_pools(label_ids: torch.Tensor) -> dict[int, torch.Tensor]:
    """For each label, the indices of the examples with another label."""
    pools = {int(label): torch.nonzero(label_ids != label).flatten() for label in label_ids.unique()}
    if any(len(p) == 0 for p in pools.values()):
        raise ConfigError("codir: every training example has the same label, so there are no negatives")
    return pools


def draw_distinct(n: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """``k`` distinct indices in [0, n), uniformly (sequential draws, repeats skipped), in draw order."""
    if k > n:
        raise ValueError(f"cannot draw {k} distinct items from {n}")
    chosen: dict[int, None] = {}
    while len(chosen) < k:
        for i in torch.randint(n, (2 * (k - len(chosen)) + 8,), generator=generator).tolist():
            chosen.setdefault(i)
            if len(chosen) == k:
                break
    return torch.tensor(list(chosen), dtype=torch.long)


def sample_negatives(
    own: torch.Tensor,
    label_ids: torch.Tensor | None,
    n_data: int,
    k: int,
    generator: torch.Generator,
    pools: dict[int, torch.Tensor] | None = None,
) -> torch.Tensor:
    """[batch, K] indices: examples with another label (when labels are given), else any other example.
    Without replacement, as the reference; with replacement where K is not smaller than the smallest pool
    (the reference's ``replace = nce_k >= min(len(pool))``)."""
    if label_ids is not None and pools is None:
        pools = negative_pools(label_ids)
    smallest = min(len(p) for p in pools.values()) if label_ids is not None else n_data - 1
    replace = k >= smallest
    rows = []
    for i in own.tolist():
        size = len(pools[int(label_ids[i])]) if label_ids is not None else n_data - 1
        draw = torch.randint(size, (k,), generator=generator) if replace else draw_distinct(size, k, generator)
        if label_ids is not None:
            rows.append(pools[int(label_ids[i])][draw])
        else:
            rows.append(draw + (draw >= i).long())  # skip the example itself
    return torch.stack(rows)


def memory_init(n: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    """CRD's ContrastMemory start: uniform in [-a, a], a = 1 / sqrt(dim / 3) (not normalised)."""
    bound = 1.0 / math.sqrt(dim / 3)
    return torch.rand(n, dim, generator=generator) * (2 * bound) - bound


class CoDIR(Loss):
    """Contrastive distillation on intermediate representations with two memory banks (see module doc)."""

    spec = specs.CoDIR

    def __init__(self, settings: specs.LossSpec | None = None, **values: Any) -> None:
        super().__init__(settings, **values)
        self.seed = 0

    def bind(self, context: LossContext) -> None:
        s, t = context.student_config, context.teacher_config
        if self.layers == "odd":  # the reference's inner_states[1::2]: teacher layers 1, 3, 5, ...
            self.layer_map = list(range(1, t.num_hidden_layers + 1, 2))
        elif isinstance(self.layers, list):
            if not self.layers or any(not 1 <= j <= t.num_hidden_layers for j in self.layers):
                raise ConfigError(f"codir.layers {self.layers}: expected teacher layers in 1..{t.num_hidden_layers}")
            self.layer_map = list(self.layers)
        else:
            self.layer_map = map_layers(s.num_hidden_layers, t.num_hidden_layers, self.layers)
        if self.pooling == "auto":
            self.pooling = default_pooling(s)
        n = context.n_examples
        if n < 2:
            raise ConfigError("codir needs at least two training examples (one positive, one negative)")
        if context.steps * context.examples_per_step <= n:
            log.warning(
                "codir: %d steps x %d examples visit each of the %d examples at most once: an example's positive is "
                "its memory-bank entry, still the bank's random start at its first visit; train 2 epochs or more",
                context.steps,
                context.examples_per_step,
                n,
            )
        self.student_proj = torch.nn.Linear(s.num_hidden_layers * s.hidden_size, self.dim)
        self.teacher_proj = torch.nn.Linear(len(self.layer_map) * t.hidden_size, self.dim)
        generator = torch.Generator().manual_seed(context.seed)
        self.register_buffer("memory_student", memory_init(n, self.dim, generator))
        self.register_buffer("memory_teacher", memory_init(n, self.dim, generator))
        self.register_buffer("z", torch.full((2,), -1.0))  # NCE normalisers, fixed on the first batch
        use_labels = self.negatives_from == "other_label" or (
            self.negatives_from == "auto" and context.stage == "stage2" and context.label_ids is not None
        )
        if use_labels and context.label_ids is None:
            raise ConfigError("codir negatives_from: other_label needs a classification task's gold labels")
        self.label_ids = torch.tensor(context.label_ids) if use_labels else None
        self.pools = negative_pools(self.label_ids) if use_labels else None
        self.seed = context.seed

    def features(self, inputs: StepInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected, normalised student and teacher representations of the batch."""
        s, t = inputs.student_hidden, inputs.teacher_hidden
        student = torch.cat([pool(h, s.mask, self.pooling) for h in s.hidden[1:]], -1)
        teacher = torch.cat([pool(t.hidden[j], t.mask, self.pooling) for j in self.layer_map], -1)
        # in the projections' dtype (bf16 under DeepSpeed's bf16), normalised in fp32
        return (
            F.normalize(self.student_proj(student.to(self.student_proj.weight.dtype)).float(), dim=-1),
            F.normalize(self.teacher_proj(teacher.to(self.teacher_proj.weight.dtype)).float(), dim=-1),
        )

    def forward(self, inputs: StepInputs) -> torch.Tensor:
        own = inputs.example_ids
        f_s, f_t = self.features(inputs)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + int(inputs.step))
        negatives = sample_negatives(
            own.cpu(), self.label_ids, len(self.memory_student), self.negatives, generator, self.pools
        )  # drawn on the host: one generator on every device
        indices = torch.cat([own[:, None], negatives.to(own.device)], 1)
        n = len(self.memory_student)
        # student-anchored (against the teacher bank) and teacher-anchored (against the student bank)
        raw = [
            nce_scores(f_s, self.memory_teacher, indices, self.temperature),
            nce_scores(f_t, self.memory_student, indices, self.temperature),
        ]
        with torch.no_grad():
            for side, scores in enumerate(raw):
                if self.z[side] < 0:
                    self.z[side] = scores.mean() * n
        loss = (nce_loss(raw[0] / self.z[0], n) + nce_loss(raw[1] / self.z[1], n)) / 2
        if self.batch_scaled:  # the reference's fairseq trainer divides it by the batch size again
            loss = loss / len(own)
        with torch.no_grad():
            all_own, all_s, all_t = _gather(own), _gather(f_s), _gather(f_t)
            momentum_update(self.memory_student, all_own, all_s, self.momentum)
            momentum_update(self.memory_teacher, all_own, all_t, self.momentum)
        return loss


def _gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` over data-parallel processes, so every process's memory banks see every update."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return x
    parts = [torch.empty_like(x) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(parts, x.contiguous())
    return torch.cat(parts)
