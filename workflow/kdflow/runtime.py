"""One runtime object per process: where it sits among the data-parallel processes (torchrun or SLURM), which
device it computes on, in which precision, and the one ``to()`` that moves a batch there.

Config (``compute:``, per rule overridable under ``compute.rules.RULE``):

* ``device``: ``auto`` (``cuda:LOCAL_RANK`` when CUDA is present, else the CPU), ``cpu``, ``cuda``;
* ``precision``: ``fp32``, ``bf16`` or ``fp16``: autocast for the plain engine (a GradScaler with fp16),
  DeepSpeed's own bf16/fp16 when a ``deepspeed:`` config is given; students are saved in fp32 regardless;
* ``teacher_dtype``: ``auto`` (half precision on a GPU: bf16 where supported, else fp16; fp32 on the CPU),
  or ``fp32``/``bf16``/``fp16``; frozen teachers are loaded in it on the same device;
* ``tf32``: TF32 matmuls on Ampere and newer; ``attn_implementation``: ``sdpa``, ``eager``,
  ``flash_attention_2`` or null (the model's default); ``gradient_checkpointing`` for trained models;
* ``compile``: ``torch.compile`` of trained models and of an online teacher outside DeepSpeed, its body too
  (``nn.Module.compile``: the module keeps its type);
* ``loss_chunk``: positions per chunk of the fused LM head + word loss (``kdflow.losses.chunked``: the
  [positions, vocabulary] logits of the student and of a cached or online teacher are never formed whole),
  or null to form them whole.

A rule that asked the scheduler for GPUs (``--gpus N``) and finds no CUDA device stops, unless its device is
explicitly ``cpu``: a GPU job never falls back to the CPU in silence."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
from collections import UserDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedModel

from .errors import ConfigError
from .ranks import Ranks

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DEFAULT_COMPUTE: dict[str, Any] = {"device": "auto", "precision": "fp32", "teacher_dtype": "auto", "tf32": True}
DEFAULT_COMPUTE.update(attn_implementation=None, gradient_checkpointing=False, compile=False, loss_chunk=None)


def compute_settings(compute: Mapping[str, Any] | None) -> dict[str, Any]:
    """A rule's compute settings with defaults filled in and values checked."""
    out = {**DEFAULT_COMPUTE, **(compute or {})}
    out.pop("rules", None)
    unknown = sorted(set(out) - set(DEFAULT_COMPUTE))
    if unknown:
        raise ConfigError(f"compute: unknown key(s) {', '.join(unknown)} (known: {', '.join(DEFAULT_COMPUTE)})")
    if out["precision"] not in DTYPES:
        raise ConfigError(f"compute.precision: {out['precision']!r} is not one of {', '.join(DTYPES)}")
    if out["teacher_dtype"] not in (*DTYPES, "auto"):
        raise ConfigError(f"compute.teacher_dtype: {out['teacher_dtype']!r} is not auto or one of {', '.join(DTYPES)}")
    chunk = out["loss_chunk"]
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
        raise ConfigError(f"compute.loss_chunk: {chunk!r} is not null or a positive number of positions")
    if not isinstance(out["compile"], bool):
        raise ConfigError(f"compute.compile: {out['compile']!r} is not true or false")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", str(out["device"])):
        raise ConfigError(f"compute.device: {out['device']!r} is not auto, cpu, cuda or cuda:N")
    return out


@dataclass
class Runtime:
    """Ranks + device + precision; ``to()`` is the one place a batch goes to the device."""

    ranks: Ranks = field(default_factory=Ranks)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    settings: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_COMPUTE))
    audit: Any = None  # a DeviceAudit (tests): tensors moved by to()/place() are marked as on the device

    @classmethod
    def create(
        cls,
        compute: Mapping[str, Any] | None = None,
        gpus: int = 0,
        env: Mapping[str, str] | None = None,
        cuda_available: bool | None = None,
    ) -> Runtime:
        """Resolve ``compute`` for this process; ``gpus``: GPUs the scheduler gave the job (0: none asked)."""
        settings = compute_settings(compute)
        ranks = Ranks.from_env(env)
        has_cuda = torch.cuda.is_available() if cuda_available is None else cuda_available
        wanted = settings["device"]
        if wanted == "auto":
            if gpus and not has_cuda:
                raise ConfigError(
                    f"this job asked for {gpus} GPU(s) and no CUDA device is visible "
                    "(check the node's driver and CUDA_VISIBLE_DEVICES); set `compute.device: cpu` "
                    "to run it on the CPU on purpose"
                )
            wanted = "cuda" if has_cuda else "cpu"
        if wanted.startswith("cuda") and not has_cuda:
            raise ConfigError(f"compute.device is {wanted!r} and no CUDA device is visible")
        device = torch.device(f"cuda:{ranks.local_rank}" if wanted == "cuda" else wanted)
        runtime = cls(ranks, device, settings)
        if device.type == "cuda" and cuda_available is None:
            torch.cuda.set_device(device)
            torch.backends.cuda.matmul.allow_tf32 = bool(settings["tf32"])
            torch.backends.cudnn.allow_tf32 = bool(settings["tf32"])
        ranks.export()
        return runtime

    # --- description ---------------------------------------------------------------------------------------
    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def backend(self) -> str:
        return "nccl" if self.cuda else "gloo"

    @property
    def precision(self) -> str:
        return self.settings["precision"]

    @property
    def teacher_dtype(self) -> torch.dtype:
        name = self.settings["teacher_dtype"]
        if name == "auto":
            if not self.cuda:
                return torch.float32
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return DTYPES[name]

    def device_name(self) -> str:
        return torch.cuda.get_device_name(self.device) if self.cuda else "cpu"

    def describe(self) -> dict[str, Any]:
        """What the job computes on, logged once per job and recorded with efficiency figures."""
        return {
            "device": str(self.device),
            "device_name": self.device_name(),
            "precision": self.precision,
            "teacher_dtype": str(self.teacher_dtype).removeprefix("torch."),
            "attn_implementation": self.settings["attn_implementation"] or "model default",
            "rank": self.ranks.rank,
            "world_size": self.ranks.size,
            "launcher": self.ranks.launcher,
        }

    def log_once(self) -> None:
        if self.ranks.main:
            log.info("compute: %s", ", ".join(f"{k} {v}" for k, v in self.describe().items()))

    # --- processes -----------------------------------------------------------------------------------------
    def init_distributed(self) -> None:
        """NCCL on CUDA, gloo on the CPU; a no-op for one process or when already initialised."""
        if self.ranks.size > 1 and not torch.distributed.is_initialized():
            self.ranks.export()
            torch.distributed.init_process_group(
                self.backend,
                rank=self.ranks.rank,
                world_size=self.ranks.size,
                device_id=self.device if self.cuda else None,
            )

    def synchronize(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    # --- tensors and models --------------------------------------------------------------------------------
    def to(self, obj: Any) -> Any:
        """``obj`` with every tensor on the device: tensors, dicts, lists, tuples, dataclasses (Features),
        ``BatchEncoding`` and anything else with a ``to(device)`` of its own."""
        if isinstance(obj, torch.Tensor):
            moved = obj.to(self.device, non_blocking=self.cuda)
            return self.audit.mark(moved) if self.audit is not None else moved
        if isinstance(obj, UserDict):  # BatchEncoding
            obj.data = {k: self.to(v) for k, v in obj.data.items()}
            return obj
        if isinstance(obj, dict):
            return {k: self.to(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            items = [self.to(v) for v in obj]
            return type(obj)(*items) if hasattr(obj, "_fields") else type(obj)(items)
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            return dataclasses.replace(
                obj, **{f.name: self.to(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
            )
        return obj

    def place(self, model: torch.nn.Module, teacher: bool = False) -> torch.nn.Module:
        """A model on the device: a frozen teacher in ``teacher_dtype``, a trained model in fp32 (autocast
        gives the compute precision), with gradient checkpointing when asked."""
        model = model.to(self.device, dtype=self.teacher_dtype if teacher else torch.float32)
        if not teacher and self.settings["gradient_checkpointing"] and hasattr(model, "gradient_checkpointing_enable"):
            model.gradient_checkpointing_enable()
        if not teacher and self.settings["compile"] and isinstance(model, PreTrainedModel):
            model.compile()  # the language model only: a training wrapper around it also reads data
        if self.audit is not None:
            self.audit.mark_module(model)
        return model

    @property
    def loss_chunk(self) -> int | None:
        """Positions per chunk of the fused head + word loss (None: logits formed whole)."""
        return self.settings["loss_chunk"]

    def load_kwargs(self, teacher: bool = False) -> dict[str, Any]:
        """``from_pretrained`` arguments: dtype and attention implementation."""
        kwargs: dict[str, Any] = {"dtype": self.teacher_dtype if teacher else torch.float32}
        if self.settings["attn_implementation"]:
            kwargs["attn_implementation"] = self.settings["attn_implementation"]
        return kwargs

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision for the plain engine's forward passes (none in fp32)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=DTYPES[self.precision])

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        return torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None

    def rng_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"cpu": torch.get_rng_state()}
        if self.cuda:
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def set_rng_state(self, state: Any) -> None:
        if isinstance(state, torch.Tensor):  # checkpoints before the runtime: the CPU state only
            torch.set_rng_state(state)
            return
        torch.set_rng_state(state["cpu"])
        if self.cuda and "cuda" in state:
            torch.cuda.set_rng_state(state["cuda"], self.device)

    # --- collectives ---------------------------------------------------------------------------------------
    def mean(self, values: dict[str, float], tokens: int) -> tuple[dict[str, float], int]:
        """Loss parts averaged and token counts summed over all processes (a device tensor: NCCL's rule)."""
        if self.ranks.size == 1:
            return values, tokens
        keys = sorted(values)
        packed = torch.tensor([values[k] for k in keys] + [float(tokens)], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(packed)
        return {k: float(v) / self.ranks.size for k, v in zip(keys, packed[:-1].tolist())}, int(packed[-1].item())

    def barrier(self) -> None:
        if self.ranks.size > 1:
            torch.distributed.barrier()
