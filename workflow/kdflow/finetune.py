"""Rules `finetune_teacher` (the teacher learns a task in cloze form: pattern + verbalizer/candidates, loss
on the candidate scores) and `finetune_classifier` (an encoder learns it with a classification head).
The `evaluate` rule scores both like every other model."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from . import faults
from .classify import HEAD_KINDS, encode_pairs, pair_lengths
from .data.tasks import Example, TaskType
from .errors import DataError
from .fingerprint import job_identity, weights_fingerprint
from .jsonio import read_json, write_json
from .losses.inputs import StepInputs
from .losses.prediction import GoldCE
from .modeling import count_parameters, load_lm
from .prepare import load_prepared
from .runtime import Runtime
from .safeio import atomic_folder
from .scoring import candidate_scores, cloze_lengths
from .sharing import load_model, save_model
from .train.loop import train
from .train.settings import TrainSettings, seed_everything, steps_for
from .train.workdir import WorkDir


def gold_target(task: TaskType, labels: list[str], example: Example) -> torch.Tensor:
    """Target distribution over the candidates of one example."""
    label = example["label"]
    if task.kind == "regression":
        high = float(label) / 5.0
        return torch.tensor([high if lab == "high" else 1 - high for lab in labels])
    if task.kind == "candidates":
        index = int(label)
        n = len(example["candidates"])
    elif task.kind == "record":
        n = len(example["candidates"])
        hits = [i for i, c in enumerate(example["candidates"]) if c in label]
        if not hits:
            raise DataError(f"ReCoRD example {example['idx']}: no gold answer among its candidates")
        target = torch.zeros(n)
        target[hits] = 1.0 / len(hits)
        return target
    else:
        index, n = labels.index(label), len(labels)
    target = torch.zeros(n)
    target[index] = 1.0
    return target


def finetune_teacher(
    teacher_dir: str | Path,
    task_dir: str | Path,
    out_dir: str | Path,
    work_dir: str | Path,
    settings: dict[str, Any],
    deepspeed: dict[str, Any] | None,
    seed: int,
    runtime: Runtime | None = None,
) -> dict[str, Any]:
    """Prompt fine-tuning of the teacher on a task: the loss is the cross-entropy of the candidates' scores."""
    task_dir, out_dir = Path(task_dir), Path(out_dir)
    runtime = runtime or Runtime.create()
    data = load_prepared(task_dir, "train", settings.get("max_examples"))
    meta, task, examples, clozes = data.meta, data.task, data.examples, data.clozes
    targets = [gold_target(task, data.labels, ex) for ex in examples]
    model, tokenizer, family = load_lm(teacher_dir, runtime=runtime)
    gold_ce = GoldCE()

    def loss_fn(module: torch.nn.Module, indices: list[int], step: int) -> tuple[torch.Tensor, dict[str, float], int]:
        scores, tokens = candidate_scores(
            module, tokenizer, family, [clozes[i] for i in indices], settings["max_length"], runtime
        )
        loss = gold_ce(StepInputs(student_scores=scores, labels=runtime.to([targets[i] for i in indices])))
        return loss, {"cloze_ce": loss.item()}, tokens

    steps = steps_for(
        len(examples), settings["epochs"], settings["batch_size"], settings["grad_accum"], settings.get("max_steps")
    )
    identity = job_identity(
        {"model": teacher_dir, "task": task_dir},
        job="finetune_teacher",
        settings=settings,
        deepspeed=deepspeed,
        seed=seed,
    )
    with WorkDir(work_dir, identity, runtime.ranks.main) as work:
        grouped = settings.get("group_by_length")
        lengths = cloze_lengths(clozes, tokenizer, family, settings["max_length"]) if grouped else None
        train_settings = TrainSettings.from_config(settings, steps, seed)
        trained = train(model, loss_fn, len(examples), train_settings, work, deepspeed, runtime, lengths)
        if not runtime.ranks.main:  # data-parallel helpers: the main process writes the model
            return {}
        info = {
            "task": meta["name"],
            "steps": steps,
            "training_examples": len(examples),
            "settings": settings,
            "deepspeed": deepspeed,
        }
        meta = _save_teacher(trained, tokenizer, teacher_dir, out_dir, work, {**info, "family": family})
        work.remove()
    return meta


def _head_model(model_dir: str | Path, task: Any, examples: list, runtime: Runtime) -> tuple[Any, torch.Tensor]:
    """``model_dir`` with a new head for ``task`` (one output for regression, one per label otherwise) and
    each training example's target (a float, or the label's index)."""
    if task.kind == "regression":
        head: dict[str, Any] = {"num_labels": 1, "problem_type": "regression"}
        targets = torch.tensor([float(ex["label"]) for ex in examples])
    else:
        labels = list(task.labels)
        head = {
            "num_labels": len(labels),
            "id2label": dict(enumerate(labels)),
            "problem_type": "single_label_classification",
            "label2id": {lab: i for i, lab in enumerate(labels)},
        }
        targets = torch.tensor([labels.index(str(ex["label"])) for ex in examples])
    model = load_model(AutoModelForSequenceClassification, model_dir, **head, **runtime.load_kwargs())
    return model, targets


def finetune_classifier(
    model_dir: str | Path,
    task_dir: str | Path,
    out_dir: str | Path,
    work_dir: str | Path,
    settings: dict[str, Any],
    deepspeed: dict[str, Any] | None,
    seed: int,
    runtime: Runtime | None = None,
) -> dict[str, Any]:
    """Fine-tune ``model_dir`` with a classification (or regression) head on a task: the encoder track's
    teacher, scored by `evaluate` through its head."""
    task_dir, out_dir = Path(task_dir), Path(out_dir)
    runtime = runtime or Runtime.create()
    data = load_prepared(task_dir, "train", settings.get("max_examples"))
    task, examples = data.task, data.examples
    if task.kind not in HEAD_KINDS:
        raise DataError(
            f"{task_dir}: {task.name} is a {task.kind} task; a classification head cannot learn it "
            "(use the word-prediction teacher, teacher_finetune)"
        )
    regression = task.kind == "regression"
    seed_everything(seed)  # the new head's initial weights come from the seed
    model, targets = _head_model(model_dir, task, examples, runtime)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)

    def loss_fn(module: torch.nn.Module, indices: list[int], step: int) -> tuple[torch.Tensor, dict[str, float], int]:
        enc, gold = runtime.to(
            (encode_pairs(tokenizer, [examples[i] for i in indices], settings["max_length"]), targets[indices])
        )
        logits = module(**enc).logits.float()
        if regression:
            loss = torch.nn.functional.mse_loss(logits[:, 0], gold)
        else:
            loss = torch.nn.functional.cross_entropy(logits, gold)
        return loss, {"head_loss": loss.item()}, int(enc["attention_mask"].sum())

    steps = steps_for(
        len(examples), settings["epochs"], settings["batch_size"], settings["grad_accum"], settings.get("max_steps")
    )
    inputs = {"model": model_dir, "task": task_dir}
    identity = job_identity(inputs, job="finetune_classifier", settings=settings, deepspeed=deepspeed, seed=seed)
    with WorkDir(work_dir, identity, runtime.ranks.main) as work:
        grouped = settings.get("group_by_length")
        lengths = pair_lengths(tokenizer, examples, settings["max_length"]) if grouped else None
        train_settings = TrainSettings.from_config(settings, steps, seed)
        trained = train(model, loss_fn, len(examples), train_settings, work, deepspeed, runtime, lengths)
        if not runtime.ranks.main:
            return {}
        info = {"task": data.meta["name"], "task_type": task.name, "head": "classification", "steps": steps}
        info.update(training_examples=len(examples), settings=settings, deepspeed=deepspeed, family="masked")
        meta = _save_teacher(trained, tokenizer, model_dir, out_dir, work, info)
        work.remove()
    return meta


def _save_teacher(
    model: torch.nn.Module, tokenizer: Any, parent_dir: str | Path, out_dir: Path, work: WorkDir, info: dict[str, Any]
) -> dict[str, Any]:
    """The fine-tuned model folder (fp32, whatever the training precision), its training log and kdflow.json."""
    model = model.float().eval()
    with atomic_folder(out_dir) as tmp:
        save_model(model, tmp)
        tokenizer.save_pretrained(tmp)
        shutil.copy(work.log_csv, tmp / "train_log.csv")
        _write_teacher_meta(model, parent_dir, tmp, info)
    return read_json(out_dir / "kdflow.json")


def _write_teacher_meta(model: torch.nn.Module, parent_dir: str | Path, out_dir: Path, info: dict[str, Any]) -> None:
    parent = read_json(Path(parent_dir) / "kdflow.json") if (Path(parent_dir) / "kdflow.json").exists() else {}
    meta = {
        **{k: v for k, v in parent.items() if k in ("family", "architecture", "vocab_size")},
        "kdflow": "model",
        "role": "teacher",
        "parent": str(parent_dir),
        **info,
        "parameters": count_parameters(model),
        "weights_sha256": weights_fingerprint(out_dir),
    }
    meta["architecture"] = type(model).__name__
    faults.die_at("before_save", 1)
    write_json(out_dir / "kdflow.json", meta)
