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
