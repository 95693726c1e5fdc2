"""Rule `evaluate`: score a model on a prepared task's dev split (official metrics + bootstrap CI),
save per-example predictions, and write the test split's submission file when asked."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from .data.submission import write_submission
from .data.tasks import Example, TaskType
from .errors import DataError
from .jsonio import write_json
from .metrics import bootstrap_ci, compute
from .modeling import count_parameters, load_lm
from .prepare import load_prepared
from .scoring import score_clozes


def predictions(task: TaskType, labels: list[str], scores: list[list[float]], examples: list[Example]) -> list[Any]:
    """Turn candidate scores into labels in the task's normalised label space."""
    out: list[Any] = []
    for row, ex in zip(scores, examples, strict=True):
        best = max(range(len(row)), key=row.__getitem__)
        if task.kind == "regression":
            high = labels.index("high")
            z = max(row)
            probs = [math.exp(s - z) for s in row]
            out.append(5.0 * probs[high] / sum(probs))
        elif task.kind == "record":
            out.append(ex["candidates"][best])
        elif task.kind == "candidates":
            out.append(str(best))
        else:
            out.append(labels[best])
    return out


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def predict_split(model_dir: str | Path, task_dir: str | Path, split: str, settings: dict[str, Any]) -> dict[str, Any]:
    """Load the model and the prepared split, score every cloze; returns what evaluate/submit need."""
    data = load_prepared(task_dir, split)
    model, tokenizer, family = load_lm(model_dir)
    started = time.perf_counter()
    scores = score_clozes(model, tokenizer, family, data.clozes, batch_size=settings["batch_size"],
                          max_length=settings["max_length"])  # fmt: skip
    seconds = time.perf_counter() - started
    preds = predictions(data.task, data.labels, scores, data.examples)
    return {"meta": data.meta, "task": data.task, "examples": data.examples, "scores": scores, "preds": preds,
            "model": model, "family": family, "seconds": seconds}  # fmt: skip


def evaluate(
    model_dir: str | Path,
    task_dir: str | Path,
    out: str | Path,
    predictions_out: str | Path,
    settings: dict[str, Any],
    seed: int = 0,
) -> dict[str, Any]:
    """Official dev metrics with a bootstrap CI, per-example predictions, size and speed of the model."""
    model_dir = Path(model_dir)
    r = predict_split(model_dir, task_dir, "dev", settings)
    task, examples, preds, meta = r["task"], r["examples"], r["preds"], r["meta"]
    golds = [ex["label"] for ex in examples]
    if any(g is None for g in golds):
        raise DataError(f"{Path(task_dir) / 'dev.jsonl'}: the dev split has unlabelled examples")
    values = compute(task.metrics, golds, preds, examples)
    primary = task.metrics[0]
    ci = bootstrap_ci(primary, golds, preds, examples, samples=settings["bootstrap_samples"], seed=seed)
    Path(predictions_out).parent.mkdir(parents=True, exist_ok=True)
    with open(predictions_out, "w", encoding="utf-8") as fh:
        for ex, pred, row in zip(examples, preds, r["scores"], strict=True):
            fh.write(json.dumps({"idx": ex["idx"], "label": ex["label"], "prediction": pred, "scores": row}) + "\n")
    result = {
        "model": str(model_dir),
        "task": meta["name"],
        "task_type": task.name,
        "benchmark": task.benchmark,
        "split": "dev",
        "examples": len(examples),
        "scoring": "continuation log-likelihood" if r["family"] == "causal" else "mask filling",
        "prompt": meta["prompt"],
        "metrics": values,
        "primary_metric": primary,
        "ci95": {primary: list(ci) if ci else None},
        "label_counts": meta["label_counts"].get("dev", {}),
        "parameters": count_parameters(r["model"]),
        "disk_bytes": _folder_bytes(model_dir),
        "seconds": r["seconds"],
        "examples_per_second": len(examples) / r["seconds"] if r["seconds"] > 0 else None,
    }
    write_json(out, result)
    return result


def submit(model_dir: str | Path, task_dir: str | Path, out_dir: str | Path, settings: dict[str, Any]) -> Path:
    """Predict the test split and write it in the benchmark's submission format."""
    r = predict_split(model_dir, task_dir, "test", settings)
    return write_submission(r["task"], r["examples"], r["preds"], out_dir)
