"""The summary's PNG plots: per-task scores by model, score vs parameters, loss curves, vocabulary coverage."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import matplotlib

from .errors import DataError

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

DPI = 120


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def task_columns(table: pd.DataFrame) -> list[str]:
    """The per-task score columns of a summary table, in table order."""
    skip = {"model", "role", "student", "vocabulary"}
    return [c for c in table.columns if c not in skip and f"{c} primary" in table.columns]


def _empty(path: Path, title: str, message: str) -> None:
    fig, ax = plt.subplots(figsize=(6, 2.5))
    ax.axis("off")
    ax.set_title(title)
    ax.text(0.5, 0.5, message, ha="center", va="center")
    _save(fig, path)


def scores_plot(table: pd.DataFrame, path: Path) -> None:
    """Grouped bars: each task's primary metric (x100) per model, with its 95 % bootstrap CI."""
    tasks = task_columns(table)
    n = len(table)
    width = 0.8 / max(n, 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(tasks) + 0.3 * n), 4.5))
    for i, (_, row) in enumerate(table.iterrows()):
        xs, ys, err = [], [], [[], []]
        for j, task in enumerate(tasks):
            value = row[f"{task} primary"]
            if math.isnan(value):
                continue
            xs.append(j + (i - (n - 1) / 2) * width)
            ys.append(value)
            low, high = row[f"{task} ci_low"], row[f"{task} ci_high"]
            err[0].append(0 if math.isnan(low) else value - low)
            err[1].append(0 if math.isnan(high) else high - value)
        ax.bar(xs, ys, width, yerr=err, capsize=2, label=row["model"])
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_ylabel("primary metric (x100), 95 % CI")
    ax.set_title("Dev scores by model")
    ax.legend(fontsize="small", ncol=2)
    _save(fig, path)


def frontier_plot(table: pd.DataFrame, path: Path) -> None:
    """Mean task score against parameter count: the compression frontier."""
    tasks = task_columns(table)
    points = [
        (row["parameters"] / 1e6, row[tasks].mean(skipna=True), row["model"])
        for _, row in table.iterrows()
        if not math.isnan(row["parameters"])
    ]
    points = [p for p in points if not math.isnan(p[1])]
    if not points:
        _empty(path, "Score vs parameters", "no model has both a score and a parameter count")
        return
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.scatter([p[0] for p in points], [p[1] for p in points])
    seen: dict[float, int] = {}
    for x, y, name in points:  # runs of one student share x: stack their labels instead of overprinting
        k = seen.get(x, 0)
        seen[x] = k + 1
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(6, 4 - 11 * k), fontsize="small")
    ax.set_xscale("log")
    ax.set_xlabel("parameters (millions, log scale)")
    ax.set_ylabel(f"mean task score over {', '.join(tasks)}")
    ax.set_title("Score vs parameters")
    ax.grid(alpha=0.3)
    _save(fig, path)


def read_train_log(path: str | Path) -> tuple[list[int], list[float]]:
    """(steps, total loss) of a training log; a damaged or empty log is a DataError naming file:line."""
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise DataError(f"{path}: the training log has no steps")
    key = "loss" if "loss" in rows[0] else list(rows[0])[1]
    steps, losses = [], []
    for lineno, row in enumerate(rows, start=2):
        try:
            steps.append(int(row["step"]))
            losses.append(float(row[key]))
        except (TypeError, ValueError):
            raise DataError(f"{path}:{lineno}: damaged training-log row {row}") from None
    if steps != list(range(1, len(steps) + 1)):
        raise DataError(f"{path}: training-log steps are not 1..{len(steps)} in order")
    return steps, losses


def loss_curves_plot(runs: dict[str, Any], path: Path) -> None:
    """Total training loss per step of every run, one panel per stage (stage 1, then each task)."""
    stages = list(dict.fromkeys(stage for run in runs.values() for stage in run.get("logs", {})))
    if not stages:
        _empty(path, "Training loss", "no run has a training log")
        return
    fig, axes = plt.subplots(1, len(stages), figsize=(5 * len(stages), 3.8), squeeze=False)
    for ax, stage in zip(axes[0], stages, strict=True):
        for name, run in runs.items():
            log_path = run.get("logs", {}).get(stage)
            if log_path:
                steps, losses = read_train_log(log_path)
                ax.plot(steps, losses, label=name)
        ax.set_title("stage 1 (corpus)" if stage == "stage1" else f"stage 2 ({stage})")
        ax.set_xlabel("step")
        ax.set_ylabel("weighted loss")
        ax.set_yscale("log")
        ax.legend(fontsize="small")
    _save(fig, path)


def coverage_plot(vocabularies: dict[str, str], path: Path) -> None:
    """Share of corpus tokens covered by the N most frequent tokens, with each vocabulary's chosen size."""
    if not vocabularies:
        _empty(path, "Vocabulary coverage", "no compressed vocabulary in this experiment")
        return
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for name, info in vocabularies.items():
        curve = pd.read_csv(info["coverage"])
        ax.plot(curve["kept_size"], curve["coverage"], label=f"{name} (corpus ranking)")
        if info.get("size"):
            ax.axvline(info["size"], linestyle="--", linewidth=0.8, color=ax.lines[-1].get_color())
    ax.set_xscale("log")
    ax.set_xlabel("vocabulary rows kept (log scale)")
    ax.set_ylabel("token coverage")
    ax.set_title("Vocabulary coverage (dashed: chosen size)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    _save(fig, path)


def comparisons_plot(frame: pd.DataFrame, path: Path) -> None:
    """Paired score differences (run minus baseline, x100) with their 95 % bootstrap intervals: a row per
    comparison (pooled over seeds where there are several), a line at 0; a win lies wholly right of it."""
    several = set(frame.loc[frame["seed"] == "pooled", ["run", "baseline", "task"]].itertuples(index=False))
    rows = frame[[(r.seed == "pooled") == ((r.run, r.baseline, r.task) in several) for r in frame.itertuples()]]
    if rows.empty:
        _empty(path, "Paired differences", "no run has a baseline to compare with (evaluate.compare_with)")
        return
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.4 * len(rows)))
    ys = list(range(len(rows)))[::-1]
    colours = ["tab:green" if v == "win" else "tab:red" if v == "loss" else "tab:grey" for v in rows["verdict"]]
    for y, colour, row in zip(ys, colours, rows.itertuples(), strict=True):
        ax.errorbar(
            [row.difference],
            [y],
            xerr=[[row.difference - row.low], [row.high - row.difference]],
            fmt="o",
            color=colour,
            capsize=3,
        )
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(ys, [f"{r.run} - {r.baseline} ({r.task}, {r.metric})" for r in rows.itertuples()])
    ax.set_xlabel("score difference (x100), paired 95 % bootstrap interval")
    ax.set_title("Runs against their baselines on the same dev examples")
    _save(fig, path)
