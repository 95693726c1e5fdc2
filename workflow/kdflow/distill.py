"""Rules `distill_stage1` / `distill_stage2`: one engine for every run. It builds the run's losses from
config and computes only the tensors they need (no student candidate scores without a loss on them, no
word-prediction logits without `word_kl`, no hidden states at all)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .cache.masking import mask_block
from .cache.reader import CorpusCacheDataset, TaskCacheDataset
from .errors import ConfigError
from .finetune import gold_target
from .fingerprint import weights_fingerprint
from .jsonio import read_json, write_json
from .losses import build_losses
from .modeling import load_lm
from .prepare import load_prepared
from .preprocess import open_blocks
from .scoring import candidate_scores, pad_id
from .train.loop import TrainSettings, World, deepspeed_environment, steps_for, train
from .vocab.compress import special_token_ids


def _stack_targets(items: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, torch.Tensor]:
    return {k: torch.cat([it[k] for it in items]) for k in keys if k in items[0]}


def _pad(rows: list[torch.Tensor], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = r, 1
    return ids, mask


class _Stage1Data:
    """Corpus blocks with the teacher's word targets: from the cache, or from an online teacher."""

    def __init__(self, cache_dir, corpus_dir, vocab_map, teacher_dir, online: bool, seed: int,
                 teacher_deepspeed: dict[str, Any] | None = None) -> None:  # fmt: skip
        self.online = online
        if online:
            self.teacher, teacher_tok, self.family = load_lm(teacher_dir)
            self.teacher.requires_grad_(False)
            if teacher_deepspeed:
                self.teacher = zero_inference(self.teacher, teacher_deepspeed)
            self.blocks = open_blocks(corpus_dir, "train")
            from .vocab.vmap import VocabMap

            self.vmap = VocabMap.load(vocab_map) if vocab_map else None
            self.mask = (seed, teacher_tok.mask_token_id, len(teacher_tok), special_token_ids(teacher_tok))
            self.temperatures: list[float] = []
        else:
            self.data = CorpusCacheDataset(cache_dir, corpus_dir, vocab_map, tokenizer_dir=teacher_dir)
            self.temperatures = self.data.settings["temperatures"]

    def __len__(self) -> int:
        return len(self.blocks) if self.online else len(self.data)

    @torch.no_grad()
    def _online_item(self, i: int) -> dict[str, Any]:
        ids = np.asarray(self.blocks[i]).astype(np.int64)
        positions = np.arange(len(ids))
        if self.family == "masked":
            seed, mask_id, vocab, specials = self.mask
            ids, positions = mask_block(ids, seed, i, mask_id, vocab, specials)
        teacher_ids = torch.from_numpy(ids)
        logits = self.teacher(teacher_ids[None]).logits[0, positions]
        student_ids = self.vmap.remap(teacher_ids) if self.vmap is not None else teacher_ids
        logits = self.vmap.project_logits(logits) if self.vmap is not None else logits
        return {"input_ids": student_ids, "positions": torch.from_numpy(positions), "logits": logits}

    def batch(self, indices: list[int]) -> tuple[torch.Tensor, list[torch.Tensor], dict[str, torch.Tensor]]:
        items = [self._online_item(i) if self.online else self.data[i] for i in indices]
        targets = _stack_targets(items, ("values", "ids", "log_norm", "dense", "logits", "hidden"))
        if "hidden" in targets:
            targets = {"logits": self.data.teacher_logits(targets.pop("hidden"))}
        return torch.stack([it["input_ids"] for it in items]), [it["positions"] for it in items], targets


def zero_inference(model: torch.nn.Module, ds_config: dict[str, Any]) -> torch.nn.Module:
    """The teacher in a DeepSpeed engine for inference only (ZeRO-3 partitions and, with
    ``offload_param``, keeps its weights in CPU memory between uses): teachers larger than memory."""
    import deepspeed

    deepspeed_environment(World.from_env())
    config = {"train_micro_batch_size_per_gpu": 1, **ds_config}
    engine, _, _, _ = deepspeed.initialize(model=model, config=config)
    engine.eval()
    return engine.module


def _word_logits(module: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor | None, positions: list[torch.Tensor]):
    logits = module(input_ids=ids, attention_mask=mask).logits
    return torch.cat([logits[r, p] for r, p in enumerate(positions)])


def distill(
    stage: str,
    student_dir: str | Path,
    out_dir: str | Path,
    work_dir: str | Path,
    run: dict[str, Any],
    settings: dict[str, Any],
    data: dict[str, Any],
    deepspeed: dict[str, Any] | None,
    seed: int,
    stop_after_steps: int | None = None,
) -> dict[str, Any]:
    """Train ``student_dir`` with the run's losses for ``stage`` (stage1: corpus, stage2: task)."""
    losses = build_losses(run[stage]["losses"])
    needs = frozenset().union(*(loss.needs for loss in losses))
    model, tokenizer, family = load_lm(student_dir)
    vocab_map = Path(student_dir) / "vocab_map.json" if (Path(student_dir) / "vocab_map.json").exists() else None
    pad = pad_id(tokenizer)
    tensors: dict[str, Any] = {}

    if stage == "stage1":
        if needs - {"word_logits", "word_targets"}:
            raise ConfigError(f"stage 1 has no task: losses {sorted(l.name for l in losses)} need {sorted(needs)}")
        source = _Stage1Data(data.get("cache"), data["corpus"], vocab_map, data["teacher"],
                             settings.get("teacher", "cached") == "online", seed,
                             settings.get("teacher_deepspeed"))  # fmt: skip
        n_examples = len(source)

        def prepare(module: torch.nn.Module, indices: list[int]) -> int:
            ids, positions, targets = source.batch(indices)
            tensors.update(word_logits=_word_logits(module, ids, None, positions), word_targets=targets,
                           cache_temperatures=source.temperatures)  # fmt: skip
            return int(ids.numel())

    else:
        task_dir = Path(data["task"])
        prepared = load_prepared(task_dir, "train")
        cache = TaskCacheDataset(data["cache"], task_dir, vocab_map)
        n_examples = len(cache)

        def prepare(module: torch.nn.Module, indices: list[int]) -> int:
            items = [cache[i] for i in indices]
            tokens = 0
            if "word_logits" in needs:
                ids, mask = _pad([it["input_ids"] for it in items], pad)
                targets = _stack_targets(items, ("values", "ids", "log_norm", "dense", "hidden"))
                if "hidden" in targets:
                    targets = {"logits": cache.teacher_logits(targets.pop("hidden"))}
                tensors.update(word_logits=_word_logits(module, ids, mask, [it["positions"] for it in items]),
                               word_targets=targets, cache_temperatures=cache.settings["temperatures"])  # fmt: skip
                tokens += int(mask.sum())
            if "student_scores" in needs:
                scores, n_tokens = candidate_scores(module, tokenizer, family, [prepared.clozes[i] for i in indices],
                                                    settings["max_length"])  # fmt: skip
                tensors["student_scores"] = scores
                tokens += n_tokens
            if "teacher_scores" in needs:
                tensors["teacher_scores"] = [it["candidate_scores"] for it in items]
            if "labels" in needs:
                tensors["labels"] = [gold_target(prepared.task, prepared.labels, prepared.examples[i]) for i in indices]
            return tokens

    def loss_fn(module: torch.nn.Module, indices: list[int]) -> tuple[torch.Tensor, dict[str, float], int]:
        tensors.clear()
        tokens = prepare(module, indices)
        parts = {loss.name: loss(tensors) for loss in losses}
        total = sum(loss.weight * parts[loss.name] for loss in losses)
        return total, {"loss": float(total), **{k: float(v) for k, v in parts.items()}}, tokens

    steps = steps_for(n_examples, settings["epochs"], settings["batch_size"], settings["grad_accum"],
                      settings.get("max_steps"))  # fmt: skip
    work_dir = Path(work_dir)
    trained = train(model, loss_fn, n_examples, TrainSettings.from_config(settings, steps, seed),
                    work_dir / "checkpoint", work_dir / "train_log.csv", deepspeed, stop_after_steps)  # fmt: skip
    if not World.from_env().main:  # data-parallel helpers: the main process writes the student
        return {"stage": stage, "steps": steps}
    return save_student(trained, student_dir, out_dir, work_dir, {"run": run.get("name"), "stage": stage,
                        "description": run.get("description"), "losses": run[stage]["losses"],
                        "steps": steps, "training_examples": n_examples, "settings": settings})  # fmt: skip


def save_student(model: torch.nn.Module, parent: str | Path, out_dir: str | Path, work_dir: Path,
                 info: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    parent, out_dir = Path(parent), Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    model.eval()
    model.save_pretrained(out_dir)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                 "chat_template.jinja", "vocab_map.json"):  # fmt: skip
        if (parent / name).exists():
            shutil.copy(parent / name, out_dir / name)
    shutil.copy(work_dir / "train_log.csv", out_dir / "train_log.csv")
    meta = read_json(parent / "kdflow.json") if (parent / "kdflow.json").exists() else {}
    meta.update({**info, "parent": str(parent), "weights_sha256": weights_fingerprint(out_dir)})
    write_json(out_dir / "kdflow.json", meta)
    return meta
