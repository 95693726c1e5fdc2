"""Size and speed of a model on this machine: parameters (embedding and head apart), disk size,
batch-1 latency (median) and batched throughput. Written beside, not inside, the metrics JSON, so that
metrics stay byte-stable across runs while timings do not."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .modeling import count_parameters


def folder_bytes(folder: str | Path) -> int:
    """Bytes of every file under a model folder (weights, tokenizer, configs)."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def vocabulary_size(model: torch.nn.Module) -> int:
    """Rows of the input embedding (the vocabulary the model reads)."""
    return int(model.get_input_embeddings().weight.shape[0])


def median_latency(score_one: Callable[[int], Any], count: int, warmup: int = 2) -> dict[str, float]:
    """Median and quartiles of the wall time of ``score_one(i)`` for i in range(count), after warm-up calls."""
    for i in range(min(warmup, count)):
        score_one(i)
    times = []
    for i in range(count):
        start = time.perf_counter()
        score_one(i)
        times.append(time.perf_counter() - start)
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return {
        "median_ms": 1000 * statistics.median(times),
        "p25_ms": 1000 * q[0],
        "p75_ms": 1000 * q[2],
        "samples": len(times),
    }


def machine() -> dict[str, Any]:
    """Where timings were taken."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def efficiency_report(
    model: torch.nn.Module,
    model_dir: str | Path,
    score_one: Callable[[int], Any],
    latency_examples: int,
    batched_examples: int,
    batched_seconds: float,
    batch_size: int,
) -> dict[str, Any]:
    """Everything the summary needs about a model's cost; ``score_one(i)`` scores dev example i alone."""
    latency = median_latency(score_one, latency_examples) if latency_examples else None
    return {
        "model": str(model_dir),
        "parameters": count_parameters(model),
        "vocabulary_size": vocabulary_size(model),
        "disk_bytes": folder_bytes(model_dir),
        "latency_batch1": latency,
        "throughput": {
            "examples_per_second": batched_examples / batched_seconds if batched_seconds > 0 else None,
            "examples": batched_examples,
            "batch_size": batch_size,
            "seconds": batched_seconds,
        },
        "machine": machine(),
    }
