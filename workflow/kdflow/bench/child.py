"""The measured workloads, each run in a fresh process (`python -m kdflow.bench.child NAME JSON`) so that its
peak RSS is its own; the last stdout line is a JSON result with `peak_rss_mb`.

- `stage1`: kdflow stage-1 distillation (word_kl) with cached targets or an online teacher;
- `trl`: TRL's GKD trainer, off-policy (lmbda 0) with the forward KL (beta 0), on the same pair and batches;
- `cache`: building a corpus logit cache;
- `forward`: bare teacher forward passes over the same batches (the cache's lower bound on time).

Tokens/s figures are medians over the steps after the first (warm-up); a step's tokens are the batch's
non-padding positions (packed blocks: batch x block size).
"""

from __future__ import annotations

import csv
import json
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _runtime(a: dict[str, Any]) -> Any:
    from ..runtime import Runtime

    return Runtime.create(a.get("compute"))


def _peak_gpu_mb() -> float | None:
    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


def _settings(a: dict[str, Any], teacher: str) -> dict[str, Any]:
    return {
        "epochs": 1000,
        "max_steps": a["steps"],
        "batch_size": a["batch_size"],
        "grad_accum": 1,
        "lr": 1e-4,
        "warmup_ratio": 0.0,
        "weight_decay": 0.0,
        "max_grad_norm": 1.0,
        "checkpoint_every": 10**9,
        "max_length": a["max_length"],
        "teacher": teacher,
    }


def stage1(a: dict[str, Any]) -> dict[str, Any]:
    from ..distill import distill

    losses = a.get("losses") or {"word_kl": {"weight": 1.0, "temperature": a["temperature"]}}
    run = {"student": "s", "stage1": {"losses": losses}}
    mode = "cached" if a.get("cache") else "online"
    runtime = _runtime(a)
    with tempfile.TemporaryDirectory() as tmp:
        data = {"cache": a.get("cache"), "corpus": a["corpus"], "teacher": a["teacher"]}
        distill(
            "stage1",
            a["student"],
            Path(tmp) / "out",
            Path(tmp) / "work",
            run,
            _settings(a, mode),
            data,
            a.get("deepspeed"),
            seed=0,
            runtime=runtime,
        )
        with open(Path(tmp) / "out" / "train_log.csv") as fh:
            rates = [float(r["tokens_per_second"]) for r in csv.DictReader(fh)]
    return {
        "tokens_per_second": statistics.median(rates[1:] or rates),
        "steps": len(rates),
        "device_name": runtime.device_name(),
    }


def _gkd_settings(a: dict[str, Any]) -> dict[str, Any]:
    """TRL's GKDConfig as kdflow's stage-1 row runs: off-policy forward KL at the same temperature, lr, batch,
    length and clipping, on the CPU in fp32 or bf16 autocast (``precision``), the student compiled as kdflow's
    ``compute.compile`` row (``compile``: the Trainer's ``torch_compile``), constant lr, no checkpoints or logging."""
    return {
        "per_device_train_batch_size": a["batch_size"],
        "max_steps": a["steps"],
        "learning_rate": 1e-4,
        "lmbda": 0.0,
        "beta": 0.0,
        "seq_kd": False,
        "temperature": a["temperature"],
        "gradient_checkpointing": False,
        "bf16": a.get("precision") == "bf16",
        "torch_compile": bool(a.get("compile")),
        "use_cpu": True,
        "report_to": [],
        "save_strategy": "no",
        "logging_steps": 10**6,
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
        "max_length": a["max_length"],
        "shuffle_dataset": False,
        "lr_scheduler_type": "constant",
        "warmup_steps": 0,
        "max_grad_norm": 1.0,
    }


def trl(a: dict[str, Any]) -> dict[str, Any]:
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    from ..preprocess import open_blocks

    blocks = np.asarray(open_blocks(a["corpus"], "train"))[:, : a["max_length"]]
    n = a["steps"] * a["batch_size"]
    rows = [blocks[i % len(blocks)].astype(np.int64).tolist() for i in range(n)]
    dataset = datasets.Dataset.from_dict({"input_ids": rows})

    def collate(batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        ids = torch.tensor([b["input_ids"] for b in batch])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}

    times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):  # noqa: ANN001
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
            times.append(time.perf_counter() - self.t0)

    student = AutoModelForCausalLM.from_pretrained(a["student"], dtype=torch.float32)
    teacher_dtype = torch.bfloat16 if a.get("precision") == "bf16" else torch.float32  # as kdflow's bf16 row
    teacher = AutoModelForCausalLM.from_pretrained(a["teacher"], dtype=teacher_dtype)
    tokenizer = AutoTokenizer.from_pretrained(a["student"])
    with tempfile.TemporaryDirectory() as tmp:
        args = GKDConfig(output_dir=tmp, **_gkd_settings(a))
        trainer = GKDTrainer(
            model=student,
            teacher_model=teacher,
            args=args,
            train_dataset=dataset,
            data_collator=collate,
            processing_class=tokenizer,
            callbacks=[StepTimer()],
        )
        trainer.train()
    tokens = a["batch_size"] * blocks.shape[1]
    rates = [tokens / t for t in times]
    return {"tokens_per_second": statistics.median(rates[1:] or rates), "steps": len(rates)}


def cache(a: dict[str, Any]) -> dict[str, Any]:
    from ..cache.build import cache_corpus

    shutil.rmtree(a["out"], ignore_errors=True)  # a fresh build each run (the bench's own folder; never resumed)
    m = cache_corpus(
        a["teacher"], a["corpus"], a.get("vocab_map"), a["out"], a["settings"], seed=0, runtime=_runtime(a)
    )
    return {
        "seconds": m["seconds_this_run"],
        "forward_seconds": m["teacher_forward_seconds_this_run"],
        "positions": m["positions"],
        "bytes": m["bytes"],
    }


@torch.no_grad()
def forward(a: dict[str, Any]) -> dict[str, Any]:
    from ..modeling import load_lm
    from ..preprocess import open_blocks

    runtime = _runtime(a)
    model, _, _ = load_lm(a["teacher"], runtime=runtime, teacher=True)
    data = open_blocks(a["corpus"], "train")
    blocks = min(a["blocks"], len(data))
    started = time.perf_counter()
    for b in range(0, blocks, a["batch_size"]):
        ids = torch.from_numpy(np.asarray(data[b : min(b + a["batch_size"], blocks)]).astype(np.int64))
        model(*runtime.to((ids, torch.ones_like(ids))))
    runtime.synchronize()
    return {"seconds": time.perf_counter() - started, "positions": blocks * data.shape[1]}


def _word_loss_inputs(a: dict[str, Any]) -> tuple[Any, Any, list[torch.Tensor]]:
    """The stage-1 word loss at ``positions`` x the teacher's vocabulary: a student head (the teacher's rows)
    over random head inputs, against a cached teacher decoded from its head inputs; (loss, inputs, leaves)."""
    from safetensors import safe_open

    from ..heads import DecodedRows
    from ..losses.prediction import WordKL

    with safe_open(str(Path(a["teacher"]) / "model.safetensors"), "pt") as fh:
        key = next(k for k in fh.keys() if k.endswith("embed_tokens.weight"))
        head = fh.get_tensor(key).float()
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(a["positions"], head.shape[1], generator=g).requires_grad_()
    weight = head.clone().requires_grad_()
    teacher = DecodedRows(torch.randn(a["positions"], head.shape[1], generator=g), lambda h: h @ head.T)
    return WordKL(temperature=a.get("temperature", 15.0)), {"head": teacher}, [hidden, weight]


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


def _word_loss(loss: Any, targets: Any, leaves: list[torch.Tensor], chunk: int | None) -> torch.Tensor:
    from ..heads import HeadRows
    from ..losses.inputs import StepInputs

    for leaf in leaves:
        leaf.grad = None
    value = loss(StepInputs(word_logits=HeadRows(*leaves, chunk=chunk), word_targets=targets))
    value.backward()
    return value.detach()


def loss_memory(a: dict[str, Any]) -> dict[str, Any]:
    """Peak RSS above the inputs while one stage-1 word loss and its backward run (sampled every ms)."""
    import threading

    loss, targets, leaves = _word_loss_inputs(a)
    for leaf in leaves:  # the gradient buffers exist before the measurement, as in training
        leaf.grad = torch.zeros_like(leaf)
    base, peak, done = _rss_mb(), [0.0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mb())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.perf_counter()
    _word_loss(loss, targets, leaves, a["chunk"] if a["fused"] else None)
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    return {"peak_loss_mb": max(peak[0], _rss_mb()) - base, "seconds": seconds, "positions": a["positions"]}


def loss_agreement(a: dict[str, Any]) -> dict[str, Any]:
    """The fused and unfused word loss on the same inputs: relative differences of the loss and gradients."""
    loss, targets, leaves = _word_loss_inputs(a)
    plain = _word_loss(loss, targets, leaves, None)
    plain_grads = [leaf.grad.clone() for leaf in leaves]
    fused = _word_loss(loss, targets, leaves, a["chunk"])
    rel = [float((leaf.grad - g).norm() / g.norm()) for leaf, g in zip(leaves, plain_grads, strict=True)]
    return {"loss_relative_difference": float((fused - plain).abs() / plain.abs()), "grad_relative_differences": rel}


WORKLOADS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "loss_memory": loss_memory,
    "loss_agreement": loss_agreement,
    "stage1": stage1,
    "trl": trl,
    "cache": cache,
    "forward": forward,
}


def main() -> None:
    name, args = sys.argv[1], json.loads(sys.argv[2])
    torch.set_num_threads(args.get("threads", torch.get_num_threads()))
    result = WORKLOADS[name](args)
    gpu = _peak_gpu_mb()
    print(
        json.dumps(
            {
                **result,
                "peak_rss_mb": round(_peak_rss_mb(), 1),
                "peak_gpu_mb": round(gpu, 1) if gpu is not None else None,
            }
        )
    )


if __name__ == "__main__":
    main()
