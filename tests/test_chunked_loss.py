"""The fused LM head + word loss (compute.loss_chunk): the same losses and gradients as the unfused
computation, the head taken apart on both model families, and the switch through a real distillation."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from conftest import TINY_CACHE, TINY_TRAIN, pack_text
from transformers import BertConfig, BertForMaskedLM, LlamaConfig, LlamaForCausalLM

from kdflow.cache.build import cache_corpus
from kdflow.cache.format import sparse_targets
from kdflow.cache.kl import dense_kl_and_grad_
from kdflow.distill import distill
from kdflow.distill.teacher import body, load_teacher
from kdflow.errors import ConfigError
from kdflow.heads import DecodedRows, HeadRows, head_bypassed, head_parameters, position_rows, word_rows
from kdflow.losses import build_losses
from kdflow.losses.chunked import fused_head_loss
from kdflow.losses.inputs import StepInputs
from kdflow.runtime import Runtime, compute_settings
from kdflow.students import init_student
from kdflow.vocab.vmap import RESERVED, VocabMap

N, D, V_TEACHER = 29, 12, 90
CHUNK = 7  # 29 positions: four full chunks and a short one


def _vocab_map() -> VocabMap:
    """A compressed vocabulary: 40 of the 90 teacher rows kept, plus a reserved row for the dropped mass."""
    kept = np.concatenate([np.arange(0, 80, 2), [RESERVED]])
    old_to_new = np.full(V_TEACHER, len(kept) - 1)
    old_to_new[kept[:-1]] = np.arange(len(kept) - 1)
    return VocabMap(kept, old_to_new)


def _reference_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor, t: float) -> torch.Tensor:
    """The word loss written out from its definition (Hinton et al. 2015, GLMD's L_word): mean over positions
    of sum_v p_T (log p_T - log q_T), times T^2, with the logits formed whole."""
    log_p = teacher_logits / t - torch.logsumexp(teacher_logits / t, -1, keepdim=True)
    log_q = student_logits / t - torch.logsumexp(student_logits / t, -1, keepdim=True)
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean() * t * t


def _grads(loss_fn, params):
    for p in params:
        p.grad = None
    loss = loss_fn()
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in params]


@pytest.mark.parametrize("temperature", [1.0, 15.0])
@pytest.mark.parametrize("compressed", [False, True])
@pytest.mark.parametrize("form", ["logits", "topk", "head"])
def test_fused_word_kl_equals_the_unfused_loss_and_gradients(temperature, compressed, form):
    torch.manual_seed(0)
    vmap = _vocab_map() if compressed else None
    v_student = vmap.size if vmap else V_TEACHER
    h = torch.randn(N, D, requires_grad=True)
    w = (0.5 * torch.randn(v_student, D)).requires_grad_()
    b = (0.1 * torch.randn(v_student)).requires_grad_()
    t_hidden, t_head = torch.randn(N, D), torch.randn(V_TEACHER, D)

    def decode(x: torch.Tensor) -> torch.Tensor:
        logits = x @ t_head.T
        return vmap.project_logits(logits) if vmap else logits

    teacher_logits = decode(t_hidden)
    temps = [1.0, 15.0]
    targets = {
        "logits": {"logits": teacher_logits},
        "topk": sparse_targets(teacher_logits, v_student, temps),  # k = vocabulary: the exact KL
        "head": {"head": DecodedRows(t_hidden, decode)},
    }[form]
    loss = build_losses({"word_kl": {"temperature": temperature}}, "stage1")[0]

    def run(chunk):
        rows = HeadRows(h, w, b, chunk=chunk)
        return loss(StepInputs(word_logits=rows, word_targets=targets, cache_temperatures=tuple(temps)))

    unfused, g_unfused = _grads(lambda: run(None), [h, w, b])
    fused, g_fused = _grads(lambda: run(CHUNK), [h, w, b])
    reference, g_reference = _grads(lambda: _reference_kl(teacher_logits, h @ w.T + b, temperature), [h, w, b])
    # fp32: the fused loop adds the same products in another order (chunks), so agreement is to rounding
    assert fused.item() == pytest.approx(unfused.item(), rel=1e-5)
    assert fused.item() == pytest.approx(reference.item(), rel=1e-4)
    for a, u, r in zip(g_fused, g_unfused, g_reference, strict=True):
        assert torch.allclose(a, u, rtol=1e-4, atol=1e-6)
        assert torch.allclose(a, r, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("form", ["logits", "head"])
def test_fused_word_kl_under_bf16_autocast_matches_the_unfused_head(form):
    """`compute.precision: bf16` with `compute.loss_chunk` (the plain engine autocasts the step) failed with "self
    and mat2 must have the same dtype" once a CPU with native bf16 ran the bench's bf16 rows (2026-12-04): the
    weight gradient's first product came out in bf16 and the next chunks were added in fp32. Now fused and unfused
    agree under autocast to bf16's rounding (8 mantissa bits: relative 2e-2), with fp32 teacher logits or an
    online teacher's head in bf16 (``head``: its logits come in bf16)."""
    torch.manual_seed(3)
    h = torch.randn(N, D, requires_grad=True)
    w = (0.5 * torch.randn(V_TEACHER, D)).requires_grad_()
    b = (0.1 * torch.randn(V_TEACHER)).requires_grad_()
    t_hidden, t_head = torch.randn(N, D).bfloat16(), torch.randn(V_TEACHER, D).bfloat16()
    targets = {
        "logits": {"logits": (t_hidden @ t_head.T).float()},
        "head": {"head": DecodedRows(t_hidden, lambda x: x @ t_head.T)},
    }[form]
    loss = build_losses({"word_kl": {"temperature": 1.0}}, "stage1")[0]

    def run(chunk):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            rows = HeadRows(h, w, b, chunk=chunk)
            return loss(StepInputs(word_logits=rows, word_targets=targets))

    unfused, g_unfused = _grads(lambda: run(None), [h, w, b])
    fused, g_fused = _grads(lambda: run(CHUNK), [h, w, b])
    assert fused.dtype == torch.float32 and all(g.dtype == torch.float32 for g in g_fused)
    assert fused.item() == pytest.approx(unfused.item(), rel=2e-2)
    for a, u in zip(g_fused, g_unfused, strict=True):
        assert (a - u).norm() <= 2e-2 * u.norm()


@pytest.mark.parametrize("temperature", [1.0, 15.0])
def test_closed_form_kl_gradient_equals_autograd_of_the_definition(temperature):
    """The fused dense word KL's gradient, (q_T - p_T) / T, against autograd through the KL written out per
    position (``_reference_kl`` without the mean and T^2); it is written over the student's logits, in its
    buffers and nowhere else (the teacher's logits, bf16 here as a teacher's head gives them, are kept)."""
    torch.manual_seed(2)
    teacher, student = (3 * torch.randn(N, V_TEACHER)).bfloat16(), (3 * torch.randn(N, V_TEACHER)).requires_grad_()
    kept_t, grad = teacher.clone(), student.detach().clone()
    p, d = torch.full_like(grad, float("nan")), torch.full_like(grad, float("nan"))
    kl = dense_kl_and_grad_(teacher, grad, temperature, p, d)
    teacher = teacher.float()
    expected = _reference_kl(teacher.unsqueeze(1), student.unsqueeze(1), temperature) / temperature**2
    log_p = torch.log_softmax(teacher / temperature, -1)
    per_position = (log_p.exp() * (log_p - torch.log_softmax(student / temperature, -1))).sum(-1)
    (expected_grad,) = torch.autograd.grad(per_position.sum(), student)
    assert torch.allclose(kl, per_position.detach(), rtol=1e-5, atol=1e-6)
    assert kl.mean().item() == pytest.approx(expected.item(), rel=1e-5)
    assert torch.allclose(grad, expected_grad, rtol=1e-4, atol=1e-7)
    assert torch.equal(teacher, kept_t.float())


def test_fused_language_modelling_equals_cross_entropy():
    torch.manual_seed(1)
    h, w = torch.randn(N, D, requires_grad=True), torch.randn(V_TEACHER, D, requires_grad=True)
    labels = torch.randint(0, V_TEACHER, (N,))
    labels[[0, 5, 17]] = -100
    loss = build_losses({"lm": {}}, "stage1")[0]
    fused, g_fused = _grads(
        lambda: loss(StepInputs(word_logits=HeadRows(h, w, chunk=CHUNK), word_labels=labels)), [h, w]
    )
    expected, g_expected = _grads(lambda: torch.nn.functional.cross_entropy(h @ w.T, labels, ignore_index=-100), [h, w])
    assert fused.item() == pytest.approx(expected.item(), rel=1e-5)
    assert all(torch.allclose(a, e, rtol=1e-4, atol=1e-6) for a, e in zip(g_fused, g_expected, strict=True))


def test_fused_head_loss_refuses_an_empty_chunk():
    with pytest.raises(ValueError, match="positive"):
        fused_head_loss(HeadRows(torch.zeros(2, 3), torch.zeros(4, 3)), lambda z, r: z.sum(-1), 0)


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_head_bypassed_gives_the_head_inputs_and_puts_the_head_back(family):
    torch.manual_seed(0)
    common = {"vocab_size": 50, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2}
    if family == "llama":
        model = LlamaForCausalLM(LlamaConfig(num_attention_heads=4, num_key_value_heads=2, **common))
    else:
        model = BertForMaskedLM(BertConfig(num_attention_heads=4, **common))
    model.eval()
    head = model.get_output_embeddings()
    ids = torch.randint(0, 50, (2, 6))
    full = model(input_ids=ids).logits
    with head_bypassed(model) as bypassed:
        inputs = model(input_ids=ids).logits
        assert bypassed is head and inputs.shape == (2, 6, 16)
    assert model.get_output_embeddings() is head
    rows = HeadRows(inputs.reshape(-1, 16), *head_parameters(model))
    assert torch.allclose(rows.logits(), full.reshape(-1, 50), atol=1e-5)


@pytest.mark.parametrize(("bad", "message"), [({"loss_chunk": 0}, "loss_chunk"), ({"compile": "yes"}, "compile")])
def test_compute_settings_refuse_bad_values(bad, message):
    with pytest.raises(ConfigError, match=message):
        compute_settings(bad)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tiny_llama):
    root = tmp_path_factory.mktemp("chunked")
    pack_text(root, tiny_llama, name="corpus")
    hidden = {**TINY_CACHE, "mode": "hidden", "max_blocks": None, "shard_blocks": 32}
    cache_corpus(tiny_llama, root / "corpus", None, root / "hcache", hidden, seed=0)
    init_student(tiny_llama, {"layers": {"strategy": "last", "count": 1}}, None, root / "student", seed=0)
    return root


def _first_losses(root, teacher, out, compute, mode, recipe):
    run = {"student": "s", "stage1": {"losses": recipe}}
    distill(
        "stage1",
        root / "student",
        out,
        out.with_name(out.name + "_work"),
        run,
        {**TINY_TRAIN, "max_steps": 3, "teacher": mode},
        {"cache": root / "hcache" if mode == "cached" else None, "corpus": root / "corpus", "teacher": teacher},
        None,
        seed=0,
        runtime=Runtime.create({"device": "cpu", **compute}),
    )
    with open(out / "train_log.csv") as fh:
        return [float(r["loss"]) for r in csv.DictReader(fh)]


@pytest.mark.parametrize("mode", ["cached", "online"])
def test_loss_chunk_trains_like_the_unfused_head(corpus, tiny_llama, tmp_path, mode):
    recipe = {"word_kl": {"temperature": 15.0}, "lm": {"weight": 0.5}}
    plain = _first_losses(corpus, tiny_llama, tmp_path / "plain", {}, mode, recipe)
    fused = _first_losses(corpus, tiny_llama, tmp_path / "fused", {"loss_chunk": 37}, mode, recipe)
    assert len(plain) == 3 and fused == pytest.approx(plain, rel=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["cached", "online"])  # online: the teacher's body compiled too
def test_compile_switch_gives_the_same_first_losses(corpus, tiny_llama, tmp_path, mode):
    recipe = {"word_kl": {"temperature": 15.0}}
    plain = _first_losses(corpus, tiny_llama, tmp_path / "plain", {}, mode, recipe)
    compiled = _first_losses(corpus, tiny_llama, tmp_path / "compiled", {"compile": True}, mode, recipe)
    # online, the compiled teacher's float rounding moves these small T = 15 KLs (~5e-4) by ~0.5 %
    assert compiled == pytest.approx(plain, rel=1e-4 if mode == "cached" else 2e-2)


def test_compile_switch_compiles_the_online_teacher_and_its_body(tiny_llama):
    teacher = load_teacher(tiny_llama, None, Runtime.create({"device": "cpu", "compile": True}))
    assert teacher._compiled_call_impl is not None and body(teacher)._compiled_call_impl is not None
    plain = load_teacher(tiny_llama, None, Runtime.create({"device": "cpu"}))
    assert plain._compiled_call_impl is None and body(plain)._compiled_call_impl is None
    ids = torch.arange(24).reshape(2, 12) % 40
    with torch.no_grad():
        got, want = body(teacher)(input_ids=ids), body(plain)(input_ids=ids)
    assert torch.allclose(got.last_hidden_state, want.last_hidden_state, atol=1e-5)


def test_compile_switch_compiles_the_language_model_only():
    config = LlamaConfig(
        vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=4
    )
    runtime = Runtime.create({"device": "cpu", "compile": True})
    model = runtime.place(LlamaForCausalLM(config))
    wrapper = runtime.place(torch.nn.Sequential(torch.nn.Linear(2, 2)))
    assert model._compiled_call_impl is not None and wrapper._compiled_call_impl is None
    assert Runtime.create({"device": "cpu"}).place(LlamaForCausalLM(config))._compiled_call_impl is None


def test_loss_chunk_refuses_a_partitioned_head():
    model = LlamaForCausalLM(
        LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=4)
    )
    model.get_output_embeddings().weight = torch.nn.Parameter(torch.empty(0))  # what ZeRO-3 leaves between uses
    with pytest.raises(ConfigError, match="ZeRO-3"):
        word_rows(model, torch.zeros(1, 3, 16), [torch.arange(3)], 8)


def test_position_rows_equal_the_rows_picked_one_batch_row_at_a_time():
    outputs = torch.randn(3, 7, 5, requires_grad=True)
    picks = {
        "every position (a view)": [torch.arange(7)] * 3,
        "the same leading positions": [torch.arange(4)] * 3,
        "masked positions": [torch.tensor([0, 3]), torch.tensor([6]), torch.tensor([1, 2, 5])],
        "one row shorter": [torch.arange(7), torch.arange(6), torch.arange(7)],
    }
    for name, positions in picks.items():
        want = torch.cat([outputs[r, p] for r, p in enumerate(positions)])
        got = position_rows(outputs, positions)
        assert torch.equal(got, want), name
        (grad_got,) = torch.autograd.grad(got.square().sum(), outputs)
        (grad_want,) = torch.autograd.grad(want.square().sum(), outputs)
        assert torch.equal(grad_got, grad_want), name
    assert position_rows(outputs, picks["every position (a view)"])._base is outputs
