"""The real DAG through snakemake on the tiny config, plus lint, format and dry-run checks."""

from __future__ import annotations

import csv
import json
import shutil

import matplotlib.pyplot as plt
import pandas as pd
import pytest
from conftest import run_checked as _run
from conftest import tiny_cmd as _tiny_cmd


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
def test_tiny_dag_end_to_end(repo, tool_env, tiny_run):
    cmd = _tiny_cmd(repo, tiny_run)
    results = tiny_run / "results"
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
    assert task["splits"] == {"train": 200, "dev": 64, "test": 64} and task["labelled_train"] == 64
    ft = json.loads((results / "metrics" / "teacher_finetuned" / "sentiment.json").read_text())
    assert ft["examples"] == 64 and 0.0 <= ft["metrics"]["accuracy"] <= 1.0
    for vocab, size in (("full", 49152), ("half", 24576)):
        corpus_cache = json.loads(
            (results / "cache" / "corpus" / "package_texts" / vocab / "manifest.json").read_text()
        )
        assert corpus_cache["blocks"] == 24 and corpus_cache["student_vocab_size"] == size
        task_cache = json.loads((results / "cache" / "task" / "sentiment" / vocab / "manifest.json").read_text())
        examples = 200 if vocab == "full" else 64  # glmd_full_vocab's transfer set; the labelled examples
        assert task_cache["examples"] == examples and len(task_cache["shards"]) == examples // 64 + (vocab == "full")
    assert (results / "vocab" / "half" / "coverage.png").stat().st_size > 10_000
    for run in ("glmd", "glmd_full_vocab", "kd", "no_distill"):
        metrics = json.loads((results / "metrics" / "runs" / run / "sentiment.json").read_text())
        assert metrics["examples"] == 64 and metrics["ci95"]["accuracy"] is not None
        student = json.loads((results / "runs" / run / "sentiment" / "kdflow.json").read_text())
        assert student["role"] == "student" and student["stage"] == "stage2" and student["run"] == run
        assert student["training_examples"] == (200 if run == "glmd_full_vocab" else 64)  # its transfer set
    assert (results / "runs" / "glmd" / "stage1" / "train_log.csv").exists()
    assert not (results / "runs" / "kd" / "stage1").exists()  # kd has no stage 1
    half = json.loads((results / "runs" / "glmd" / "sentiment" / "kdflow.json").read_text())
    assert half["vocab_size"] == 24576 and half["vocab_map"] == "vocab_map.json"
    assert len(half["phase_steps"]) == 2  # GLMD's stage 2: word_kl, then candidate_kd
    with open(results / "runs" / "glmd" / "sentiment" / "train_log.csv") as fh:
        assert {row["phase"] for row in csv.DictReader(fh)} == {"1", "2"}
    # encoder track: a classification-head teacher and three runs whose students inherit its head
    classifier = json.loads((results / "classifiers" / "tiny_bert" / "sentiment" / "kdflow.json").read_text())
    assert classifier["architecture"] == "BertForSequenceClassification" and classifier["task_type"] == "sst2"
    for run in ("codir", "codir_pretrain", "combined"):
        student = json.loads((results / "runs" / run / "sentiment" / "kdflow.json").read_text())
        assert student["head"] == "classification" and student["task_type"] == "sst2"
        with open(results / "runs" / run / "sentiment" / "train_log.csv") as fh:
            header = fh.readline().strip().split(",")
        assert "codir" in header
    with open(results / "runs" / "combined" / "sentiment" / "train_log.csv") as fh:
        header = fh.readline().strip().split(",")
    assert {"kd", "codir", "tinybert_hidden", "tinybert_attention"} <= set(header)
    # a teacher-assistant chain (takd: codir's student teaches) and two teachers combined by MT-BERT
    takd = json.loads((results / "runs" / "takd" / "sentiment" / "kdflow.json").read_text())
    assert takd["teacher"].endswith("runs/codir/sentiment") and takd["head"] == "classification"
    with open(results / "runs" / "mt_bert" / "sentiment" / "train_log.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3 and {"multi_teacher", "kd", "ce"} <= set(rows[0])
    assert json.loads((results / "runs" / "mt_bert" / "sentiment" / "kdflow.json").read_text())["teachers"] == [
        "results/classifiers/tiny_bert/sentiment",
        "results/runs/codir/sentiment",
    ]
    pretrain = (results / "runs" / "codir_pretrain" / "stage1" / "train_log.csv").read_text().splitlines()
    assert pretrain[0].split(",")[1:3] == ["loss", "codir"] and len(pretrain) == 4
    bert_corpus = json.loads((results / "corpus" / "package_texts_bert" / "meta.json").read_text())
    assert bert_corpus["tokenizer"].endswith("tiny_bert")
    # A second run has nothing to do: outputs are complete and up to date.
    again = _run(cmd + ["-n"], repo, tool_env)
    assert "Nothing to be done" in again.stdout + again.stderr


@pytest.mark.e2e
def test_tiny_dag_summary_and_plots(tiny_run):
    results = tiny_run / "results"
    table = pd.read_csv(results / "summary.csv")
    expected = {
        "tiny_llama",
        "tiny_bert",
        "teacher_finetuned",
        "classifiers/tiny_bert",
        "glmd",
        "glmd_full_vocab",
        "kd",
        "no_distill",
        "codir",
        "codir_pretrain",
        "combined",
        "takd",
        "mt_bert",
    }
    assert set(table["model"]) == expected
    assert table["sentiment"].between(0, 100).all() and table["parameters"].gt(0).all()
    assert table["latency ms"].gt(0).all() and table["examples/s"].gt(0).all()
    runs = table[table["role"] == "run"].set_index("model")
    assert runs["retention %"].notna().all()
    assert runs.loc["glmd", "vocabulary size"] == 24576 and runs.loc["glmd_full_vocab", "vocabulary size"] == 49152
    md = (results / "summary.md").read_text()
    for name in expected:
        assert f"| {name} |" in md
    for model in ("tiny_llama", "runs/glmd"):
        eff = json.loads((results / "efficiency" / model / "sentiment.json").read_text())
        assert eff["latency_batch1"]["samples"] == 16 and eff["parameters"]["total"] > 0
    for plot in ("scores", "frontier", "loss_curves", "coverage"):
        image = plt.imread(results / "plots" / f"{plot}.png")
        assert image.shape[0] > 200 and image.shape[1] > 400 and image.std() > 0.01, plot


CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.mark.e2e
def test_report_renders_in_headless_chromium(repo, tool_env, tiny_run):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Chromium is not installed (`make test` installs Debian's chromium when it can)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    report = tiny_run / "report.html"
    _run(_tiny_cmd(repo, tiny_run) + ["--report", str(report)], repo, tool_env)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(report.as_uri())
        assert "kdflow distils" in page.inner_text("body")
        page.get_by_text("1. Summary").click()
        item = page.get_by_text("scores, averages, size and speed").locator("xpath=ancestor::tr[1]")
        item.locator("a[iconname=eye]").click()
        frame = page.frame_locator("iframe").first
        table_text = frame.locator("table").first.inner_text()
        for name in ("tiny_llama", "glmd", "no_distill", "retention %"):
            assert name in table_text
        assert "verdict" in frame.locator("table").nth(1).inner_text()  # the paired comparisons
        page.screenshot(path=str(tiny_run / "report-summary.png"))
        page.get_by_text("Results").first.click()
        page.get_by_text("3. Plots").click()
        for label in (
            "per-task scores",
            "score vs parameters",
            "training loss",
            "vocabulary coverage",
            "paired differences",
        ):
            assert page.get_by_text(label).count() == 1
        row = page.get_by_text("score vs parameters").locator("xpath=ancestor::tr[1]")
        row.locator("a[iconname=eye]").click()
        image = page.locator("img").last
        image.wait_for()
        assert image.evaluate("img => img.naturalWidth") > 400
        page.screenshot(path=str(tiny_run / "report-frontier.png"))
        browser.close()
    assert (tiny_run / "report-summary.png").stat().st_size > 10_000


def test_rules_launch_torchrun_for_several_processes(repo, tool_env, tmp_path):
    import yaml

    cfg = yaml.safe_load((repo / "tests" / "config" / "tiny.yaml").read_text())
    for rule in ("distill_stage1", "distill_stage2"):
        cfg["resources"]["rules"][rule]["processes"] = 2
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cmd = [
        "snakemake",
        "-n",
        "-p",
        "-s",
        str(repo / "Snakefile"),
        "-d",
        str(tmp_path),
        "--forceall",
        "--replace-workflow-config",
        "--configfile",
        str(path),
    ]
    out = _run(cmd, repo, tool_env).stdout
    with_stage1 = sum("stage1" in run for run in cfg["runs"].values())
    assert with_stage1 == 3 and len(cfg["runs"]) == 9
    assert out.count("torchrun --standalone --nproc_per_node 2 -m kdflow distill --stage stage1") == with_stage1
    assert out.count("torchrun --standalone --nproc_per_node 2 -m kdflow distill --stage stage2") == len(cfg["runs"])
