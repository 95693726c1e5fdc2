"""Rules `distill_stage1` / `distill_stage2`: one engine for every run. It builds the run's losses from
config and computes only the tensors the losses active at a step need: no candidate scores without a
loss on them, no word-prediction logits without a word loss, hidden states / attentions / query-key-value
projections only for representation losses, and the teacher online only when a loss needs its internals
(or, in stage 1, when `teacher: online`).

Two tracks share the engine. Word-prediction students (the GLMD track) score tasks by candidates and take
the teacher's outputs from the logit cache. Classification students (the encoder track): when the stage-2
teacher folder is a ``*ForSequenceClassification`` model, the student gets a classification head (started
from the teacher's), and the teacher runs online: its logits and representations cost one small forward
pass per batch, which is why the encoder track has no cache."""

from __future__ import annotations

import csv
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification

from .cache.masking import mask_block
from .cache.reader import CorpusCacheDataset, TaskCacheDataset
from .classify import encode_pairs, has_classification_head
from .config import stage_phases
from .errors import ConfigError
from .features import Features, forward_features, is_causal, release_attentions, require_attentions
from . import faults
from .finetune import gold_target
from .fingerprint import job_identity, weights_fingerprint
from .hybrid import theseus_layers
from .jsonio import read_json, write_json
from .losses import Loss, LossContext, build_losses
from .modeling import count_parameters, load_lm
from .prepare import load_prepared
from .preprocess import open_blocks
from .runtime import Runtime
from .safeio import atomic_folder, atomic_path
from .scoring import candidate_scores, pad_id
from .train.loop import TrainSettings, deepspeed_environment, seed_everything, steps_for, train
from .train.workdir import IDENTITY, WorkDir
from .vocab.compress import special_token_ids
from .vocab.factorised import FactorisedEmbedding, merge_factorised, refactorise
from .vocab.vmap import VocabMap

Produce = Callable[[torch.nn.Module, list[int], dict[str, Any], frozenset[str]], int]


class DistillModule(torch.nn.Module):
    """The student and the run's losses (their projections and memory banks train and checkpoint with it).
    ``forward(step_fn)`` runs ``step_fn(self)``, so data-parallel wrappers see one forward per step."""

    def __init__(self, student: torch.nn.Module, losses: list[Loss]) -> None:
        super().__init__()
        self.student = student
        self.losses = torch.nn.ModuleList(losses)

    def forward(self, step_fn: Callable[[DistillModule], Any]) -> Any:
        return step_fn(self)


def _flags(needs: frozenset[str], side: str) -> dict[str, bool]:
    return {kind: f"{side}_{kind}" in needs for kind in ("hidden", "attentions", "qkv")}


def _body(model: torch.nn.Module) -> torch.nn.Module:
    """The model without its LM head (representations only: no vocabulary-wide logits)."""
    return getattr(model, "base_model", model)


def _stack_targets(items: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, torch.Tensor]:
    return {k: torch.cat([it[k] for it in items]) for k in keys if k in items[0]}


def _pad(rows: list[torch.Tensor], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = r, 1
    return ids, mask


def _teacher(teacher_dir: str | Path, ds_config: dict[str, Any] | None, runtime: Runtime) -> torch.nn.Module:
    """The frozen teacher on the runtime's device in ``compute.teacher_dtype`` (or in a ZeRO inference engine)."""
    model, _, _ = load_lm(teacher_dir, keep_architecture=True, runtime=runtime, teacher=True)
    model.requires_grad_(False)
    return zero_inference(model, ds_config, runtime) if ds_config else model


class _Stage1Data:
    """Corpus blocks: student and teacher inputs, positions with word targets, and the teacher's targets
    from the cache or from an online teacher (one batched forward pass)."""

    def __init__(self, cache_dir, corpus_dir, vocab_map, teacher_dir, online: bool, seed: int,
                 teacher_deepspeed: dict[str, Any] | None = None, words: bool = True,
                 teacher: torch.nn.Module | None = None, labels: bool = False,
                 runtime: Runtime | None = None) -> None:  # fmt: skip
        self.runtime = runtime or Runtime()
        self.online = online or not words
        self.words = words
        self.vmap = VocabMap.load(vocab_map) if vocab_map else None
        if self.online:
            from transformers import AutoConfig, AutoTokenizer

            self.blocks = open_blocks(corpus_dir, "train")
            if teacher is None and words:
                teacher = _teacher(teacher_dir, teacher_deepspeed, self.runtime)
            self.teacher = teacher
            tok = AutoTokenizer.from_pretrained(teacher_dir, local_files_only=True)
            # masked-LM inputs wherever word predictions or true tokens are learnt (MLM for `lm`, not next tokens)
            masked = (words or labels) and not is_causal(AutoConfig.from_pretrained(teacher_dir, local_files_only=True))
            self.mask = (seed, tok.mask_token_id, len(tok), special_token_ids(tok)) if masked else None
            self.family = "masked" if masked else "causal"
            self.temperatures: list[float] = []
        else:
            self.data = CorpusCacheDataset(cache_dir, corpus_dir, vocab_map, tokenizer_dir=teacher_dir)
            self.blocks = self.data.blocks
            self.temperatures = self.data.settings["temperatures"]
            self.family = "causal" if self.data.masking is None else "masked"
            self.teacher = teacher

    def __len__(self) -> int:
        return len(self.blocks) if self.online else len(self.data)

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

    def word_labels(self, indices: list[int], positions: list[torch.Tensor]) -> torch.Tensor:
        """The true token at each word-prediction position (the next one for causal models), student ids, on
        the device."""
        rows = []
        for i, p in zip(indices, [p.cpu() for p in positions], strict=True):
            block = torch.from_numpy(np.asarray(self.blocks[i]).astype(np.int64))
            if self.family == "causal":
                shifted = torch.cat([block[1:], torch.tensor([-100])])
                labels = shifted[p]
            else:
                labels = block[p]
            keep = labels >= 0
            if self.vmap is not None:
                labels[keep] = torch.as_tensor(self.vmap.remap(labels[keep]))
            rows.append(labels)
        return self.runtime.to(torch.cat(rows))

    @torch.no_grad()
    def teacher_forward(self, ids: torch.Tensor, logits: bool, flags: dict[str, bool]) -> Features:
        model = self.teacher if logits else _body(self.teacher)
        return forward_features(model, {"input_ids": ids}, **flags)

    def batch(self, indices: list[int], teacher_flags: dict[str, bool] | None = None
              ) -> tuple[torch.Tensor, list[torch.Tensor], dict[str, torch.Tensor]]:  # fmt: skip
        """(student ids, positions, word targets) on the device; the teacher's Features in ``self.last_teacher``
        when asked. The one place where a stage-1 batch goes to the device."""
        items = [self._item(i) for i in indices]
        batch = self.runtime.to({
            "ids": torch.stack([it["input_ids"] for it in items]),
            "teacher_ids": torch.stack([it["teacher_ids"] for it in items]),
            "positions": [it["positions"] for it in items],
            "targets": {} if self.online else _stack_targets(items, ("values", "ids", "log_norm", "dense", "hidden")),
        })  # fmt: skip
        ids, positions, teacher_ids = batch["ids"], batch["positions"], batch["teacher_ids"]
        self.last_teacher = None
        flags = teacher_flags or {}
        if self.online:
            if not self.words and not any(flags.values()):
                return ids, positions, {}  # no teacher output wanted (e.g. `lm` alone)
            if self.teacher is None:
                raise ConfigError("representation losses need the teacher online")
            feats = self.teacher_forward(teacher_ids, logits=self.words, flags=flags)
            self.last_teacher = feats if any(flags.values()) else None
            if not self.words:
                return ids, positions, {}
            logits = getattr(feats.output, "logits", None)
            if logits is None:
                raise ConfigError(f"word losses need the teacher's word predictions; {type(self.teacher).__name__} "
                                  "has no LM head")  # fmt: skip
            rows = torch.cat([logits[r, p] for r, p in enumerate(positions)])
            targets = {"logits": self.vmap.project_logits(rows) if self.vmap is not None else rows}
            return ids, positions, targets
        targets = batch["targets"]
        if "hidden" in targets:
            targets = {"logits": self.data.teacher_logits(targets.pop("hidden"))}
        if any(flags.values()):
            if self.teacher is None:
                raise ConfigError("representation losses need the teacher online")
            self.last_teacher = self.teacher_forward(teacher_ids, False, flags)
        return ids, positions, targets


def zero_inference(model: torch.nn.Module, ds_config: dict[str, Any], runtime: Runtime) -> torch.nn.Module:
    """The teacher in a DeepSpeed engine for inference only (ZeRO-3 partitions and, with
    ``offload_param``, keeps its weights in CPU memory between uses): teachers larger than memory."""
    import deepspeed

    deepspeed_environment(runtime)
    config = {"train_micro_batch_size_per_gpu": 1, **ds_config}
    engine, _, _, _ = deepspeed.initialize(model=model, config=config)
    engine.eval()
    return engine.module


def _stage1(all_needs: frozenset[str], data: dict[str, Any], vocab_map: Path | None, settings: dict[str, Any],
            seed: int, runtime: Runtime) -> tuple[int, Produce, torch.nn.Module | None, None]:  # fmt: skip
    if all_needs & {"student_scores", "teacher_scores", "labels", "hybrid_scores"}:
        raise ConfigError(f"stage 1 has no task: its losses need {sorted(all_needs)}")
    words = "word_targets" in all_needs
    online = settings.get("teacher", "cached") == "online"
    wants_teacher = any(_flags(all_needs, "teacher").values())
    needed = wants_teacher or (online and words)
    teacher = _teacher(data["teacher"], settings.get("teacher_deepspeed"), runtime) if needed else None
    source = _Stage1Data(data.get("cache"), data["corpus"], vocab_map, data["teacher"], online, seed,
                         settings.get("teacher_deepspeed"), words=words, teacher=teacher,
                         labels="word_labels" in all_needs, runtime=runtime)  # fmt: skip

    def produce(module: torch.nn.Module, indices: list[int], tensors: dict[str, Any], needs: frozenset[str]) -> int:
        ids, positions, targets = source.batch(indices, _flags(needs, "teacher"))
        if source.last_teacher is not None:
            tensors["teacher_features"] = source.last_teacher
        flags = _flags(needs, "student")
        if "word_logits" in needs or any(flags.values()):
            model = module if "word_logits" in needs else _body(module)
            feats = forward_features(model, {"input_ids": ids}, **flags)
            tensors["student_features"] = feats
            if "word_logits" in needs:
                tensors["word_logits"] = torch.cat([feats.output.logits[r, p] for r, p in enumerate(positions)])
        tensors.update(word_targets=targets, cache_temperatures=source.temperatures)
        if "word_labels" in needs:
            tensors["word_labels"] = source.word_labels(indices, positions)
        return int(ids.numel())

    return len(source), produce, teacher, None


def classifier_student(student_dir: str | Path, teacher: torch.nn.Module) -> torch.nn.Module:
    """The student with the teacher's classification head type and labels; the head starts as the
    teacher's when the widths match (random otherwise)."""
    cfg = teacher.config
    head: dict[str, Any] = {"num_labels": cfg.num_labels, "problem_type": cfg.problem_type}
    if cfg.num_labels > 1:
        head.update(id2label=cfg.id2label, label2id=cfg.label2id)
    model = AutoModelForSequenceClassification.from_pretrained(student_dir, local_files_only=True, dtype=torch.float32,
                                                               **head)  # fmt: skip
    for name in ("classifier", "score"):
        mine, theirs = getattr(model, name, None), getattr(teacher, name, None)
        if mine is not None and theirs is not None:
            state = theirs.state_dict()
            if all(state[k].shape == v.shape for k, v in mine.state_dict().items() if k in state):
                mine.load_state_dict(state)
    return model


def _stage2(student: torch.nn.Module, tokenizer: Any, family: str, classifier: bool,
            teacher: torch.nn.Module | None, all_needs: frozenset[str], data: dict[str, Any],
            vocab_map: Path | None, settings: dict[str, Any], theseus: Loss | None, seed: int, runtime: Runtime
            ) -> tuple[int, Produce, tuple[int, ...] | None]:  # fmt: skip
    task_dir = Path(data["task"])
    prepared = load_prepared(task_dir, "train")
    n_examples = len(prepared.examples)
    cache = None
    if not classifier and all_needs & {"word_logits", "teacher_scores"}:
        if not data.get("cache"):
            raise ConfigError("a word-prediction student's stage 2 reads the teacher's outputs from a task cache")
        cache = TaskCacheDataset(data["cache"], task_dir, vocab_map, teacher_dir=data["teacher"])
        n_examples = len(cache)
    teacher_tok = None
    if teacher is not None:
        from transformers import AutoTokenizer

        teacher_tok = AutoTokenizer.from_pretrained(data["teacher"], local_files_only=True)
    if classifier and student.config.num_labels == 1 and all_needs & {"labels"}:
        raise ConfigError("a regression head has no label distribution: use mse_logits, not ce/theseus")
    label_names = list(prepared.task.labels) if classifier else prepared.labels  # head order / candidate order
    label_ids = None
    if prepared.task.kind == "classification":
        label_ids = tuple(label_names.index(ex["label"]) for ex in prepared.examples)
    max_length = settings["max_length"]

    def batch(indices: list[int], needs: frozenset[str]) -> dict[str, Any]:
        """Everything a step reads from the task and its cache, built on the host and moved to the device at
        once (the one place where a stage-2 batch goes there)."""
        examples = [prepared.examples[i] for i in indices]
        items = [cache[i] for i in indices] if cache is not None else []
        out: dict[str, Any] = {}
        if "word_logits" in needs:
            out["ids"], out["mask"] = _pad([it["input_ids"] for it in items], pad_id(tokenizer))
            out["positions"] = [it["positions"] for it in items]
            out["targets"] = _stack_targets(items, ("values", "ids", "log_norm", "dense", "hidden"))
        if classifier or any(_flags(needs, "student").values()) or "hybrid_scores" in needs:
            out["encoded"] = encode_pairs(tokenizer, examples, max_length)
        if teacher is not None and (any(_flags(needs, "teacher").values()) or (classifier and "teacher_scores" in needs)):
            out["teacher_encoded"] = encode_pairs(teacher_tok, examples, max_length)
        if "teacher_scores" in needs and not classifier:
            out["teacher_scores"] = [it["candidate_scores"] for it in items]
        if "labels" in needs:
            out["labels"] = [gold_target(prepared.task, label_names, ex) for ex in examples]
        return runtime.to(out)

    def produce(module: torch.nn.Module, indices: list[int], tensors: dict[str, Any], needs: frozenset[str]) -> int:
        clozes = [prepared.clozes[i] for i in indices]
        b = batch(indices, needs)
        tokens = 0
        if "word_logits" in needs:
            targets = b["targets"]
            if "hidden" in targets:
                targets = {"logits": cache.teacher_logits(targets.pop("hidden"))}
            logits = module(input_ids=b["ids"], attention_mask=b["mask"]).logits
            tensors.update(word_logits=torch.cat([logits[r, p] for r, p in enumerate(b["positions"])]),
                           word_targets=targets, cache_temperatures=cache.settings["temperatures"])  # fmt: skip
            tokens += int(b["mask"].sum())
        flags = _flags(needs, "student")
        encoded = b.get("encoded")
        if classifier or any(flags.values()):
            feats = forward_features(module if classifier else _body(module), dict(encoded), **flags)
            tensors["student_features"] = feats
            if classifier:
                tensors["student_scores"] = list(feats.output.logits.float())
            tokens += int(feats.mask.sum())
        if not classifier and "student_scores" in needs:
            tensors["student_scores"], n_tokens = candidate_scores(module, tokenizer, family, clozes, max_length,
                                                                   runtime)  # fmt: skip
            tokens += n_tokens
        t_flags = _flags(needs, "teacher")
        if "teacher_encoded" in b:
            with torch.no_grad():
                feats = forward_features(teacher if classifier else _body(teacher), dict(b["teacher_encoded"]),
                                         **t_flags)  # fmt: skip
            tensors["teacher_features"] = feats
            if classifier:
                tensors["teacher_scores"] = list(feats.output.logits.float())
        if "teacher_scores" in needs and not classifier:
            tensors["teacher_scores"] = b["teacher_scores"]
        if "labels" in needs:
            tensors["labels"] = b["labels"]
        if "hybrid_scores" in needs:
            generator = torch.Generator().manual_seed(seed * 7_919 + int(tensors["step"]))
            p_student = theseus.replace_probability(tensors["progress"])
            with theseus_layers(module, teacher, p_student, generator):
                if classifier:
                    tensors["hybrid_scores"] = list(module(**dict(encoded)).logits.float())
                else:
                    tensors["hybrid_scores"], _ = candidate_scores(module, tokenizer, family, clozes, max_length,
                                                                   runtime)  # fmt: skip
        return tokens

    return n_examples, produce, label_ids


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
    runtime: Runtime | None = None,
) -> dict[str, Any]:
    """Train ``student_dir`` with the run's losses for ``stage`` (stage1: corpus, stage2: task), on the
    runtime's device (default: resolved from the environment, `device: auto`). A stage with ``phases`` trains
    them one after the other, each for the stage's full schedule (its own optimizer, warm-up and decay) from
    the previous phase's student, as GLMD's reference runs its two stage-2 fine-tunings. A finished phase's
    student is kept in ``work_dir/phaseN.student`` with the identity it was trained under, and reused on a
    rerun only under the same identity (so a changed setting retrains it); a finished stage leaves nothing."""
    runtime = runtime or Runtime.create()
    phases = stage_phases(run[stage])
    for spec in phases:
        build_losses(spec, stage)  # every phase's recipe is checked before the first one trains
    work_dir = Path(work_dir)
    if len(phases) == 1:
        return _train_phase(stage, student_dir, out_dir, work_dir, phases[0], run, settings, data, deepspeed, seed,
                            runtime)  # fmt: skip
    current, metas = Path(student_dir), []
    for i, spec in enumerate(phases, 1):
        last = i == len(phases)
        target = Path(out_dir) if last else work_dir / f"phase{i}.student"
        identity = _identity(stage, current, data, run, settings, deepspeed, seed, phase=i)
        done = target / IDENTITY
        if not last and done.exists() and read_json(done) == identity:
            metas.append(read_json(target / "kdflow.json"))
        else:
            metas.append(_train_phase(stage, current, target, work_dir / f"phase{i}", spec, run, settings, data,
                                      deepspeed, seed, runtime, phase=i))  # fmt: skip
            if runtime.ranks.main and not last:
                write_json(done, identity)
            runtime.barrier()  # helpers load the phase's student only once the main process wrote it
        current = target
    if not runtime.ranks.main:
        return {"stage": stage, "steps": sum(m["steps"] for m in metas)}
    _merge_logs([work_dir / f"phase{i}.student" / "train_log.csv" for i in range(1, len(phases))]
                + [Path(out_dir) / "train_log.csv"], Path(out_dir) / "train_log.csv")  # fmt: skip
    meta = {**metas[-1], "losses": phases, "phase_steps": [m["steps"] for m in metas],
            "steps": sum(m["steps"] for m in metas), "parent": str(student_dir)}  # fmt: skip
    write_json(Path(out_dir) / "kdflow.json", meta)
    shutil.rmtree(work_dir, ignore_errors=True)  # a finished stage is never resumed
    return meta


def _merge_logs(logs: list[Path], out: Path) -> None:
    """One CSV of every phase's steps (a ``phase`` column, steps numbered on across phases)."""
    rows, fields, offset = [], ["phase", "step"], 0
    for phase, log in enumerate(logs, 1):
        with open(log, newline="", encoding="utf-8") as fh:
            part = list(csv.DictReader(fh))
        for row in part:
            rows.append({**row, "phase": phase, "step": offset + int(row["step"])})
            fields += [k for k in row if k not in fields]
        offset += len(part)
    with atomic_path(out) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, restval=0.0)
        writer.writeheader()
        writer.writerows(rows)


def _identity(stage: str, student_dir: str | Path, data: dict[str, Any], run: dict[str, Any],
              settings: dict[str, Any], deepspeed: dict[str, Any] | None, seed: int,
              phase: int | None = None) -> dict[str, Any]:  # fmt: skip
    """Everything that determines one training of a stage (or of one of its phases)."""
    inputs = {"student": student_dir, "teacher": data.get("teacher"), "cache": data.get("cache"),
              "corpus": data.get("corpus") if stage == "stage1" else None,
              "task": data.get("task") if stage == "stage2" else None}  # fmt: skip
    return job_identity(inputs, job=f"distill_{stage}", phase=phase, recipe=run, settings=settings,
                        deepspeed=deepspeed, seed=seed)


def _train_phase(stage: str, student_dir: str | Path, out_dir: str | Path, work_dir: Path, spec: dict[str, Any],
                 run: dict[str, Any], settings: dict[str, Any], data: dict[str, Any],
                 deepspeed: dict[str, Any] | None, seed: int, runtime: Runtime,
                 phase: int | None = None) -> dict[str, Any]:  # fmt: skip
    """One training of ``student_dir`` on the losses ``spec``; the student is written to ``out_dir``."""
    seed_everything(seed)  # loss projections, memory banks and heads start from the seed, not the clock
    losses = build_losses(spec, stage)
    all_needs = frozenset().union(*(loss.needs for loss in losses))
    vocab_map = Path(student_dir) / "vocab_map.json" if (Path(student_dir) / "vocab_map.json").exists() else None
    classifier = stage == "stage2" and has_classification_head(data["teacher"])
    theseus = next((loss for loss in losses if hasattr(loss, "replace_probability")), None)
    wants_teacher = classifier or theseus is not None or any(_flags(all_needs, "teacher").values())

    model, tokenizer, family = load_lm(student_dir, keep_architecture=True)  # placed with its losses by train()
    model = refactorise(model, student_dir)
    if isinstance(model.get_input_embeddings(), FactorisedEmbedding) and (deepspeed or {}).get(
            "zero_optimization", {}).get("stage") == 3:  # fmt: skip
        raise ConfigError("a student with factorised vocabulary rows (vocabularies.*.embedding_dim) cannot train "
                          "under ZeRO-3, whose gathered weights are rebuilt as the plain architecture: use ZeRO 0-2")  # fmt: skip
    if stage == "stage1":
        n_examples, produce, teacher, label_ids = _stage1(all_needs, data, vocab_map, settings, seed, runtime)
    else:
        teacher = _teacher(data["teacher"], settings.get("teacher_deepspeed"), runtime) if wants_teacher else None
        if classifier:
            model = classifier_student(student_dir, teacher)
        n_examples, produce, label_ids = _stage2(model, tokenizer, family, classifier, teacher, all_needs, data,
                                                 vocab_map, settings, theseus, seed, runtime)  # fmt: skip
    if all_needs & {"student_attentions", "teacher_attentions"}:
        require_attentions(model)
        if teacher is not None:
            require_attentions(teacher)
    steps = steps_for(n_examples, settings["epochs"], settings["batch_size"], settings["grad_accum"],
                      settings.get("max_steps"))  # fmt: skip
    context = LossContext(stage=stage, n_examples=n_examples, steps=steps, seed=seed, student_config=model.config,
                          teacher_config=teacher.config if teacher is not None else None, label_ids=label_ids)  # fmt: skip
    for loss in losses:
        if loss.needs & {"student_hidden", "teacher_hidden", "student_qkv", "teacher_qkv"} and teacher is None:
            raise ConfigError(f"loss '{loss.name}' needs the teacher's internals, and no teacher is loaded")
        loss.bind(context)
        loss.prepare_student(model)
    wrapper = DistillModule(model, losses)

    def step_fn(indices: list[int], step: int) -> Callable[[DistillModule], Any]:
        def run_step(module: DistillModule) -> tuple[torch.Tensor, dict[str, float], int]:
            progress = step / steps
            active = [loss for loss in module.losses if loss.active(progress)]
            needs = frozenset().union(*(loss.needs for loss in active))
            tensors: dict[str, Any] = {"step": step, "progress": progress,
                                       "example_ids": runtime.to(torch.tensor(indices))}  # fmt: skip
            tokens = produce(module.student, indices, tensors, needs)
            s, t = tensors.get("student_features"), tensors.get("teacher_features")
            if s is not None and t is not None and s.mask.shape != t.mask.shape and any(
                    getattr(loss, "token_aligned", False) for loss in active):  # fmt: skip
                raise ConfigError("per-token representation losses need the student to share the teacher's "
                                  f"tokenisation (masks {tuple(s.mask.shape)} vs {tuple(t.mask.shape)})")  # fmt: skip
            parts = {loss.name: loss(tensors) for loss in active}
            total = sum(loss.weight * parts[loss.name] for loss in active)
            report = {loss.name: float(parts[loss.name].detach()) if loss in active else 0.0 for loss in module.losses}
            return total, {"loss": float(total.detach()), **report}, tokens

        return run_step

    def loss_fn(module: torch.nn.Module, indices: list[int], step: int) -> tuple[torch.Tensor, dict[str, float], int]:
        return module(step_fn(indices, step))

    identity = _identity(stage, student_dir, data, run, settings, deepspeed, seed, phase)
    main = runtime.ranks.main
    with WorkDir(work_dir, identity, main) as work:
        trained = train(wrapper, loss_fn, n_examples, TrainSettings.from_config(settings, steps, seed), work, deepspeed,
                        runtime)  # fmt: skip
        trained = getattr(trained, "student", trained)
        if not main:  # data-parallel helpers: the main process writes the student
            return {"stage": stage, "steps": steps}
        release_attentions(trained)
        trained = merge_factorised(trained)
        trained.requires_grad_(True)
        info = {"run": run.get("name"), "stage": stage, "description": run.get("description"),
                "losses": spec, "steps": steps, "training_examples": n_examples, "settings": settings}  # fmt: skip
        if classifier:
            info.update(task_type=load_prepared(data["task"], "dev").task.name, head="classification",
                        teacher=str(data["teacher"]))  # fmt: skip
        meta = save_student(trained, student_dir, out_dir, work.log_csv, info)
        work.remove()
    return meta


def save_student(model: torch.nn.Module, parent: str | Path, out_dir: str | Path, log_csv: Path,
                 info: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """The student folder (written whole or not at all): weights, the parent's tokenizer and vocabulary map,
    the training log and kdflow.json."""
    parent = Path(parent)
    model = model.float().eval()  # fp32 whatever the training precision
    with atomic_folder(out_dir) as tmp:
        model.save_pretrained(tmp)
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                     "chat_template.jinja", "vocab_map.json"):  # fmt: skip
            if (parent / name).exists():
                shutil.copy(parent / name, tmp / name)
        shutil.copy(log_csv, tmp / "train_log.csv")
        meta = read_json(parent / "kdflow.json") if (parent / "kdflow.json").exists() else {}
        meta.update({**info, "parent": str(parent), "parameters": count_parameters(model),
                     "weights_sha256": weights_fingerprint(tmp)})  # fmt: skip
        faults.die_at("before_save", 1)
        write_json(tmp / "kdflow.json", meta)
    return meta
