"""Layer-mapping and relation losses of the GKD method zoo as aitsc/GLMKD computes them (distill/distill_model.py
@2f42ff7; distill/cite/ckd.py, mgskd.py @1768b09: GLMKD's copies of GeondoPark/CKD and LC97-pku/MGSKD loss.py).
GLMKD's layer i ``layernorm_output`` is kdflow's ``hidden[i]`` (0: the embeddings), its ``output`` ``hidden[L]``.
Teacher states carry no gradient; fp32 throughout; tests/test_zoo_layermap.py checks each against its reference."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..features import Features, default_pooling, map_layers, pool
from ..recipes import specs_layermap as specs
from .base import Loss, LossContext
from .inputs import StepInputs


def _proj(layer: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """A learned projection in its own dtype (bf16 under DeepSpeed's bf16), the result in fp32."""
    return layer(x.to(layer.weight.dtype)).float()


def _pooled(f: Features, layers: list[int], how: str, teacher: bool = False) -> list[torch.Tensor]:
    """The pooled fp32 states of ``layers`` (a teacher's detached)."""
    return [pool(f.hidden[j].detach() if teacher else f.hidden[j], f.mask, how).float() for j in layers]


def _attend(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """ALP's combination: per example, softmax over teacher layers of <student_i, teacher_j>, [b, Ls, w]."""
    return torch.softmax(student @ teacher.transpose(1, 2), -1) @ teacher


class ALPKD(Loss):
    """ALP-KD (Passban et al. 2021; GLMKD ``ALP_KD.inter_loss``): every student layer's [CLS] state attends
    over all teacher layers' [CLS] states; the sum over student layers of the MSE (mean over examples and
    units) to the attention-weighted teacher state. Where widths differ a learned linear map per student layer
    (no bias) takes the student to the teacher's width first (GLMKD has equal widths). Decoders pool the mean
    over real tokens (``pooling: auto``)."""

    spec = specs.ALPKD

    def bind(self, context: LossContext) -> None:
        s, t = context.student_config, context.teacher_config
        self.pooling = default_pooling(s) if self.pooling == "auto" else self.pooling
        n = s.num_hidden_layers if s.hidden_size != t.hidden_size else 0
        self.projections = torch.nn.ModuleList(
            [torch.nn.Linear(s.hidden_size, t.hidden_size, bias=False) for _ in range(n)]
        )

    def forward(self, inputs: StepInputs) -> torch.Tensor:
        s, t = inputs.student_hidden, inputs.teacher_hidden
        student = _pooled(s, list(range(1, len(s.hidden))), self.pooling)
        if len(self.projections):
            student = [_proj(p, x) for p, x in zip(self.projections, student)]
        student = torch.stack(student, 1)
        teacher = torch.stack(_pooled(t, list(range(1, len(t.hidden))), self.pooling, teacher=True), 1)
        return ((student - _attend(student, teacher)) ** 2).mean((0, 2)).sum()


class UniversalKD(Loss):
    """Universal-KD (Wu et al. 2021; GLMKD ``Universal_KD``): the [CLS] states of the intermediate layers
    1..L-1 of each model (``final_only``: the last layer only, GLMKD's ``--universal_kd_cg``) are projected
    by a learned linear map per layer (no bias) to ``dim`` units; each student layer attends over the teacher
    layers (ALP's softmax of dot products) and the loss is the sum over student layers of the KL divergence
    (softmax over units) of the attended teacher state from the student's, averaged over examples."""

    spec = specs.UniversalKD

    def bind(self, context: LossContext) -> None:
        s, t = context.student_config, context.teacher_config
        self.pooling = default_pooling(s) if self.pooling == "auto" else self.pooling
        dim = self.dim or s.hidden_size
        sides = []
        for config in (s, t):
            n = 1 if self.final_only else config.num_hidden_layers - 1
            if n < 1:
                raise ConfigError("universal_kd compares layers 1..L-1: both models need 2 layers (or final_only)")
            sides.append(torch.nn.ModuleList([torch.nn.Linear(config.hidden_size, dim, bias=False) for _ in range(n)]))
        self.student_proj, self.teacher_proj = sides

    def _layers(self, f: Features) -> list[int]:
        n = len(f.hidden) - 1
        return [n] if self.final_only else list(range(1, n))

    def forward(self, inputs: StepInputs) -> torch.Tensor:
        s, t = inputs.student_hidden, inputs.teacher_hidden
        student = [_proj(p, x) for p, x in zip(self.student_proj, _pooled(s, self._layers(s), self.pooling))]
        teacher = [_proj(p, x) for p, x in zip(self.teacher_proj, _pooled(t, self._layers(t), self.pooling, True))]
        student, teacher = torch.stack(student, 1), torch.stack(teacher, 1)
        target = F.softmax(_attend(student, teacher), -1)
        return F.kl_div(F.log_softmax(student, -1), target, reduction="none").sum(-1).mean(0).sum()


class RAILKD(Loss):
    """RAIL-KD (Haidar et al. 2022; GLMKD ``RAIL_KD``): the student's layers 1..L_s-1 are matched to L_s-1
    teacher layers drawn at random from 1..L_t-1 (sorted; ``embeddings``/``final`` add the embeddings and the
    last layers to both sides). Each state is mean-pooled; concatenated over layers (``concatenated: true``,
    GLMKD's recorded command) or stacked (layer-wise), projected to ``dim`` by a learned linear map per model
    (with bias), L2-normalised, and the squared differences are *summed* (over examples too, as GLMKD does).
    The draw is renewed every epoch (``resample_every: epoch``, GLMKD's ``--rail_kd_epochs=1``) or every N
    steps, seeded from the run's seed and the epoch/step block, so a resumed job draws the same layers. The
    mean is over real tokens (GLMKD: over all positions, padding included)."""

    spec = specs.RAILKD

    def bind(self, context: LossContext) -> None:
        s, t = context.student_config, context.teacher_config
        self.n_student, self.n_teacher, self.seed = s.num_hidden_layers, t.num_hidden_layers, context.seed
        if self.n_teacher < self.n_student:
            raise ConfigError("rail_kd draws L_s - 1 of the teacher's L_t - 1 inner layers: the teacher needs as many")
        m = self.n_student - 1 + self.embeddings + self.final
        if m < 1:
            raise ConfigError("rail_kd: a 1-layer student has no inner layer (set embeddings or final)")
        epoch = math.ceil(context.n_examples / max(1, context.examples_per_step))
        self.every = max(1, epoch) if self.resample_every == "epoch" else self.resample_every
        fan = m if self.concatenated else 1
        self.student_proj = torch.nn.Linear(s.hidden_size * fan, self.dim)
        self.teacher_proj = torch.nn.Linear(t.hidden_size * fan, self.dim)

    def _ends(self, inner: list[int], last: int) -> list[int]:
        return ([0] if self.embeddings else []) + inner + ([last] if self.final else [])

    def teacher_layers(self, step: int) -> list[int]:
        """The teacher layers matched at ``step`` (1-based indices into ``hidden``)."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step // self.every)
        inner = sorted((torch.randperm(self.n_teacher - 1, generator=g)[: self.n_student - 1] + 1).tolist())
        return self._ends(inner, self.n_teacher)

    def forward(self, inputs: StepInputs) -> torch.Tensor:
        s, t = inputs.student_hidden, inputs.teacher_hidden
        student = _pooled(s, self._ends(list(range(1, self.n_student)), self.n_student), "mean")
        teacher = _pooled(t, self.teacher_layers(int(inputs.step)), "mean", teacher=True)
        join = (lambda xs: torch.cat(xs, -1)) if self.concatenated else (lambda xs: torch.stack(xs, 1))
        a = F.normalize(_proj(self.student_proj, join(student)), dim=-1)
        b = F.normalize(_proj(self.teacher_proj, join(teacher)), dim=-1)
        return ((a - b) ** 2).sum()


def _cosines(x: torch.Tensor) -> torch.Tensor:
    """[n, k, w] -> [n, k, k] cosine similarities."""
    x = F.normalize(x, dim=-1)
    return x @ x.transpose(-1, -2)


def _angles(anchor: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
    """[..., w] anchors, [..., k, w] others -> [..., k, k]: cosines between the unit differences anchor - other."""
    sub = F.normalize(anchor.unsqueeze(-2) - others, dim=-1)
    return sub @ sub.transpose(-1, -2)


def relation_kl(s_sim: torch.Tensor, t_sim: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """CKD's distance relation: rows of similarities softmaxed over the ``valid`` entries, the summed
    KL(teacher || student) over them (rows without a valid entry count 0, as torch<2's kl_div did)."""
    fill = torch.finfo(s_sim.dtype).min
    t = torch.softmax(t_sim.masked_fill(~valid, fill), -1)
    log_s = torch.log_softmax(s_sim.masked_fill(~valid, fill), -1)
    return torch.where(valid, torch.xlogy(t, t) - t * log_s, torch.zeros_like(t)).sum()


def _windows(length: int, window: int, device: torch.device) -> torch.Tensor:
    """[length, window]: the positions i - window//2 .. i + window//2, clamped into the sequence."""
    half = torch.arange(-(window // 2), window // 2 + 1, device=device)
    return (torch.arange(length, device=device)[:, None] + half).clamp(0, length - 1)


def _stacks(inputs: StepInputs, teacher_layers: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Student ``hidden[0..L_s]``, the teacher's ``teacher_layers`` ([b, layers, length, w]), the mask."""
    s, t = inputs.student_hidden, inputs.teacher_hidden
    student = torch.stack([h.float() for h in s.hidden], 1)
    teacher = torch.stack([t.hidden[j].detach().float() for j in teacher_layers], 1)
    return student, teacher, s.mask.float()


class _WithEmbeddings(Loss):
    """Student states 0..L_s (embeddings first) against the teacher's embeddings and ``layers``' matches."""

    def bind(self, context: LossContext) -> None:
        s, t = context.student_config, context.teacher_config
        self.layer_map = [0, *map_layers(s.num_hidden_layers, t.num_hidden_layers, self.layers)]


class CKD(_WithEmbeddings):
    """CKD (Park et al. 2021; GLMKD ``CKD.inter_loss`` with distill/cite/ckd.py): over the student's embeddings
    and layers and the matched teacher states (GLMKD: the uniform map), the sum of four relation losses with
    teacher relations held fixed: word relation distance (``WR_Dist``: per layer, token-token cosines softmaxed
    over the other real tokens, KL / real token pairs), word relation angle (``WR_Angle_window``: angles
    among the differences of each token to its ``window`` neighbours, squared error / (real tokens x window^2)),
    layer-transforming relation distance (``LTR_Dist``: per token, layer-layer cosines, KL) and angle
    (``LTR_Angle``: per token, angles among layer differences, squared error), each divided by the
    reference's mask sum. Relations are width-free: the widths may differ."""

    spec = specs.CKD

    def forward(self, inputs: StepInputs) -> torch.Tensor:
        student, teacher, mask = _stacks(inputs, self.layer_map)
        b, layers, length, _ = student.shape
        real = mask.bool()
        pairs = (real[:, :, None] & real[:, None, :]).float()
        off = ~torch.eye(length, dtype=torch.bool, device=real.device)
        valid = (pairs.bool() & off)[:, None].expand(b, layers, length, length).flatten(0, 1)
        flat_s, flat_t = student.flatten(0, 1), teacher.flatten(0, 1)  # [b * layers, length, w]
        wrdist = relation_kl(_cosines(flat_s), _cosines(flat_t), valid) / (layers * pairs.sum())
        near = _windows(length, self.window, student.device)
        tokens = real[:, None].expand(b, layers, length).flatten()
        wr = [_angles(x, x[:, near]).flatten(0, 1)[tokens] for x in (flat_s, flat_t)]
        wrangle = ((wr[0] - wr[1]) ** 2).sum() / (layers * mask.sum() * self.window**2)
        by_token = [x.transpose(1, 2).flatten(0, 1)[real.flatten()] for x in (student, teacher)]  # [tokens, layers, w]
        off_layers = ~torch.eye(layers, dtype=torch.bool, device=real.device)
        ltr_valid = off_layers.expand(len(by_token[0]), layers, layers)
        ltrdist = relation_kl(_cosines(by_token[0]), _cosines(by_token[1]), ltr_valid) / (mask.sum() * layers**2)
        lt = [_angles(x, x[:, None]) for x in by_token]  # [tokens, layers, layers, layers]
        ltrangle = ((lt[0] - lt[1]) ** 2).sum() / (mask.sum() * layers**3)
        return self.wrdist * wrdist + self.wrangle * wrangle + self.ltrdist * ltrdist + self.ltrangle * ltrangle


def span_sizes(length: int, rate: float, generator: torch.Generator) -> list[int]:
    """GLMKD's random spans: int(length * rate) spans with sizes from |N(0, 1)| draws, summing to ``length``."""
    n = int(length * rate)
    if n < 1:
        return [length]
    draw = torch.randn(n, generator=generator).abs()
    sizes = (draw / draw.sum() * (length - n)).int() + 1
    short = length - int(sizes.sum())
    if short > 0:  # GLMKD: "a[a.sum()-seq_len:] += 1"
        sizes[-short:] += 1
    return sizes.tolist()


def sample_relation(s: torch.Tensor, t: torch.Tensor, mask: torch.Tensor, heads: int) -> torch.Tensor:
    """MGSKD's sample level: per relation head, angles among the examples' mean-pooled states, smooth L1."""
    angles = []
    for x in (s, t):
        x = pool(x, mask, "mean").view(len(x), heads, -1).transpose(0, 1)  # [heads, batch, d]
        angles.append(_angles(x, x[:, None]))
    return F.smooth_l1_loss(angles[0], angles[1])


def token_relation(s: torch.Tensor, t: torch.Tensor, mask: torch.Tensor, heads: int, k1: int, k2: int) -> torch.Tensor:
    """MGSKD's token (or span) level: the pair term (scaled dot products per head) and the triplet term
    (angles at the teacher's k1 most attended tokens among each one's k2 most attending, one head)."""
    b, n, _ = s.shape
    pair = (mask[:, :, None] * mask[:, None, :])[:, None]  # [b, 1, n, n]
    scores = []
    for x in (s, t):
        x = x.view(b, n, heads, -1).transpose(1, 2)
        scores.append(x @ x.transpose(-1, -2) / math.sqrt(x.shape[-1]) * pair)
    loss = ((scores[0] - scores[1]) ** 2).sum() / (pair.sum() * heads)
    probs = torch.softmax(scores[1] + (1.0 - pair) * -10000.0, -1) * pair
    top = probs.sum((1, 2)).topk(min(k1, n), dim=1).indices  # [b, k1]
    near = (probs.sum(1) * (1 - torch.eye(n, device=s.device))).topk(min(k2, n), dim=2).indices
    near = near.gather(1, top[..., None].expand(-1, -1, near.shape[-1]))  # [b, k1, k2]
    real = mask.gather(1, top)[..., None] * mask.gather(1, near.flatten(1)).view(near.shape)
    both = (real[..., :, None] * real[..., None, :]) * (1 - torch.eye(near.shape[-1], device=s.device))
    angles, valid = [], []
    for x in (s, t):
        anchor = x.gather(1, top[..., None].expand(-1, -1, x.shape[-1]))
        others = x.gather(1, near.flatten(1)[..., None].expand(-1, -1, x.shape[-1])).view(*near.shape, -1)
        angle = _angles(anchor, others)
        valid.append(both * angle.ne(0))
        angles.append(angle * valid[-1])
    return loss + F.smooth_l1_loss(angles[0], angles[1], reduction="sum") / valid[0].sum().clamp_min(1.0)


class MGSKD(_WithEmbeddings):
    """MGSKD (Liu et al. 2022; GLMKD ``MGSKD.inter_loss`` with distill/cite/mgskd.py): for the first
    ``token_layers`` states (embeddings first) the token-level relations (``TokenPhraseLoss``) and the same
    relations among spans (mean of each span's positions); for the rest the sample-level angles
    (``SampleLoss``); weighted ``token``, ``span``, ``sample`` and summed. Spans are GLMKD's random split of
    the positions (``--mgskd_span_max_rate``), drawn once a step from the run's seed and the step: MGSKD's
    own phrase spans come from a phrase chunker kdflow does not run. Teacher relations are fixed."""

    spec = specs.MGSKD

    def bind(self, context: LossContext) -> None:
        super().bind(context)
        self.seed = context.seed
        for side, config in (("student", context.student_config), ("teacher", context.teacher_config)):
            if config.hidden_size % self.relation_heads:
                raise ConfigError(f"mgskd: the {side} width {config.hidden_size} is not a multiple of relation_heads")

    def forward(self, inputs: StepInputs) -> torch.Tensor:
        student, teacher, mask = _stacks(inputs, self.layer_map)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(inputs.step))
        sizes = span_sizes(mask.shape[1], self.span_max_rate, g)
        spans = lambda x: torch.stack([c.mean(1) for c in x.split(sizes, 1)], 1)  # noqa: E731
        span_mask = (torch.stack([c.sum(1) for c in mask.split(sizes, 1)], 1) > 0).float()
        total = student.new_zeros(())
        for i in range(student.shape[1]):
            s, t = student[:, i], teacher[:, i]
            if i < self.token_layers:
                total = total + self.token * token_relation(s, t, mask, self.relation_heads, self.k1, self.k2)
                s, t = spans(s), spans(t)
                total = total + self.span * token_relation(s, t, span_mask, self.relation_heads, self.k1, self.k2)
            else:
                total = total + self.sample * sample_relation(s, t, mask, self.relation_heads)
        return total
