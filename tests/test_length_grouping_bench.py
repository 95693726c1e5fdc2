"""benchmarks/length_grouping.py: its schedules are the training loop's (plain and grouped, every example of an
epoch once), grouping never pads more here, and both schedules are timed on a real model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import load_benchmark

from kdflow.train.settings import TrainSettings, batch_indices

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "length_grouping.py"


def _bench():
    return load_benchmark("length_grouping")


def test_schedules_are_the_training_loops():
    bench, lengths = _bench(), tuple((7 * i) % 31 + 3 for i in range(64))
    for grouped in (False, True):
        settings = TrainSettings(steps=8, batch_size=8, seed=1234, group_by_length=grouped)
        expected = [batch_indices(64, s, 0, settings, lengths) for s in range(8)]
        assert bench.schedule(64, lengths, 8, grouped) == expected
        assert sorted(i for b in expected for i in b) == list(range(64))


def test_the_bench_prints_padding_and_times_both_schedules(tiny_llama, sentiment_task, tmp_path):
    out = tmp_path / "lg.json"
    cmd = [sys.executable, str(SCRIPT), "--model", str(tiny_llama), "--task", str(sentiment_task)]
    done = subprocess.run([*cmd, "--batches", "4", "--steps", "2", "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    (row,) = json.loads(out.read_text())
    assert row["padded tokens, grouped"] <= row["padded tokens, plain"]
    assert row["seconds, plain"] > 0 and row["seconds, grouped"] > 0
    assert f"| {row['task']} | {row['examples']} |" in done.stdout
