"""The two training engines behind one interface (autocast, backward, step, lr, save, load, module,
state_tensors, final_module): plain PyTorch (DDP over several processes) and DeepSpeed (ZeRO, offload, its own
mixed precision)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from ..runtime import Runtime
from ..safeio import atomic_path, write_error
from .health import TrainingError
from .settings import TrainSettings


def _schedule(settings: TrainSettings) -> Callable[[int], float]:
    warmup = max(1, int(settings.warmup_ratio * settings.steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (settings.steps - step) / max(1, settings.steps - warmup))

    return factor


class PlainEngine:
    """Plain PyTorch: the model on the runtime's device in fp32, autocast to ``compute.precision`` (a GradScaler
    with fp16), DDP over several processes (NCCL on CUDA, gloo on the CPU), fused AdamW."""

    def __init__(self, model: torch.nn.Module, settings: TrainSettings, runtime: Runtime) -> None:
        self.runtime = runtime
        self.model = runtime.place(model)
        self.wrapped = self.model
        if runtime.ranks.size > 1:
            runtime.init_distributed()
            ids = [runtime.device.index] if runtime.cuda else None
            self.wrapped = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=ids, find_unused_parameters=True
            )
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
        for key, value in (
            ("MASTER_ADDR", "127.0.0.1"),
            ("MASTER_PORT", str(_free_port())),
            ("RANK", "0"),
            ("LOCAL_RANK", "0"),
            ("WORLD_SIZE", "1"),
        ):
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


class DeepSpeedEngine:
    def __init__(
        self, model: torch.nn.Module, settings: TrainSettings, ds_config: dict[str, Any], runtime: Runtime
    ) -> None:
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
