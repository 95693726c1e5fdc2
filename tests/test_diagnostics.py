"""The SuperGLUE diagnostics from config: AX-b and AX-g evaluated end to end (their labelled test files), GLUE AX
submitted and never evaluated; the experiment config resolves."""

from __future__ import annotations

import json
import math
import re

import pytest
from conftest import run_checked


@pytest.mark.slow
def test_diagnostics_experiment_resolves(repo, tool_env, tmp_path):
    cmd = [
        "snakemake",
        "-n",
        "--forceall",
        "-d",
        str(tmp_path),
        "--configfile",
        str(repo / "config/experiments/diagnostics.yaml"),
    ]
    out = run_checked(cmd, repo, tool_env).stdout
    counts = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", out, re.M)}
    assert counts["evaluate"] == 2 and counts["submit"] == 3 and counts["prepare_task"] == 3
    assert "metrics/smollm2/axb.json" in out and "metrics/smollm2/axg.json" in out
    assert "metrics/smollm2/ax.json" not in out  # GLUE AX has no labels: no evaluate job bound to fail


@pytest.mark.slow
def test_diagnostics_end_to_end(repo, tool_env, tmp_path):
    (tmp_path / "tests").symlink_to(repo / "tests")
    cmd = [
        "snakemake",
        "-s",
        str(repo / "Snakefile"),
        "-d",
        str(tmp_path),
        "--cores",
        "2",
        "--configfile",
        str(repo / "tests/config/diagnostics.yaml"),
    ]
    run_checked(cmd, repo, tool_env)
    results = tmp_path / "results"
    axb = json.loads((results / "metrics/tiny_llama/axb.json").read_text())
    axg = json.loads((results / "metrics/tiny_llama/axg.json").read_text())
    assert axb["split"] == "test" and axb["examples"] == 6 and list(axb["metrics"]) == ["mcc"]
    assert axg["split"] == "test" and axg["examples"] == 8 and list(axg["metrics"]) == ["gender_parity", "accuracy"]
    assert not math.isnan(axg["metrics"]["gender_parity"]) and axg["ci95"]["gender_parity"] is not None
    assert not (results / "metrics/tiny_llama/ax.json").exists()
    sub = [json.loads(x) for x in (results / "submissions/tiny_llama/axb/AX-b.jsonl").read_text().splitlines()]
    assert [r["idx"] for r in sub] == [str(i) for i in range(6)]  # the release's string idx, echoed
    assert (results / "submissions/tiny_llama/ax/AX.tsv").read_text().startswith("index\tprediction\n")
    summary = (results / "summary.md").read_text()
    assert "axb" in summary and "axg" in summary
