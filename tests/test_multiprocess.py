"""Data-parallel training: 2 gloo processes under torchrun give the losses and weights of one process
with the same global batch (plain DDP and DeepSpeed ZeRO-2/3)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY_TRAIN, pack_text, stage1_args
from safetensors.torch import load_file

from kdflow.cache.build import cache_corpus
from kdflow.students import init_student

RUN = {
    "student": "s",
    "stage1": {"losses": {"word_kl": {"weight": 1.0, "temperature": 2.0}}},
    "stage2": {"losses": {"ce": {}}},
}
TRAIN = {**TINY_TRAIN, "epochs": 4, "max_steps": 3}


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_llama):
    root = tmp_path_factory.mktemp("mp")
    pack_text(root, tiny_llama, name="corpus")
    settings = {
        "k": 16,
        "value_dtype": "fp32",
        "temperatures": [1.0, 2.0],
        "mode": "topk",
        "shard_blocks": 8,
        "shard_examples": 8,
        "batch_size": 4,
        "max_blocks": 16,
        "max_length": 48,
    }
    cache_corpus(tiny_llama, root / "corpus", None, root / "cache", settings, seed=0)
    init_student(tiny_llama, {"layers": {"strategy": "last", "count": 1}}, None, root / "student", seed=0)
    return root


def _distill(setup, tiny_llama, out, processes, env, deepspeed=None):
    base = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", "-m", "kdflow"]
        if processes > 1
        else [sys.executable, "-m", "kdflow"]
    )
    args = stage1_args(
        setup / "student",
        RUN,
        TRAIN,
        setup / "cache",
        setup / "corpus",
        tiny_llama,
        out,
        Path(str(out) + "_work"),
        deepspeed=deepspeed,
    )
    cmd = base + args
    proc = subprocess.run(cmd, env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out / "train_log.csv") as fh:
        losses = [float(r["word_kl"]) for r in csv.DictReader(fh)]
    return losses, load_file(out / "model.safetensors")


@pytest.mark.slow
@pytest.mark.parametrize("zero", [None, 2, 3], ids=["ddp", "zero2", "zero3"])
def test_two_processes_match_one(setup, tiny_llama, tmp_path, tool_env, zero):
    if zero is not None:
        pytest.importorskip("deepspeed")
    ds = None if zero is None else {"zero_optimization": {"stage": zero}, "bf16": {"enabled": False}}
    env = {k: v for k, v in tool_env.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    one, w1 = _distill(setup, tiny_llama, tmp_path / "one", 1, env, ds)
    two, w2 = _distill(setup, tiny_llama, tmp_path / "two", 2, env, ds)
    assert len(one) == len(two) == 3
    assert one == pytest.approx(two, rel=1e-4)
    assert w1.keys() == w2.keys()
    assert all(torch.allclose(w1[k], w2[k], atol=1e-5) for k in w1)
    assert os.path.exists(tmp_path / "two" / "kdflow.json")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["corpus", "task"])
def test_two_processes_build_the_cache_of_one(setup, tiny_llama, sentiment_task, tmp_path, tool_env, kind):
    """Under torchrun each process writes every other shard; the shards and the manifest's records equal
    those of one process (mode hidden: the head is saved once)."""
    settings = {
        "k": 16,
        "value_dtype": "fp32",
        "temperatures": [1.0, 2.0],
        "mode": "hidden",
        "shard_blocks": 2,
        "shard_examples": 4,
        "batch_size": 2,
        "max_blocks": 8,
        "max_length": 48,
    }
    source = ["--corpus", str(setup / "corpus")] if kind == "corpus" else ["--task", str(sentiment_task)]
    env = {k: v for k, v in tool_env.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    manifests = []
    for processes in (1, 2):
        out = tmp_path / f"p{processes}"
        base = (
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                f"--nproc_per_node={processes}",
                "-m",
                "kdflow",
            ]
            if processes > 1
            else [sys.executable, "-m", "kdflow"]
        )
        cmd = base + [
            "cache-logits",
            "--teacher",
            str(tiny_llama),
            *source,
            "--settings",
            json.dumps(settings),
            "--out",
            str(out),
            "--seed",
            "0",
        ]
        proc = subprocess.run(cmd, env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        manifests.append(json.loads((out / "manifest.json").read_text()))
    one, two = manifests
    assert len(one["shards"]) >= 3 and one["shards"] == two["shards"]
    assert (one["positions"], one["bytes"], one["processes"], two["processes"]) == (
        two["positions"],
        two["bytes"],
        1,
        2,
    )
    assert one["head_sha256"] == two["head_sha256"] is not None
