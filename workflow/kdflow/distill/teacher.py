"""The frozen teacher: loaded on the runtime's device (or in a ZeRO inference engine), run without gradients."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..features import Features, forward_features
from ..modeling import load_lm
from ..runtime import Runtime
from ..train.engines import deepspeed_environment


def body(model: torch.nn.Module) -> torch.nn.Module:
    """The model without its LM head (representations only: no vocabulary-wide logits)."""
    return getattr(model, "base_model", model)


def load_teacher(teacher_dir: str | Path, ds_config: dict[str, Any] | None, runtime: Runtime) -> torch.nn.Module:
    """The frozen teacher on the runtime's device in ``compute.teacher_dtype`` (or in a ZeRO inference engine),
    compiled with ``compute.compile`` outside DeepSpeed."""
    model, _, _ = load_lm(teacher_dir, keep_architecture=True, runtime=runtime, teacher=True)
    model.requires_grad_(False)
    if ds_config:
        return zero_inference(model, ds_config, runtime)
    if runtime.settings["compile"]:
        compile_frozen(model)
    return model


def compile_frozen(model: torch.nn.Module) -> None:
    """``nn.Module.compile`` of a frozen model and of its body, which the losses that need no head call alone
    (as an Accelerate-prepared teacher is compiled when TRL's ``torch_compile`` is set)."""
    model.compile()
    if body(model) is not model:
        body(model).compile()


def zero_inference(model: torch.nn.Module, ds_config: dict[str, Any], runtime: Runtime) -> torch.nn.Module:
    """The teacher in a DeepSpeed engine for inference only (ZeRO-3 partitions and, with
    ``offload_param``, keeps its weights in CPU memory between uses): teachers larger than memory."""
    import deepspeed

    deepspeed_environment(runtime)
    config = {"train_micro_batch_size_per_gpu": 1, **ds_config}
    engine, _, _, _ = deepspeed.initialize(model=model, config=config)
    engine.eval()
    return engine.module


@torch.no_grad()
def teacher_features(
    teacher: torch.nn.Module, inputs: dict[str, torch.Tensor], head: bool, flags: dict[str, bool]
) -> Features:
    """One forward pass of the teacher: with its head (``head``: word predictions or classification logits) or
    its body alone, with the feature kinds ``flags`` asks for."""
    return forward_features(teacher if head else body(teacher), inputs, **flags)
