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

import contextlib
import csv
import functools
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from .. import faults
from ..errors import KdflowError
from ..safeio import atomic_path, write_error
from ..runtime import Runtime
from .workdir import WorkDir

LossFn = Callable[[torch.nn.Module, Sequence[int], int], tuple[torch.Tensor, dict[str, float], int]]  # (module, batch, step)


log = logging.getLogger(__name__)


class TrainingError(KdflowError):
    """Training stopped (non-finite loss, bad settings)."""


@dataclass(frozen=True)
class TrainSettings:
    steps: int
    batch_size: int
    grad_accum: int = 1
    lr: float = 2e-5
    warmup_ratio: float = 0.06
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    checkpoint_every: int = 50
    seed: int = 0
    divergence_factor: float | None = 100.0

    @classmethod
    def from_config(cls, cfg: dict[str, Any], steps: int, seed: int) -> TrainSettings:
        keys = ("batch_size", "grad_accum", "lr", "warmup_ratio", "weight_decay", "max_grad_norm", "checkpoint_every",
                "divergence_factor")  # fmt: skip
        return cls(steps=steps, seed=seed, **{k: cfg[k] for k in keys if k in cfg})


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@functools.lru_cache(maxsize=4)
def _permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def batch_indices(n: int, step: int, micro: int, settings: TrainSettings) -> list[int]:
    """Example indices of micro-batch ``micro`` of optimizer step ``step``: epochs of seeded permutations."""
    per_step = settings.batch_size * settings.grad_accum
    start = step * per_step + micro * settings.batch_size
    out = []
    for position in range(start, start + settings.batch_size):
        epoch, offset = divmod(position, n)
        out.append(int(_permutation(settings.seed, epoch, n)[offset]))
    return out


def _schedule(settings: TrainSettings) -> Callable[[int], float]:
    warmup = max(1, int(settings.warmup_ratio * settings.steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (settings.steps - step) / max(1, settings.steps - warmup))

    return factor


class _Plain:
    """Plain PyTorch: the model on the runtime's device in fp32, autocast to ``compute.precision`` (a GradScaler
    with fp16), DDP over several processes (NCCL on CUDA, gloo on the CPU), fused AdamW."""

    def __init__(self, model: torch.nn.Module, settings: TrainSettings, runtime: Runtime) -> None:
        self.runtime = runtime
        self.model = runtime.place(model)
        self.wrapped = self.model
        if runtime.ranks.size > 1:
            runtime.init_distributed()
            ids = [runtime.device.index] if runtime.cuda else None
            self.wrapped = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids,
                                                                     find_unused_parameters=True)  # fmt: skip
        params = [p for p in self.model.parameters() if p.requires_grad]
        # the fused kernel updates every tensor in one pass (CPU and CUDA); the default loops over tensors
        self.optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay, fused=True)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _schedule(settings))
        self.scaler = runtime.grad_scaler()
        self.settings = settings

    def autocast(self) -> contextlib.AbstractContextManager:
        return self.runtime.autocast()

    def backward(self, loss: torch.Tensor) -> None:
        loss = loss / self.settings.grad_accum
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self) -> None:
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.settings.max_grad_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def save(self, folder: Path, step: int) -> None:
        if not self.runtime.ranks.main:
            self.runtime.barrier()
            return
        state = {
            "step": step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": self.runtime.rng_state(),
        }
        with atomic_path(folder / "checkpoint.pt") as tmp:
            torch.save(state, tmp)
        self.runtime.barrier()

    def load(self, folder: Path) -> int | None:
        path = folder / "checkpoint.pt"
        if not path.exists():
            return None
        try:  # to host memory first: the RNG states must stay there; load_state_dict copies to the device
            state = torch.load(path, map_location="cpu", weights_only=False)
        except (RuntimeError, EOFError, OSError) as exc:
            raise TrainingError(f"{path}: checkpoint cannot be read ({exc}); delete it to start over") from None
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.runtime.set_rng_state(state["rng"])
        return int(state["step"])

    def module(self) -> torch.nn.Module:
        return self.wrapped

    def state_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        yield from _named_state(self.model, self.optimizer)

    def final_module(self) -> torch.nn.Module:
        return self.model


def deepspeed_environment(runtime: Runtime) -> None:
    """Accelerator and, for a single process, a local rendezvous, as DeepSpeed expects them."""
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if runtime.cuda else "cpu")
    runtime.ranks.export()
    if runtime.ranks.size == 1:
        for key, value in (("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", str(_free_port())), ("RANK", "0"),
                           ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1")):  # fmt: skip
            os.environ.setdefault(key, value)


def deepspeed_precision(ds_config: dict[str, Any], precision: str) -> dict[str, Any]:
    """DeepSpeed's own mixed precision from ``compute.precision`` unless the DeepSpeed config sets it (no autocast
    on top: one cast, DeepSpeed's)."""
    out = dict(ds_config)
    for key, name in (("bf16", "bf16"), ("fp16", "fp16")):
        out.setdefault(key, {"enabled": precision == name})
    return out


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _DeepSpeed:
    def __init__(self, model: torch.nn.Module, settings: TrainSettings, ds_config: dict[str, Any],
                 runtime: Runtime) -> None:  # fmt: skip
        deepspeed_environment(runtime)
        import deepspeed

        self.runtime = runtime
        config = {
            "train_micro_batch_size_per_gpu": settings.batch_size // runtime.ranks.size,
            "gradient_accumulation_steps": settings.grad_accum,
            "gradient_clipping": settings.max_grad_norm,
            "steps_per_print": 10**9,
            **deepspeed_precision(ds_config, runtime.precision),
        }
        params = [p for p in model.parameters() if p.requires_grad]
        offload = config.get("zero_optimization", {}).get("offload_optimizer", {}).get("device") == "cpu"
        optimizer = None
        if offload:
            from deepspeed.ops.adam import DeepSpeedCPUAdam

            optimizer = DeepSpeedCPUAdam(params, lr=settings.lr, weight_decay=settings.weight_decay)
        else:
            optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(settings))
        self.engine, _, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=config
        )
        self.settings = settings

    def autocast(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)

    def step(self) -> None:
        for _ in range(self.settings.grad_accum):  # the engine counts micro-steps
            self.engine.step()

    def lr(self) -> float:
        return self.engine.get_lr()[0]

    def save(self, folder: Path, step: int) -> None:
        try:
            self.engine.save_checkpoint(str(folder), tag="last", client_state={"step": step})
        except (OSError, RuntimeError) as exc:
            raise write_error(folder, exc) from exc

    def state_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """This rank's parameters (ZeRO partitions included) and optimizer state."""
        for name, p in self.engine.module.named_parameters():
            yield name, getattr(p, "ds_tensor", p)
        yield from _named_state(None, self.engine.optimizer)

    def load(self, folder: Path) -> int | None:
        if not (folder / "latest").exists():
            return None
        _, client = self.engine.load_checkpoint(str(folder), tag="last")
        return int(client["step"]) if client else None

    def module(self) -> torch.nn.Module:
        return self.engine.module

    def final_module(self) -> torch.nn.Module:
        """The trained model with full fp32 weights on the CPU (ZeRO-3 partitions them: gathered one submodule
        at a time straight into a plain copy, never two full copies; of a wrapper with a ``student``, the
        student only)."""
        module = self.engine.module
        target = getattr(module, "student", module)
        if self.engine.zero_optimization_stage() != 3:
            return target.float()
        import deepspeed

        main = self.runtime.ranks.main  # the others only take part in the gathers
        plain = type(target)(target.config).float() if main else None
        mine = dict(plain.named_modules()) if main else {}
        for name, sub in target.named_modules():
            params = list(sub.parameters(recurse=False))
            if not params:
                continue
            with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
                for pname, p in sub.named_parameters(recurse=False):
                    if main:
                        getattr(mine[name], pname).data.copy_(p.detach().float().cpu())
        if not main:
            return target
        for name, buf in target.named_buffers():
            owner, _, bname = name.rpartition(".")
            getattr(mine[owner], bname).data.copy_(buf.detach().cpu())
        plain.tie_weights()
        return plain


def _named_state(model: torch.nn.Module | None, optimizer: Any) -> Iterator[tuple[str, torch.Tensor]]:
    if model is not None:
        yield from model.named_parameters()
    state = getattr(optimizer, "state", {})
    for i, values in enumerate(state.values() if isinstance(state, dict) else []):
        for key, value in values.items():
            if torch.is_tensor(value) and value.is_floating_point():
                yield f"optimizer state {i}.{key}", value


def first_non_finite(tensors: Iterator[tuple[str, torch.Tensor]]) -> str | None:
    """The name of the first tensor holding a NaN or an infinity, or None."""
    for name, tensor in tensors:
        if tensor.numel() and not bool(torch.isfinite(tensor.detach()).all()):
            return name
    return None


class TrainLog:
    """The per-step CSV log: on resume the rows up to the checkpoint are kept (rewritten atomically, so a
    torn last line from a killed writer goes away) and new rows are appended; never truncated."""

    def __init__(self, path: Path, start: int, main: bool) -> None:
        self.path, self.main = path, main
        self.rows = self._previous(start) if main else []
        self.fields: list[str] | None = list(self.rows[0]) if self.rows else None
        if main:
            with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
                if self.fields:
                    writer = csv.DictWriter(fh, fieldnames=self.fields)
                    writer.writeheader()
                    writer.writerows(self.rows)
        self._fh = open(path if main else os.devnull, "a", newline="", encoding="utf-8")

    def _previous(self, start: int) -> list[dict[str, Any]]:
        if start == 0 or not self.path.exists():
            if start:
                log.warning("%s is missing: the log of steps 1-%d is lost", self.path, start)
            return []
        rows = []
        with open(self.path, newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                try:
                    step = int(row["step"])
                except (TypeError, ValueError):
                    break  # a torn line after the last checkpoint
                if step > start:
                    break
                rows.append(row)
        if len(rows) != start:
            log.warning("%s holds %d of the %d steps before the checkpoint", self.path, len(rows), start)
        return rows

    def write(self, row: dict[str, Any]) -> None:
        try:
            if self.fields is None:
                self.fields = list(row)
                csv.DictWriter(self._fh, fieldnames=self.fields).writeheader()
            csv.DictWriter(self._fh, fieldnames=self.fields).writerow(row)
            self._fh.flush()
        except OSError as exc:
            raise write_error(self.path, exc) from None

    def close(self) -> None:
        self._fh.close()


class DivergenceGuard:
    """Stops a run whose loss (mean of the last ``window`` steps) exceeds ``factor`` times its starting loss
    (mean of the first ``window`` steps) and ``factor`` times 1.0: finite, but growing by orders of magnitude."""

    window = 5

    def __init__(self, factor: float | None) -> None:
        self.factor = factor
        self.first: list[float] = []
        self.last: list[float] = []

    def check(self, step: int, loss: float) -> None:
        if self.factor is None:
            return
        if len(self.first) < self.window:
            self.first.append(loss)
        self.last = [*self.last[-(self.window - 1) :], loss]
        if len(self.first) < self.window:
            return
        start, now = sum(self.first) / self.window, sum(self.last) / len(self.last)
        if abs(now) > self.factor * max(abs(start), 1.0):
            raise TrainingError(
                f"the loss diverged: {now:.4g} over steps {step - len(self.last) + 1}-{step} against {start:.4g} over "
                f"steps 1-{self.window} (more than divergence_factor = {self.factor:g} times); lower the learning "
                "rate, or raise or unset `divergence_factor` in this rule's training settings"
            )


def _checkpoint_note(work: WorkDir, saved: int) -> str:
    if saved:
        return f"the last finite checkpoint (step {saved}) is kept in {work.checkpoint}"
    return "no checkpoint was written yet"


def train(
    model: torch.nn.Module,
    loss_fn: LossFn,
    n_examples: int,
    settings: TrainSettings,
    work: WorkDir,
    deepspeed: dict[str, Any] | None = None,
    runtime: Runtime | None = None,
) -> torch.nn.Module:
    """Run ``settings.steps`` optimizer steps of ``loss_fn`` over ``n_examples``; returns the trained module.
    ``work`` (entered) holds the checkpoint and the log; a checkpoint of another identity was cleared."""
    seed_everything(settings.seed)
    model.train()
    runtime = runtime or Runtime.create()
    world = runtime.ranks
    if settings.batch_size % world.size:
        raise TrainingError(f"batch size {settings.batch_size} does not split over {world.size} processes")
    engine = _DeepSpeed(model, settings, deepspeed, runtime) if deepspeed else _Plain(model, settings, runtime)
    start = (engine.load(work.checkpoint) or 0) if work.resumable() else 0
    if start:
        log.info("resuming %s at step %d of %d", work.checkpoint, start + 1, settings.steps)
    train_log = TrainLog(work.log_csv, start, world.main)
    guard = DivergenceGuard(settings.divergence_factor)
    saved = start
    bar = tqdm(total=settings.steps, initial=start, desc="train", unit="step", disable=not world.main)
    try:
        for step in range(start + 1, settings.steps + 1):  # 1-based, as in the log
            t0, tokens, parts_sum = time.perf_counter(), 0, {}
            for micro in range(settings.grad_accum):
                indices = batch_indices(n_examples, step - 1, micro, settings)[world.rank :: world.size]
                with engine.autocast():
                    loss, parts, n_tokens = loss_fn(engine.module(), indices, step - 1)
                if not torch.isfinite(loss):
                    raise TrainingError(f"non-finite loss {loss.item()} at step {step} (parts {parts}); "
                                        f"{_checkpoint_note(work, saved)}")  # fmt: skip
                engine.backward(loss)
                tokens += n_tokens
                for k, v in parts.items():
                    parts_sum[k] = parts_sum.get(k, 0.0) + v / settings.grad_accum
            engine.step()
            if faults.armed("nan_weights", step):
                with torch.no_grad():
                    next(engine.module().parameters()).fill_(float("nan"))
            parts_sum, tokens = runtime.mean(parts_sum, tokens)
            seconds = time.perf_counter() - t0
            train_log.write({"step": step, **{k: round(v, 6) for k, v in parts_sum.items()},
                             "lr": engine.lr(), "tokens_per_second": round(tokens / seconds, 1)})  # fmt: skip
            bar.set_postfix({**{k: f"{v:.4f}" for k, v in parts_sum.items()}, "tok/s": f"{tokens / seconds:.0f}"})
            bar.update(1)
            guard.check(step, parts_sum.get("loss", next(iter(parts_sum.values()), 0.0)))
            if step % settings.checkpoint_every == 0 or step == settings.steps:
                bad = first_non_finite(engine.state_tensors())
                if bad is not None:
                    raise TrainingError(f"{bad} is not finite after step {step}: no checkpoint written; "
                                        f"{_checkpoint_note(work, saved)}")  # fmt: skip
                engine.save(work.checkpoint, step)
                saved = step
            faults.die_at("train_step", step - start)
    finally:
        bar.close()
        train_log.close()
    return engine.final_module()


def steps_for(n_examples: int, epochs: float, batch_size: int, grad_accum: int, max_steps: int | None) -> int:
    steps = math.ceil(epochs * n_examples / (batch_size * grad_accum))
    return max(1, min(steps, max_steps) if max_steps else steps)
