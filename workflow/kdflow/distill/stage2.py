"""Stage 2 data: a task's training examples, with the teacher's outputs from the task cache (word-prediction
students) or from the online teacher (classification students), and the producers of stage 2's step inputs.
BERT-of-Theseus's hybrid scores are produced here too, on the replace schedule of the loss that needs them, and
DIITO's counterfactual scores (``kdflow.interchange``) with the settings of the loss that needs them."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..cache.reader import TaskCacheDataset
from ..classify import encode_pairs, pair_lengths
from ..errors import ConfigError
from ..features import forward_features
from ..finetune import gold_target
from ..heads import head_bypassed, word_rows
from ..hybrid import theseus_layers, tie_to_successors
from ..interchange import counterfactual, interchange_generator
from ..losses import Loss
from ..losses.inputs import feature_fields, feature_flags
from ..losses.representation import Theseus
from ..prepare import load_prepared
from ..runtime import Runtime
from ..scoring import candidate_scores, cloze_lengths, pad_id
from .producers import Produced, Producer, Step, example_ids
from .stage1 import stack_targets
from .teacher import body, teacher_features

ReplaceSchedule = Callable[[float], float]  # progress -> probability that a student layer is used


@dataclass(frozen=True)
class Student:
    """The student being trained, as stage 2 scores it."""

    model: torch.nn.Module
    tokenizer: Any
    family: str  # "causal" or "masked"
    classifier: bool  # a classification head (the encoder track) instead of candidate scores


def replace_schedule(losses: Sequence[Loss]) -> ReplaceSchedule | None:
    """The replace schedule of the loss needing ``hybrid_scores`` (BERT-of-Theseus), or None."""
    hybrid = [loss for loss in losses if "hybrid_scores" in loss.needs]
    if not hybrid:
        return None
    if len(hybrid) > 1 or not isinstance(hybrid[0], Theseus):
        raise ConfigError(f"hybrid scores follow one BERT-of-Theseus schedule; needed by {[h.name for h in hybrid]}")
    return hybrid[0].replace_probability


def interchange_settings(losses: Sequence[Loss]) -> Any | None:
    """The settings of the loss needing ``interchange_scores`` (DIITO), or None."""
    return next((loss.settings for loss in losses if "interchange_scores" in loss.needs), None)


def _pad(rows: list[torch.Tensor], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = r, 1
    return ids, mask


class TaskData:
    """A task's training examples and the producers of stage 2's step inputs."""

    def __init__(
        self,
        data: dict[str, Any],
        student: Student,
        teacher: torch.nn.Module | Sequence[torch.nn.Module] | None,
        all_needs: frozenset[str],
        settings: dict[str, Any],
        vocab_map: Path | None,
        seed: int,
        runtime: Runtime,
        replace: ReplaceSchedule | None = None,
        transfer_set: bool = False,
        interchange: Any | None = None,
    ) -> None:
        self.teachers = list(teacher) if isinstance(teacher, (list, tuple)) else [] if teacher is None else [teacher]
        self.teacher = self.teachers[0] if self.teachers else None  # the first: loss sizes, Theseus's layers
        self.student, self.seed, self.runtime, self.replace = student, seed, runtime, replace
        self.interchange = interchange  # the diito loss's settings
        if "interchange_scores" in all_needs:
            self._check_interchange()
        self.prepared = load_prepared(Path(data["task"]), "train", transfer_set=transfer_set)
        self.max_length = settings["max_length"]
        self.cache = self._open_cache(data, all_needs, vocab_map)
        self.n_examples = len(self.prepared.examples)
        if self.cache is not None and len(self.cache) < self.n_examples:
            raise ConfigError(
                f"{data['cache']}: the task cache holds {len(self.cache)} examples, and this stage trains on "
                f"{self.n_examples} (a transfer set needs a cache built with transfer_set: true)"
            )
        self.cache_temperatures = tuple(self.cache.settings["temperatures"]) if self.cache is not None else ()
        self.teacher_tokenizers = []
        if self.teachers:
            from transformers import AutoTokenizer

            folders = data.get("teachers") or [data["teacher"]]
            self.teacher_tokenizers = [AutoTokenizer.from_pretrained(f, local_files_only=True) for f in folders]
        if student.classifier and student.model.config.num_labels == 1 and "labels" in all_needs:
            raise ConfigError("a regression head has no label distribution: use mse_logits, not ce/theseus")
        task = self.prepared.task
        self.label_names = list(task.labels) if student.classifier else self.prepared.labels  # head / candidates
        self.label_ids = None
        unlabelled = sum(ex["label"] is None for ex in self.prepared.examples)
        if unlabelled and "labels" in all_needs:
            raise ConfigError(f"{unlabelled} training inputs of the transfer set have no gold label; a loss needs them")
        if task.kind == "classification" and not unlabelled:
            self.label_ids = tuple(self.label_names.index(ex["label"]) for ex in self.prepared.examples)
        self.producers = self._table()

    def lengths(self) -> list[int]:
        """Each training example's student tokens (for `group_by_length`): its input pair for a classification
        student, its cloze's scoring items for a word-prediction one."""
        s, prepared = self.student, self.prepared
        if s.classifier:
            return pair_lengths(s.tokenizer, prepared.examples, self.max_length)
        return cloze_lengths(prepared.clozes, s.tokenizer, s.family, self.max_length)

    def _check_interchange(self) -> None:
        """DIITO intervenes on a classification student and its online classification teacher."""
        if not self.student.classifier:
            raise ConfigError(
                "stage2.losses.diito: the interchange intervention needs a classification student taught by an "
                "online classification teacher (the encoder track); this student predicts words"
            )
        if self.interchange is None or self.teacher is None:
            raise ConfigError("stage2.losses.diito: the interchange intervention needs the loss and the teacher")
        if self.student.model.config.num_labels < 2:
            raise ConfigError("stage2.losses.diito: a regression head has no distribution for the soft cross-entropy")

    def _open_cache(
        self, data: dict[str, Any], all_needs: frozenset[str], vocab_map: Path | None
    ) -> TaskCacheDataset | None:
        if self.student.classifier or not all_needs & {"word_logits", "teacher_scores"}:
            return None
        if not data.get("cache"):
            raise ConfigError("a word-prediction student's stage 2 reads the teacher's outputs from a task cache")
        return TaskCacheDataset(data["cache"], Path(data["task"]), vocab_map, teacher_dir=data["teacher"])

    def _table(self) -> dict[str, Producer]:
        """Each need -> its producer, in the order they run (the student's forward passes first)."""
        classifier = self.student.classifier
        return {
            "word_logits": self.word_predictions,
            "word_targets": self.word_predictions,
            "student_hidden": self.student_outputs,
            "student_attentions": self.student_outputs,
            "student_qkv": self.student_outputs,
            "student_scores": self.student_outputs if classifier else self.candidate_scores,
            "teacher_hidden": self.teacher_outputs,
            "teacher_attentions": self.teacher_outputs,
            "teacher_qkv": self.teacher_outputs,
            "teacher_scores": self.teacher_outputs if classifier else self.cached_teacher_scores,
            "labels": self.labels,
            "hybrid_scores": self.hybrid_scores,
            "interchange_scores": self.interchange_scores,
            "example_ids": example_ids,
        }

    def batch(self, indices: list[int], needs: frozenset[str]) -> dict[str, Any]:
        """Everything the needs read from the task and its cache, built on the host and moved to the device at
        once (the one place where a stage-2 batch goes there)."""
        classifier, examples = self.student.classifier, [self.prepared.examples[i] for i in indices]
        cached = "word_logits" in needs or ("teacher_scores" in needs and not classifier)
        items = [self.cache[i] for i in indices] if cached else []
        out: dict[str, Any] = {}
        if "word_logits" in needs:
            out["ids"], out["mask"] = _pad([it["input_ids"] for it in items], pad_id(self.student.tokenizer))
            out["positions"] = [it["positions"] for it in items]
            out["targets"] = stack_targets(items)
        if any(feature_flags(needs, "student").values()) or (
            classifier and needs & {"student_scores", "hybrid_scores", "interchange_scores"}
        ):
            out["encoded"] = encode_pairs(self.student.tokenizer, examples, self.max_length)
        if any(feature_flags(needs, "teacher").values()) or (
            classifier and needs & {"teacher_scores", "interchange_scores"}
        ):
            if self.teacher is None:
                raise ConfigError("the teacher's outputs are needed, and no teacher is loaded")
            out["teacher_encoded"] = [encode_pairs(t, examples, self.max_length) for t in self.teacher_tokenizers]
        if "teacher_scores" in needs and not classifier:
            out["teacher_scores"] = [it["candidate_scores"] for it in items]
        if "labels" in needs:
            out["labels"] = [gold_target(self.prepared.task, self.label_names, ex) for ex in examples]
        if "example_ids" in needs:
            out["example_ids"] = torch.tensor(indices)
        return self.runtime.to(out)

    def word_predictions(self, step: Step) -> Produced:
        """The student's word predictions at the cached positions, and the cached targets there."""
        b = step.batch
        targets, chunk = self.cache.word_targets(b["targets"]), self.runtime.loss_chunk
        with head_bypassed(step.student) if chunk else contextlib.nullcontext():
            outputs = step.student(input_ids=b["ids"], attention_mask=b["mask"]).logits
        word_logits = word_rows(step.student, outputs, b["positions"], chunk)
        return Produced({"word_logits": word_logits, "word_targets": targets}, tokens=int(b["mask"].sum()))

    def student_outputs(self, step: Step) -> Produced:
        """The student's features, and a classification student's logits, from one forward pass."""
        classifier = self.student.classifier
        feats = forward_features(
            step.student if classifier else body(step.student),
            dict(step.batch["encoded"]),
            **feature_flags(step.needs, "student"),
        )
        values: dict[str, Any] = feature_fields(step.needs, "student", feats)
        if classifier:
            values["student_scores"] = list(feats.output.logits.float())
        return Produced(values, tokens=int(feats.mask.sum()))

    def candidate_scores(self, step: Step) -> Produced:
        """A word-prediction student's scores of each example's candidates."""
        scores, tokens = self._candidates(step.student, step.indices)
        return Produced({"student_scores": scores}, tokens=tokens)

    def _candidates(self, model: torch.nn.Module, indices: list[int]) -> tuple[list[torch.Tensor], int]:
        clozes = [self.prepared.clozes[i] for i in indices]
        s = self.student
        return candidate_scores(model, s.tokenizer, s.family, clozes, self.max_length, self.runtime)

    def teacher_outputs(self, step: Step) -> Produced:
        """The features of the step's teacher (``step.teacher``: the first, or one of a multi-teacher stage's),
        and a classification teacher's logits, from one forward pass."""
        classifier, encoded = self.student.classifier, step.batch["teacher_encoded"][step.teacher]
        feats = teacher_features(
            self.teachers[step.teacher], dict(encoded), classifier, feature_flags(step.needs, "teacher")
        )
        values: dict[str, Any] = feature_fields(step.needs, "teacher", feats)
        if classifier:
            values["teacher_scores"] = list(feats.output.logits.float())
        return Produced(values)

    def cached_teacher_scores(self, step: Step) -> Produced:
        return Produced({"teacher_scores": step.batch["teacher_scores"]})

    def labels(self, step: Step) -> Produced:
        return Produced({"labels": step.batch["labels"]})

    def hybrid_scores(self, step: Step) -> Produced:
        """Task scores of the student with teacher layers swapped in (BERT-of-Theseus), each student layer kept
        with the schedule's probability at this step's progress; the draw is seeded by (seed, step)."""
        if self.replace is None or self.teacher is None:
            raise ConfigError("hybrid scores need a BERT-of-Theseus loss and the teacher")
        generator = torch.Generator().manual_seed(self.seed * 7_919 + int(step.step))
        with theseus_layers(step.student, self.teacher, self.replace(step.progress), generator) as choice:
            if self.student.classifier:
                encoded = dict(step.batch["encoded"])
                scores = list(step.student(**encoded).logits.float())
                tokens = int(encoded["attention_mask"].sum())
            else:
                scores, tokens = self._candidates(step.student, step.indices)
        if all(choice) and torch.is_grad_enabled():
            scores = tie_to_successors(scores, step.student)
        return Produced({"hybrid_scores": scores}, tokens=tokens)

    def interchange_scores(self, step: Step) -> Produced:
        """DIITO's counterfactual task scores of the student and the (first) teacher on a token-aligned batch; the
        layer and position draws are seeded by (seed, step)."""
        encoded, t_encoded = dict(step.batch["encoded"]), dict(step.batch["teacher_encoded"][0])
        if not torch.equal(encoded["input_ids"].cpu(), t_encoded["input_ids"].cpu()):
            raise ConfigError("stage2.losses.diito: the student must share the teacher's tokenisation (token-aligned)")
        generator = interchange_generator(self.seed, int(step.step))
        made = counterfactual(step.student, self.teacher, encoded, t_encoded, self.interchange, generator)
        return Produced({"interchange_scores": made}, tokens=2 * int(encoded["attention_mask"].sum()))
