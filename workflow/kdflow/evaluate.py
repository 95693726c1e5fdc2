"""Rule `evaluate`: score a model on a prepared task's dev split (official metrics + bootstrap CI) by
continuation log-likelihood (causal LMs), mask filling (masked LMs) or a classification head; save
per-example predictions and the model's size and speed; rule `submit`: the test split's submission file."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel

from .classify import check_head_matches, classify, has_classification_head, load_classifier
from .data.submission import write_submission
from .data.tasks import Example, TaskType
from .efficiency import efficiency_report
from .errors import AssetError, DataError
from .jsonio import read_json, write_json
from .metrics import bootstrap_ci, compute
from .modeling import load_lm
from .prepare import PreparedTask, load_prepared
from .runtime import Runtime
from .safeio import atomic_path, make_dirs
from .scoring import context_length, score_clozes

log = logging.getLogger(__name__)


HEAD = "classification head"


def predictions(
    task: TaskType, labels: list[str], scores: list[list[float]], examples: list[Example], mode: str = "cloze"
) -> list[Any]:
    """Turn candidate scores (or a head's logits, ``mode`` = HEAD) into labels in the task's label space."""
    out: list[Any] = []
    for row, ex in zip(scores, examples, strict=True):
        best = max(range(len(row)), key=row.__getitem__)
        if task.kind == "regression" and mode == HEAD:
            out.append(float(row[0]))
        elif task.kind == "regression":
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


@dataclass
class Scorer:
    """A loaded model and how it scores a prepared task: continuation, mask filling or its head."""

    model: PreTrainedModel
    tokenizer: Any
    mode: str
    family: str
    runtime: Runtime

    @classmethod
    def load(cls, model_dir: str | Path, data: PreparedTask, task_dir: str | Path, runtime: Runtime) -> Scorer:
        """The model on the runtime's device, in its frozen-model dtype (``compute.teacher_dtype``)."""
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise AssetError(
                f"{model_dir}: model folder does not exist (is the model name right, and did the rule "
                f"that makes it run?)"
            )
        if (model_dir / "config.json").exists() and has_classification_head(model_dir):
            model, tokenizer = load_classifier(model_dir, runtime, teacher=True)
            check_head_matches(model_dir, model, data.task, task_dir)
            return cls(model, tokenizer, HEAD, "classifier", runtime)
        model, tokenizer, family = load_lm(model_dir, runtime=runtime, teacher=True)
        mode = "continuation log-likelihood" if family == "causal" else "mask filling"
        return cls(model, tokenizer, mode, family, runtime)

    def scores(
        self,
        data: PreparedTask,
        indices: Sequence[int],
        settings: dict[str, Any],
        progress: bool = True,
        truncated: list[int] | None = None,
    ) -> list[list[float]]:
        """Scores of the examples ``indices`` of ``data`` (candidate log-likelihoods, or head logits);
        ``truncated`` receives the positions (in ``indices``) of the examples cut to ``max_length``."""
        batch = settings["batch_size"]
        length = context_length(self.model, self.tokenizer, settings.get("max_length"))
        if self.mode == HEAD:
            out = classify(
                self.model, self.tokenizer, [data.examples[i] for i in indices], batch, length, progress, self.runtime
            )
        else:
            out = score_clozes(
                self.model,
                self.tokenizer,
                self.family,
                [data.clozes[i] for i in indices],
                batch_size=batch,
                max_length=length,
                progress=progress,
                truncated=truncated,
                add_special_tokens=settings.get("add_special_tokens", True),
                runtime=self.runtime,
            )
        self.runtime.synchronize()  # timings around this call measure finished work
        return out


def predict_split(
    model_dir: str | Path,
    task_dir: str | Path,
    split: str | None,
    settings: dict[str, Any],
    runtime: Runtime | None = None,
) -> dict[str, Any]:
    """Load the model and the prepared split (None: the split `evaluate` scores, dev or a labelled test file),
    score every example; returns what evaluate/submit need."""
    data = load_prepared(task_dir, split or evaluation_split(task_dir))
    scorer = Scorer.load(model_dir, data, task_dir, runtime or Runtime())
    started = time.perf_counter()
    truncated: list[int] = []
    scores = scorer.scores(data, range(len(data.examples)), settings, truncated=truncated)
    seconds = time.perf_counter() - started
    if truncated:
        log.warning(
            "%s: %d of %d examples are longer than max_length %s and lose tokens on the left (first: idx %s)",
            task_dir,
            len(truncated),
            len(data.examples),
            settings.get("max_length"),
            data.examples[truncated[0]]["idx"],
        )
    preds = predictions(data.task, data.labels, scores, data.examples, scorer.mode)
    return {
        "data": data,
        "scores": scores,
        "preds": preds,
        "scorer": scorer,
        "seconds": seconds,
        "truncated": len(truncated),
    }


def evaluation_split(task_dir: str | Path) -> str:
    """The labelled split of a prepared task that `evaluate` scores, or a DataError saying why there is none."""
    meta = read_json(Path(task_dir) / "task.json")
    split = meta.get("eval_split", "dev" if "dev" in meta["splits"] else None)
    if split is None:
        raise DataError(
            f"{task_dir}: task {meta['name']} has no labelled split to evaluate on (prepared: "
            f"{', '.join(meta['splits']) or 'none'}; {meta['task']}'s test file carries no labels)"
        )
    return split


def _write_predictions(path: str | Path, examples: list[Example], preds: list[Any], scores: list[Any]) -> None:
    """One JSON line per example: idx, gold label, prediction and the scores it came from (written whole)."""
    make_dirs(Path(path).parent)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for ex, pred, row in zip(examples, preds, scores, strict=True):
            fh.write(json.dumps({"idx": ex["idx"], "label": ex["label"], "prediction": pred, "scores": row}) + "\n")


def _write_efficiency(path: str | Path, r: dict[str, Any], model_dir: Path, settings: dict[str, Any]) -> None:
    """The model's size, batch-1 latency (median over ``settings['latency_examples']`` examples) and throughput."""
    scorer, data = r["scorer"], r["data"]
    count = min(settings.get("latency_examples", 16), len(data.examples))
    report = efficiency_report(
        scorer.model,
        model_dir,
        lambda i: scorer.scores(data, [i], settings, False),
        count,
        len(data.examples),
        r["seconds"],
        settings["batch_size"],
    )
    write_json(
        path, {"task": data.meta["name"], "scoring": scorer.mode, **report, "compute": scorer.runtime.describe()}
    )


def evaluate(
    model_dir: str | Path,
    task_dir: str | Path,
    out: str | Path,
    predictions_out: str | Path,
    settings: dict[str, Any],
    seed: int = 0,
    efficiency_out: str | Path | None = None,
    runtime: Runtime | None = None,
) -> dict[str, Any]:
    """Official metrics on the evaluation split (dev; AX-b and AX-g: their labelled test file) with a bootstrap
    CI and per-example predictions; with ``efficiency_out``, also
    the model's size, batch-1 latency (median over ``settings['latency_examples']`` examples) and throughput."""
    model_dir = Path(model_dir)
    split = evaluation_split(task_dir)
    r = predict_split(model_dir, task_dir, split, settings, runtime)
    data, preds = r["data"], r["preds"]
    task, examples, meta = data.task, data.examples, data.meta
    golds = [ex["label"] for ex in examples]
    if any(g is None for g in golds):
        raise DataError(f"{Path(task_dir) / f'{split}.jsonl'}: the {split} split has unlabelled examples")
    values = compute(task.metrics, golds, preds, examples)
    primary = task.metrics[0]
    ci = bootstrap_ci(primary, golds, preds, examples, samples=settings["bootstrap_samples"], seed=seed)
    _write_predictions(predictions_out, examples, preds, r["scores"])
    result = {
        "model": str(model_dir),
        "task": meta["name"],
        "task_type": task.name,
        "benchmark": task.benchmark,
        "split": split,
        "examples": len(examples),
        "truncated": r["truncated"],
        "scoring": r["scorer"].mode,
        "prompt": meta["prompt"] if r["scorer"].mode != HEAD else None,
        "metrics": values,
        "primary_metric": primary,
        "ci95": {primary: list(ci) if ci else None},
        "label_counts": meta["label_counts"].get(split, {}),
    }
    write_json(out, result)
    if efficiency_out is not None:
        _write_efficiency(efficiency_out, r, model_dir, settings)
    return result


def submit(
    model_dir: str | Path,
    task_dir: str | Path,
    out_dir: str | Path,
    settings: dict[str, Any],
    runtime: Runtime | None = None,
) -> Path:
    """Predict the test split and write it in the benchmark's submission format."""
    r = predict_split(model_dir, task_dir, "test", settings, runtime)
    return write_submission(r["data"].task, r["data"].examples, r["preds"], out_dir)
