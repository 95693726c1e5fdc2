"""Fidelity of DIITO (kdflow/interchange.py, kdflow/losses/interchange.py, the ``interchange_scores`` producer of
kdflow/distill/stage2.py) against an independent implementation written here from GLMKD's DIITO, on tiny random
BERT classifiers with padding: the swapped layers and positions, the loss and the student's gradients. A
deliberate difference is pinned by a test named ``..._documented_difference``.

References (read in the public repository aitsc/GLMKD; distill_model.py is long and was read through a viewer
without line numbers: the quoted class and method names locate the code, class ``DIITO`` at characters
~59,560-71,400 of the stored copy's 110,280, ``GLMStudent.pre_loss`` at ~8,900-13,300):
- distill/distill_model.py @2f42ff7 class ``DIITO``: ``get_hook`` (the alignments: 'full' draws
  "random.choice(range(1, self.args.num_layers + 1))" once per iteration and hooks the teacher layers
  "range((layer - 1) * layers_per_block + 1, layer * layers_per_block + 1)", 'output' for the last; 'middle'
  "int(num_layers / 2) + 1"; 'late' "num_layers-1" and 'output'), ``get_hook_op`` (``hook_op_``:
  "var[interchange_mask] = interchanged_variable[dual_interchange_mask]"), ``inter_loss`` (the mask "(position_ids
  [:, 0] > 0)" with "mask[:, 0] = 1", the duals "torch.cat([a[1:],a[0:1]])", the causal cosine on 'output'),
  ``pre_loss`` (the repeated pass: "distill_soft_rate = diito_alpha_causal_ce", "distill_hard_rate = 0."),
  ``prepare_interchange_mask`` (ways 'consecutive' and 'random'; GLMKD cites frankaging/Causal-Distill
  distillation/causal_distiller.py#L430 for it)
- distill/distill_model.py @2f42ff7 ``GLMStudent.pre_loss``: the fine-tuning branch ("CustomLoss.cross_entropy(
  s_logits / T, t_logits / T, ...)", no T^2, times distill_soft_rate)
- distill/custom_loss.py @262b169: ``CustomLoss.cross_entropy`` ("(- F.softmax(target, dim=-1) *
  F.log_softmax(input, dim=-1)).sum(-1)"), ``cos_distance`` (F.cosine_embedding_loss with target 1), and
  ``loss_handling`` (".mean()" over everything)
- distill/finetune.py's forward step: "loss = loss + repeat_f(data_)[0]" for each of --forward_repeat_num passes
- GKD's DIITO command (GLMKD's command notes, "## DIITO"): --forward_repeat_num=1 --diito_alignment=full
  --diito_interchange_prop=0.3 --diito_interchange_way=consecutive --diito_interchange_max_token=-1
  --diito_alpha_causal_ce=0.25 --diito_alpha_causal_cos=0 --distill_temperature=2, "--checkpoint-activations
  cannot be used when backpropagating interchanged_variable" (the dual's states keep their gradient)

GLMKD draws with Python's ``random``; kdflow with a ``torch.Generator`` seeded by (seed, step). ``GLMKDRandom``
below is the translation of GLMKD's calls onto that generator, in GLMKD's order of calls.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig, BertForSequenceClassification

from kdflow.distill.producers import Step
from kdflow.errors import ConfigError
from kdflow.features import transformer_layers
from kdflow.interchange import aligned_layers, counterfactual, interchange_generator, interchange_masks
from kdflow.losses import LossContext, build_losses
from kdflow.losses.inputs import StepInputs
from kdflow.recipes import check_recipe

CHECKED = {"diito": "test_diito_equals_glmkd"}  # merged into tests/test_fidelity.py's table
SEED = 5
LENGTHS = [12, 7, 10, 5]


def test_every_interchange_loss_is_checked():
    from kdflow.losses import REGISTRY, interchange

    assert {name for name, cls in REGISTRY.items() if cls.__module__ == interchange.__name__} == set(CHECKED)
    assert all(callable(globals()[name]) for name in CHECKED.values())


def _config(layers: int, width: int = 32) -> BertConfig:
    return BertConfig(
        vocab_size=100,
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * width,
        num_labels=3,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        initializer_range=0.3,
    )


@pytest.fixture(scope="module")
def pair():
    """A 3-layer student and a 6-layer teacher classifier (random), and a padded batch of 4."""
    torch.manual_seed(0)
    student = BertForSequenceClassification(_config(3)).eval()
    teacher = BertForSequenceClassification(_config(6)).eval().requires_grad_(False)
    mask = (torch.arange(12)[None, :] < torch.tensor(LENGTHS)[:, None]).long()
    ids = torch.randint(5, 100, (4, 12), generator=torch.Generator().manual_seed(1)) * mask
    return student, teacher, {"input_ids": ids, "attention_mask": mask}


def _kdflow(student, teacher, inputs, step: int, **settings):
    loss = build_losses({"diito": settings})[0]
    loss.bind(LossContext("stage2", 4, 10, SEED, student.config, teacher.config))
    made = counterfactual(student, teacher, inputs, inputs, loss.settings, interchange_generator(SEED, step))
    return made, loss(StepInputs(interchange_scores=made))


# ---- the reference: GLMKD's DIITO on HF BERT ------------------------------------------------------------------


class GLMKDRandom:
    """Python's ``random`` as GLMKD's DIITO calls it, drawn from kdflow's generator."""

    def __init__(self, generator: torch.Generator) -> None:
        self.g = generator

    def choice(self, seq):
        return seq[int(torch.randint(0, len(seq), (1,), generator=self.g))]

    def randint(self, a: int, b: int) -> int:
        return a + int(torch.randint(0, b - a + 1, (1,), generator=self.g))

    def sample(self, population, k: int) -> list:
        return [population[i] for i in torch.randperm(len(population), generator=self.g)[:k].tolist()]


def ref_get_hook(alignment: str, layer: int | None, n: int, teacher_n: int, side: str) -> list:
    # DIITO.get_hook: GLM hook points, ("layers", k) for layers[k].layernorm_output and ("output",)
    if alignment == "full":
        if side == "s":
            return [("output",)] if layer == n else [("layers", layer)]
        per_block = int(teacher_n / n)
        layers = list(range((layer - 1) * per_block + 1, layer * per_block + 1))
        return [("layers", k) for k in layers if k != teacher_n] + ([("output",)] if layers[-1] == teacher_n else [])
    own = n if side == "s" else teacher_n
    if alignment == "middle":
        return [("layers", int(own / 2) + 1)]
    return [("layers", own - 1), ("output",)]  # late


def ref_prepare_interchange_mask(lengths, dual_lengths, pred_mask, dual_pred_mask, prop, way, max_token, rnd):
    # DIITO.prepare_interchange_mask, ways 'consecutive' and 'random' (GLMKD's 'masked' is not offered by kdflow)
    interchange_mask = torch.zeros_like(pred_mask, dtype=torch.bool)
    dual_interchange_mask = torch.zeros_like(dual_pred_mask, dtype=torch.bool)
    batch_size, max_seq_len = pred_mask.shape[0], pred_mask.shape[1]
    dual_max_seq_len = dual_pred_mask.shape[1]
    for i in range(batch_size):
        min_len = min(lengths[i].tolist(), dual_lengths[i].tolist())
        count = int(min_len * prop) if max_token == -1 else min(max_token, int(min_len * prop))
        if way == "consecutive":
            start_index = rnd.randint(0, lengths[i].tolist() - count)
            dual_start_index = rnd.randint(0, dual_lengths[i].tolist() - count)
            interchange_mask[i][start_index : start_index + count] = 1
            dual_interchange_mask[i][dual_start_index : dual_start_index + count] = 1
        else:
            interchange_mask[i][rnd.sample(range(max_seq_len), count)] = 1
            dual_interchange_mask[i][rnd.sample(range(dual_max_seq_len), count)] = 1
    assert interchange_mask.long().sum(-1).tolist() == dual_interchange_mask.long().sum(-1).tolist()
    return interchange_mask, dual_interchange_mask


def _glm_point(model, point, op):
    """A GLM hook point on HF BERT (post-LN: layers[k].layernorm_output is layer k's input; 'output' the
    encoder's output); ``op(var)`` sees (and may change in place) the tensor there."""
    if point[0] == "layers":

        def pre(_m, args, kwargs):
            op(args[0] if args else kwargs["hidden_states"])

        return model.bert.encoder.layer[point[1]].register_forward_pre_hook(pre, with_kwargs=True)
    return model.bert.encoder.register_forward_hook(lambda _m, _a, out: op(out.last_hidden_state))


def ref_forward(model, inputs, points, ops=None):
    """One pass with GLMKD's hooks: the hooked variables (after any op), and the logits."""
    seen, handles = {}, []
    for point in points:
        op = (ops or {}).get(point)

        def hook(var, point=point, op=op):
            if op is not None:
                op(var)
            seen[point] = var

        handles.append(_glm_point(model, point, hook))
    try:
        logits = model(**inputs).logits
    finally:
        for handle in handles:
            handle.remove()
    return seen, logits


def ref_diito(student, teacher, inputs, alignment, prop, way, max_token, temperature, alpha_cos, rnd):
    """GLMKD's DIITO causal pass: (causal CE, per-row cosine distances or None, masks, hook points)."""
    n, teacher_n = student.config.num_hidden_layers, teacher.config.num_hidden_layers
    layer = rnd.choice(range(1, n + 1)) if alignment == "full" else None
    s_points = ref_get_hook(alignment, layer, n, teacher_n, "s")
    t_points = ref_get_hook(alignment, layer, n, teacher_n, "t")
    mask = inputs["attention_mask"].int()  # (position_ids[:, 0] > 0) with mask[:, 0] = 1: the real tokens
    lengths = mask.sum(-1)
    roll = lambda a: torch.cat([a[1:], a[0:1]])  # noqa: E731
    im, dm = ref_prepare_interchange_mask(lengths, roll(lengths), mask, roll(mask), prop, way, max_token, rnd)
    s_vars, _ = ref_forward(student, inputs, s_points)  # the normal pass (not detached: GKD's run)
    with torch.no_grad():
        t_vars, _ = ref_forward(teacher, inputs, t_points)

    def hook_op(interchanged_variable):
        def op(var):
            var[im] = interchanged_variable[dm]

        return op

    last = [("output",)] if alpha_cos else []
    s_ops = {p: hook_op(roll(v)) for p, v in s_vars.items()}
    s_seen, s_logits = ref_forward(student, inputs, list(dict.fromkeys(s_points + last)), s_ops)
    with torch.no_grad():
        t_ops = {p: hook_op(roll(v)) for p, v in t_vars.items()}
        t_seen, t_logits = ref_forward(teacher, inputs, list(dict.fromkeys(t_points + last)), t_ops)
    t = temperature
    ce = (-F.softmax(t_logits / t, dim=-1) * F.log_softmax(s_logits / t, dim=-1)).sum(-1).mean()
    rows = None
    if alpha_cos:
        s_o, t_o = s_seen[("output",)], t_seen[("output",)]
        s_o = (s_o * mask.unsqueeze(-1)).view(-1, s_o.size(-1))
        t_o = (t_o * mask.unsqueeze(-1)).view(-1, t_o.size(-1))
        rows = F.cosine_embedding_loss(s_o, t_o, s_o.new_ones(s_o.size(0)), reduction="none")
    return ce, rows, (im, dm), (s_points, t_points)


def _hidden_index(point, n_layers: int) -> int:
    return n_layers if point == ("output",) else point[1]


# ---- equality ---------------------------------------------------------------------------------------------------


def _grads(value, model):
    params = list(model.parameters())
    grads = torch.autograd.grad(value, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


@pytest.mark.parametrize(
    ("alignment", "positions", "cosine", "steps"),
    [
        ("full", "consecutive", 0.0, [0, 1, 9]),  # GKD's recorded settings; the steps draw layers 3, 1 and 2
        ("full", "consecutive", 0.5, range(2)),
        ("middle", "consecutive", 0.0, [0]),
        ("late", "consecutive", 0.5, [3]),
        ("middle", "random", 0.0, [1]),
    ],
)
def test_diito_equals_glmkd(pair, alignment, positions, cosine, steps):
    student, teacher, inputs = pair
    unpadded = {k: v[:, :5] for k, v in inputs.items()} if positions == "random" else inputs  # see the difference
    drawn_layers = set()
    for step in steps:
        made, got = _kdflow(student, teacher, unpadded, step, alignment=alignment, positions=positions, cosine=cosine)
        rnd = GLMKDRandom(interchange_generator(SEED, step))
        ce, rows, (im, dm), (s_points, t_points) = ref_diito(
            student, teacher, unpadded, alignment, 0.3, positions, -1, 2.0, cosine, rnd
        )
        assert made.student_layers == [_hidden_index(p, 3) for p in s_points]
        assert made.teacher_layers == sorted(_hidden_index(p, 6) for p in t_points)
        assert torch.equal(made.swapped, im) and torch.equal(made.dual_swapped, dm) and im.any()
        reference = ce
        if cosine:
            real = unpadded["attention_mask"].reshape(-1).bool()
            reference = ce + cosine * rows[real].mean()
        torch.testing.assert_close(got, reference, rtol=1e-5, atol=1e-6)
        for a, b in zip(_grads(got, student), _grads(reference, student)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
        drawn_layers |= set(made.student_layers)
    assert alignment != "full" or len(steps) < 3 or drawn_layers == {1, 2, 3}


def _recorded(model, layers: list[int]) -> tuple[dict[int, list], list]:
    """What the model runs on after each hidden state of ``layers`` (kdflow's swap runs before these hooks)."""
    seen: dict[int, list] = {j: [] for j in layers}
    hooks = [
        transformer_layers(model)[j - 1].register_forward_hook(lambda _m, _a, out, j=j: seen[j].append(out))
        for j in layers
    ]
    return seen, hooks


def _step_drawing(layer: int) -> int:
    """A step whose 'full' alignment draws student layer ``layer`` (of 3; teacher of 6)."""
    return next(s for s in range(50) if aligned_layers("full", 3, 6, interchange_generator(SEED, s))[0] == [layer])


def test_swapped_positions_hold_the_duals_states(pair):
    """On the hooked hidden states: each example's swapped positions hold its dual's states of the normal pass at
    the dual's positions, in order (at every intervened layer); its other positions, at the first intervened
    layer, its own."""
    student, teacher, inputs = pair
    cases = ((student, [2], 0, "middle"), (teacher, [1, 2], _step_drawing(1), "full"))  # full: l = 1 -> block 1, 2
    for model, layers, step, alignment in cases:
        seen, hooks = _recorded(model, layers)
        try:
            made, _ = _kdflow(student, teacher, inputs, step, alignment=alignment)
        finally:
            for hook in hooks:
                hook.remove()
        assert (made.student_layers if model is student else made.teacher_layers) == layers
        assert made.swapped.any()
        for j in layers:
            normal, swapped = seen[j]
            for i in range(4):
                torch.testing.assert_close(swapped[i][made.swapped[i]], normal[(i + 1) % 4][made.dual_swapped[i]])
        normal, swapped = seen[layers[0]]
        torch.testing.assert_close(swapped[~made.swapped], normal[~made.swapped])


def test_positions_are_reproducible_per_seed_and_step_and_differ_across_steps():
    lengths = [40, 33, 38, 29]

    def draw(seed, step):
        g = interchange_generator(seed, step)
        return aligned_layers("full", 6, 12, g), interchange_masks(lengths, 40, 0.3, "consecutive", None, g)

    first, again = draw(1234, 7), draw(1234, 7)
    assert first[0] == again[0] and all(torch.equal(a, b) for a, b in zip(first[1], again[1]))
    others = [draw(1234, s) for s in (8, 9, 10)] + [draw(4321, 7)]
    assert all(not torch.equal(first[1][0], o[1][0]) for o in others)
    assert len({o[0][0][0] for o in [first, *others]}) > 1  # the student layer changes too
    swapped, dual = first[1]
    counts = [int(min(a, b) * 0.3) for a, b in zip(lengths, lengths[1:] + lengths[:1])]
    assert swapped.sum(-1).tolist() == dual.sum(-1).tolist() == counts
    for row, length in zip(swapped, lengths):  # one span, inside the real tokens
        where = row.nonzero().flatten()
        assert where.max() < length and where.max() - where.min() + 1 == len(where)
    capped = interchange_masks(lengths, 40, 0.3, "consecutive", 2, interchange_generator(1, 1))[0]
    assert capped.sum(-1).tolist() == [2, 2, 2, 2]


def test_the_producer_draws_per_seed_and_step(tiny_bert, sentiment_task):
    from kdflow.distill.stage2 import Student, TaskData
    from kdflow.runtime import Runtime

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2).eval()
    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2).eval()
    student = Student(model, AutoTokenizer.from_pretrained(tiny_bert), "masked", classifier=True)
    needs = frozenset({"interchange_scores"})
    spec = build_losses({"diito": {"proportion": 0.5}})[0].settings
    data = {"task": str(sentiment_task), "teacher": str(tiny_bert)}
    task = TaskData(data, student, teacher, needs, {"max_length": 32}, None, 3, Runtime(), interchange=spec)
    batch = task.batch([0, 1, 2, 3], needs)

    def made(step):
        return task.producers["interchange_scores"](Step(model, [0, 1, 2, 3], batch, needs, step))

    a, b, c = made(4), made(4), made(5)
    assert torch.equal(a.values["interchange_scores"].swapped, b.values["interchange_scores"].swapped)
    assert not torch.equal(a.values["interchange_scores"].swapped, c.values["interchange_scores"].swapped)
    assert a.tokens == 2 * int(batch["encoded"]["attention_mask"].sum())
    expected = counterfactual(
        model, teacher, dict(batch["encoded"]), dict(batch["encoded"]), spec, interchange_generator(3, 4)
    )
    torch.testing.assert_close(a.values["interchange_scores"].student_logits, expected.student_logits)
    other = dict(batch, teacher_encoded=[{**batch["encoded"], "input_ids": batch["encoded"]["input_ids"] + 1}])
    with pytest.raises(ConfigError, match="stage2.losses.diito: the student must share the teacher's tokenisation"):
        task.producers["interchange_scores"](Step(model, [0, 1, 2, 3], other, needs, 4))
    words = Student(model, student.tokenizer, "masked", classifier=False)
    with pytest.raises(ConfigError, match="stage2.losses.diito: .* this student predicts words"):
        TaskData(data, words, None, needs, {"max_length": 32}, None, 3, Runtime(), interchange=spec)


def test_nothing_swapped_is_a_plain_soft_cross_entropy(pair):
    student, teacher, inputs = pair
    for alignment in ("full", "late"):
        made, got = _kdflow(student, teacher, inputs, 0, alignment=alignment, proportion=0.05, temperature=3.0)
        assert not made.swapped.any()
        s, t = student(**inputs).logits, teacher(**inputs).logits
        plain = (-F.softmax(t / 3.0, -1) * F.log_softmax(s / 3.0, -1)).sum(-1).mean()
        torch.testing.assert_close(got, plain)
        kd = build_losses({"candidate_kd": {"temperature": 3.0}})[0]
        torch.testing.assert_close(got, kd(StepInputs(student_scores=list(s), teacher_scores=list(t))))


# ---- documented differences -------------------------------------------------------------------------------------


def test_random_positions_documented_difference(pair):
    """GLMKD's 'random' way samples from every position of the padded batch ("random.sample(range(max_seq_len),
    ...)"): padding too, and a real token may receive a padding state. kdflow samples among the real tokens of
    each example; without padding the two draw the same positions (test_diito_equals_glmkd)."""
    student, teacher, inputs = pair
    made, _ = _kdflow(student, teacher, inputs, 2, alignment="middle", positions="random", proportion=1.0)
    mask = inputs["attention_mask"].bool()
    assert not (made.swapped & ~mask).any() and not (made.dual_swapped & ~mask.roll(-1, 0)).any()
    rnd = GLMKDRandom(interchange_generator(SEED, 2))
    roll = lambda a: torch.cat([a[1:], a[0:1]])  # noqa: E731
    lengths = mask.sum(-1)
    im, _ = ref_prepare_interchange_mask(lengths, roll(lengths), mask.int(), roll(mask.int()), 1.0, "random", -1, rnd)
    assert (im & ~mask).any()  # GLMKD swaps padding positions


def test_cosine_over_real_tokens_documented_difference(pair):
    """GLMKD's causal cosine averages 1 - cos over every (example, position) row, the padding rows (zeroed)
    counting 1 each; kdflow averages over the real tokens (as Causal-Distill's masked_select and kdflow's
    hidden_cosine): GLMKD's = (real x kdflow's + padding) / all rows."""
    student, teacher, inputs = pair
    made, got = _kdflow(student, teacher, inputs, 3, alignment="late", cosine=1.0)
    ce, rows, _, _ = ref_diito(
        student, teacher, inputs, "late", 0.3, "consecutive", -1, 2.0, 1.0, GLMKDRandom(interchange_generator(SEED, 3))
    )
    mask = inputs["attention_mask"].reshape(-1).bool()
    ours = (got - ce).detach()
    n_real, n_all = int(mask.sum()), mask.numel()
    torch.testing.assert_close(rows.mean(), (n_real * ours + (n_all - n_real)) / n_all)
    torch.testing.assert_close(rows[~mask], torch.ones(n_all - n_real))


def _kdflow_block(layer: int, n: int, teacher_n: int) -> list[int]:
    for seed in range(200):
        drawn = aligned_layers("full", n, teacher_n, torch.Generator().manual_seed(seed))
        if drawn[0] == [layer]:
            return drawn[1]
    raise AssertionError(f"no seed draws layer {layer}")


def test_full_alignment_blocks_documented_difference():
    """'full' maps student layer l onto teacher layers (l-1)k+1..lk with k = int(T / S) in GLMKD, leaving the top
    T - kS teacher layers out when S does not divide T; kdflow's blocks (hybrid.layer_blocks, BERT-of-Theseus's)
    cover every teacher layer. Equal when S divides T."""
    for n, teacher_n in ((3, 6), (6, 12), (2, 4), (4, 4), (3, 4), (4, 6)):
        ours = {layer: _kdflow_block(layer, n, teacher_n) for layer in range(1, n + 1)}
        glmkd = {
            layer: [_hidden_index(p, teacher_n) for p in ref_get_hook("full", layer, n, teacher_n, "t")]
            for layer in range(1, n + 1)
        }
        if teacher_n % n == 0:
            assert ours == glmkd
        else:
            assert sorted(sum(ours.values(), [])) == list(range(1, teacher_n + 1))
            assert sorted(sum(glmkd.values(), [])) == list(range(1, (teacher_n // n) * n + 1))


# ---- refusals ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "key", "words"),
    [
        ({"alignment": "early"}, "diito.alignment", "expected full, middle, late"),
        ({"proportion": 0}, "diito.proportion", "expected a value in (0, 1]"),
        ({"proportion": 1.5}, "diito.proportion", "expected a value in (0, 1]"),
        ({"positions": "masked"}, "diito.positions", "expected consecutive, random"),
        ({"max_positions": 0}, "diito.max_positions", "expected an integer >= 1"),
        ({"temperature": 0}, "diito.temperature", "expected a number > 0"),
        ({"cosine": -0.5}, "diito.cosine", "expected a number >= 0"),
        ({"interchange_prop": 0.3}, "diito.interchange_prop", "unknown setting"),
    ],
)
def test_bad_settings_are_refused_with_their_key(settings, key, words):
    problems = check_recipe({"diito": settings}, "stage2")
    assert any(k == key and words in message for k, message in problems), problems


def test_what_cannot_work_is_refused():
    assert any("works in stage2 only" in m for _, m in check_recipe({"diito": {}}, "stage1"))
    with pytest.raises(ConfigError, match="stage2.losses.diito.alignment: 'full'"):
        build_losses({"diito": {}})[0].bind(LossContext("stage2", 4, 10, 0, _config(6), _config(3)))
    build_losses({"diito": {"alignment": "late"}})[0].bind(LossContext("stage2", 4, 10, 0, _config(6), _config(3)))
    with pytest.raises(ConfigError, match="stage2.losses.diito.cosine: .*widths differ"):
        build_losses({"diito": {"cosine": 1.0}})[0].bind(LossContext("stage2", 4, 10, 0, _config(3), _config(6, 64)))


def test_several_teachers_are_refused():
    from test_teachers import _config as tiny_config
    from test_teachers import _problems

    from kdflow.distill.multi import check_multi_teacher
    from kdflow.losses.multi_teacher import build_multi_teacher
    from kdflow.plan.teachers import SINGLE_TEACHER_NEEDS

    assert "interchange_scores" in SINGLE_TEACHER_NEEDS
    with pytest.raises(ConfigError, match=r"losses \['diito'\] read one teacher's layers"):
        check_multi_teacher(build_losses({"diito": {}, "kd": {}}), build_multi_teacher(None, 2, 0))
    stage2 = {"teachers": ["runs/codir", "runs/combined"], "losses": {"diito": {}, "kd": {}}}
    assert "diito read(s) one teacher's" in _problems(tiny_config(bad={"student": "bert1", "stage2": stage2}))
