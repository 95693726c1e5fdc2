"""Rule `evaluate`: score a model on a prepared task's dev split (official metrics + bootstrap CI),
save per-example predictions, and write the test split's submission file when asked."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from .data.submission import write_submission
from .data.tasks import Example, TaskType, get_task
from .errors import DataError
from .jsonio import read_json, write_json
from .metrics import bootstrap_ci, compute
from .modeling import count_parameters, load_lm
from .prepare import read_prepared
from .prompts import label_order, resolve_prompt, to_cloze
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


def evaluate(
    model_dir: str | Path,
    task_dir: str | Path,
    out: str | Path,
    predictions_out: str | Path,
    settings: dict[str, Any],
    seed: int = 0,
) -> dict[str, Any]:
    task_dir, model_dir = Path(task_dir), Path(model_dir)
    meta = read_json(task_dir / "task.json")
    task = get_task(meta["task"])
    prompt = resolve_prompt(task, meta["prompt"])
    labels = label_order(task, prompt)
    if "dev" not in meta["splits"]:
        raise DataError(f"{task_dir}: task {meta['name']} has no dev split to evaluate")
    examples = read_prepared(task_dir / "dev.jsonl")
    model, tokenizer, family = load_lm(model_dir)
    clozes = [to_cloze(task, prompt, ex) for ex in examples]
    started = time.perf_counter()
    scores = score_clozes(
        model, tokenizer, family, clozes, batch_size=settings["batch_size"], max_length=settings["max_length"]
    )
    elapsed = time.perf_counter() - started
    preds = predictions(task, labels, scores, examples)
    golds = [ex["label"] for ex in examples]
    if any(g is None for g in golds):
        raise DataError(f"{task_dir / 'dev.jsonl'}: the dev split has unlabelled examples")
    values = compute(task.metrics, golds, preds, examples)
    primary = task.metrics[0]
    ci = bootstrap_ci(primary, golds, preds, examples, samples=settings["bootstrap_samples"], seed=seed)
    Path(predictions_out).parent.mkdir(parents=True, exist_ok=True)
    with open(predictions_out, "w", encoding="utf-8") as fh:
        for ex, pred, row in zip(examples, preds, scores, strict=True):
            fh.write(json.dumps({"idx": ex["idx"], "label": ex["label"], "prediction": pred, "scores": row}) + "\n")
    result = {
        "model": str(model_dir),
        "task": meta["name"],
        "task_type": task.name,
        "benchmark": task.benchmark,
        "split": "dev",
        "examples": len(examples),
        "scoring": "continuation log-likelihood" if family == "causal" else "mask filling",
        "prompt": meta["prompt"],
        "metrics": values,
        "primary_metric": primary,
        "ci95": {primary: list(ci) if ci else None},
        "label_counts": meta["label_counts"].get("dev", {}),
        "parameters": count_parameters(model),
        "disk_bytes": _folder_bytes(model_dir),
        "seconds": elapsed,
        "examples_per_second": len(examples) / elapsed if elapsed > 0 else None,
    }
    write_json(out, result)
    return result


def submit(model_dir: str | Path, task_dir: str | Path, out_dir: str | Path, settings: dict[str, Any]) -> Path:
    """Predict the test split and write it in the benchmark's submission format."""
    task_dir = Path(task_dir)
    meta = read_json(task_dir / "task.json")
    task = get_task(meta["task"])
    if "test" not in meta["splits"]:
        raise DataError(f"{task_dir}: task {meta['name']} has no test split to predict")
    prompt = resolve_prompt(task, meta["prompt"])
    examples = read_prepared(task_dir / "test.jsonl")
    model, tokenizer, family = load_lm(model_dir)
    scores = score_clozes(
        model, tokenizer, family, [to_cloze(task, prompt, ex) for ex in examples],
        batch_size=settings["batch_size"], max_length=settings["max_length"],
    )  # fmt: skip
    preds = predictions(task, label_order(task, prompt), scores, examples)
    return write_submission(task, examples, preds, out_dir)
