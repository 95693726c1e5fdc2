"""Distillation engine: students, registered losses, cached vs online teacher, resume, DeepSpeed ZeRO."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest
import torch
from conftest import TINY_CACHE, TINY_TRAIN, pack_text, stage1_args, step_inputs
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from kdflow.assets.sentiment import build_sentiment_task
from kdflow.cache.build import cache_corpus, cache_task
from kdflow.cache.format import sparse_targets
from kdflow.distill import distill
from kdflow.distill.producers import Step, produce
from kdflow.distill.stage1 import CorpusData
from kdflow.errors import ConfigError
from kdflow.losses import REGISTRY, build_losses
from kdflow.losses.inputs import StepInputs
from kdflow.modeling import load_lm
from kdflow.prepare import prepare_task
from kdflow.students import init_student, select_layers

TRAIN = TINY_TRAIN
CACHE = TINY_CACHE
GLMD = {
    "student": "s",
    "stage1": {"losses": {"word_kl": {"weight": 1.0, "temperature": 15.0}}},
    "stage2": {"losses": {"word_kl": {"temperature": 15.0}, "candidate_kd": {"temperature": 1.0}}},
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_llama):
    root = tmp_path_factory.mktemp("distill")
    pack_text(root, tiny_llama, name="corpus")
    build_sentiment_task("embedded:rotten-tomatoes", root / "raw", seed=0)
    prepare_task(
        "sentiment",
        {"name": "sst2", "max_examples": {"train": 16, "dev": 8, "test": 4}},
        str(root / "raw"),
        root / "task",
    )
    cache_corpus(tiny_llama, root / "corpus", None, root / "ccache", CACHE, seed=0)
    hidden = {**CACHE, "mode": "hidden", "max_blocks": None, "shard_blocks": 32}  # all blocks, as online
    cache_corpus(tiny_llama, root / "corpus", None, root / "hcache", hidden, seed=0)
    cache_task(tiny_llama, root / "task", None, root / "tcache", CACHE)
    init_student(tiny_llama, {"layers": {"strategy": "last", "count": 1}}, None, root / "student", seed=0)
    return root


def test_layer_selection():
    assert select_layers(30, {"strategy": "uniform", "count": 6}) == [0, 6, 12, 17, 23, 29]
    assert select_layers(12, {"strategy": "first", "count": 3}) == [0, 1, 2]
    assert select_layers(12, {"strategy": "last", "count": 2}) == [10, 11]
    assert select_layers(30, {"strategy": "bottom", "count": 15}) == [*range(14), 29]
    assert select_layers(12, {"strategy": "bottom", "count": 1}) == [11]
    assert select_layers(12, {"strategy": "explicit", "list": [1, 5]}) == [1, 5]
    with pytest.raises(ConfigError, match="count 40"):
        select_layers(12, {"count": 40})
    with pytest.raises(ConfigError, match="distinct layers"):
        select_layers(12, {"strategy": "explicit", "list": [1, 1]})


@pytest.mark.parametrize("family", ["tiny_llama", "tiny_bert"])
def test_student_with_every_layer_equals_its_teacher(family, request, tmp_path):
    teacher = request.getfixturevalue(family)
    meta = init_student(teacher, {"layers": {"strategy": "uniform", "count": 2}}, None, tmp_path / "s", seed=0)
    assert meta["layers_from_teacher"] == [0, 1]
    t, tok, _ = load_lm(teacher)
    s, _, _ = load_lm(tmp_path / "s")
    ids = tok(["a fine film"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(t(ids).logits, s(ids).logits, atol=1e-5)
    cut = init_student(teacher, {"layers": {"strategy": "first", "count": 1}}, None, tmp_path / "s1", seed=0)
    assert cut["parameters"]["body"] < meta["parameters"]["body"]


def test_narrow_random_student(tiny_llama, tmp_path):
    spec = {"layers": {"count": 1}, "width": {"hidden_size": 16, "intermediate_size": 32}}
    meta = init_student(tiny_llama, spec, None, tmp_path / "narrow", seed=0)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "narrow")
    assert model.config.hidden_size == 16 and model.config.num_hidden_layers == 1
    assert meta["layers_from_teacher"] is None


def test_word_kl_from_a_full_cache_equals_the_dense_kl_times_t_squared():
    torch.manual_seed(0)
    teacher, student = torch.randn(6, 40), torch.randn(6, 40)
    full = sparse_targets(teacher, 40, [1.0, 15.0])
    loss = build_losses({"word_kl": {"temperature": 15.0}})[0]
    got = loss(step_inputs(word_logits=student, word_targets=full, cache_temperatures=[1.0, 15.0]))
    dense = loss(step_inputs(word_logits=student, word_targets={"logits": teacher}, cache_temperatures=[]))
    log_p, log_q = torch.log_softmax(teacher / 15, -1), torch.log_softmax(student / 15, -1)
    expected = (log_p.exp() * (log_p - log_q)).sum(-1).mean() * 225
    assert torch.allclose(got, expected, rtol=1e-3) and torch.allclose(dense, expected, rtol=1e-5)


def test_registry_and_bad_names():
    assert {"word_kl", "candidate_kd", "kd", "ce", "mse_logits"} <= set(REGISTRY)
    assert REGISTRY["ce"].uses_labels and not REGISTRY["word_kl"].uses_labels
    with pytest.raises(ConfigError, match="unknown loss 'bert_of_nothing'"):
        build_losses({"bert_of_nothing": {}})
    with pytest.raises(ConfigError, match="loss 'ce'"):
        build_losses({"ce": {"temperature": 2}})  # a setting the loss does not have
    with pytest.raises(ConfigError, match="stage2 only"):
        build_losses({"theseus": {}}, "stage1")
    with pytest.raises(ConfigError, match="loss 'kd'"):
        build_losses({"kd": {"temprature": 2}})


def test_gradients_flow_only_into_the_student(setup, tiny_llama):
    data = CorpusData(None, setup / "corpus", None, tiny_llama, online=True, seed=0)
    student, _, _ = load_lm(setup / "student")
    student.train()
    needs = frozenset({"word_logits", "word_targets"})
    made = produce(data.producers, Step(student, [0, 1], data.batch([0, 1], needs), needs))
    loss = build_losses({"word_kl": {"temperature": 1.0}})[0](StepInputs(**made.values))
    loss.backward()
    assert all(p.grad is None for p in data.teacher.parameters())
    assert not any(p.requires_grad for p in data.teacher.parameters())
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)


def test_cached_hidden_and_online_teachers_give_the_same_first_loss(setup, tiny_llama, tmp_path):
    logs = {}
    for name, cache, mode in (("online", None, "online"), ("hidden", setup / "hcache", "cached")):
        distill(
            "stage1",
            setup / "student",
            tmp_path / name,
            tmp_path / f"w{name}",
            GLMD,
            {**TRAIN, "max_steps": 1, "teacher": mode},
            {"cache": cache, "corpus": setup / "corpus", "teacher": tiny_llama},
            None,
            seed=0,
        )
        with open(tmp_path / name / "train_log.csv") as fh:
            logs[name] = float(next(csv.DictReader(fh))["word_kl"])
    assert logs["online"] == pytest.approx(logs["hidden"], rel=1e-4)


def test_stage2_runs_every_recipe(setup, tiny_llama, tmp_path):
    recipes = {
        "glmd": GLMD,
        "kd": {"student": "s", "stage2": {"losses": {"kd": {"weight": 0.5}, "ce": {"weight": 0.5}}}},
        "mse": {"student": "s", "stage2": {"losses": {"mse_logits": {}}}},
    }
    for name, run in recipes.items():
        meta = distill(
            "stage2",
            setup / "student",
            tmp_path / name,
            tmp_path / f"w{name}",
            run,
            TRAIN,
            {"cache": setup / "tcache", "task": setup / "task", "teacher": tiny_llama},
            None,
            seed=0,
        )
        assert meta["stage"] == "stage2" and meta["steps"] == 4
        with open(tmp_path / name / "train_log.csv") as fh:
            header = next(csv.reader(fh))
        assert set(run["stage2"]["losses"]) <= set(header)


def test_killed_distillation_resumes_to_the_same_weights(setup, tiny_llama, tmp_path, tool_env):
    data = {"cache": setup / "ccache", "corpus": setup / "corpus", "teacher": tiny_llama}
    distill("stage1", setup / "student", tmp_path / "clean", tmp_path / "wc", GLMD, TRAIN, data, None, seed=0)
    args = stage1_args(
        setup / "student",
        GLMD,
        TRAIN,
        setup / "ccache",
        setup / "corpus",
        tiny_llama,
        tmp_path / "resumed",
        tmp_path / "wr",
    )
    cmd = [sys.executable, "-m", "kdflow", *args]
    assert subprocess.run(cmd, env={**tool_env, "KDFLOW_FAULT": "train_step:3"}, capture_output=True).returncode == 137
    done = subprocess.run(cmd, env=tool_env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    a, b = load_file(tmp_path / "clean" / "model.safetensors"), load_file(tmp_path / "resumed" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_with_cpu_offload_runs_two_steps(setup, tiny_llama, tmp_path, stage):
    pytest.importorskip("deepspeed")
    zero = {"stage": stage, "offload_optimizer": {"device": "cpu"}}
    if stage == 3:
        zero["offload_param"] = {"device": "cpu"}
    ds = {"zero_optimization": zero, "bf16": {"enabled": False}}
    meta = distill(
        "stage1",
        setup / "student",
        tmp_path / "ds",
        tmp_path / "w",
        GLMD,
        {**TRAIN, "max_steps": 2},
        {"cache": setup / "ccache", "corpus": setup / "corpus", "teacher": tiny_llama},
        ds,
        seed=0,
    )
    assert meta["steps"] == 2
    with open(tmp_path / "ds" / "train_log.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 2
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "ds").config.num_hidden_layers == 1


@pytest.mark.slow
def test_online_teacher_under_zero3_inference_with_offload(setup, tiny_llama):
    pytest.importorskip("deepspeed")
    ds = {"zero_optimization": {"stage": 3, "offload_param": {"device": "cpu"}}, "bf16": {"enabled": False}}
    plain = CorpusData(None, setup / "corpus", None, tiny_llama, online=True, seed=0)
    zero3 = CorpusData(None, setup / "corpus", None, tiny_llama, online=True, seed=0, teacher_deepspeed=ds)
    needs = frozenset({"word_targets"})
    a, b = (data.batch([0, 3], needs) for data in (plain, zero3))
    assert torch.equal(a["ids"], b["ids"])
    targets = [
        data.teacher_outputs(Step(None, [0, 3], batch, needs)).values["word_targets"]
        for data, batch in ((plain, a), (zero3, b))
    ]
    assert torch.allclose(targets[0]["logits"], targets[1]["logits"], atol=1e-5)


def test_glmd_stage2_phases_train_one_after_the_other(setup, tiny_llama, tmp_path, monkeypatch):
    """GLMD's reference stage 2: word_kl alone for the stage's schedule, then candidate_kd alone from that
    student, each with its own optimizer and warm-up. After a failure in phase 2, a rerun reuses the finished
    phase 1 under the same identity and retrains it under another (a changed lr)."""
    import kdflow.distill.phases as engine

    run = {
        "student": "s",
        "stage2": {
            "phases": [
                {"losses": {"word_kl": {"temperature": 15.0}}},
                {"losses": {"candidate_kd": {"temperature": 1.0}}},
            ]
        },
    }
    data = {"cache": setup / "tcache", "task": setup / "task", "teacher": tiny_llama}
    settings = {**TRAIN, "warmup_ratio": 0.5}
    meta = distill("stage2", setup / "student", tmp_path / "out", tmp_path / "w", run, settings, data, None, seed=0)
    assert meta["phase_steps"] == [4, 4] and meta["steps"] == 8 and len(meta["losses"]) == 2
    assert not (tmp_path / "w").exists()  # a finished stage leaves nothing to resume
    with open(tmp_path / "out" / "train_log.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["phase"]) for r in rows] == [1] * 4 + [2] * 4 and [int(r["step"]) for r in rows] == list(range(1, 9))
    assert all(float(r["candidate_kd"]) == 0 for r in rows[:4])  # each phase trains its loss alone
    assert all(float(r["candidate_kd"]) > 0 and float(r["word_kl"]) == 0 for r in rows[4:])
    assert float(rows[4]["lr"]) == pytest.approx(float(rows[0]["lr"]))  # a fresh warm-up in phase 2
    assert float(rows[3]["lr"]) < float(rows[4]["lr"])  # phase 1 decayed, phase 2 starts its own schedule

    real = engine.train_phase

    def fail_in_phase_2(*args, phase=None, **kwargs):
        if phase == 2:
            raise RuntimeError("killed in phase 2")
        return real(*args, phase=phase, **kwargs)

    monkeypatch.setattr(engine, "train_phase", fail_in_phase_2)
    with pytest.raises(RuntimeError, match="phase 2"):
        distill("stage2", setup / "student", tmp_path / "out2", tmp_path / "w", run, settings, data, None, seed=0)
    first = load_file(tmp_path / "w" / "phase1.student" / "model.safetensors")
    start = load_file(setup / "student" / "model.safetensors")
    assert not all(torch.equal(first[k], start[k]) for k in first)  # phase 1 trained the student
    trained: list[int] = []

    def record(*args, phase=None, **kwargs):
        trained.append(phase)
        return real(*args, phase=phase, **kwargs)

    monkeypatch.setattr(engine, "train_phase", record)
    again = distill("stage2", setup / "student", tmp_path / "out2", tmp_path / "w", run, settings, data, None, seed=0)
    final, rerun = load_file(tmp_path / "out" / "model.safetensors"), load_file(tmp_path / "out2" / "model.safetensors")
    assert again["steps"] == 8 and all(torch.equal(final[k], rerun[k]) for k in final)
    assert trained == [2]  # phase 1 reused: same identity
    # the same failure, then a changed lr: phase 1 is not reused, the result is a clean run of the new lr
    monkeypatch.setattr(engine, "train_phase", fail_in_phase_2)
    with pytest.raises(RuntimeError):
        distill("stage2", setup / "student", tmp_path / "out3", tmp_path / "w", run, settings, data, None, seed=0)
    monkeypatch.setattr(engine, "train_phase", record)
    trained.clear()
    changed = {**settings, "lr": 5e-3}
    distill("stage2", setup / "student", tmp_path / "out3", tmp_path / "w", run, changed, data, None, seed=0)
    assert trained == [1, 2]  # phase 1 trained again under the new identity
    monkeypatch.setattr(engine, "train_phase", real)
    distill("stage2", setup / "student", tmp_path / "clean", tmp_path / "wc", run, changed, data, None, seed=0)
    a, b = load_file(tmp_path / "out3" / "model.safetensors"), load_file(tmp_path / "clean" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_phase_overrides_the_stage_training(setup, tiny_llama, tmp_path):
    """`phases[i].training`: a shorter first phase (max_steps 2) with its own lr, the second on the stage's."""
    run = {
        "student": "s",
        "stage2": {
            "phases": [
                {"losses": {"word_kl": {"temperature": 15.0}}, "training": {"max_steps": 2, "lr": 5e-3}},
                {"losses": {"candidate_kd": {"temperature": 1.0}}},
            ]
        },
    }
    data = {"cache": setup / "tcache", "task": setup / "task", "teacher": tiny_llama}
    settings = {**TRAIN, "warmup_ratio": 0.0}
    meta = distill("stage2", setup / "student", tmp_path / "out", tmp_path / "w", run, settings, data, None, seed=0)
    assert meta["phase_steps"] == [2, 4] and meta["steps"] == 6
    with open(tmp_path / "out" / "train_log.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert float(rows[0]["lr"]) == pytest.approx(5e-3) and float(rows[2]["lr"]) == pytest.approx(settings["lr"])
    one = {"student": "s", "stage2": {"phases": [run["stage2"]["phases"][0]]}}  # a single phase's training counts too
    meta = distill("stage2", setup / "student", tmp_path / "one", tmp_path / "w1", one, settings, data, None, seed=0)
    assert meta["steps"] == 2
