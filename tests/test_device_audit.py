"""Every rule that computes, two steps each, under the device audit (kdflow.device_audit): no operation may mix
a tensor on the target device with a non-scalar tensor that was never moved there. On a CUDA machine such an
operation is an error; here, without a GPU, the audit is what finds it. Every loss family is covered: word
prediction, the encoder track's intermediate losses, DIITO's interchange, Continuation-KD, LRC-BERT's
perturbed step and the multi-teacher combinations."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_CACHE, TINY_TRAIN, pack_text

from kdflow.cache.build import cache_corpus, cache_task
from kdflow.device_audit import DeviceAudit
from kdflow.distill import distill
from kdflow.evaluate import evaluate, submit
from kdflow.finetune import finetune_classifier, finetune_teacher
from kdflow.runtime import Runtime, compute_settings
from kdflow.students import init_student

TRAIN = {**TINY_TRAIN, "epochs": 1, "max_steps": 2, "max_examples": 8}
CACHE = TINY_CACHE
EVAL = {"batch_size": 8, "max_length": 48, "bootstrap_samples": 10, "latency_examples": 2}


def audited(fn, *args, compute=None, **kwargs):
    """Run ``fn(*args, runtime=..., **kwargs)`` under the audit (with ``compute`` settings); fail with every
    violation it saw."""
    with DeviceAudit() as audit:
        result = fn(*args, runtime=Runtime(audit=audit, settings=compute_settings(compute)), **kwargs)
    assert audit.violations == [], "\n".join(dict.fromkeys(audit.violations))
    return result


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_llama, tiny_bert, sentiment_task):
    root = tmp_path_factory.mktemp("audit")
    pack_text(root, tiny_llama, name="corpus")
    pack_text(root, tiny_bert, name="bert_corpus")
    audited(cache_corpus, tiny_llama, root / "corpus", None, root / "ccache", CACHE, seed=0)
    audited(cache_corpus, tiny_llama, root / "corpus", None, root / "hcache", {**CACHE, "mode": "hidden"}, seed=0)
    audited(cache_task, tiny_llama, sentiment_task, None, root / "tcache", CACHE)
    audited(finetune_classifier, tiny_bert, sentiment_task, root / "classifier", root / "wc", TRAIN, None, seed=0)
    for name, teacher in (("llama_student", tiny_llama), ("bert_student", tiny_bert)):
        init_student(teacher, {"layers": {"strategy": "last", "count": 1}}, None, root / name, seed=0)
    return root


def test_caches_and_fine_tunings(tmp_path, tiny_llama, sentiment_task, env):
    audited(finetune_teacher, tiny_llama, sentiment_task, tmp_path / "ft", tmp_path / "w", TRAIN, None, seed=0)
    assert (env / "ccache" / "manifest.json").exists() and (env / "classifier" / "kdflow.json").exists()


CASES = [  # (losses, stage, track, stage-1 teacher)
    ({"word_kl": {}}, "stage1", "decoder", "cached"),
    ({"word_kl": {}}, "stage1", "decoder", "online"),
    ({"word_kl": {}}, "stage1", "decoder", "hidden"),
    ({"codir": {"negatives": 4}}, "stage1", "encoder", "cached"),
    ({"word_kl": {}, "candidate_kd": {}}, "stage2", "decoder", None),
    ({"codir": {"negatives": 4}, "kd": {}}, "stage2", "encoder", None),
    ({"lrc": {}}, "stage2", "encoder", None),
    ({"theseus": {}}, "stage2", "encoder", None),
    ({"theseus": {}}, "stage2", "decoder", None),
    ({"tinybert": {}}, "stage2", "encoder", None),
    ({"minilm": {}, "pkd": {}}, "stage2", "encoder", None),
    ({"diito": {"proportion": 0.3}, "kd": {}, "ce": {}, "hidden_cosine": {}}, "stage2", "encoder", None),
    ({"continuation_kd": {"max_temperature": 10.0}}, "stage2", "encoder", None),
    ({"lrc_bert": {"perturbation": 1.0}, "kd": {}, "ce": {}}, "stage2", "encoder", None),
]


@pytest.mark.parametrize(
    ("losses", "stage", "track", "teacher"), CASES, ids=[f"{'+'.join(c[0])}-{c[1]}-{c[2]}-{c[3]}" for c in CASES]
)
def test_distillation(env, tiny_llama, tiny_bert, sentiment_task, tmp_path, losses, stage, track, teacher):
    decoder = track == "decoder"
    student = env / ("llama_student" if decoder else "bert_student")
    if stage == "stage1":
        cache = {"cached": env / "ccache", "hidden": env / "hcache"}.get(teacher) if decoder else None
        data = {
            "cache": cache,
            "corpus": env / ("corpus" if decoder else "bert_corpus"),
            "teacher": tiny_llama if decoder else tiny_bert,
        }
    else:
        data = {
            "cache": env / "tcache" if decoder else None,
            "task": sentiment_task,
            "teacher": tiny_llama if decoder else env / "classifier",
        }
    settings = {**TRAIN, "teacher": "online" if teacher == "online" else "cached"}
    meta = audited(
        distill,
        stage,
        student,
        tmp_path / "out",
        tmp_path / "w",
        {"student": "s", stage: {"losses": losses}},
        settings,
        data,
        None,
        seed=0,
    )
    assert meta["steps"] == 2


@pytest.mark.parametrize("source", ["hidden", "online", "stage2"])
def test_fused_word_loss(env, tiny_llama, sentiment_task, tmp_path, source):
    """compute.loss_chunk: the student's head inputs, its head and the teacher's decoded rows stay on the device."""
    stage = "stage2" if source == "stage2" else "stage1"
    data = (
        {"cache": env / "tcache", "task": sentiment_task, "teacher": tiny_llama}
        if stage == "stage2"
        else {"cache": env / "hcache" if source == "hidden" else None, "corpus": env / "corpus", "teacher": tiny_llama}
    )
    settings = {**TRAIN, "teacher": "online" if source == "online" else "cached"}
    losses = {"word_kl": {}, "lm": {}} if stage == "stage1" else {"word_kl": {}}
    run = {"student": "s", stage: {"losses": losses}}
    out, work = tmp_path / "out", tmp_path / "w"
    student = env / "llama_student"
    meta = audited(distill, stage, student, out, work, run, settings, data, None, seed=0, compute={"loss_chunk": 7})
    assert meta["steps"] == 2


@pytest.mark.parametrize("method", ["mt_bert", "rl_kd", "uncertainty", "dgkd"])
def test_multi_teacher(env, sentiment_task, tmp_path, method):
    """Two classifier teachers, online on every batch, their per-example or per-step terms combined."""
    data = {"cache": None, "task": sentiment_task, "teacher": env / "classifier"}
    data["teachers"] = [env / "classifier", env / "classifier"]
    run = {"student": "s", "stage2": {"losses": {"kd": {}, "ce": {}}, "multi_teacher": {"method": method}}}
    student, out, work = env / "bert_student", tmp_path / "out", tmp_path / "w"
    meta = audited(distill, "stage2", student, out, work, run, {**TRAIN, "teacher": "cached"}, data, None, seed=0)
    assert meta["steps"] == 2 and meta["multi_teacher"]["method"] == method and len(meta["teachers"]) == 2


def test_evaluate_and_submit(env, sentiment_task, tmp_path):
    for model in (env / "llama_student", env / "classifier"):
        result = audited(
            evaluate,
            model,
            sentiment_task,
            tmp_path / "m.json",
            tmp_path / "p.jsonl",
            EVAL,
            efficiency_out=tmp_path / "e.json",
        )
        assert result["examples"] > 0
        audited(submit, model, sentiment_task, tmp_path / model.name, EVAL)


@pytest.mark.parametrize(
    "losses", [{"codir": {"negatives": 4}}, {"pkd": {}}, {"word_kl": {}}], ids=["codir", "pkd", "word_kl"]
)
@pytest.mark.parametrize("engine", ["autocast", "deepspeed"])
def test_bf16_training_saves_an_fp32_student(env, tiny_llama, sentiment_task, tmp_path, losses, engine):
    if engine == "deepspeed":
        pytest.importorskip("deepspeed")
    decoder = "word_kl" in losses
    stage = "stage1" if decoder else "stage2"
    data = (
        {"cache": env / "ccache", "corpus": env / "corpus", "teacher": tiny_llama}
        if decoder
        else {"cache": None, "task": sentiment_task, "teacher": env / "classifier"}
    )
    runtime = Runtime(settings={**compute_settings(None), "precision": "bf16"})
    ds = {"zero_optimization": {"stage": 2}} if engine == "deepspeed" else None
    distill(
        stage,
        env / ("llama_student" if decoder else "bert_student"),
        tmp_path / "out",
        tmp_path / "w",
        {"student": "s", stage: {"losses": losses}},
        TRAIN,
        data,
        ds,
        seed=0,
        runtime=runtime,
    )
    from safetensors.torch import load_file

    weights = load_file(tmp_path / "out" / "model.safetensors")
    assert {v.dtype for v in weights.values()} == {torch.float32}
    assert all(torch.isfinite(v).all() for v in weights.values())
