"""Evaluation: the classification-head scoring mode, clear errors for bad models, stable metrics, the
leaderboard averages and the summary table."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from kdflow.errors import AssetError, DataError
from kdflow.evaluate import evaluate
from kdflow.leaderboard import benchmark_average, task_score
from kdflow.modeling import count_parameters
from kdflow.summarize import summary_table

SETTINGS = {"batch_size": 8, "max_length": 64, "bootstrap_samples": 50, "latency_examples": 4}


def _head_model(folder, tiny_bert, labels, task_type):
    """A tiny BERT with a sequence-classification head for ``labels``, saved with kdflow metadata."""
    from transformers import AutoTokenizer

    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_labels=max(len(labels), 1),
        id2label=dict(enumerate(labels)) if labels else None,
    )
    torch.manual_seed(0)
    model = BertForSequenceClassification(config)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_bert).save_pretrained(folder)
    (folder / "kdflow.json").write_text(json.dumps({"kdflow": "model", "task_type": task_type}))
    return folder


def test_classification_head_scores_its_task(tmp_path, tiny_bert, sentiment_task):
    model = _head_model(tmp_path / "head", tiny_bert, ["0", "1"], "sst2")
    result = evaluate(
        model,
        sentiment_task,
        tmp_path / "m.json",
        tmp_path / "p.jsonl",
        SETTINGS,
        seed=0,
        efficiency_out=tmp_path / "e.json",
    )
    assert result["scoring"] == "classification head" and result["examples"] == 16
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert all(
        len(r["scores"]) == 2 and r["prediction"] == ["0", "1"][r["scores"].index(max(r["scores"]))] for r in rows
    )
    eff = json.loads((tmp_path / "e.json").read_text())
    assert eff["parameters"]["head"] == 32 * 2 + 2  # the classifier's weight and bias
    assert eff["latency_batch1"]["samples"] == 4 and eff["latency_batch1"]["median_ms"] > 0
    assert eff["vocabulary_size"] == 30522 and eff["disk_bytes"] > 0


def test_a_head_for_another_task_is_refused(tmp_path, tiny_bert, sentiment_task):
    rte_head = _head_model(tmp_path / "rte", tiny_bert, ["entailment", "not_entailment"], "rte")
    with pytest.raises(DataError, match="trained for task type 'rte', not 'sst2'"):
        evaluate(rte_head, sentiment_task, tmp_path / "m.json", tmp_path / "p.jsonl", SETTINGS)
    unlabelled = _head_model(tmp_path / "three", tiny_bert, ["a", "b", "c"], None)
    with pytest.raises(DataError, match=r"the head's labels \['a', 'b', 'c'\] are not the labels of sst2"):
        evaluate(unlabelled, sentiment_task, tmp_path / "m.json", tmp_path / "p.jsonl", SETTINGS)


def test_a_missing_model_is_a_clear_error(tmp_path, sentiment_task):
    with pytest.raises(AssetError, match="model folder does not exist"):
        evaluate(tmp_path / "nope", sentiment_task, tmp_path / "m.json", tmp_path / "p.jsonl", SETTINGS)


@pytest.mark.parametrize("family", ["tiny_llama", "tiny_bert"])
def test_metrics_are_the_same_twice(tmp_path, family, request, sentiment_task):
    model = request.getfixturevalue(family)
    evaluate(model, sentiment_task, tmp_path / "a.json", tmp_path / "a.jsonl", SETTINGS, seed=3)
    evaluate(model, sentiment_task, tmp_path / "b.json", tmp_path / "b.jsonl", SETTINGS, seed=3)
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()


def test_count_parameters_splits_embedding_and_head():
    model = BertForSequenceClassification(
        BertConfig(
            vocab_size=100,
            hidden_size=8,
            intermediate_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_labels=3,
        )
    )
    counts = count_parameters(model)
    assert counts["head"] == 8 * 3 + 3
    assert counts["embedding"] == 100 * 8  # the word-embedding rows (positions belong to the body)
    assert counts["total"] == sum(p.numel() for p in model.parameters())


def test_leaderboard_averages():
    assert task_score({"f1": 0.8, "accuracy": 0.7}) == pytest.approx(75.0)
    glue = {"cola": 40.0, "mnli_m": 80.0, "mnli_mm": 70.0, "ax": 10.0}
    assert benchmark_average("glue", glue) == (pytest.approx((40.0 + 75.0) / 2), 2, 9)
    only_matched = {"cola": 40.0, "mnli_m": 80.0}  # MNLI counts only with both halves
    assert benchmark_average("glue", only_matched) == (40.0, 1, 9)
    superglue = {"cb": task_score({"accuracy": 0.9, "macro_f1": 0.7}), "rte_sg": 60.0, "axb": 5.0}
    assert benchmark_average("superglue", superglue) == (pytest.approx(70.0), 2, 8)
    average, present, _ = benchmark_average("superglue", {})
    assert math.isnan(average) and present == 0


def _entry(model, task, task_type, metrics, role, primary=None):
    primary = primary or next(iter(metrics))
    result = {
        "task_type": task_type,
        "metrics": metrics,
        "primary_metric": primary,
        "ci95": {primary: [metrics[primary] - 0.05, metrics[primary] + 0.05]},
    }
    eff = {
        "parameters": {"total": 1000, "embedding": 100, "head": 0},
        "vocabulary_size": 50,
        "disk_bytes": 4000,
        "latency_batch1": {"median_ms": 2.0},
        "throughput": {"examples_per_second": 10.0},
    }
    return {"model": model, "task": task, "role": role, "result": result, "efficiency": eff}


def test_summary_table_rows_averages_and_retention():
    entries = [
        _entry("teacher_finetuned", "rte", "rte", {"accuracy": 0.8}, "teacher (fine-tuned)"),
        _entry("teacher_finetuned", "mrpc", "mrpc", {"f1": 0.9, "accuracy": 0.7}, "teacher (fine-tuned)"),
        _entry("runs/small", "rte", "rte", {"accuracy": 0.6}, "run"),
        _entry("runs/small", "mrpc", "mrpc", {"f1": 0.8, "accuracy": 0.6}, "run"),
    ]
    manifest = {
        "reference": {"rte": "teacher_finetuned", "mrpc": "teacher_finetuned"},
        "runs": {"small": {"student": "s", "vocabulary": "half"}},
    }
    table = summary_table(manifest, entries).set_index("model")
    assert table.loc["small", "mrpc"] == pytest.approx(70.0)
    assert table.loc["small", "GLUE avg"] == pytest.approx(65.0) and table.loc["small", "GLUE tasks"] == "2/9"
    assert table.loc["small", "retention %"] == pytest.approx((60 / 80 + 70 / 80) / 2 * 100)
    assert math.isnan(table.loc["teacher_finetuned", "retention %"])
    assert table.loc["small", "rte ci_low"] == pytest.approx(55.0)
