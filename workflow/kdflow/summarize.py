"""Rule `summarize`: every evaluated model (teacher and runs) in one table -> summary CSV/Markdown/HTML,
a table describing the runs, and the plots (scores, compression frontier, loss curves, coverage)."""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

import pandas as pd

from .compare import comparison_table, seed_table, top_class_table
from .errors import DataError
from .jsonio import read_json
from .leaderboard import BENCHMARK_TASKS, DIAGNOSTICS, benchmark_average, task_score
from .plan.names import run_of, stage_phases
from .plots import comparisons_plot, coverage_plot, frontier_plot, loss_curves_plot, scores_plot, task_columns

BENCHMARK_LABELS = {"glue": "GLUE", "superglue": "SuperGLUE"}


def _read(path: str | Path, what: str) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: the {what} is missing (run the rule that writes it first)")
    return read_json(path)


def load_entries(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Read every (model, task) metrics and efficiency JSON named by the manifest."""
    entries = []
    for e in manifest["entries"]:
        metrics = _read(e["metrics"], f"metrics of {e['model']} on {e['task']}")
        efficiency = _read(e["efficiency"], f"efficiency of {e['model']} on {e['task']}") if e.get("efficiency") else {}
        entries.append({**e, "result": metrics, "efficiency": efficiency})
    return entries


def _label(model: str) -> str:
    """A model as the table names it: a run's students by the run's name."""
    return run_of(model) or model


def summary_table(manifest: dict[str, Any], entries: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per model: per-task scores (+ primary-metric CI), benchmark averages, size, speed, retention."""
    tasks = list(dict.fromkeys(e["task"] for e in entries))
    models = list(dict.fromkeys(e["model"] for e in entries))
    by_key = {(e["model"], e["task"]): e for e in entries}
    reference = manifest.get("reference", {})
    rows = []
    for model in models:
        row: dict[str, Any] = {"model": _label(model), "role": next(e["role"] for e in entries if e["model"] == model)}
        run = manifest.get("runs", {}).get(run_of(model)) if run_of(model) is not None else None
        row["student"] = run["student"] if run else ""
        row["vocabulary"] = run["vocabulary"] if run else ""
        type_scores: dict[str, float] = {}
        retention = []
        efficiency = [by_key[(model, t)]["efficiency"] for t in tasks if (model, t) in by_key]
        for task in tasks:
            e = by_key.get((model, task))
            if e is None:
                row[task] = math.nan
                continue
            result = e["result"]
            score = task_score(result["metrics"])
            row[task] = score
            ci = result["ci95"].get(result["primary_metric"])
            row[f"{task} primary"] = 100 * result["metrics"][result["primary_metric"]]
            row[f"{task} metric"] = result["primary_metric"]
            row[f"{task} ci_low"], row[f"{task} ci_high"] = (100 * ci[0], 100 * ci[1]) if ci else (math.nan, math.nan)
            if result["task_type"] not in DIAGNOSTICS:
                type_scores[result["task_type"]] = score
            ref_model = (run or {}).get("reference", {}).get(task) or reference.get(task)
            ref = by_key.get((ref_model, task))
            if ref is not None and row["role"] == "run":
                ref_score = task_score(ref["result"]["metrics"])
                if ref_score and not math.isnan(ref_score):
                    retention.append(100 * score / ref_score)
        for bench, label in BENCHMARK_LABELS.items():
            avg, present, total = benchmark_average(bench, type_scores)
            row[f"{label} avg"] = avg
            row[f"{label} tasks"] = f"{present}/{total}"
        row["retention %"] = sum(retention) / len(retention) if retention else math.nan
        eff = efficiency[0] if efficiency and efficiency[0] else {}
        params = eff.get("parameters", {})
        row["parameters"] = params.get("total", math.nan)
        row["embedding+head"] = params.get("embedding", 0) + params.get("head", 0) if params else math.nan
        row["vocabulary size"] = eff.get("vocabulary_size", math.nan)
        row["disk MB"] = eff["disk_bytes"] / 1e6 if eff else math.nan
        latencies = [x["latency_batch1"]["median_ms"] for x in efficiency if x and x.get("latency_batch1")]
        row["latency ms"] = sum(latencies) / len(latencies) if latencies else math.nan
        rates = [
            x["throughput"]["examples_per_second"] for x in efficiency if x and x["throughput"]["examples_per_second"]
        ]
        row["examples/s"] = sum(rates) / len(rates) if rates else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def _fmt(value: Any, digits: int = 1) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _task_cell(row: pd.Series, task: str) -> str:
    """`score (low–high)`; when the task averages several metrics, the CI is the primary metric's, named."""
    score, primary = row[task], row[f"{task} primary"]
    low, high = row[f"{task} ci_low"], row[f"{task} ci_high"]
    if math.isnan(score):
        return "–"
    if math.isnan(low):
        return f"{score:.1f}"
    if abs(score - primary) < 1e-9:
        return f"{score:.1f} ({low:.1f}–{high:.1f})"
    return f"{score:.1f} [{row[f'{task} metric']} {primary:.1f} ({low:.1f}–{high:.1f})]"


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """The table as people read it: task scores with the primary metric's 95 % CI, averages, costs."""
    tasks = task_columns(table)
    out = pd.DataFrame({"model": table["model"], "role": table["role"]})
    for task in tasks:
        out[task] = [_task_cell(r, task) for _, r in table.iterrows()]
    for label in BENCHMARK_LABELS.values():
        if (table[f"{label} tasks"] != f"0/{len(BENCHMARK_TASKS[label.lower()])}").any():
            out[f"{label} avg"] = [
                f"{_fmt(a)} ({n})" if not math.isnan(a) else "–"
                for a, n in zip(table[f"{label} avg"], table[f"{label} tasks"])
            ]
    out["retention %"] = [_fmt(v) for v in table["retention %"]]
    out["parameters (M)"] = [_fmt(v / 1e6, 1) if not math.isnan(v) else "–" for v in table["parameters"]]
    out["emb+head (M)"] = [_fmt(v / 1e6, 1) if not math.isnan(v) else "–" for v in table["embedding+head"]]
    out["vocabulary"] = [_fmt(int(v)) if not math.isnan(v) else "–" for v in table["vocabulary size"]]
    out["latency ms (b=1)"] = [_fmt(v) for v in table["latency ms"]]
    out["examples/s"] = [_fmt(v) for v in table["examples/s"]]
    return out


def runs_table(manifest: dict[str, Any]) -> pd.DataFrame:
    """What each run is: description, student, vocabulary, and the losses of each stage."""
    rows = []
    for name, run in manifest.get("runs", {}).items():

        def losses(stage: str, run: dict[str, Any] = run) -> str:
            spec = run.get(stage)
            if not spec:
                return "–"
            phases = [
                " + ".join(
                    f"{(w or {}).get('weight', 1.0):g}·{loss}"
                    + (f" (T={w['temperature']:g})" if "temperature" in (w or {}) else "")
                    for loss, w in losses.items()
                )
                for losses in stage_phases(spec)
            ]
            return phases[0] if len(phases) == 1 else ", then ".join(f"[{p}]" for p in phases)

        rows.append(
            {
                "run": name,
                "description": run.get("description") or "",
                "student": run["student"],
                "layers": run.get("layers", ""),
                "vocabulary": run["vocabulary"],
                "stage 1 losses": losses("stage1"),
                "stage 2 losses": losses("stage2"),
            }
        )
    return pd.DataFrame(
        rows, columns=["run", "description", "student", "layers", "vocabulary", "stage 1 losses", "stage 2 losses"]
    )


def markdown(table: pd.DataFrame) -> str:
    """A GitHub Markdown table (pipes escaped)."""
    header = "| " + " | ".join(table.columns) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    body = ["| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"


def html_page(title: str, sections: list[tuple[str, pd.DataFrame]], note: str) -> str:
    """A small self-contained HTML page of tables (for the Snakemake report and a browser)."""
    style = (
        "body{font-family:sans-serif;margin:1.5em} table{border-collapse:collapse;margin-bottom:1.5em}"
        "th,td{border:1px solid #bbb;padding:4px 8px;text-align:right} th{background:#eee}"
        "td:first-child,th:first-child{text-align:left}"
    )
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>"
    ]
    for heading, frame in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        parts.append(frame.to_html(index=False, escape=True, classes="kdflow-table", border=0))
    parts.append(f"<p>{html.escape(note)}</p></body></html>")
    return "\n".join(parts)


NOTE = (
    "Task scores are the leaderboard score of each task (mean of its official metrics, x100) on the dev "
    "split; brackets: 95 % bootstrap CI of the primary metric (named, with its value, when the task averages "
    "several metrics). Benchmark averages as the GLUE/SuperGLUE "
    "leaderboards compute them (MNLI-m/-mm one task; diagnostics not averaged), with the number of the "
    "benchmark's tasks present. Retention (runs): the task score as a % of the teacher it was distilled "
    "from (fine-tuned teacher where there is one), averaged over tasks. Latency: median wall time of one "
    "dev example scored alone, this machine; examples/s: batched dev scoring."
)


SEEDS_NOTE = (
    "Each run trained once per seed (`seeds`): the mean task score, its standard deviation over seeds "
    "(training noise, which an evaluation interval does not capture) and each seed's score."
)
COMPARE_NOTE = (
    "Run minus baseline, primary metric x100, on the same dev examples: paired 95 % bootstrap interval "
    "(the same resampled examples score both models; pooled: averaged over the seeds, each pair of "
    "runs with the same seed; average: the mean of the tasks' differences, each task's examples resampled on their "
    "own). A win only when the whole interval lies above 0."
)
TOP_NOTE = (
    "The share of each run's dev predictions in its most frequent class: near 100 % the student predicts "
    "the label prior, not the task."
)


def _decimals(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """``frame`` with ``columns`` shown to one decimal (– for a missing value)."""
    return frame.assign(**{c: [_fmt(float(v)) for v in frame[c]] for c in columns})


def _sections(
    manifest: dict[str, Any], entries: list[dict[str, Any]], table: pd.DataFrame, compared: pd.DataFrame
) -> list[tuple[str, pd.DataFrame, str]]:
    """The summary's sections: (heading, table, note); seeds only when a run has several."""
    out = [("Scores and costs", display_table(table), NOTE)]
    seeds = seed_table(manifest, table, task_columns(table))
    if (seeds["seeds"] > 1).any():
        out.append(("Seeds", _decimals(seeds, ["mean", "sd"]), SEEDS_NOTE))
    if not compared.empty:
        out.append(("Paired comparisons", _decimals(compared, ["difference", "low", "high"]), COMPARE_NOTE))
    top = top_class_table(entries)
    if not top.empty:
        out.append(("Most frequent prediction", _decimals(top, ["share %"]), TOP_NOTE))
    return out + [("Runs", runs_table(manifest), "")]


def summarize(manifest: dict[str, Any], out_dir: str | Path, plots_dir: str | Path) -> pd.DataFrame:
    """Write summary.csv, summary.md, summary.html, runs.html and the plots; return the summary table."""
    out_dir, plots_dir = Path(out_dir), Path(plots_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots_dir.mkdir(parents=True, exist_ok=True)
    entries = load_entries(manifest)
    if not entries:
        raise DataError("summarize: the manifest lists no evaluated (model, task) pair")
    table = summary_table(manifest, entries)
    table.to_csv(out_dir / "summary.csv", index=False, float_format="%.4f")
    compared = comparison_table(manifest, entries)
    compared.to_csv(out_dir / "comparisons.csv", index=False, float_format="%.4f")
    sections = _sections(manifest, entries, table, compared)
    (out_dir / "summary.md").write_text(
        "# kdflow summary\n\n"
        + "\n\n".join(f"## {h}\n\n{markdown(f)}" + (f"\n{n}\n" if n else "") for h, f, n in sections),
        encoding="utf-8",
    )
    (out_dir / "summary.html").write_text(
        html_page("kdflow summary", [(h, f) for h, f, _ in sections if h != "Runs"], NOTE), "utf-8"
    )
    (out_dir / "runs.html").write_text(
        html_page("kdflow runs", [("Runs", runs_table(manifest))], "Losses: weight·name (temperature)."), "utf-8"
    )
    comparisons_plot(compared, plots_dir / "comparisons.png")
    scores_plot(table, plots_dir / "scores.png")
    frontier_plot(table, plots_dir / "frontier.png")
    loss_curves_plot(manifest.get("runs", {}), plots_dir / "loss_curves.png")
    vocabularies = {
        name: {"coverage": v["coverage"], "size": read_json(v["params"])["compressed_vocab_size"]}
        for name, v in manifest.get("vocabularies", {}).items()
    }
    coverage_plot(vocabularies, plots_dir / "coverage.png")
    return table
