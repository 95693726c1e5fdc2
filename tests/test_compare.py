"""Seeds and paired comparisons in the summary: the tables and files `summarize` writes from fixed predictions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kdflow import metrics as M
from kdflow.summarize import summarize

N = 200


def _write(root: Path, model: str, preds: list[str], golds: list[str]) -> dict:
    metrics = root / "metrics" / model / "t.json"
    predictions = root / "predictions" / model / "t.jsonl"
    efficiency = root / "efficiency" / model / "t.json"
    for path in (metrics, predictions, efficiency):
        path.parent.mkdir(parents=True, exist_ok=True)
    accuracy = float(np.mean([p == g for p, g in zip(preds, golds)]))
    metrics.write_text(
        json.dumps(
            {
                "task": "t",
                "task_type": "sst2",
                "metrics": {"accuracy": accuracy},
                "primary_metric": "accuracy",
                "ci95": {"accuracy": [accuracy - 0.05, accuracy + 0.05]},
            }
        )
    )
    predictions.write_text(
        "".join(
            json.dumps({"idx": i, "label": g, "prediction": p}) + "\n" for i, (p, g) in enumerate(zip(preds, golds))
        )
    )
    efficiency.write_text(json.dumps({}))
    return {
        "model": model,
        "task": "t",
        "role": "run",
        "metrics": str(metrics),
        "efficiency": str(efficiency),
        "predictions": str(predictions),
    }


@pytest.fixture
def two_seeds(tmp_path):
    """glmd (about 80 % right) and no_distill (about 60 % right, mostly "1"), seeds 1 and 2."""
    rng = np.random.default_rng(0)
    golds = [str(g) for g in rng.integers(0, 2, N)]
    preds = {}
    for name, right in (("glmd", 0.8), ("glmd.seed2", 0.78), ("no_distill", 0.6), ("no_distill.seed2", 0.62)):
        preds[name] = [g if rng.random() < right else str(1 - int(g)) for g in golds]
    preds["no_distill"] = ["1" if rng.random() < 0.95 else p for p in preds["no_distill"]]
    entries = [_write(tmp_path, f"runs/{m}", p, golds) for m, p in preds.items()]
    runs = {
        m: {
            "base": m.split(".")[0],
            "seed": 2 if "seed2" in m else 1,
            "student": "s",
            "vocabulary": "full",
            "stage2": {"losses": {"ce": {}}},
            "logs": {},
        }
        for m in preds
    }
    manifest = {
        "teacher": "x",
        "entries": entries,
        "reference": {},
        "runs": runs,
        "vocabularies": {},
        "bootstrap_samples": 300,
        "comparisons": [
            {
                "run": "glmd",
                "baseline": "no_distill",
                "task": "t",
                "pairs": [["runs/glmd", "runs/no_distill"], ["runs/glmd.seed2", "runs/no_distill.seed2"]],
            }
        ],
    }
    return manifest, golds, preds, tmp_path


def test_comparisons_per_seed_and_pooled_match_the_paired_bootstrap(two_seeds):
    manifest, golds, preds, root = two_seeds
    summarize(manifest, root / "out", root / "plots")
    table = pd.read_csv(root / "out" / "comparisons.csv", dtype={"seed": str})
    assert list(table["seed"]) == ["1", "2", "pooled"]
    pooled = M.paired_bootstrap(
        "accuracy",
        golds,
        [preds["glmd"], preds["glmd.seed2"]],
        [preds["no_distill"], preds["no_distill.seed2"]],
        [{}] * N,
        samples=300,
    )
    row = table[table["seed"] == "pooled"].iloc[0]
    assert (row["difference"], row["low"], row["high"]) == pytest.approx(
        (100 * pooled["difference"], 100 * pooled["low"], 100 * pooled["high"]), abs=1e-3
    )
    assert row["verdict"] == ("win" if pooled["wins"] else "inside the interval")
    assert (root / "plots" / "comparisons.png").stat().st_size > 0


def test_summary_shows_seeds_and_the_top_class_share(two_seeds):
    manifest, golds, preds, root = two_seeds
    summarize(manifest, root / "out", root / "plots")
    md = (root / "out" / "summary.md").read_text()
    assert "## Seeds" in md and "## Paired comparisons" in md and "## Most frequent prediction" in md
    glmd = [100 * np.mean([p == g for p, g in zip(preds[m], golds)]) for m in ("glmd", "glmd.seed2")]
    assert (
        f"| glmd | t | 2 | {np.mean(glmd):.1f} | {np.std(glmd, ddof=1):.1f} | 1: {glmd[0]:.1f}, 2: {glmd[1]:.1f} |"
        in md
    )
    share = 100 * max(preds["no_distill"].count("1"), preds["no_distill"].count("0")) / N
    assert f"| no_distill | t | 1 | {share:.1f} |" in md


def test_the_average_over_tasks_resamples_each_task_on_its_own(tmp_path):
    """A run compared on two tasks gets an `average (2 tasks)` row: the mean of the tasks' pooled differences,
    and an interval from resample k of every task averaged (each task drawn with its own generator: seed = the
    task's position), computed here independently with plain numpy on accuracy (one example per unit)."""
    rng = np.random.default_rng(1)
    manifest = {"teacher": "x", "entries": [], "reference": {}, "runs": {}, "vocabularies": {}}
    manifest["bootstrap_samples"], manifest["comparisons"] = 400, []
    right: dict[tuple[str, str], np.ndarray] = {}
    for task, n in (("a", 150), ("b", 90)):
        golds = [str(g) for g in rng.integers(0, 2, n)]
        for model, p in (("glmd", 0.75), ("no_distill", 0.65)):
            preds = [g if rng.random() < p else str(1 - int(g)) for g in golds]
            root = tmp_path / task
            entry = _write(root, f"runs/{model}", preds, golds)
            for key in ("metrics", "predictions", "efficiency"):
                moved = Path(entry[key]).with_name(f"{task}{Path(entry[key]).suffix}")
                Path(entry[key]).rename(moved)
                entry[key] = str(moved)
            metrics = json.loads(Path(entry["metrics"]).read_text())
            Path(entry["metrics"]).write_text(json.dumps({**metrics, "task": task}))
            manifest["entries"].append({**entry, "task": task})
            right[(task, model)] = np.array([p == g for p, g in zip(preds, golds)], float)
        manifest["comparisons"].append(
            {"run": "glmd", "baseline": "no_distill", "task": task, "pairs": [["runs/glmd", "runs/no_distill"]]}
        )
    for model in ("glmd", "no_distill"):
        manifest["runs"][model] = {"base": model, "seed": 7, "student": "s", "vocabulary": "full", "logs": {}}
        manifest["runs"][model]["stage2"] = {"losses": {"ce": {}}}
    summarize(manifest, tmp_path / "out", tmp_path / "plots")
    table = pd.read_csv(tmp_path / "out" / "comparisons.csv", dtype={"seed": str})
    assert list(table["task"]) == ["a", "b", "average (2 tasks)"] and set(table["seed"]) == {"7"}

    draws = []
    for k, task in enumerate(("a", "b")):
        diff = right[(task, "glmd")] - right[(task, "no_distill")]
        picks = np.random.default_rng(k).integers(0, len(diff), (400, len(diff)))  # as metrics.paired_bootstrap draws
        draws.append(np.array([diff[row].mean() for row in picks]))
    mean = np.mean(draws, axis=0)
    expected = [
        100 * np.mean([(right[(t, "glmd")] - right[(t, "no_distill")]).mean() for t in ("a", "b")]),
        100 * np.quantile(mean, 0.025),
        100 * np.quantile(mean, 0.975),
    ]
    row = table.iloc[2]
    assert [row["difference"], row["low"], row["high"]] == pytest.approx(expected, abs=1e-3)  # csv: 4 decimals
    assert "average (2 tasks)" in (tmp_path / "out" / "summary.md").read_text()
