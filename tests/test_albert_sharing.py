"""ALBERT cross-layer parameter sharing (`students.NAME.share_layers`, Lan et al. 2020) through a student's life:
init_student, training on the plain and DeepSpeed engines, saving, every load path, the parameter counts
(kdflow.json and the efficiency report) and the config check.

Reference: aitsc/GLMKD, `--cross_layer_parameter_sharing` (README.md @fdea499, section "### ALBERT"), implemented in
mpu/transformer.py @1e2a3b9, GPT2ParallelTransformer: ``__init__`` builds ``range(1 if cross_layer_parameter_sharing
else num_layers)`` layers, and ``forward`` runs ``self_layers = [self.layers[0]] * self.num_layers``, one layer
module num_layers times. ``glmkd_style`` below is that, written independently: the student's transformer layer
list replaced by its first layer repeated. kdflow instead gives every layer its own module holding layer 0's
Parameter objects; outputs and gradients must be the same."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import yaml
from conftest import TINY_TRAIN, _tiny
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForMaskedLM, AutoModelForSequenceClassification

from kdflow.config import validate_config
from kdflow.distill import distill
from kdflow.errors import ConfigError
from kdflow.evaluate import evaluate
from kdflow.features import layer_owner, transformer_layers
from kdflow.finetune import finetune_classifier
from kdflow.modeling import count_parameters, load_lm
from kdflow.runtime import Runtime
from kdflow.sharing import MARKER, save_model, share_layers
from kdflow.students import cut_layers, init_student
from kdflow.train.engines import PlainEngine
from kdflow.train.settings import TrainSettings

SHARED = {"layers": {"strategy": "uniform", "count": 3}, "share_layers": True}
TRAIN = {**TINY_TRAIN, "epochs": 1, "max_steps": 2}
KD_CE = {"student": "s", "stage2": {"losses": {"kd": {"weight": 0.5, "temperature": 2.0}, "ce": {"weight": 0.5}}}}
EVAL = {"batch_size": 8, "max_length": 64, "bootstrap_samples": 20, "latency_examples": 2}


@pytest.fixture(scope="module")
def bert4(tmp_path_factory):
    """A 4-layer tiny random BERT (the shared conftest one has 2 layers)."""
    return _tiny(tmp_path_factory, "bert4", "bert", "embedded:all-minilm-l6-v2", num_hidden_layers=4)


@pytest.fixture(scope="module")
def shared_student(bert4, tmp_path_factory):
    """A 3-layer student of bert4 sharing one layer (teacher layers [0, 2, 3]: shared from layer 0), and the
    same cut unshared."""
    root = tmp_path_factory.mktemp("albert")
    shared = init_student(bert4, SHARED, None, root / "shared", seed=0)
    plain = init_student(bert4, {"layers": SHARED["layers"]}, None, root / "plain", seed=0)
    return {"dir": root / "shared", "meta": shared, "plain_dir": root / "plain", "plain_meta": plain}


def layer_params(model: torch.nn.Module, index: int) -> dict[str, torch.Tensor]:
    return dict(transformer_layers(model)[index].named_parameters())


def glmkd_style(teacher: torch.nn.Module, keep: list[int]) -> torch.nn.Module:
    """GLMKD's forward: the cut's first layer, one module, run once per layer (its gradients accumulate)."""
    model = cut_layers(copy.deepcopy(teacher), keep)
    owner, attr = layer_owner(model)
    layers = getattr(owner, attr)
    setattr(owner, attr, torch.nn.ModuleList([layers[0]] * len(layers)))
    return model


@pytest.mark.parametrize("family", ["tiny_bert", "tiny_llama"])
def test_shared_student_equals_one_layer_run_n_times_like_glmkd(family, request, tmp_path):
    teacher_dir = request.getfixturevalue(family)
    spec = {"layers": {"strategy": "explicit", "list": [1, 0]}, "share_layers": True}
    meta = init_student(teacher_dir, spec, None, tmp_path / "s", seed=0)
    assert meta["share_layers"] and meta["layers_from_teacher"] == [1, 0]
    ours, tokenizer, _ = load_lm(tmp_path / "s")
    teacher, _, _ = load_lm(teacher_dir)
    reference = glmkd_style(teacher, [1, 0])  # initialised from the first layer the cut keeps: teacher layer 1
    ids = tokenizer(["a fine film", "dull"], return_tensors="pt", padding=True)
    no_cache = {"use_cache": False} if family == "tiny_llama" else {}  # the repeated module has one layer_idx
    logits = [m(**ids, **no_cache).logits for m in (ours, reference)]
    assert torch.allclose(logits[0], logits[1], atol=1e-5)
    for out in logits:  # the same loss on both; eval mode: no dropout
        (out.float() ** 2).mean().backward()
    mine, theirs = layer_params(ours, 0), layer_params(reference, 0)
    for name, param in mine.items():
        assert torch.equal(param, layer_params(teacher, 1)[name])
        assert torch.allclose(param.grad, theirs[name].grad, rtol=1e-4, atol=1e-7), name
    emb = [m.get_input_embeddings().weight.grad for m in (ours, reference)]
    assert torch.allclose(emb[0], emb[1], rtol=1e-4, atol=1e-7)


def test_gradient_of_a_shared_tensor_is_the_sum_over_its_uses(tiny_bert, tmp_path):
    """The same model untied (each layer its own copy of the values): the shared gradient is their sum."""
    spec = {"layers": {"strategy": "first", "count": 2}, "share_layers": True}
    init_student(tiny_bert, spec, None, tmp_path / "s", 0)
    ours, tokenizer, _ = load_lm(tmp_path / "s")
    untied = copy.deepcopy(ours)
    layers = transformer_layers(untied)
    layers[1] = copy.deepcopy(layers[1])  # deepcopy keeps the sharing inside one copy: break it
    assert (
        layer_params(untied, 1)["attention.self.query.weight"]
        is not layer_params(untied, 0)["attention.self.query.weight"]
    )
    ids = tokenizer(["a fine film"], return_tensors="pt")
    for model in (ours, untied):
        (model(**ids).logits ** 2).mean().backward()
    for name, param in layer_params(ours, 0).items():
        summed = layer_params(untied, 0)[name].grad + layer_params(untied, 1)[name].grad
        assert torch.allclose(param.grad, summed, rtol=1e-4, atol=1e-7), name


@pytest.mark.parametrize("family", ["tiny_bert", "tiny_llama"])
def test_layers_share_storage_and_keep_their_own_modules(family, request, tmp_path):
    init_student(request.getfixturevalue(family), {**SHARED, "layers": {"count": 2}}, None, tmp_path / "s", 0)
    model, tokenizer, _ = load_lm(tmp_path / "s")
    layers = transformer_layers(model)
    assert layers[0] is not layers[1]  # hooks, layer_idx and attention types stay per layer
    for name, param in layer_params(model, 0).items():
        other = layer_params(model, 1)[name]
        assert other is param and other.data_ptr() == param.data_ptr()
    if family == "tiny_llama":  # each layer its own KV-cache slot
        assert [layer.self_attn.layer_idx for layer in layers] == [0, 1]
        ids = tokenizer(["a fine film"], return_tensors="pt")
        with torch.no_grad():
            cached, plain = model(**ids, use_cache=True), model(**ids, use_cache=False)
        assert len(cached.past_key_values.layers) == 2 and torch.equal(cached.logits, plain.logits)


def test_parameter_count_drops_by_the_shared_layers(shared_student):
    shared, plain = shared_student["meta"]["parameters"], shared_student["plain_meta"]["parameters"]
    model, _, _ = load_lm(shared_student["plain_dir"])
    per_layer = sum(p.numel() for p in transformer_layers(model)[0].parameters())
    assert shared["total"] == plain["total"] - 2 * per_layer
    assert shared["body"] == plain["body"] - 2 * per_layer and shared["embedding"] == plain["embedding"]
    loaded, _, _ = load_lm(shared_student["dir"])
    assert count_parameters(loaded) == shared
    assert len(list(loaded.parameters())) == len(list(model.parameters())) - 2 * len(list(layer_params(model, 0)))


def test_saved_folder_holds_one_layer_and_reloads_tied_with_identical_outputs(shared_student, tmp_path):
    folder = shared_student["dir"]
    keys = load_file(folder / "model.safetensors").keys()
    assert any(k.startswith("bert.encoder.layer.0.") for k in keys)
    assert not any(k.startswith(("bert.encoder.layer.1.", "bert.encoder.layer.2.")) for k in keys)
    assert json.loads((folder / "config.json").read_text())[MARKER] == {"path": "bert.encoder.layer", "count": 3}
    plain = shared_student["plain_dir"] / "model.safetensors"
    assert (folder / "model.safetensors").stat().st_size < plain.stat().st_size
    model, tokenizer, _ = load_lm(folder)
    ids = tokenizer(["a fine film"], return_tensors="pt")
    save_model(model, tmp_path / "again")  # what init_student, save_student and finetune write with
    tokenizer.save_pretrained(tmp_path / "again")
    again, _, _ = load_lm(tmp_path / "again")
    assert all(layer_params(again, 2)[k] is v for k, v in layer_params(again, 0).items())
    with torch.no_grad():
        assert torch.equal(model(**ids).logits, again(**ids).logits)
    first, second = load_file(folder / "model.safetensors"), load_file(tmp_path / "again" / "model.safetensors")
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_a_plain_from_pretrained_does_not_tie_the_layers_again(shared_student):
    """kdflow.sharing's docstring: only kdflow's loader gives layers 1..N-1 the stored layer."""
    plain = AutoModelForMaskedLM.from_pretrained(shared_student["dir"])
    ours, _, _ = load_lm(shared_student["dir"])
    query = "attention.self.query.weight"
    assert torch.equal(layer_params(plain, 0)[query], layer_params(ours, 0)[query])
    assert not torch.equal(layer_params(plain, 1)[query], layer_params(ours, 1)[query])


def test_optimizer_holds_the_shared_layer_once_and_steps_keep_the_tie(shared_student, tmp_path):
    model, tokenizer, _ = load_lm(shared_student["dir"])
    model.train()
    settings = TrainSettings(steps=2, batch_size=2, lr=1e-2, warmup_ratio=0.0)
    engine = PlainEngine(model, settings, Runtime())
    assert sum(len(g["params"]) for g in engine.optimizer.param_groups) == len(list(model.parameters()))
    before = {k: v.detach().clone() for k, v in layer_params(model, 0).items()}
    ids = tokenizer(["a fine film", "dull"], return_tensors="pt", padding=True)
    for _ in range(2):
        engine.backward((model(**ids).logits ** 2).mean())
        engine.step()
    engine.save(tmp_path, 2)
    assert engine.load(tmp_path) == 2
    assert any(not torch.equal(before[k], v) for k, v in layer_params(model, 0).items())  # it trained
    for index in (1, 2):
        assert all(layer_params(model, index)[k] is v for k, v in layer_params(model, 0).items())


ENGINES = [
    pytest.param(None, id="plain"),
    pytest.param({"zero_optimization": {"stage": 2}, "bf16": {"enabled": False}}, id="zero2"),
    pytest.param(
        {"zero_optimization": {"stage": 3, "offload_param": {"device": "cpu"}}, "bf16": {"enabled": False}},
        id="zero3",
        marks=pytest.mark.slow,
    ),
]


@pytest.fixture(scope="module")
def classifier(bert4, sentiment_task, tmp_path_factory):
    """bert4 with a classification head fine-tuned 2 steps on sentiment: the encoder track's stage-2 teacher."""
    root = tmp_path_factory.mktemp("teacher")
    finetune_classifier(bert4, sentiment_task, root / "c", root / "w", TRAIN, None, seed=0)
    return root / "c"


@pytest.mark.parametrize("deepspeed", ENGINES)
def test_kd_ce_training_keeps_one_layer_through_save_load_and_evaluate(
    deepspeed, shared_student, classifier, sentiment_task, tmp_path
):
    if deepspeed:
        pytest.importorskip("deepspeed")
    data = {"cache": None, "task": sentiment_task, "teacher": classifier}
    meta = distill("stage2", shared_student["dir"], tmp_path / "out", tmp_path / "w", KD_CE, TRAIN, data, deepspeed, 0)
    assert meta["steps"] == 2 and meta["head"] == "classification"
    keys = load_file(tmp_path / "out" / "model.safetensors").keys()
    assert not any(k.startswith("bert.encoder.layer.1.") for k in keys)
    trained, _, _ = load_lm(tmp_path / "out", keep_architecture=True)
    start, _, _ = load_lm(shared_student["dir"])
    query = "attention.self.query.weight"
    assert not torch.equal(layer_params(trained, 0)[query], layer_params(start, 0)[query])
    assert all(layer_params(trained, 2)[k] is v for k, v in layer_params(trained, 0).items())
    evaluate(tmp_path / "out", sentiment_task, tmp_path / "m.json", tmp_path / "p.jsonl", EVAL, 0, tmp_path / "e.json")
    efficiency = json.loads((tmp_path / "e.json").read_text())
    assert efficiency["parameters"] == meta["parameters"] == count_parameters(trained)
    config = AutoConfig.from_pretrained(shared_student["plain_dir"], num_labels=2)
    unshared = count_parameters(AutoModelForSequenceClassification.from_config(config))
    per_layer = sum(p.numel() for p in transformer_layers(trained)[0].parameters())
    assert meta["parameters"]["total"] == unshared["total"] - 2 * per_layer


def test_finetuning_a_shared_student_keeps_the_tie(shared_student, sentiment_task, tmp_path):
    finetune_classifier(shared_student["dir"], sentiment_task, tmp_path / "c", tmp_path / "w", TRAIN, None, seed=0)
    keys = load_file(tmp_path / "c" / "model.safetensors").keys()
    assert not any(k.startswith("bert.encoder.layer.2.") for k in keys)
    model, _, _ = load_lm(tmp_path / "c", keep_architecture=True)
    assert all(layer_params(model, 1)[k] is v for k, v in layer_params(model, 0).items())


def test_a_one_layer_student_cannot_share(tiny_bert, tmp_path):
    with pytest.raises(ConfigError, match="sharing needs 2 or more"):
        init_student(tiny_bert, {"layers": {"count": 1}, "share_layers": True}, None, tmp_path / "s", 0)
    model, _, _ = load_lm(tiny_bert)
    with pytest.raises(RuntimeError, match="differs from layer 0"):  # untied copies that differ are never tied
        share_layers(model, check=True)


@pytest.mark.parametrize(
    ("student", "message"),
    [
        ({"layers": {"count": 3}, "share_layers": "yes"}, "'students.e3.share_layers': expected true/false"),
        ({"layers": {"count": 1}, "share_layers": True}, "'students.e3.share_layers': sharing one set"),
        ({"layers": {"strategy": "explicit", "list": [2]}, "share_layers": True}, "and the student has 1"),
    ],
)
def test_config_refuses_bad_share_layers_naming_the_key(repo, student, message):
    config = yaml.safe_load((repo / "config" / "config.yaml").read_text())
    config["students"]["e3"] = {"teacher": "minilm", **student}
    with pytest.raises(ConfigError, match=message):
        validate_config(config)
    config["students"]["e3"] = {"teacher": "minilm", "layers": {"count": 3}, "share_layers": True}
    validate_config(config)
