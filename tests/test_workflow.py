"""The real DAG through snakemake on the tiny config, plus lint, format and dry-run checks."""

from __future__ import annotations

import json
import subprocess

import pytest


def _run(cmd, repo, env, timeout=900):
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def test_default_experiment_resolves(repo, tool_env):
    out = _run(["snakemake", "-n", "--forceall", "--quiet", "rules"], repo, tool_env).stdout
    for rule in ("build_model", "build_task", "prepare_task", "evaluate"):
        assert rule in out


def test_lint_is_clean(repo, tool_env):
    proc = _run(["snakemake", "--lint"], repo, tool_env)
    assert "Congratulations" in proc.stdout + proc.stderr


def test_snakefmt_is_clean(repo, tool_env):
    _run(["snakefmt", "--check", "."], repo, tool_env)


@pytest.mark.e2e
def test_tiny_dag_end_to_end(repo, tool_env, tmp_path):
    cmd = [
        "snakemake", "-s", str(repo / "Snakefile"), "-d", str(tmp_path), "--cores", "2",
        "--replace-workflow-config", "--configfile", str(repo / "tests" / "config" / "tiny.yaml"),
    ]  # fmt: skip
    _run(cmd, repo, tool_env)
    results = tmp_path / "results"
    for model in ("tiny_llama", "tiny_bert"):
        metrics = json.loads((results / "metrics" / model / "sentiment.json").read_text())
        assert metrics["examples"] == 64
        assert 0.0 <= metrics["metrics"]["accuracy"] <= 1.0
        low, high = metrics["ci95"]["accuracy"]
        assert low <= metrics["metrics"]["accuracy"] <= high
        preds = (results / "predictions" / model / "sentiment.jsonl").read_text().splitlines()
        assert len(preds) == 64
        submission = (results / "submissions" / model / "sentiment" / "SST-2.tsv").read_text().splitlines()
        assert submission[0] == "index\tprediction" and len(submission) == 65
        assert {line.split("\t")[1] for line in submission[1:]} <= {"0", "1"}
    assert (results / "benchmarks" / "evaluate" / "tiny_llama" / "sentiment.tsv").exists()
    task = json.loads((results / "tasks" / "sentiment" / "task.json").read_text())
    assert task["splits"] == {"train": 200, "dev": 64, "test": 64}
    ft = json.loads((results / "metrics" / "teacher_finetuned" / "sentiment.json").read_text())
    assert ft["examples"] == 64 and 0.0 <= ft["metrics"]["accuracy"] <= 1.0
    for vocab, size in (("full", 49152), ("half", 24576)):
        corpus_cache = json.loads((results / "cache" / "corpus" / "package_texts" / vocab / "manifest.json").read_text())
        assert corpus_cache["blocks"] == 24 and corpus_cache["student_vocab_size"] == size
        task_cache = json.loads((results / "cache" / "task" / "sentiment" / vocab / "manifest.json").read_text())
        assert task_cache["examples"] == 200 and len(task_cache["shards"]) == 4
    assert (results / "vocab" / "half" / "coverage.png").stat().st_size > 10_000
    for run in ("glmd", "glmd_full_vocab", "kd", "no_distill"):
        metrics = json.loads((results / "metrics" / "runs" / run / "sentiment.json").read_text())
        assert metrics["examples"] == 64 and metrics["ci95"]["accuracy"] is not None
        student = json.loads((results / "runs" / run / "sentiment" / "kdflow.json").read_text())
        assert student["role"] == "student" and student["stage"] == "stage2" and student["run"] == run
    assert (results / "runs" / "glmd" / "stage1" / "train_log.csv").exists()
    assert not (results / "runs" / "kd" / "stage1").exists()  # kd has no stage 1
    half = json.loads((results / "runs" / "glmd" / "sentiment" / "kdflow.json").read_text())
    assert half["vocab_size"] == 24576 and half["vocab_map"] == "vocab_map.json"
    # A second run has nothing to do: outputs are complete and up to date.
    again = _run(cmd + ["-n"], repo, tool_env)
    assert "Nothing to be done" in again.stdout + again.stderr


def test_rules_launch_torchrun_for_several_processes(repo, tool_env, tmp_path):
    import yaml

    cfg = yaml.safe_load((repo / "tests" / "config" / "tiny.yaml").read_text())
    cfg["distill"]["processes"] = 2
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cmd = ["snakemake", "-n", "-p", "-s", str(repo / "Snakefile"), "-d", str(tmp_path), "--forceall",
           "--replace-workflow-config", "--configfile", str(path)]  # fmt: skip
    out = _run(cmd, repo, tool_env).stdout
    assert out.count("torchrun --standalone --nproc_per_node 2 -m kdflow distill --stage stage1") == 2
    assert out.count("torchrun --standalone --nproc_per_node 2 -m kdflow distill --stage stage2") == 4
