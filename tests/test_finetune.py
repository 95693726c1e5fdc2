"""Teacher prompt fine-tuning and the shared training loop: learning, resume after a kill, DeepSpeed, NaN guard."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from kdflow.evaluate import evaluate
from kdflow.finetune import finetune_teacher
from kdflow.train.loop import TrainingError, TrainSettings, train
from kdflow.train.workdir import WorkDir

FT = {
    "epochs": 3,
    "max_steps": 6,
    "max_examples": 16,
    "batch_size": 4,
    "grad_accum": 2,
    "lr": 5e-3,
    "warmup_ratio": 0.0,
    "weight_decay": 0.0,
    "max_grad_norm": 1.0,
    "checkpoint_every": 2,
    "max_length": 48,
}
EVAL = {"batch_size": 16, "max_length": 48, "bootstrap_samples": 20}


@pytest.fixture
def task_dir(sentiment_task):
    return sentiment_task


def _losses(path):
    with open(path, newline="") as fh:
        return [float(r["cloze_ce"]) for r in csv.DictReader(fh)]


@pytest.mark.parametrize("family", ["tiny_llama", "tiny_bert"])
def test_finetuning_lowers_the_cloze_loss(tmp_path, family, request, task_dir):
    teacher = request.getfixturevalue(family)
    settings = {**FT, "epochs": 24, "max_steps": 24, "max_examples": 8, "batch_size": 8, "grad_accum": 1}
    info = finetune_teacher(teacher, task_dir, tmp_path / "ft", tmp_path / "work", settings, None, seed=0)
    losses = _losses(tmp_path / "ft" / "train_log.csv")
    assert len(losses) == 24 and losses[-1] < 0.5 * losses[0]
    assert info["steps"] == 24 and info["training_examples"] == 8
    result = evaluate(tmp_path / "ft", task_dir, tmp_path / "m.json", tmp_path / "p.jsonl", EVAL, seed=0)
    assert result["examples"] == 16 and 0 <= result["metrics"]["accuracy"] <= 1
    meta = json.loads((tmp_path / "ft" / "kdflow.json").read_text())
    assert meta["role"] == "teacher" and meta["task"] == "sentiment"
    assert meta["family"] == ("causal" if family == "tiny_llama" else "masked")


def test_killed_finetuning_resumes_to_the_same_weights(tmp_path, tiny_llama, task_dir, tool_env):
    finetune_teacher(tiny_llama, task_dir, tmp_path / "clean", tmp_path / "wc", FT, None, 0)
    cmd = [
        sys.executable,
        "-m",
        "kdflow",
        "finetune-teacher",
        "--teacher",
        str(tiny_llama),
        "--task",
        str(task_dir),
        "--out",
        str(tmp_path / "resumed"),
        "--work",
        str(tmp_path / "wr"),
        "--settings",
        json.dumps(FT),
        "--seed",
        "0",
    ]
    killed = subprocess.run(cmd, env={**tool_env, "KDFLOW_FAULT": "train_step:3"}, capture_output=True, text=True)
    assert killed.returncode == 137 and (tmp_path / "wr" / "checkpoint" / "checkpoint.pt").exists()
    resumed = subprocess.run(cmd, env=tool_env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = load_file(tmp_path / "clean" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _losses(tmp_path / "clean" / "train_log.csv") == _losses(tmp_path / "resumed" / "train_log.csv")


@pytest.mark.slow
def test_deepspeed_zero2_finetunes_two_steps(tmp_path, tiny_llama, task_dir):
    pytest.importorskip("deepspeed")
    settings = {**FT, "max_steps": 2, "grad_accum": 1}
    ds = {"zero_optimization": {"stage": 2}, "bf16": {"enabled": False}}
    finetune_teacher(tiny_llama, task_dir, tmp_path / "ds", tmp_path / "work", settings, ds, seed=0)
    assert len(_losses(tmp_path / "ds" / "train_log.csv")) == 2
    assert not (tmp_path / "work").exists()  # a finished job's work folder is removed


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    model = torch.nn.Linear(4, 1)
    calls = {"n": 0}

    def loss_fn(module, indices, step):
        calls["n"] += 1
        out = module(torch.ones(len(indices), 4)).sum()
        if calls["n"] > 2:
            out = out * float("nan")
        return out, {"loss": float(out)}, len(indices)

    settings = TrainSettings(steps=5, batch_size=2, checkpoint_every=2)
    with pytest.raises(TrainingError, match=r"non-finite loss .* at step 3 .*checkpoint \(step 2\)"):
        with WorkDir(tmp_path / "work", {"test": 1}) as work:
            train(model, loss_fn, 4, settings, work)
    state = torch.load(tmp_path / "work" / "checkpoint" / "checkpoint.pt", weights_only=False)
    assert state["step"] == 2
