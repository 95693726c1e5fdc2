"""What the summary says about training noise and wins: each run's score per seed (mean, spread, every
seed), the share of its dev predictions in its most frequent class, and the paired bootstrap of its score
difference with each baseline on the same dev examples, per seed and pooled over seeds, and averaged over
the tasks a run is compared on."""

from __future__ import annotations

import math
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd

from .data.files import read_jsonl
from .errors import DataError
from .metrics import average_bootstrap, paired_bootstrap
from .plan.names import run_of

COMPARISON_COLUMNS = ["run", "baseline", "task", "metric", "seed", "difference", "low", "high", "verdict"]


def read_predictions(path: str | Path) -> list[dict[str, Any]]:
    """The per-example rows `evaluate` wrote (idx, label, prediction, scores)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: the predictions are missing (run the rule that writes them first)")
    return [row for _, row in read_jsonl(path)]


def _aligned(a: list[dict[str, Any]], b: list[dict[str, Any]], where: str) -> None:
    if [r["idx"] for r in a] != [r["idx"] for r in b]:
        raise DataError(f"{where}: the two models' predictions are not on the same dev examples")


def _verdict(result: dict[str, Any]) -> str:
    return "win" if result["wins"] else "loss" if result["loses"] else "inside the interval"


def _row(base: dict[str, Any], seed: str, result: dict[str, Any]) -> dict[str, Any]:
    return {
        **base,
        "seed": seed,
        "difference": 100 * result["difference"],
        "low": 100 * result["low"],
        "high": 100 * result["high"],
        "verdict": _verdict(result),
    }


def _comparison_rows(
    comparison: dict[str, Any],
    entries: dict[tuple[str, str], dict[str, Any]],
    seeds: dict[str, Any],
    samples: int,
    rng_seed: int = 0,
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """One row per seed, plus a pooled row when there are several seeds; and the result over all seeds (the
    pooled one, or the one seed's) for the average over tasks. ``rng_seed`` seeds the bootstrap's resampling."""
    task = comparison["task"]
    metric = entries[(comparison["pairs"][0][0], task)]["result"]["primary_metric"]
    loaded = [[read_predictions(entries[(m, task)]["predictions"]) for m in pair] for pair in comparison["pairs"]]
    for (a, b), pair in zip(loaded, comparison["pairs"], strict=True):
        _aligned(a, b, f"{pair[0]} vs {pair[1]} on {task}")
        _aligned(a, loaded[0][0], f"{pair[0]} vs {comparison['pairs'][0][0]} on {task}")
    golds, examples = [r["label"] for r in loaded[0][0]], loaded[0][0]
    base = {"run": comparison["run"], "baseline": comparison["baseline"], "task": task, "metric": metric}
    groups = [
        (str(seeds.get(run_of(pair[0]), run_of(pair[0]))), [a], [b])
        for pair, (a, b) in zip(comparison["pairs"], loaded, strict=True)
    ]
    if len(groups) > 1:
        groups.append(("pooled", [a for a, _ in loaded], [b for _, b in loaded]))
    rows, result = [], None
    for label, side_a, side_b in groups:
        result = paired_bootstrap(
            metric,
            golds,
            [[r["prediction"] for r in p] for p in side_a],
            [[r["prediction"] for r in p] for p in side_b],
            examples,
            samples=samples,
            seed=rng_seed,
        )
        if result is not None:
            rows.append(_row(base, label, result))
    return rows, result


def comparison_table(manifest: dict[str, Any], entries: list[dict[str, Any]]) -> pd.DataFrame:
    """Every comparison of the manifest: score difference x100 (run minus baseline) with its paired 95 %
    bootstrap interval; a win only when the interval lies above 0. A run compared on several tasks also gets
    the average over its tasks (`task` "average (N tasks)", over all seeds), each task resampled on its own."""
    by_key = {(e["model"], e["task"]): e for e in entries}
    samples = max(int(manifest.get("bootstrap_samples", 1000)), 1)
    seeds = {name: run.get("seed") for name, run in manifest.get("runs", {}).items() if run.get("seed") is not None}
    tasks = list(dict.fromkeys(c["task"] for c in manifest.get("comparisons", [])))
    rows, overall = [], {}
    for c in manifest.get("comparisons", []):
        found, result = _comparison_rows(c, by_key, seeds, samples, rng_seed=tasks.index(c["task"]))
        rows += found
        overall.setdefault((c["run"], c["baseline"]), []).append(result)
    for (run, baseline), results in overall.items():
        average = average_bootstrap(results) if None not in results else None
        if average is not None:
            base = {"run": run, "baseline": baseline, "task": f"average ({len(results)} tasks)", "metric": "primary"}
            label = next(r["seed"] for r in reversed(rows) if (r["run"], r["baseline"]) == (run, baseline))
            rows.append(_row(base, label, average))
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)


def seed_table(manifest: dict[str, Any], table: pd.DataFrame, tasks: list[str]) -> pd.DataFrame:
    """Per configured run and task: the seeds, the mean score, the standard deviation over seeds, each seed."""
    runs = manifest.get("runs", {})
    scores = dict(zip(table["model"], table.to_dict("records")))
    rows = []
    bases = {name: r.get("base", name) for name, r in runs.items()}
    for base in dict.fromkeys(bases.values()):
        instances = [name for name in runs if bases[name] == base]
        for task in tasks:
            values = [(runs[n].get("seed", "-"), scores[n][task]) for n in instances if n in scores]
            values = [(s, v) for s, v in values if not math.isnan(v)]
            if not values:
                continue
            numbers = [v for _, v in values]
            rows.append(
                {
                    "run": base,
                    "task": task,
                    "seeds": len(values),
                    "mean": statistics.fmean(numbers),
                    "sd": statistics.stdev(numbers) if len(numbers) > 1 else math.nan,
                    "per seed": ", ".join(f"{s}: {v:.1f}" for s, v in values),
                }
            )
    return pd.DataFrame(rows, columns=["run", "task", "seeds", "mean", "sd", "per seed"])


def top_class_table(entries: list[dict[str, Any]]) -> pd.DataFrame:
    """Per trained run and task: the most frequent dev prediction and its share (a student that predicts one
    class for nearly every example has learnt the label prior, not the task)."""
    rows = []
    for e in entries:
        if not e.get("predictions") or run_of(e["model"]) is None or e["result"].get("task_type") in ("stsb", "record"):
            continue
        counts = Counter(str(r["prediction"]) for r in read_predictions(e["predictions"]))
        label, count = counts.most_common(1)[0]
        rows.append(
            {
                "run": run_of(e["model"]),
                "task": e["task"],
                "top prediction": label,
                "share %": 100 * count / sum(counts.values()),
            }
        )
    return pd.DataFrame(rows, columns=["run", "task", "top prediction", "share %"])
