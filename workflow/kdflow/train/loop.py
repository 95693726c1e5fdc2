"""The training loop shared by teacher fine-tuning and distillation.

* deterministic: the batch of global step ``s`` is a pure function of (seed, s), so resuming from a
  checkpoint replays exactly what an uninterrupted run would have done;
* checkpoints every ``checkpoint_every`` optimizer steps into a work folder Snakemake does not own
  (workdir.py), written atomically; a killed job resumes from the last one, and only when the checkpoint was
  written under the same identity (settings, seed, inputs' fingerprints, versions);
* health: a NaN/inf loss stops the run, parameters and optimizer state are checked finite before every
  checkpoint (the last checkpoint is always a finite one), and a loss that grows by orders of magnitude
  (``divergence_factor``) stops it too; steps are numbered from 1 in messages and logs alike;
* a progress bar with tokens/s and each loss part, and a CSV log of the loss parts per step, appended and
  never truncated on resume;
* a DeepSpeed engine (ZeRO stage, offload, bf16) instead of plain PyTorch when a ``deepspeed`` config is given.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from tqdm import tqdm

from .. import faults
from ..runtime import Runtime
from .engines import DeepSpeedEngine, PlainEngine
from .health import DivergenceGuard, TrainingError, checkpoint_note, first_non_finite
from .log import TrainLog
from .settings import TrainSettings, batch_indices, seed_everything
from .workdir import WorkDir

__all__ = ["LossFn", "TrainSettings", "TrainingError", "train"]

LossFn = Callable[
    [torch.nn.Module, Sequence[int], int], tuple[torch.Tensor, dict[str, float], int]
]  # (module, batch, step)
Engine = PlainEngine | DeepSpeedEngine

log = logging.getLogger(__name__)


def _accumulate(
    engine: Engine,
    loss_fn: LossFn,
    n_examples: int,
    step: int,
    settings: TrainSettings,
    runtime: Runtime,
    note: str,
    lengths: tuple[int, ...] | None,
) -> tuple[dict[str, float], int]:
    """The ``grad_accum`` micro-batches of optimizer step ``step`` (1-based), backward included: the mean loss
    parts and the tokens seen by this process (``note`` says where the last finite checkpoint is)."""
    world = runtime.ranks
    tokens, parts_sum = 0, {}
    for micro in range(settings.grad_accum):
        indices = batch_indices(n_examples, step - 1, micro, settings, lengths)[world.rank :: world.size]
        with engine.autocast():
            loss, parts, n_tokens = loss_fn(engine.module(), indices, step - 1)
        if not torch.isfinite(loss):
            raise TrainingError(f"non-finite loss {loss.item()} at step {step} (parts {parts}); {note}")
        engine.backward(loss)
        tokens += n_tokens
        for k, v in parts.items():
            parts_sum[k] = parts_sum.get(k, 0.0) + v / settings.grad_accum
    return parts_sum, tokens


def _checkpoint(engine: Engine, work: WorkDir, step: int, note: str) -> None:
    """Save a checkpoint after ``step`` once every parameter and optimizer state is finite."""
    bad = first_non_finite(engine.state_tensors())
    if bad is not None:
        raise TrainingError(f"{bad} is not finite after step {step}: no checkpoint written; {note}")
    engine.save(work.checkpoint, step)


def _grouping(settings: TrainSettings, lengths: Sequence[int] | None, n: int) -> tuple[int, ...] | None:
    """The examples' lengths the batch schedule groups by (``settings.group_by_length``), else None."""
    if not settings.group_by_length:
        return None
    if lengths is None or len(lengths) != n:
        raise TrainingError(
            "group_by_length needs every example's length; this job's examples have none "
            "(stage 1's corpus blocks all have one length)"
        )
    return tuple(int(x) for x in lengths)


def train(
    model: torch.nn.Module,
    loss_fn: LossFn,
    n_examples: int,
    settings: TrainSettings,
    work: WorkDir,
    deepspeed: dict[str, Any] | None = None,
    runtime: Runtime | None = None,
    lengths: Sequence[int] | None = None,
) -> torch.nn.Module:
    """Run ``settings.steps`` optimizer steps of ``loss_fn`` over ``n_examples``; returns the trained module.
    ``work`` (entered) holds the checkpoint and the log; a checkpoint of another identity was cleared.
    ``lengths``: each example's tokens, for ``settings.group_by_length``."""
    grouped = _grouping(settings, lengths, n_examples)
    seed_everything(settings.seed)
    model.train()
    runtime = runtime or Runtime.create()
    world = runtime.ranks
    if settings.batch_size % world.size:
        raise TrainingError(f"batch size {settings.batch_size} does not split over {world.size} processes")
    engine = (
        DeepSpeedEngine(model, settings, deepspeed, runtime) if deepspeed else PlainEngine(model, settings, runtime)
    )
    start = (engine.load(work.checkpoint) or 0) if work.resumable() else 0
    if start:
        log.info("resuming %s at step %d of %d", work.checkpoint, start + 1, settings.steps)
    train_log = TrainLog(work.log_csv, start, world.main)
    guard = DivergenceGuard(settings.divergence_factor)
    saved = start
    bar = tqdm(total=settings.steps, initial=start, desc="train", unit="step", disable=not world.main)
    try:
        for step in range(start + 1, settings.steps + 1):  # 1-based, as in the log
            t0, note = time.perf_counter(), checkpoint_note(work, saved)
            parts_sum, tokens = _accumulate(engine, loss_fn, n_examples, step, settings, runtime, note, grouped)
            engine.step()
            if faults.armed("nan_weights", step):
                with torch.no_grad():
                    next(engine.module().parameters()).fill_(float("nan"))
            parts_sum, tokens = runtime.mean(parts_sum, tokens)
            seconds = time.perf_counter() - t0
            train_log.write(
                {
                    "step": step,
                    **{k: round(v, 6) for k, v in parts_sum.items()},
                    "lr": engine.lr(),
                    "tokens_per_second": round(tokens / seconds, 1),
                }
            )
            bar.set_postfix({**{k: f"{v:.4f}" for k, v in parts_sum.items()}, "tok/s": f"{tokens / seconds:.0f}"})
            bar.update(1)
            guard.check(step, parts_sum.get("loss", next(iter(parts_sum.values()), 0.0)))
            if step % settings.checkpoint_every == 0 or step == settings.steps:
                _checkpoint(engine, work, step, note)
                saved = step
            faults.die_at("train_step", step - start)
    finally:
        bar.close()
        train_log.close()
    return engine.final_module()
