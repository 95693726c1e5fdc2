"""Classification-head models (``*ForSequenceClassification`` folders): which task they were trained for,
their input text pairs, and batched logits. The third scoring mode beside continuation and mask filling."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel

from .data.tasks import Example, TaskType
from .errors import DataError
from .modeling import read_metadata
from .runtime import Runtime
from .sharing import load_model

HEAD_KINDS = ("classification", "regression")


def has_classification_head(folder: str | Path) -> bool:
    """True when a model folder's architecture is a sequence-classification model."""
    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    return any(a.endswith("ForSequenceClassification") for a in config.architectures or [])


def head_labels(model: PreTrainedModel) -> list[str]:
    """The head's label names in output order (regression heads: empty)."""
    if model.config.num_labels == 1:
        return []
    return [model.config.id2label[i] for i in range(model.config.num_labels)]


def check_head_matches(folder: str | Path, model: PreTrainedModel, task: TaskType, task_dir: str | Path) -> None:
    """Refuse a head trained for another task, or one whose labels are not the task's labels."""
    meta = read_metadata(folder)
    trained_for = meta.get("task_type")
    if task.kind not in HEAD_KINDS:
        raise DataError(
            f"{folder}: a classification head cannot score {task.name} ({task_dir}), a "
            f"{task.kind} task; use a word-prediction model (cloze scoring) for it"
        )
    if trained_for is not None and trained_for != task.name:
        raise DataError(
            f"{folder}: this classification head was trained for task type '{trained_for}', "
            f"not '{task.name}' ({task_dir})"
        )
    labels = head_labels(model)
    expected = list(task.labels) if task.kind == "classification" else []
    if labels != expected:
        raise DataError(
            f"{folder}: the head's labels {labels or '(one regression output)'} are not the labels "
            f"of {task.name} ({task_dir}): {expected or '(one regression output)'}"
        )


def head_inputs(example: Example) -> tuple[str, str | None]:
    """The (text_a, text_b) pair of an example: its first string field, and the rest joined by spaces."""
    texts = [v for v in example["fields"].values() if isinstance(v, str)]
    if not texts:
        raise DataError(f"example {example['idx']!r} has no text field")
    return texts[0], (" ".join(texts[1:]) or None)


def load_classifier(
    folder: str | Path, runtime: Runtime | None = None, teacher: bool = False
) -> tuple[PreTrainedModel, Any]:
    """A sequence-classification model (eval mode; on the runtime's device, in the teacher dtype when it is a
    frozen teacher, else fp32) and its tokenizer."""
    runtime = runtime or Runtime()
    model = load_model(AutoModelForSequenceClassification, folder, **runtime.load_kwargs(teacher))
    model = runtime.place(model, teacher=teacher)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def encode_pairs(tokenizer: Any, examples: Sequence[Example], max_length: int) -> dict[str, torch.Tensor]:
    """Tokenise examples as (text_a, text_b) pairs, truncating the longer side first."""
    pairs = [head_inputs(ex) for ex in examples]
    firsts = [a for a, _ in pairs]
    seconds = [b for _, b in pairs]
    if all(b is None for b in seconds):
        return tokenizer(firsts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    seconds = [b or "" for b in seconds]
    return tokenizer(
        firsts, seconds, truncation="longest_first", max_length=max_length, padding=True, return_tensors="pt"
    )


def pair_lengths(tokenizer: Any, examples: Sequence[Example], max_length: int) -> list[int]:
    """Each example's tokens as `encode_pairs` gives them (truncated, unpadded)."""
    pairs = [head_inputs(ex) for ex in examples]
    if all(b is None for _, b in pairs):
        encoded = tokenizer([a for a, _ in pairs], truncation=True, max_length=max_length)
    else:
        seconds = [b or "" for _, b in pairs]
        encoded = tokenizer([a for a, _ in pairs], seconds, truncation="longest_first", max_length=max_length)
    return [len(ids) for ids in encoded["input_ids"]]


@torch.no_grad()
def classify(
    model: PreTrainedModel,
    tokenizer: Any,
    examples: Sequence[Example],
    batch_size: int = 16,
    max_length: int = 256,
    progress: bool = True,
    runtime: Runtime | None = None,
) -> list[list[float]]:
    """Head logits of every example (one list per example; one value for a regression head)."""
    runtime = runtime or Runtime()
    order = sorted(range(len(examples)), key=lambda k: sum(len(t or "") for t in head_inputs(examples[k])))
    out: list[list[float]] = [[] for _ in examples]
    bar = tqdm(total=len(examples), desc="classifying", unit="ex", disable=not progress)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        enc = runtime.to(encode_pairs(tokenizer, [examples[k] for k in chunk], max_length))
        logits = model(**enc).logits.float()
        for k, row in zip(chunk, logits.tolist(), strict=True):
            out[k] = row
        bar.update(len(chunk))
    bar.close()
    return out
