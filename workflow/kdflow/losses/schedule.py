"""Scheduled losses of the GKD method zoo (aitsc/GLMKD @2f42ff7 ``distill/distill_model.py``): Annealing-KD,
SID, MobileBERT's progressive knowledge transfer and LRC-BERT's COS-NCE (and its gradient perturbation); and
Continuation-KD (from its paper).

Schedules run over the loss's own window: GLMKD runs each phase as its own training job and reads
``iteration / train_iters`` of that job; here the phase is the loss's ``start``/``stop`` window of the stage
and its progress is ``(progress - start) / (stop - start)`` (``window_progress``). The phase after it (gold CE
for Annealing-KD, the prediction loss for SID and MobileBERT) is a second loss starting at ``stop``.

Hidden states are the model's ``hidden_states`` (GLMKD hooks GLM's ``layernorm_output``, the normalised input
of each layer, and the final ``output``: the same vectors for post-LN encoders); attention distributions are
softmax(q k^T * scale + mask) from ``Features.scores``, GLM's ``attention_scores``. Where the widths differ, a
learned linear projection maps the student's states onto the teacher's (GLMKD: SID and MobileBERT need equal
widths; LRC-BERT always projects). tests/test_zoo_schedule.py checks each against its reference."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..features import pool
from ..recipes import specs_schedule as specs
from .base import Loss, target_cross_entropy
from .inputs import StepInputs
from .representation import _Layered, _masked_mean


def window_progress(progress: float, start: float, stop: float) -> float:
    """The fraction of the loss's own window [start, stop) done at the stage's ``progress``."""
    return min(max((progress - start) / (stop - start), 0.0), 1.0)


def annealing_factor(progress: float, max_temperature: float) -> float:
    """Annealing-KD's Phi: with T = (1 - progress) * max_T, 1 - (max(1, ceil(T)) - 1) / max_T; it rises in
    steps from 1 / max_T (for an integer max_T) to 1. T is rounded to 9 decimals first, so that rounding
    errors of the window's progress do not move a step (GLMKD's T is exact at the steps that matter)."""
    temperature = round((1 - progress) * max_temperature, 9)
    return 1 - (max(1, math.ceil(temperature)) - 1) / max_temperature


def continuation_psi(progress: float, sep: float, denominator: float) -> float:
    """Continuation-KD's psi over the window (paper eqs. 7-8 with epochs as fractions of the window):
    ``progress / denominator`` up to ``sep``, then 1. Compared at 9 decimals, as ``annealing_factor``."""
    return progress / denominator if round(progress, 9) <= round(sep, 9) else 1.0


def unlocked(progress: float, phases: int) -> int:
    """Progressive transfer: the phase (1..phases) at ``progress`` of ``phases`` equal phases."""
    return 1 + sum(progress >= j / phases for j in range(1, phases))


def attention_kl(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) of the attention distributions softmax(scores) [batch, heads, q, k], averaged
    over heads and real query tokens; maps with different head counts are compared head-averaged."""
    log_s, log_t = torch.log_softmax(student.float(), -1), torch.log_softmax(teacher.float(), -1)
    if log_s.shape[1] != log_t.shape[1]:
        log_s = torch.logsumexp(log_s, 1, keepdim=True) - math.log(log_s.shape[1])
        log_t = torch.logsumexp(log_t, 1, keepdim=True) - math.log(log_t.shape[1])
    p_t = log_t.exp()
    kl = torch.where(p_t > 0, p_t * (log_t - log_s), torch.zeros_like(p_t)).sum(-1)  # [batch, heads, q]
    weights = mask.to(kl.dtype)[:, None, :]
    return (kl * weights).sum() / (weights.sum() * kl.shape[1]).clamp_min(1.0)


class AnnealingKD(Loss):
    """Annealing-KD (Jafari et al. 2021; GLMKD ``Annealing_KD.pre_loss`` with ``--distill_ft_soft_mse``,
    ``GLMStudent.pre_loss``, ``custom_loss.py`` ``mse_loss``): the mean squared error between the student's
    task logits and the teacher's scaled by ``annealing_factor`` of the window's progress, averaged over
    candidates and examples. Phase 2 (gold CE) is ``ce`` from ``stop`` on, e.g. ``{annealing_kd: {stop:
    0.5}, ce: {start: 0.5}}``."""

    spec = specs.AnnealingKD

    def factor(self, progress: float) -> float:
        return annealing_factor(window_progress(progress, self.start, self.stop), self.max_temperature)

    def forward(self, inputs: StepInputs) -> torch.Tensor:
        phi = self.factor(inputs.progress)
        rows = [
            ((s.float() - phi * t.float()) ** 2).mean() for s, t in zip(inputs.student_scores, inputs.teacher_scores)
        ]
        return torch.stack(rows).mean()


class ContinuationKD(Loss):
    """Continuation-KD (Jafari et al. 2022, Findings of EMNLP; GLMKD's ``continuation_kd`` is not in the
    stored copy of its code: the paper's formulas). Eq. 3: psi * CE + (1 - psi) * L_CNT, with the gold
    cross-entropy CE and eq. 4's annealed hinge L_CNT = max(0, ||z_S - phi z_T||^2 - m * phi); phi is eq. 5,
    Annealing-KD's factor (``annealing_factor``: T steps from ``max_temperature`` down to 1, one step per
    1/T_max of the window), psi ``continuation_psi`` (eqs. 7-8). ||.||^2 is the mean squared error over the
    example's logits (the paper: "a mean square loss"; its authors' Annealing-KD code: ``F.mse_loss``); the
    hinge and CE are per example, then averaged (Algorithm 1 line 11 writes the hinge of the mini-batch).
    The CE is inside the loss (its weight psi changes with progress): no separate ``ce`` is needed."""

    spec = specs.ContinuationKD

    def factors(self, progress: float) -> tuple[float, float]:
        """(phi, psi) at the stage's ``progress``."""
        p = window_progress(progress, self.start, self.stop)
        return annealing_factor(p, self.max_temperature), continuation_psi(p, self.psi_sep, self.psi_denominator)

    def forward(self, inputs: StepInputs) -> torch.Tensor:
        phi, psi = self.factors(inputs.progress)
        rows = []
        for s, t, y in zip(inputs.student_scores, inputs.teacher_scores, inputs.labels):
            s = s.float()
            hinge = torch.relu(((s - phi * t.float()) ** 2).mean() - self.margin * phi)
            ce = target_cross_entropy(y.float(), s)
            rows.append(psi * ce + (1.0 - psi) * hinge)
        return torch.stack(rows).mean()


class SID(_Layered):
    """SID (Aguilar et al. 2020; GLMKD ``SID``, ``--sid_lim_e=avg``): the window is split into one phase per
    student layer; in phase k the loss is the sum over the matched layers 1..k of KL(teacher || student) of
    the attention distributions and of 1 - cos between the pooled ([CLS]) states. The prediction loss
    (GLMKD's ``pre_loss``, e.g. ``candidate_kd`` at T = 1) follows from ``stop``: GLMKD gives each of its
    n + 1 phases 1/(n + 1) of the steps, i.e. ``stop: n / (n + 1)``. GLMKD's early switch when the cosine
    part falls below ``--sid_accumulate_t`` (0 in its recorded command: never) is not implemented."""

    spec = specs.SID

    def phase(self, progress: float) -> int:
        return unlocked(window_progress(progress, self.start, self.stop), len(self.layer_map))

    def forward(self, inputs: StepInputs) -> torch.Tensor:
        s, t = inputs.student_attentions, inputs.teacher_attentions
        terms = []
        for k, sh, th in self.pairs(inputs)[: self.phase(inputs.progress)]:
            j = self.layer_map[k]
            terms.append(attention_kl(s.scores[k], t.scores[j - 1], s.mask))
            a = self.project(k, pool(sh, s.mask, self.pooling)).float()
            b = pool(th, t.mask, self.pooling).float()
            terms.append((1.0 - F.cosine_similarity(a, b, dim=-1)).mean())
        return torch.stack(terms).sum()


class MobileBERT(_Layered):
    """MobileBERT's progressive knowledge transfer (Sun et al. 2020; GLMKD ``MobileBERT.inter_loss``): the
    window is split into n + 1 phases for n student layers. In phase k <= n the loss is the sum of the
    attention transfer (KL(teacher || student) of the attention distributions, ``attention_kl``) of layers
    1..k and the feature-map transfer (MSE of the hidden states, averaged over real tokens) of the
    embeddings and layers 1..k; every term but the layer-k ones is scaled by ``lower_weight`` (GLMKD's
    stand-in for a smaller learning rate of the layers already transferred). In phase n + 1 every term counts
    in full, and GLMKD adds its prediction loss (e.g. ``lm`` or ``ce`` from ``start: n / (n + 1)``). GLMKD's
    ``--mobilebert_kd_w`` is ``weight``."""

    spec = specs.MobileBERT

    def n_projections(self) -> int:
        return 1

    def phase(self, progress: float) -> int:
        return unlocked(window_progress(progress, self.start, self.stop), len(self.layer_map) + 1)

    def forward(self, inputs: StepInputs) -> torch.Tensor:
        s, t = inputs.student_hidden, inputs.teacher_hidden
        n, k = len(self.layer_map), self.phase(inputs.progress)
        lower = self.lower_weight if k <= n else 1.0
        terms = []
        for i, j in enumerate(self.layer_map[:k]):
            scale = lower if i < k - 1 else 1.0
            a, b = inputs.student_attentions.scores[i], inputs.teacher_attentions.scores[j - 1]
            terms.append(scale * attention_kl(a, b, s.mask))
        for i, j in enumerate([0, *self.layer_map][: k + 1]):
            scale = lower if i < k else 1.0
            terms.append(
                scale * _masked_mean((self.project(0, s.hidden[i]).float() - t.hidden[j].float()) ** 2, s.mask)
            )
        return torch.stack(terms).sum()


class LRCBert(_Layered):
    """LRC-BERT's COS-NCE (Fu et al. 2021; GLMKD ``LRC_BERT.inter_loss``): the student's states of every
    layer (one projection shared by the layers, as GLMKD's ``s_fit_dense``) and the matched teacher states,
    token by token; g(i, j) = 1 - the mean cosine between example i's student and example j's teacher vectors
    over the (layer, token) positions real in both; per example 1 - (mean over j != i of g(i, j) - g(i, i)) /
    2 + g(i, i); the mean over the batch times the number of layers. With one example there are no negatives
    and that term is left out. ``perturbation: 1.0`` is GLMKD's gradient perturbation (``--lrc_bert_gard_perturb``):
    the steps where the loss is active run twice, the second time with the first pass's normalised gradient of
    the whole loss added to the student's embedding output, and train on the second pass's loss of every loss
    (``kdflow.distill.perturb``)."""

    spec = specs.LRCBert

    def n_projections(self) -> int:
        return 1

    def embedding_perturbation(self) -> float:
        return self.perturbation

    def forward(self, inputs: StepInputs) -> torch.Tensor:
        pairs = self.pairs(inputs)
        student = torch.cat([F.normalize(self.project(0, sh).float(), dim=-1) for _, sh, _ in pairs], 1)
        teacher = torch.cat([F.normalize(th.float(), dim=-1) for _, _, th in pairs], 1)
        real = inputs.student_hidden.mask.float().repeat(1, len(pairs))  # [batch, layers * length]
        both = torch.einsum("ip,jp->ijp", real, real)
        cos = torch.einsum("ipd,jpd->ijp", student, teacher)
        g = 1.0 - (cos * both).sum(-1) / both.sum(-1).clamp_min(1.0)  # [batch, batch]
        n, positive = len(g), g.diagonal()
        negatives = (g.sum(-1) - positive) / (n - 1) if n > 1 else positive.new_zeros(())
        per_example = 1.0 - (negatives - positive) / 2 + positive
        return per_example.mean() * len(pairs)
