"""Fidelity of LRC-BERT's gradient perturbation (``lrc_bert: {perturbation: 1.0}``; kdflow/distill/perturb.py and
the engine's ``StepRunner``) against an independent implementation written here from GLMKD's, on the encoder
track's real stage-2 data (a tiny BERT student and its fine-tuned tiny BERT teacher, padded batches, dropout on):
the perturbed embeddings, the loss values and the student's gradients.

References (read in the public repository aitsc/GLMKD; distill_model.py was read through a viewer without line
numbers: the quoted names locate the code):
- distill/distill_model.py @2f42ff7 class ``LRC_BERT`` (characters ~100,500-104,700 of the stored copy's 110,280):
  ``self.emb_grad = None``; ``get_student_hook_op``: "if self.args.forward_repeat_current_n == 0:
  hidden_states.register_hook(register_hook)", "elif not (self.emb_grad is None or
  DynamicLossScaler._has_inf_or_nan(self.emb_grad)): hidden_states = hidden_states + F.normalize(self.emb_grad,
  p=2, dim=-1)", "self.emb_grad = None", returned as ``{'transformer': {'embeddings': hook_op}}`` when
  ``--lrc_bert_gard_perturb``.
- mpu/transformer.py @a9585b6 ``GPT2ParallelTransformer.forward``: "hidden_states = hidden_states +
  position_embeddings", then "hidden_states = hook_op['embeddings'](this=self, hidden_states=hidden_states)",
  then "hidden_states = self.embedding_dropout(hidden_states)": the hook sits on the embedding output, before
  the embedding dropout.
- tasks/superglue/finetune.py (GLMKD's ``finetune_forward_step``): "loss, mems = repeat_f(data_)[:2]", with
  ``--ignore_first_backward_gard`` "backward_step(optimizer, model, loss, args, timers)" and "loss = 0.", then
  for each of ``--forward_repeat_num`` passes "loss = loss + repeat_f(data_)[0]", then "optimizer.zero_grad()"
  before the returned loss is backpropagated: the clean pass's backward only feeds the hook, the parameters train
  on the perturbed pass's loss. ``finetune_forward_step_`` returns the whole loss of the step
  (``multi_teacher_model.compute``: the student's inter_loss + pre_loss).
- GLMKD's command notes (distill/readme.md, "## LRC_BERT"): finetune-2 "--student_model=lrc_bert
  --lrc_bert_alpha=1 --distill_ft_soft --distill_ft_soft_kl --distill_soft_rate=1 --distill_ft_hard
  --distill_hard_rate=3 --distill_temperature=1.1 --lrc_bert_gard_perturb --ignore_first_backward_gard
  --forward_repeat_num=1".
The paper (Fu et al. 2021, "Training based on Gradient Perturbation") adds the gradient of the loss to the output
of the embedding layer; its full text was not reachable, so GLMKD's code is the reference.

The reference objective below is kdflow's recipe (COS-NCE over positions real in both examples, KD at T = 1.1, 3 x
CE), written out here; tests/test_zoo_schedule.py checks the COS-NCE against GLMKD's.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_TRAIN

from kdflow.distill import DistillJob, distill
from kdflow.distill.engine import DistillModule, StepRunner, _bind_losses, _stage_data
from kdflow.distill.perturb import embedding_site, perturbations, perturbed_step, step_perturbation
from kdflow.errors import ConfigError
from kdflow.finetune import finetune_classifier
from kdflow.losses import build_losses
from kdflow.recipes import check_recipe
from kdflow.runtime import Runtime
from kdflow.students import init_student

TRAIN = {**TINY_TRAIN, "epochs": 1, "max_steps": 2}
GKD = {"kd": {"temperature": 1.1}, "ce": {"weight": 3.0}}  # GLMKD's finetune-2 weights
INDICES = [0, 3, 5, 6]
SEED = 11


@pytest.fixture(scope="module")
def encoder(tmp_path_factory, tiny_bert, sentiment_task):
    """A classification teacher (tiny BERT fine-tuned for 2 steps) and a 1-layer student cut from tiny BERT."""
    root = tmp_path_factory.mktemp("lrcpert")
    finetune_classifier(tiny_bert, sentiment_task, root / "classifier", root / "wc", TRAIN, None, seed=0)
    init_student(tiny_bert, {"layers": {"strategy": "last", "count": 1}}, None, root / "student", seed=0)
    return {"student": root / "student", "task": sentiment_task, "teacher": root / "classifier", "root": root}


def _runner(encoder, lrc: dict) -> tuple[StepRunner, DistillModule, dict]:
    """kdflow's step on the encoder track's stage-2 data, as ``train_phase`` builds it (student in train mode)."""
    recipe = {"lrc_bert": lrc, **GKD}
    data = {"cache": None, "task": encoder["task"], "teacher": encoder["teacher"]}
    run = {"student": "s", "stage2": {"losses": recipe}}
    root = encoder["root"]
    job = DistillJob("stage2", encoder["student"], root / "o", root / "w", run, TRAIN, data, None, 0, Runtime.create())
    losses = build_losses(recipe)
    model, stage, _ = _stage_data(job, losses)
    _bind_losses(job, losses, model, stage, 2)
    module = DistillModule(model, losses).train()
    return StepRunner(stage, 2), module, stage.batch(INDICES, frozenset().union(*(x.needs for x in losses)))


# ---- the reference: GLMKD's step, written independently ------------------------------------------------------


class GLMKDEmbeddingHook(torch.nn.Module):
    """GLM's embedding output path: ``hook_op['embeddings']`` (LRC_BERT.get_student_hook_op), then the embedding
    dropout; ``repeat`` is GLMKD's ``args.forward_repeat_current_n``."""

    def __init__(self, dropout: torch.nn.Module) -> None:
        super().__init__()
        self.dropout, self.repeat, self.emb_grad = dropout, 0, None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.repeat == 0:
            hidden_states.register_hook(self._record)
        elif self.emb_grad is not None and torch.isfinite(self.emb_grad).all():
            hidden_states = hidden_states + F.normalize(self.emb_grad, p=2, dim=-1)
        self.emb_grad = None
        return self.dropout(hidden_states)

    def _record(self, grad: torch.Tensor) -> None:
        self.emb_grad = grad


def ref_objective(s_out, t_out, mask: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """LRC_BERT.inter_loss's COS-NCE (student layer 1 on teacher layer 2, no projection: equal widths; "l = 1 -
    (st_g.sum(-1) - st_g_diag * st_g.size(0)) / (st_g.size(0) - 1) / 2 + st_g_diag") over the positions real
    in both examples, + KL(t || s) at T = 1.1 times T^2 + 3 x the gold cross-entropy."""
    s, t = F.normalize(s_out.hidden_states[1], dim=-1), F.normalize(t_out.hidden_states[2], dim=-1)
    real = mask.float()
    both = real[:, None, :] * real[None, :, :]
    st_g = 1 - (torch.einsum("ipd,jpd->ijp", s, t) * both).sum(-1) / both.sum(-1)
    n, diag = st_g.size(0), torch.diag(st_g)
    lrc = (1 - (st_g.sum(-1) - diag * n) / (n - 1) / 2 + diag).mean()
    temperature = 1.1
    log_p, log_q = (F.log_softmax(x.logits.float() / temperature, -1) for x in (t_out, s_out))
    kd = (log_p.exp() * (log_p - log_q)).sum(-1).mean() * temperature**2
    ce = -(labels * F.log_softmax(s_out.logits.float(), -1)).sum(-1).mean()
    return lrc + kd + 3.0 * ce, {"lrc_bert": lrc, "kd": kd, "ce": ce}


def glmkd_step(student, teacher, batch: dict, layer0: list) -> tuple[torch.Tensor, dict]:
    """GLMKD's finetune_forward_step with --ignore_first_backward_gard --forward_repeat_num=1: the clean pass's
    loss backpropagated (the hook keeps the embedding gradient), the parameters' gradients zeroed, the perturbed
    pass's loss backpropagated. Returns the perturbed pass's loss and parts."""
    hook = student.bert.embeddings.dropout = GLMKDEmbeddingHook(student.bert.embeddings.dropout)
    student.bert.encoder.layer[0].register_forward_pre_hook(lambda _m, args: layer0.append(args[0].detach()))
    labels = torch.stack(batch["labels"])
    for repeat in (0, 1):
        hook.repeat = repeat
        s_out = student(**batch["encoded"], output_hidden_states=True)
        with torch.no_grad():
            t_out = teacher(**batch["teacher_encoded"][0], output_hidden_states=True)
        loss, parts = ref_objective(s_out, t_out, batch["encoded"]["attention_mask"], labels)
        loss.backward()
        if repeat == 0:
            student.zero_grad()
    return loss, parts


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


# ---- the tests ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_lrc_bert_perturbation_equals_glmkd(encoder, mode):
    """The perturbed embeddings (the first layer's input of the second pass, through dropout in train mode), the
    loss and its parts, and every student gradient equal GLMKD's step; the clean pass only steers."""
    runner, module, batch = _runner(encoder, {"perturbation": 1.0})
    module.train(mode == "train")
    student, teacher = copy.deepcopy(module.student), runner.data.teacher
    ours: list[torch.Tensor] = []
    module.student.bert.encoder.layer[0].register_forward_pre_hook(lambda _m, args: ours.append(args[0].detach()))
    torch.manual_seed(SEED)
    total, report, tokens = runner.run(module, INDICES, 0)
    total.backward()
    theirs: list[torch.Tensor] = []
    torch.manual_seed(SEED)
    loss, parts = glmkd_step(student, teacher, batch, theirs)
    assert len(ours) == len(theirs) == 2 and tokens == 2 * int(batch["encoded"]["attention_mask"].sum())
    assert torch.allclose(ours[1], theirs[1], atol=1e-5)
    assert not torch.allclose(ours[1], ours[0], atol=1e-3)  # the second pass is perturbed
    assert torch.allclose(total, loss, rtol=1e-5)
    assert report["loss"] == pytest.approx(float(loss.detach()), rel=1e-5)
    # abs: the KL part is 3e-4-8e-4 (teacher and student nearly agree), a difference of fp32 sums of order 1, so its
    # rounding (~1e-7) exceeds rel=1e-5 of it; it failed so once in a full `make test` (not reproduced alone)
    want = {n: float(v) for n, v in parts.items()}
    assert {name: report[name] for name in parts} == pytest.approx(want, rel=1e-5, abs=1e-6)
    mine, reference = _grads(module.student), _grads(student)
    assert mine.keys() == reference.keys() and len(mine) > 10
    assert all(torch.allclose(mine[k], reference[k], rtol=1e-4, atol=1e-7) for k in mine)
    if mode == "eval":  # without dropout the difference of the two passes is the perturbation: unit norm per token
        norms = (ours[1] - ours[0]).norm(dim=-1)
        real = batch["encoded"]["attention_mask"].bool()
        assert torch.allclose(norms[real], torch.ones_like(norms[real]), atol=1e-4)


def test_perturbation_scales_with_epsilon(encoder):
    runner, module, batch = _runner(encoder, {"perturbation": 0.25})
    module.eval()
    seen: list[torch.Tensor] = []
    module.student.bert.encoder.layer[0].register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    runner.run(module, INDICES, 0)
    norms = (seen[1] - seen[0]).norm(dim=-1)[batch["encoded"]["attention_mask"].bool()]
    assert torch.allclose(norms, torch.full_like(norms, 0.25), atol=1e-4)


@pytest.mark.parametrize("lrc", [{}, {"perturbation": 0.0}], ids=["default", "zero"])
def test_setting_off_is_todays_single_pass(encoder, lrc):
    """Without ``perturbation`` (or with 0) a step is one clean pass: the loss and the gradients of the clean
    objective, the student run once."""
    runner, module, batch = _runner(encoder, lrc)
    student, teacher = copy.deepcopy(module.student), runner.data.teacher
    calls: list[int] = []
    module.student.bert.encoder.layer[0].register_forward_pre_hook(lambda *_: calls.append(1))
    torch.manual_seed(SEED)
    total, _, _ = runner.run(module, INDICES, 0)
    total.backward()
    torch.manual_seed(SEED)
    s_out = student(**batch["encoded"], output_hidden_states=True)
    with torch.no_grad():
        t_out = teacher(**batch["teacher_encoded"][0], output_hidden_states=True)
    loss, _ = ref_objective(s_out, t_out, batch["encoded"]["attention_mask"], torch.stack(batch["labels"]))
    loss.backward()
    assert len(calls) == 1 and torch.allclose(total, loss, rtol=1e-5)
    mine, reference = _grads(module.student), _grads(student)
    assert mine.keys() == reference.keys()
    assert all(torch.allclose(mine[k], reference[k], rtol=1e-4, atol=1e-7) for k in reference)


def test_a_gradient_that_is_not_finite_leaves_the_forward_unperturbed():
    """GLMKD: "not (self.emb_grad is None or DynamicLossScaler._has_inf_or_nan(self.emb_grad))"."""
    x, y = torch.ones(2, 3, 4, requires_grad=True), torch.ones(2, 3, 4, requires_grad=True)
    total = (x * torch.tensor(float("inf"))).sum() + (3 * y).sum()
    deltas = perturbations(total, [x, None, y], 2.0)
    assert deltas[0] is None and deltas[1] is None
    assert torch.allclose(deltas[2], torch.full((2, 3, 4), 1.0))  # 2 * (3, 3, 3, 3) / 6


def test_decoder_students_are_perturbed_at_the_first_layers_input():
    """A LLaMA-style student has no embedding dropout: its embedding output is the first layer's input, the
    token embeddings. Reference: the gradient with respect to ``inputs_embeds``, normalised per token, added."""
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2
    )
    model = LlamaModel(config)
    ids = torch.randint(0, 50, (2, 5))
    assert embedding_site(model) is model.layers[0]

    def objective(out) -> torch.Tensor:
        return (out.last_hidden_state**3).mean()

    total, _, _ = perturbed_step(lambda: (objective(model(input_ids=ids)), {}, 1), model, 0.5)
    clean = model.embed_tokens(ids).detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(objective(model(inputs_embeds=clean)), clean)
    expected = objective(model(inputs_embeds=clean.detach() + 0.5 * grad / grad.norm(dim=-1, keepdim=True)))
    assert torch.allclose(total, expected, rtol=1e-5)
    assert not torch.allclose(total, objective(model(input_ids=ids)), rtol=1e-3)


def test_recipes_and_bad_values():
    assert not check_recipe({"lrc_bert": {"perturbation": 1.0}, **GKD}, "stage2")
    assert build_losses({"lrc_bert": {}})[0].embedding_perturbation() == 0.0
    for value, words in [
        (-1, "expected a number >= 0"),
        ("yes", "expected a number"),
        (True, "expected a number"),
        (float("inf"), "expected a finite number >= 0"),
        (float("nan"), "expected a finite number >= 0"),
    ]:
        problems = check_recipe({"lrc_bert": {"perturbation": value}}, "stage2")
        assert any(k == "lrc_bert.perturbation" and words in m for k, m in problems), problems
    with pytest.raises(ConfigError, match="stage2.losses.lrc_bert.perturbation"):
        build_losses({"lrc_bert": {"perturbation": -0.5}})


def test_one_perturbation_per_step():
    class Asks:
        def __init__(self, value: float) -> None:
            self.value = value

        def embedding_perturbation(self) -> float:
            return self.value

    assert step_perturbation([Asks(0.0), Asks(1.0), Asks(1.0)]) == 1.0
    assert step_perturbation([Asks(0.0)]) == 0.0
    with pytest.raises(ConfigError, match="different gradient perturbations"):
        step_perturbation([Asks(1.0), Asks(0.5)])


def _train(encoder, folder, lrc: dict, ds: dict | None) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    data = {"cache": None, "task": encoder["task"], "teacher": encoder["teacher"]}
    run = {"student": "s", "stage2": {"losses": {"lrc_bert": lrc, **GKD}}}
    meta = distill("stage2", encoder["student"], folder / "out", folder / "work", run, TRAIN, data, ds, seed=0)
    assert meta["steps"] == 2
    return load_file(folder / "out" / "model.safetensors")


def test_lrc_bert_with_perturbation_trains(encoder, tmp_path):
    """Two steps of GKD's LRC-BERT recipe: finite weights that differ from those trained without the perturbation."""
    on, off = (
        _train(encoder, tmp_path / name, lrc, None) for name, lrc in (("on", {"perturbation": 1.0}), ("off", {}))
    )
    assert all(torch.isfinite(v).all() for v in on.values())
    assert any(not torch.equal(on[k], off[k]) for k in on)


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_trains_like_the_plain_engine(encoder, tmp_path, stage):
    """Under DeepSpeed ZeRO-2 and ZeRO-3 (CPU, fp32) the two perturbed steps give the plain engine's student."""
    pytest.importorskip("deepspeed")
    ds = {"zero_optimization": {"stage": stage}, "bf16": {"enabled": False}}
    plain, zero = (_train(encoder, tmp_path / name, {"perturbation": 1.0}, d) for name, d in (("p", None), ("z", ds)))
    assert plain.keys() == zero.keys()
    assert all(torch.allclose(plain[k], zero[k], atol=1e-6) for k in plain)
