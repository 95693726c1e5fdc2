"""Rule `cache_logits`: run the teacher once over the corpus (stage 1) or a task (stage 2) and store
sparse targets (see format.py) in resumable shards."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..buffers import ChunkBuffers, linear_into
from ..fingerprint import files_sha256, tokenizer_fingerprint, weights_fingerprint
from ..modeling import load_lm
from ..prepare import load_prepared
from ..preprocess import open_blocks
from ..prompts import Cloze
from ..runtime import Runtime
from ..scoring import build_items, pad_batch, pad_id, score_clozes, wrap_special
from ..vocab.compress import special_token_ids
from ..vocab.vmap import VocabMap
from .format import encode_values, file_sha256, id_dtype, log_normalisers, sparse_targets
from .head import chunk_rows, save_head, teacher_hidden
from .masking import mask_block
from .quant import check_value_dtype, encode_hidden
from .store import ShardWriter


def corpus_fingerprint(corpus_dir: str | Path) -> str:
    folder = Path(corpus_dir)
    return files_sha256([folder / "meta.json", folder / "train.bin"], folder)


def task_fingerprint(task_dir: str | Path, split: str = "train") -> str:
    folder = Path(task_dir)
    return files_sha256([folder / "task.json", folder / f"{split}.jsonl"], folder)


def vocab_fingerprint(vocab_map: str | Path | None) -> str:
    return file_sha256(vocab_map) if vocab_map else "full"


def _load(teacher_dir: str | Path, vocab_map: str | Path | None, runtime: Runtime, settings: dict[str, Any]):
    """The teacher, its tokenizer and family and the vocabulary map, once the settings are checked."""
    check_value_dtype(settings)
    model, tokenizer, family = load_lm(teacher_dir, runtime=runtime, teacher=True)
    vmap = VocabMap.load(vocab_map, tokenizer_fingerprint(teacher_dir)) if vocab_map else None
    return model, tokenizer, family, vmap


def _project(logits: torch.Tensor, vmap: VocabMap | None) -> torch.Tensor:
    return vmap.project_logits(logits) if vmap is not None else logits


def _targets_arrays(
    hidden: torch.Tensor,
    head: torch.nn.Module,
    vmap: VocabMap | None,
    settings: dict[str, Any],
    vocab_size: int,
    buffers: ChunkBuffers,
) -> dict[str, np.ndarray]:
    """Arrays of one batch's stored rows, from the LM head's inputs ``hidden`` [rows, d]: in mode ``hidden`` those;
    else the head's logits (in ``buffers``), projected, a chunk of rows at a time, reduced to top-k or dense."""
    if settings["mode"] == "hidden":
        return encode_hidden(hidden, settings["value_dtype"])
    step, parts = chunk_rows(head), []
    for start in range(0, len(hidden), step):
        logits = _project(linear_into(hidden[start : start + step], head.weight, head.bias, buffers), vmap)
        if settings["mode"] == "dense":
            logprobs = torch.log_softmax(logits, -1)
            parts.append({"dense": logprobs, "log_norm": log_normalisers(logprobs, settings["temperatures"])})
        else:
            scratch = buffers.take("exp", tuple(logits.shape))
            t = sparse_targets(logits, settings["k"], settings["temperatures"], overwrite=True, scratch=scratch)
            parts.append({"topk_values": t["values"], "topk_ids": t["ids"], "log_norm": t["log_norm"]})
    merged = {key: torch.cat([p[key] for p in parts]) for key in parts[0]}  # one copy to the host per array
    out = {"log_norm": merged.pop("log_norm").cpu().numpy().astype(np.float32)}
    if "topk_ids" in merged:
        out["topk_ids"] = merged.pop("topk_ids").cpu().numpy().astype(id_dtype(vocab_size))
    return {key: encode_values(value, settings["value_dtype"]) for key, value in merged.items()} | out


def _header(kind: str, teacher_dir, tokenizer_dir, vocab_map, data_sha: str, settings: dict, extra: dict) -> dict:
    """The cache's header: what it was built from and how."""
    return {
        "kdflow": "logit_cache",
        "kind": kind,
        "settings": settings,
        "fingerprints": {
            "teacher": weights_fingerprint(teacher_dir),
            "tokenizer": tokenizer_fingerprint(tokenizer_dir),
            "vocab_map": vocab_fingerprint(vocab_map),
            "data": data_sha,
        },
        **extra,
    }


def _masked(ids: torch.Tensor, first: int, seed: int, tokenizer: Any, specials: Any) -> tuple[torch.Tensor, list]:
    """Masked-LM inputs of blocks ``first, first + 1, ...``: the deterministic masking of each block, and the
    masked positions (where the targets are stored)."""
    masked = [
        mask_block(row.numpy(), seed, first + r, tokenizer.mask_token_id, len(tokenizer), specials)
        for r, row in enumerate(ids)
    ]
    return torch.from_numpy(np.stack([m[0] for m in masked])), [torch.as_tensor(m[1]) for m in masked]


def _at_positions(
    hidden: torch.Tensor, positions: list[torch.Tensor] | None, first: int, block_size: int
) -> tuple[torch.Tensor, np.ndarray | None]:
    """The rows of ``hidden`` [blocks, length, d] to store: every position, or the masked ones with their flat
    corpus positions."""
    if positions is None:
        return hidden.reshape(-1, hidden.shape[-1]), None
    flat = np.concatenate([(first + r) * block_size + p.cpu().numpy() for r, p in enumerate(positions)])
    return torch.cat([hidden[r, p] for r, p in enumerate(positions)]), flat.astype(np.int64)


@torch.no_grad()
def cache_corpus(
    teacher_dir: str | Path,
    corpus_dir: str | Path,
    vocab_map: str | Path | None,
    out_dir: str | Path,
    settings: dict[str, Any],
    seed: int,
    runtime: Runtime | None = None,
) -> dict[str, Any]:
    """Stage 1: targets at every position (causal) or at the deterministic masked positions (masked)."""
    runtime = runtime or Runtime()
    model, tokenizer, family, vmap = _load(teacher_dir, vocab_map, runtime, settings)
    blocks = open_blocks(corpus_dir, "train")
    n_blocks = min(len(blocks), settings["max_blocks"] or len(blocks))
    block_size = blocks.shape[1]
    student_vocab = vmap.size if vmap else model.config.vocab_size
    extra = {"family": family, "blocks": n_blocks, "block_size": block_size, "student_vocab_size": student_vocab}
    if family == "masked":
        extra["masking"] = {"seed": seed, "prob": 0.15, "mask_id": tokenizer.mask_token_id}
    header = _header("corpus", teacher_dir, teacher_dir, vocab_map, corpus_fingerprint(corpus_dir), settings, extra)
    with _writer(out_dir, header, runtime) as writer:
        head_sha = save_head(model, out_dir, settings, runtime.ranks.main)
        specials, buffers = special_token_ids(tokenizer), ChunkBuffers(runtime.device)
        per_shard, batch = settings["shard_blocks"], settings["batch_size"]
        bar = tqdm(
            total=n_blocks * block_size,
            desc="cache corpus",
            unit="tok",
            unit_scale=True,
            disable=not runtime.ranks.main,
        )
        started, forward_seconds = time.perf_counter(), 0.0
        for index, start in enumerate(range(0, n_blocks, per_shard)):
            stop = min(start + per_shard, n_blocks)
            if writer.skip(index):
                bar.update((stop - start) * block_size)
                continue
            parts: list[dict[str, np.ndarray]] = []
            for b in range(start, stop, batch):
                ids = torch.from_numpy(np.asarray(blocks[b : min(b + batch, stop)]).astype(np.int64))
                ids, positions = _masked(ids, b, seed, tokenizer, specials) if family == "masked" else (ids, None)
                t0 = time.perf_counter()
                hidden, head = teacher_hidden(model, *runtime.to((ids, torch.ones_like(ids))))
                forward_seconds += time.perf_counter() - t0
                rows, flat = _at_positions(hidden, runtime.to(positions), b, block_size)
                arrays = _targets_arrays(rows, head, vmap, settings, student_vocab, buffers)
                if flat is not None:
                    arrays["positions"] = flat
                parts.append(arrays)
                bar.update(ids.numel())
            merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
            writer.add(index, merged, {"blocks": [start, stop], "positions": _rows(merged)})
        bar.close()
        return writer.finish(-(-n_blocks // per_shard), _timings(started, forward_seconds, head_sha), runtime)


def _rows(arrays: dict[str, np.ndarray]) -> int:
    key = "hidden" if "hidden" in arrays else "log_norm"
    return int(len(arrays[key]))


def _task_shard(
    parts: list[dict[str, np.ndarray]], inputs: list, positions: list, scores: list
) -> dict[str, np.ndarray]:
    """One task shard: the batches' targets, and per example (flat arrays with offsets) its input ids, its
    word-prediction positions and the teacher's candidate scores."""
    arrays = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    arrays["input_ids"] = np.concatenate([np.asarray(i, dtype=np.int64) for i in inputs])
    arrays["input_offsets"] = np.cumsum([0] + [len(i) for i in inputs]).astype(np.int64)
    arrays["positions"] = np.concatenate(positions).astype(np.int64)
    arrays["position_offsets"] = np.cumsum([0] + [len(p) for p in positions]).astype(np.int64)
    arrays["candidate_scores"] = np.concatenate([np.asarray(s, dtype=np.float32) for s in scores])
    arrays["candidate_offsets"] = np.cumsum([0] + [len(s) for s in scores]).astype(np.int64)
    return arrays


def _writer(out_dir: str | Path, header: dict[str, Any], runtime: Runtime) -> ShardWriter:
    """The shard writer of this process (with several, each writes every size-th shard)."""
    runtime.init_distributed()
    return ShardWriter(out_dir, header, runtime.ranks.rank, runtime.ranks.size)


def _timings(started: float, forward_seconds: float, head_sha: str | None) -> dict[str, Any]:
    """The main process's timings (every process computes its share of the shards) and the head's sha256."""
    return {
        "seconds_this_run": time.perf_counter() - started,
        "teacher_forward_seconds_this_run": forward_seconds,
        "head_sha256": head_sha,
    }


def _task_inputs(clozes: list[Cloze], tokenizer, family: str, max_length: int):
    """Teacher-token inputs of each cloze, the positions to cache, and (single-token candidates) where the
    candidate scores can be read from the same forward pass: ``(position, candidate token ids)`` or None."""
    inputs, positions, shared = [], [], []
    for cloze in clozes:
        items = build_items([cloze], tokenizer, family, max_length)
        slots = {p for item in items for _, pairs in item.targets for p, _ in pairs}
        if len(items) == 1 and len(slots) == 1 and all(len(pairs) == 1 for _, pairs in items[0].targets):
            ids, slot = items[0].input_ids, slots.pop()
            shared.append((slot, [pairs[0][1] for _, pairs in sorted(items[0].targets)]))
            pos = np.arange(len(ids)) if family == "causal" else np.asarray([slot])
        elif family == "causal":
            ids = tokenizer(cloze.prefix.rstrip(), add_special_tokens=True)["input_ids"][-max_length:]
            pos, _ = np.arange(len(ids)), shared.append(None)
        else:
            pre = tokenizer(cloze.prefix, add_special_tokens=False)["input_ids"]
            post = tokenizer(cloze.suffix, add_special_tokens=False)["input_ids"]
            pre = pre[-max(1, max_length - len(post) - 3) :]
            ids = wrap_special(tokenizer, pre + [tokenizer.mask_token_id] + post)
            pos, _ = np.asarray([ids.index(tokenizer.mask_token_id)]), shared.append(None)
        inputs.append(ids)
        positions.append(pos)
    return inputs, positions, shared


@torch.no_grad()
def cache_task(
    teacher_dir: str | Path,
    task_dir: str | Path,
    vocab_map: str | Path | None,
    out_dir: str | Path,
    settings: dict[str, Any],
    runtime: Runtime | None = None,
) -> dict[str, Any]:
    """Stage 2: word targets on the task inputs + candidate scores per labelled example (all with transfer_set)."""
    runtime = runtime or Runtime()
    model, tokenizer, family, vmap = _load(teacher_dir, vocab_map, runtime, settings)
    prepared = load_prepared(task_dir, "train", transfer_set=bool(settings.get("transfer_set")))
    meta, examples = prepared.meta, prepared.examples
    student_vocab = vmap.size if vmap else model.config.vocab_size
    extra = {"family": family, "task": meta["name"], "examples": len(examples), "student_vocab_size": student_vocab}
    header = _header("task", teacher_dir, teacher_dir, vocab_map, task_fingerprint(task_dir), settings, extra)
    with _writer(out_dir, header, runtime) as writer:
        head_sha = save_head(model, out_dir, settings, runtime.ranks.main)
        per_shard, batch = settings["shard_examples"], settings["batch_size"]
        pad, buffers = pad_id(tokenizer), ChunkBuffers(runtime.device)
        bar = tqdm(total=len(examples), desc="cache task", unit="ex", disable=not runtime.ranks.main)
        started, forward_seconds = time.perf_counter(), 0.0
        for index, start in enumerate(range(0, len(examples), per_shard)):
            chunk = examples[start : start + per_shard]
            if writer.skip(index):
                bar.update(len(chunk))
                continue
            clozes = prepared.clozes[start : start + per_shard]
            inputs, positions, shared = _task_inputs(clozes, tokenizer, family, settings["max_length"])
            parts, scores = [], [None] * len(chunk)
            for b in range(0, len(chunk), batch):
                ids, mask = runtime.to(pad_batch(inputs[b : b + batch], pad))
                where = runtime.to([torch.as_tensor(p) for p in positions[b : b + batch]])
                t0 = time.perf_counter()
                hidden, head = teacher_hidden(model, ids, mask)
                forward_seconds += time.perf_counter() - t0
                picked = torch.cat([hidden[r, p] for r, p in enumerate(where)])
                parts.append(_targets_arrays(picked, head, vmap, settings, student_vocab, buffers))
                for r, slot in enumerate(shared[b : b + batch]):
                    if slot is not None:  # single-token candidates: scored from this very forward pass
                        scores[b + r] = torch.log_softmax(head(hidden[r, slot[0]]).float(), -1).cpu()[slot[1]].tolist()
            rest = [i for i, s in enumerate(scores) if s is None]
            if rest:
                scored = score_clozes(
                    model,
                    tokenizer,
                    family,
                    [clozes[i] for i in rest],
                    batch_size=batch,
                    max_length=settings["max_length"],
                    progress=False,
                    runtime=runtime,
                )
                for i, row in zip(rest, scored):
                    scores[i] = row
            arrays = _task_shard(parts, inputs, positions, scores)
            writer.add(index, arrays, {"examples": [start, start + len(chunk)], "positions": _rows(arrays)})
            bar.update(len(chunk))
        bar.close()
        return writer.finish(-(-len(examples) // per_shard), _timings(started, forward_seconds, head_sha), runtime)
