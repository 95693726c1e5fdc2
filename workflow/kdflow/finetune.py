"""Rule `finetune_teacher`: teach the teacher a task in cloze form (pattern + verbalizer/candidates),
with the loss on the candidate scores. The `evaluate` rule scores it like every other model."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from .data.tasks import Example, TaskType
from .errors import DataError
from .fingerprint import weights_fingerprint
from .jsonio import read_json, write_json
from .modeling import load_lm
from .losses.prediction import GoldCE
from .prepare import load_prepared
from .scoring import candidate_scores
from .train.loop import TrainSettings, World, steps_for, train


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
    stop_after_steps: int | None = None,
) -> dict[str, Any]:
    task_dir, work_dir, out_dir = Path(task_dir), Path(work_dir), Path(out_dir)
    data = load_prepared(task_dir, "train", settings.get("max_examples"))
    meta, task, examples, clozes = data.meta, data.task, data.examples, data.clozes
    targets = [gold_target(task, data.labels, ex) for ex in examples]
    model, tokenizer, family = load_lm(teacher_dir)
    gold_ce = GoldCE()

    def loss_fn(module: torch.nn.Module, indices: list[int], step: int) -> tuple[torch.Tensor, dict[str, float], int]:
        scores, tokens = candidate_scores(module, tokenizer, family, [clozes[i] for i in indices],
                                          settings["max_length"])  # fmt: skip
        loss = gold_ce({"student_scores": scores, "labels": [targets[i] for i in indices]})
        return loss, {"cloze_ce": loss.item()}, tokens

    steps = steps_for(len(examples), settings["epochs"], settings["batch_size"], settings["grad_accum"],
                      settings.get("max_steps"))  # fmt: skip
    train_settings = TrainSettings.from_config(settings, steps, seed)
    trained = train(model, loss_fn, len(examples), train_settings, work_dir / "checkpoint",
                    work_dir / "train_log.csv", deepspeed, stop_after_steps)  # fmt: skip
    if not World.from_env().main:  # data-parallel helpers: the main process writes the model
        return {}
    trained.eval()
    if out_dir.exists():
        shutil.rmtree(out_dir)
    trained.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    shutil.copy(work_dir / "train_log.csv", out_dir / "train_log.csv")
    parent = read_json(Path(teacher_dir) / "kdflow.json") if (Path(teacher_dir) / "kdflow.json").exists() else {}
    info = {
        **{k: v for k, v in parent.items() if k in ("family", "architecture", "parameters", "vocab_size")},
        "kdflow": "model",
        "role": "teacher",
        "parent": str(teacher_dir),
        "task": meta["name"],
        "steps": steps,
        "training_examples": len(examples),
        "settings": settings,
        "deepspeed": deepspeed,
        "weights_sha256": weights_fingerprint(out_dir),
    }
    info.setdefault("family", family)
    write_json(out_dir / "kdflow.json", info)
    return info
