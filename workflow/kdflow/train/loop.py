"""The training loop shared by teacher fine-tuning and distillation.

* deterministic: the batch of global step ``s`` is a pure function of (seed, s), so resuming from a
  checkpoint replays exactly what an uninterrupted run would have done;
* checkpoints every ``checkpoint_every`` optimizer steps into a folder Snakemake does not own, written
  atomically; a killed job resumes from the last one;
* a NaN/inf loss stops the run with a clear message and leaves the last good checkpoint in place;
* a progress bar with tokens/s and each loss part, and a CSV log of the loss parts per step;
* a DeepSpeed engine (ZeRO stage, offload, bf16) instead of plain PyTorch when a ``deepspeed`` config is given.
"""

from __future__ import annotations

import csv
import functools
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..errors import KdflowError

LossFn = Callable[[torch.nn.Module, Sequence[int], int], tuple[torch.Tensor, dict[str, float], int]]  # (module, batch, step)


class TrainingError(KdflowError):
    """Training stopped (non-finite loss, bad settings)."""


@dataclass(frozen=True)
class World:
    """This process's place among the data-parallel processes (torchrun / deepspeed launcher env)."""

    rank: int = 0
    size: int = 1

    @classmethod
    def from_env(cls) -> World:
        return cls(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def mean(self, values: dict[str, float], tokens: int) -> tuple[dict[str, float], int]:
        """Loss parts averaged and token counts summed over all processes."""
        if self.size == 1:
            return values, tokens
        keys = sorted(values)
        packed = torch.tensor([values[k] for k in keys] + [float(tokens)], dtype=torch.float64)
        torch.distributed.all_reduce(packed)
        return {k: float(v) / self.size for k, v in zip(keys, packed[:-1])}, int(packed[-1])

    def barrier(self) -> None:
        if self.size > 1:
            torch.distributed.barrier()


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

    @classmethod
    def from_config(cls, cfg: dict[str, Any], steps: int, seed: int) -> TrainSettings:
        keys = ("batch_size", "grad_accum", "lr", "warmup_ratio", "weight_decay", "max_grad_norm", "checkpoint_every")
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
    def __init__(self, model: torch.nn.Module, settings: TrainSettings, world: World) -> None:
        self.model, self.world = model, world
        self.wrapped = model
        if world.size > 1:
            if not torch.distributed.is_initialized():
                torch.distributed.init_process_group("gloo")
            self.wrapped = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
        params = [p for p in model.parameters() if p.requires_grad]
        # the fused kernel updates every tensor in one pass (CPU and CUDA); the default loops over tensors
        self.optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay, fused=True)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _schedule(settings))
        self.settings = settings

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.settings.grad_accum).backward()

    def step(self) -> None:
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.settings.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def save(self, folder: Path, step: int) -> None:
        if not self.world.main:
            self.world.barrier()
            return
        folder.mkdir(parents=True, exist_ok=True)
        state = {
            "step": step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": torch.get_rng_state(),
        }
        tmp = folder / ".checkpoint.pt.tmp"
        torch.save(state, tmp)
        os.replace(tmp, folder / "checkpoint.pt")
        self.world.barrier()

    def load(self, folder: Path) -> int | None:
        path = folder / "checkpoint.pt"
        if not path.exists():
            return None
        state = torch.load(path, weights_only=False)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        return int(state["step"])

    def module(self) -> torch.nn.Module:
        return self.wrapped

    def final_module(self) -> torch.nn.Module:
        return self.model


def deepspeed_environment(world: World) -> None:
    """Accelerator and, for a single process, a local rendezvous, as DeepSpeed expects them."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu" if not torch.cuda.is_available() else "cuda")
    if world.size == 1:
        for key, value in (("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", str(_free_port())), ("RANK", "0"),
                           ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1")):  # fmt: skip
            os.environ.setdefault(key, value)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _DeepSpeed:
    def __init__(self, model: torch.nn.Module, settings: TrainSettings, ds_config: dict[str, Any], world: World) -> None:
        deepspeed_environment(world)
        import deepspeed

        config = {
            "train_micro_batch_size_per_gpu": settings.batch_size // world.size,
            "gradient_accumulation_steps": settings.grad_accum,
            "gradient_clipping": settings.max_grad_norm,
            "steps_per_print": 10**9,
            **ds_config,
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

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)

    def step(self) -> None:
        for _ in range(self.settings.grad_accum):  # the engine counts micro-steps
            self.engine.step()

    def lr(self) -> float:
        return self.engine.get_lr()[0]

    def save(self, folder: Path, step: int) -> None:
        self.engine.save_checkpoint(str(folder), tag="last", client_state={"step": step})

    def load(self, folder: Path) -> int | None:
        if not (folder / "latest").exists():
            return None
        _, client = self.engine.load_checkpoint(str(folder), tag="last")
        return int(client["step"]) if client else None

    def module(self) -> torch.nn.Module:
        return self.engine.module

    def final_module(self) -> torch.nn.Module:
        """The trained model with full weights (ZeRO-3 partitions them: gather into a plain copy; of a
        wrapper with a ``student``, the student only)."""
        module = self.engine.module
        if self.engine.zero_optimization_stage() != 3:
            return module
        import deepspeed

        target = getattr(module, "student", module)
        prefix = "student." if target is not module else ""
        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            state = {k[len(prefix) :]: v.detach().clone() for k, v in module.state_dict().items() if k.startswith(prefix)}
        module = target
        plain = type(module)(module.config)
        result = plain.load_state_dict(state, strict=False)
        plain.tie_weights()
        missing = [k for k in result.missing_keys if plain.state_dict()[k].data_ptr() not in
                   {v.data_ptr() for n, v in plain.state_dict().items() if n in state}]  # fmt: skip
        if missing or result.unexpected_keys:
            raise TrainingError(f"ZeRO-3 gather lost weights: missing {missing}, unexpected {result.unexpected_keys}")
        return plain


def train(
    model: torch.nn.Module,
    loss_fn: LossFn,
    n_examples: int,
    settings: TrainSettings,
    checkpoint_dir: str | Path,
    log_csv: str | Path,
    deepspeed: dict[str, Any] | None = None,
    stop_after_steps: int | None = None,
) -> torch.nn.Module:
    """Run ``settings.steps`` optimizer steps of ``loss_fn`` over ``n_examples``; returns the trained module."""
    seed_everything(settings.seed)
    model.train()
    world = World.from_env()
    if settings.batch_size % world.size:
        raise TrainingError(f"batch size {settings.batch_size} does not split over {world.size} processes")
    engine = _DeepSpeed(model, settings, deepspeed, world) if deepspeed else _Plain(model, settings, world)
    checkpoint_dir = Path(checkpoint_dir)
    start = engine.load(checkpoint_dir) or 0
    log_csv = Path(log_csv)
    log_csv.parent.mkdir(parents=True, exist_ok=True)
    rows = _previous_rows(log_csv, start)
    bar = tqdm(total=settings.steps, initial=start, desc="train", unit="step", disable=not world.main)
    fh = open(log_csv if world.main else os.devnull, "w", newline="", encoding="utf-8")
    writer: csv.DictWriter | None = None
    try:
        for step in range(start, settings.steps):
            t0, tokens, parts_sum = time.perf_counter(), 0, {}
            for micro in range(settings.grad_accum):
                indices = batch_indices(n_examples, step, micro, settings)[world.rank :: world.size]
                loss, parts, n_tokens = loss_fn(engine.module(), indices, step)
                if not torch.isfinite(loss):
                    raise TrainingError(
                        f"non-finite loss {loss.item()} at step {step} (parts {parts}); "
                        f"the last good checkpoint is kept in {checkpoint_dir}"
                    )
                engine.backward(loss)
                tokens += n_tokens
                for k, v in parts.items():
                    parts_sum[k] = parts_sum.get(k, 0.0) + v / settings.grad_accum
            engine.step()
            parts_sum, tokens = world.mean(parts_sum, tokens)
            seconds = time.perf_counter() - t0
            row = {"step": step + 1, **{k: round(v, 6) for k, v in parts_sum.items()},
                   "lr": engine.lr(), "tokens_per_second": round(tokens / seconds, 1)}  # fmt: skip
            rows.append(row)
            if writer is None:
                writer = csv.DictWriter(fh, fieldnames=list(row))
                writer.writeheader()
                writer.writerows(rows[:-1])
            writer.writerow(row)
            fh.flush()
            bar.set_postfix({**{k: f"{v:.4f}" for k, v in parts_sum.items()}, "tok/s": f"{tokens / seconds:.0f}"})
            bar.update(1)
            if (step + 1) % settings.checkpoint_every == 0 or step + 1 == settings.steps:
                engine.save(checkpoint_dir, step + 1)
            if stop_after_steps is not None and step + 1 - start >= stop_after_steps:
                fh.close()
                os._exit(137)  # fault injection for resume tests: die without cleaning up
    finally:
        bar.close()
        fh.close()
    return engine.final_module()


def _previous_rows(log_csv: Path, start: int) -> list[dict[str, Any]]:
    if start == 0 or not log_csv.exists():
        return []
    with open(log_csv, newline="", encoding="utf-8") as fh:
        return [r for r in csv.DictReader(fh) if int(r["step"]) <= start]


def steps_for(n_examples: int, epochs: float, batch_size: int, grad_accum: int, max_steps: int | None) -> int:
    steps = math.ceil(epochs * n_examples / (batch_size * grad_accum))
    return max(1, min(steps, max_steps) if max_steps else steps)
