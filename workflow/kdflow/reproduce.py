"""The papers' published numbers next to ours: one row per (published model, task), written as CSV and Markdown.

Published rows come from config (`published`: label, source, the model of ours to compare, scores per task
and optionally the metric each score is); ours are the metrics JSONs of the evaluate rule. Scores are on a
0-100 scale. A task the paper reports but this experiment did not evaluate is kept with an empty "ours".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from .errors import DataError

COLUMNS = ["published", "source", "ours_model", "task", "metric", "paper", "ours", "ours_ci95", "difference"]


def _our_score(path: Path | None, metric: str | None) -> tuple[str | None, float | None, str]:
    if path is None or not path.exists():
        return metric, None, ""
    result = json.loads(path.read_text())
    name = metric or result["primary_metric"]
    if name not in result["metrics"]:
        raise DataError(f"{path}: no metric '{name}' (has {', '.join(result['metrics'])})")
    ci = result.get("ci95", {}).get(name)
    ci_text = f"{100 * ci[0]:.1f}-{100 * ci[1]:.1f}" if ci else ""
    return name, 100 * result["metrics"][name], ci_text


def compare(published: list[dict[str, Any]], metrics: dict[str, dict[str, str]]) -> pd.DataFrame:
    """Rows of the comparison table; ``metrics[model][task]`` is the path of our metrics JSON."""
    rows = []
    for entry in published:
        ours = entry["compare_with"]
        for task, paper in entry["scores"].items():
            path = metrics.get(ours, {}).get(task)
            metric, value, ci = _our_score(Path(path) if path else None, entry.get("metrics", {}).get(task))
            rows.append(
                {
                    "published": entry["label"],
                    "source": entry["source"],
                    "ours_model": ours,
                    "task": task,
                    "metric": metric or "",
                    "paper": float(paper),
                    "ours": value,
                    "ours_ci95": ci,
                    "difference": None if value is None else value - float(paper),
                }
            )
    return pd.DataFrame(rows, columns=COLUMNS)


def to_markdown(table: pd.DataFrame) -> str:
    """The table as Markdown, sources listed once under it."""
    if table.empty:
        return "No published numbers are configured (`published` in the experiment config).\n"
    shown = table.drop(columns=["source"]).copy()
    for col in ("paper", "ours", "difference"):
        pattern = "{:+.1f}" if col == "difference" else "{:.1f}"
        shown[col] = shown[col].map(lambda v, pattern=pattern: "" if pd.isna(v) else pattern.format(v))
    header = "| " + " | ".join(shown.columns) + " |"
    lines = [header, "|" + "---|" * len(shown.columns)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in shown.itertuples(index=False)]
    sources = dict.fromkeys(f"- {r.published}: {r.source}" for r in table.itertuples())
    return "\n".join(["# Ours next to the papers", "", *lines, "", "Sources:", *sources, ""])


def write_comparison(
    published: list[dict[str, Any]], metrics: dict[str, dict[str, str]], out_csv: Path, out_md: Path
) -> pd.DataFrame:
    table = compare(published, metrics)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out_csv, index=False)
    out_md.write_text(to_markdown(table))
    return table
