"""Stage 1 data: corpus blocks, with the teacher's word-prediction targets from the logit cache or from an
online teacher (one batched forward pass), and the producers of stage 1's step inputs."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..cache.masking import mask_block
from ..cache.reader import CorpusCacheDataset
from ..errors import ConfigError
from ..features import forward_features, is_causal
from ..heads import DecodedRows, head_bypassed, head_parameters, position_rows, word_rows
from ..losses.inputs import feature_fields, feature_flags
from ..preprocess import open_blocks
from ..runtime import Runtime
from ..vocab.compress import special_token_ids
from ..vocab.vmap import VocabMap
from .producers import Produced, Producer, Step, example_ids
from .teacher import body, load_teacher, teacher_features

TASK_NEEDS = frozenset({"student_scores", "teacher_scores", "labels", "hybrid_scores", "interchange_scores"})
TARGET_KEYS = ("values", "ids", "log_norm", "dense", "hidden")


def stack_targets(items: list[dict[str, Any]], keys: tuple[str, ...] = TARGET_KEYS) -> dict[str, torch.Tensor]:
    """The cached word targets of a batch's items, concatenated."""
    return {k: torch.cat([it[k] for it in items]) for k in keys if k in items[0]}


class CorpusData:
    """Corpus blocks: student and teacher inputs, positions with word targets, and the teacher's targets
    from the cache or from an online teacher. ``online`` also when no word target is learnt (``words`` off):
    then the blocks are read as they are, masked for a masked-LM student."""

    def __init__(
        self,
        cache_dir: str | Path | None,
        corpus_dir: str | Path,
        vocab_map: str | Path | None,
        teacher_dir: str | Path,
        online: bool,
        seed: int,
        teacher_deepspeed: dict[str, Any] | None = None,
        words: bool = True,
        teacher: torch.nn.Module | None = None,
        labels: bool = False,
        runtime: Runtime | None = None,
    ) -> None:
        self.runtime = runtime or Runtime()
        self.teacher_deepspeed = teacher_deepspeed
        self.online = online or not words
        self.words = words
        self.vmap = VocabMap.load(vocab_map) if vocab_map else None
        self.label_ids = None
        if self.online:
            from transformers import AutoConfig, AutoTokenizer

            self.blocks = open_blocks(corpus_dir, "train")
            if teacher is None and words:
                teacher = load_teacher(teacher_dir, teacher_deepspeed, self.runtime)
            tok = AutoTokenizer.from_pretrained(teacher_dir, local_files_only=True)
            # masked-LM inputs wherever word predictions or true tokens are learnt (MLM for `lm`, not next tokens)
            masked = (words or labels) and not is_causal(AutoConfig.from_pretrained(teacher_dir, local_files_only=True))
            self.mask = (seed, tok.mask_token_id, len(tok), special_token_ids(tok)) if masked else None
            self.family = "masked" if masked else "causal"
            self.cache_temperatures: tuple[float, ...] = ()
        else:
            self.data = CorpusCacheDataset(cache_dir, corpus_dir, vocab_map, tokenizer_dir=teacher_dir)
            self.blocks = self.data.blocks
            self.cache_temperatures = tuple(self.data.settings["temperatures"])
            self.family = "causal" if self.data.masking is None else "masked"
        self.teacher = teacher
        self.n_examples = len(self.blocks) if self.online else len(self.data)
        self.producers: dict[str, Producer] = {
            "word_targets": self.teacher_outputs,
            "teacher_hidden": self.teacher_outputs,
            "teacher_attentions": self.teacher_outputs,
            "teacher_qkv": self.teacher_outputs,
            "word_logits": self.student_outputs,
            "student_hidden": self.student_outputs,
            "student_attentions": self.student_outputs,
            "student_qkv": self.student_outputs,
            "word_labels": self.word_labels,
            "example_ids": example_ids,
        }

    def _item(self, i: int) -> dict[str, Any]:
        if not self.online:
            return self.data[i]
        ids = np.asarray(self.blocks[i]).astype(np.int64)
        positions = np.arange(len(ids))
        if self.mask is not None:
            seed, mask_id, vocab, specials = self.mask
            ids, positions = mask_block(ids, seed, i, mask_id, vocab, specials)
        teacher_ids = torch.from_numpy(ids)
        student_ids = self.vmap.remap(teacher_ids) if self.vmap is not None else teacher_ids
        return {"input_ids": student_ids, "teacher_ids": teacher_ids, "positions": torch.from_numpy(positions)}

    def _true_tokens(self, indices: list[int], positions: list[torch.Tensor]) -> torch.Tensor:
        """The true token at each word-prediction position (the next one for causal models), student ids."""
        rows = []
        for i, p in zip(indices, positions, strict=True):
            block = torch.from_numpy(np.asarray(self.blocks[i]).astype(np.int64))
            labels = torch.cat([block[1:], torch.tensor([-100])])[p] if self.family == "causal" else block[p]
            keep = labels >= 0
            if self.vmap is not None:
                labels[keep] = torch.as_tensor(self.vmap.remap(labels[keep]))
            rows.append(labels)
        return torch.cat(rows)

    def batch(self, indices: list[int], needs: frozenset[str]) -> dict[str, Any]:
        """Student ids, teacher ids, positions, cached word targets and what else ``needs`` reads from the
        corpus, moved to the device at once: the one place where a stage-1 batch goes there."""
        items = [self._item(i) for i in indices]
        host: dict[str, Any] = {
            "ids": torch.stack([it["input_ids"] for it in items]),
            "teacher_ids": torch.stack([it["teacher_ids"] for it in items]),
            "positions": [it["positions"] for it in items],
        }
        if not self.online:
            host["targets"] = stack_targets(items)
        if "word_labels" in needs:
            host["word_labels"] = self._true_tokens(indices, host["positions"])
        if "example_ids" in needs:
            host["example_ids"] = torch.tensor(indices)
        return self.runtime.to(host)

    def _project(self, logits: torch.Tensor) -> torch.Tensor:
        return self.vmap.project_logits(logits) if self.vmap is not None else logits

    def _online_targets(self, logits: torch.Tensor | None, positions: list[torch.Tensor], fused: bool) -> dict:
        """The online teacher's word targets: its logits at the positions, or with ``fused`` (its head was
        bypassed) its head inputs there, decoded by the loss a chunk at a time."""
        if logits is None:
            raise ConfigError(
                f"word losses need the teacher's word predictions; {type(self.teacher).__name__} has no LM head"
            )
        rows = position_rows(logits, positions)
        if fused:
            weight, bias = head_parameters(self.teacher)
            return {"head": DecodedRows(rows, lambda h: self._project(torch.nn.functional.linear(h, weight, bias)))}
        return {"logits": self._project(rows)}

    def teacher_outputs(self, step: Step) -> Produced:
        """The word targets (cached, or from the online teacher) and the teacher's features, one forward pass."""
        flags, words = feature_flags(step.needs, "teacher"), "word_targets" in step.needs
        online_words = self.online and words
        if (online_words or any(flags.values())) and self.teacher is None:
            raise ConfigError("representation losses need the teacher online")
        values: dict[str, Any] = {}
        if online_words or any(flags.values()):
            # with a loss chunk the teacher's head is left to the loss (not under ZeRO: its head is partitioned)
            fused = online_words and bool(self.runtime.loss_chunk) and not self.teacher_deepspeed
            with head_bypassed(self.teacher) if fused else contextlib.nullcontext():
                feats = teacher_features(self.teacher, {"input_ids": step.batch["teacher_ids"]}, online_words, flags)
            values.update(feature_fields(step.needs, "teacher", feats))
            if online_words:
                values["word_targets"] = self._online_targets(
                    getattr(feats.output, "logits", None), step.batch["positions"], fused
                )
        if words and not self.online:
            values["word_targets"] = self.data.word_targets(step.batch["targets"])
        return Produced(values)

    def student_outputs(self, step: Step) -> Produced:
        """The student's word predictions at the target positions and its features, one forward pass."""
        flags, ids = feature_flags(step.needs, "student"), step.batch["ids"]
        words, chunk = "word_logits" in step.needs, self.runtime.loss_chunk
        with head_bypassed(step.student) if words and chunk else contextlib.nullcontext():
            feats = forward_features(step.student if words else body(step.student), {"input_ids": ids}, **flags)
        values: dict[str, Any] = feature_fields(step.needs, "student", feats)
        if words:
            values["word_logits"] = word_rows(step.student, feats.output.logits, step.batch["positions"], chunk)
        return Produced(values, tokens=int(ids.numel()))

    def word_labels(self, step: Step) -> Produced:
        return Produced({"word_labels": step.batch["word_labels"]})


def corpus_data(
    all_needs: frozenset[str],
    data: dict[str, Any],
    vocab_map: Path | None,
    settings: dict[str, Any],
    seed: int,
    runtime: Runtime,
) -> CorpusData:
    """Stage 1's data for losses needing ``all_needs``, with the teacher loaded when they need it."""
    if all_needs & TASK_NEEDS:
        raise ConfigError(f"stage 1 has no task: its losses need {sorted(all_needs)}")
    words = "word_targets" in all_needs
    online = settings.get("teacher", "cached") == "online"
    needed = any(feature_flags(all_needs, "teacher").values()) or (online and words)
    teacher = load_teacher(data["teacher"], settings.get("teacher_deepspeed"), runtime) if needed else None
    return CorpusData(
        data.get("cache"),
        data["corpus"],
        vocab_map,
        data["teacher"],
        online,
        seed,
        settings.get("teacher_deepspeed"),
        words=words,
        teacher=teacher,
        labels="word_labels" in all_needs,
        runtime=runtime,
    )
