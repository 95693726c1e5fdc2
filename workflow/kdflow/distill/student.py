"""The student: loaded for training (factorised vocabulary rows rebuilt, a classification head taken from a
classifier teacher) and saved whole or not at all."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification

from .. import faults
from ..errors import ConfigError
from ..fingerprint import weights_fingerprint
from ..jsonio import read_json, write_json
from ..modeling import count_parameters, load_lm
from ..safeio import atomic_folder
from ..sharing import load_model, save_model
from ..vocab.factorised import FactorisedEmbedding, refactorise

SHIPPED_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "chat_template.jinja",
    "vocab_map.json",
)


def load_student(student_dir: Path, deepspeed: dict[str, Any] | None) -> tuple[torch.nn.Module, Any, str]:
    """(model, tokenizer, family) of the student to train; placed with its losses by the training loop."""
    model, tokenizer, family = load_lm(student_dir, keep_architecture=True)
    model = refactorise(model, student_dir)
    zero3 = (deepspeed or {}).get("zero_optimization", {}).get("stage") == 3
    if isinstance(model.get_input_embeddings(), FactorisedEmbedding) and zero3:
        raise ConfigError(
            "a student with factorised vocabulary rows (vocabularies.*.embedding_dim) cannot train "
            "under ZeRO-3, whose gathered weights are rebuilt as the plain architecture: use ZeRO 0-2"
        )
    return model, tokenizer, family


def classifier_student(student_dir: str | Path, teacher: torch.nn.Module) -> torch.nn.Module:
    """The student with the teacher's classification head type and labels; the head starts as the
    teacher's when the widths match (random otherwise)."""
    cfg = teacher.config
    head: dict[str, Any] = {"num_labels": cfg.num_labels, "problem_type": cfg.problem_type}
    if cfg.num_labels > 1:
        head.update(id2label=cfg.id2label, label2id=cfg.label2id)
    model = load_model(AutoModelForSequenceClassification, student_dir, dtype=torch.float32, **head)
    for name in ("classifier", "score"):
        mine, theirs = getattr(model, name, None), getattr(teacher, name, None)
        if mine is not None and theirs is not None:
            state = theirs.state_dict()
            if all(state[k].shape == v.shape for k, v in mine.state_dict().items() if k in state):
                mine.load_state_dict(state)
    return model


def save_student(
    model: torch.nn.Module, parent: str | Path, out_dir: str | Path, log_csv: Path, info: dict[str, Any]
) -> dict[str, Any]:
    """The student folder (written whole or not at all): weights, the parent's tokenizer and vocabulary map,
    the training log and kdflow.json."""
    parent = Path(parent)
    model = model.float().eval()  # fp32 whatever the training precision
    with atomic_folder(out_dir) as tmp:
        save_model(model, tmp)
        for name in SHIPPED_FILES:
            if (parent / name).exists():
                shutil.copy(parent / name, tmp / name)
        shutil.copy(log_csv, tmp / "train_log.csv")
        meta = read_json(parent / "kdflow.json") if (parent / "kdflow.json").exists() else {}
        meta.update(
            {
                **info,
                "parent": str(parent),
                "parameters": count_parameters(model),
                "weights_sha256": weights_fingerprint(tmp),
            }
        )
        faults.die_at("before_save", 1)
        write_json(tmp / "kdflow.json", meta)
    return meta
