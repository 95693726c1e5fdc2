"""The benchmark reports as one Markdown page (OUT/bench.md)."""

from __future__ import annotations

from typing import Any


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    def cell(v: Any) -> str:
        if v is None:
            return ""
        return f"{v:,.1f}" if isinstance(v, float) else str(v)

    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(cell(v) for v in r) + " |" for r in rows),
        "",
    ]


def met(value: float, goal: list[Any]) -> bool:
    """Whether ``value`` meets ``goal`` = [">=" or "<=", threshold]."""
    op, threshold = goal
    return value >= threshold if op == ">=" else value <= threshold


def goal_lines(r: dict[str, Any]) -> list[str]:
    """One line per ratio of a section: its value and, where it has a goal, the goal and met / not met."""
    lines = []
    for name, value in r["ratios"].items():
        goal = r.get("goals", {}).get(name)
        verdict = f" (goal {goal[0]} {goal[1]}x: {'met' if met(value, goal) else 'NOT MET'})" if goal else ""
        lines.append(f"- {name}: {value:.2f}x{verdict}")
    return lines + [""]


def _stage1(r: dict[str, Any]) -> list[str]:
    rows = []
    for name, row in r.items():
        if name in ("ratios", "goals", "settings", "machine"):
            continue
        if "skipped" in row:
            rows.append([name, None, None, None, row["skipped"]])
        else:
            rows.append([name, row["tokens_per_second"], row["peak_rss_mb"], len(row["runs"]), ""])
    lines = ["## 1. Stage-1 distillation speed", ""]
    lines += _table(["setting", "tokens/s (median)", "peak RSS MB", "runs", "note"], rows)
    return lines + goal_lines(r)


def _memory(r: dict[str, Any]) -> list[str]:
    rows = [[name, r[name]["positions"], r[name]["peak_loss_mb"], r[name]["seconds"]] for name in ("unfused", "fused")]
    agree = r["agreement"]
    lines = ["## 2. Stage-1 word loss memory (student head + KL over the vocabulary)", ""]
    lines += _table(["loss", "positions", "peak MB above the inputs", "seconds"], rows)
    lines.append(
        f"- fused vs unfused: loss relative difference {agree['loss_relative_difference']:.1e}, gradient relative "
        f"differences {', '.join(f'{d:.1e}' for d in agree['grad_relative_differences'])} (hidden states, head)"
    )
    return lines + goal_lines(r)


def _cache(r: dict[str, Any]) -> list[str]:
    lines = ["## 3. Cache size and fidelity", ""]
    lines += _table(["format", "bytes/token"], [[k, v["bytes_per_token"]] for k, v in r["bytes_per_token"].items()])
    rows = []
    for k, per_t in r["kl"].items():
        for temp, q in per_t.items():
            rows.append(
                [
                    k,
                    temp,
                    f"{q['dense_kl']:.4g}",
                    f"{100 * q['kdflow_topk_relative_error']:.3f} %",
                    f"{100 * q['plain_topk_relative_error']:.2f} %",
                    f"{q['reconstruction_kl']:.5f}",
                ]
            )
    header = ["k", "T", "dense KL", "kdflow top-k + normaliser error", "plain top-k (k+2) error", "KL(p || p_hat)"]
    return lines + _table(header, rows) + _hidden_caches(r.get("hidden", {}))


def _hidden_caches(hidden: dict[str, Any]) -> list[str]:
    """The hidden-state caches: bytes/token, KL error per T, and each quantised one's goal (met / not met)."""
    if not hidden:
        return []
    rows = [
        [dtype, f"{h['bytes_per_token']:.1f}", temp, f"{q['dense_kl']:.4g}", f"{100 * q['relative_error']:.3f} %"]
        for dtype, h in hidden.items()
        for temp, q in h["kl"].items()
    ]
    lines = ["Hidden-state caches (head inputs; logits = stored vector x the teacher's head):", ""]
    lines += _table(["value dtype", "bytes/token", "T", "dense KL", "KL error"], rows)
    for dtype, h in hidden.items():
        if "goal" in h:
            goal = h["goal"]
            error = f" and KL error < {100 * goal['max_relative_error']:g} % at every T" if len(goal) > 1 else ""
            verdict = "met" if h["goal_met"] else "not met"
            lines.append(f"- hidden {dtype}: goal <= {goal['max_bytes_per_token']} bytes/token{error}: {verdict}")
    return lines + [""]


def _caching(r: dict[str, Any]) -> list[str]:
    lines = ["## 4. Caching throughput and memory", ""]
    rows = [
        [name, row["blocks"], row["positions"], row["seconds"], row["peak_rss_mb"]]
        for name, row in r["caching"].items()
    ]
    lines += _table(["cache, corpus", "blocks", "positions", "seconds (median)", "peak RSS MB"], rows)
    lines.append(f"- bare teacher forward over the 1x batches: {r['bare_forward']['seconds']:.1f} s (median)")
    return lines + goal_lines(r)


def _scaling(r: dict[str, Any]) -> list[str]:
    rows = [
        [name, row["block_size"], row["batch_size"], row["tokens_per_second"], row["peak_rss_mb"]]
        for name, row in r.items()
        if name not in ("settings", "machine")
    ]
    return [
        "## 5. Stage-1 scaling (cached top-k targets)",
        "",
        *_table(["point", "block", "batch", "tokens/s (median)", "peak RSS MB"], rows),
    ]


def _rules(r: dict[str, Any]) -> list[str]:
    lines = ["## 6. Rule wall times", "", f"From `{r['source']}`.", ""]
    if not r["jobs"]:
        return lines + ["No benchmark files found: run an experiment first (`make run`).", ""]
    rows = [[j["rule"], j["job"], j["seconds"], j["max_rss_mb"]] for j in r["jobs"]]
    lines += _table(["rule", "job", "seconds", "max RSS MB"], rows)
    return lines + [f"- all jobs: {r['total_seconds']:.0f} s", ""]


RENDER = {
    "stage1": _stage1,
    "memory": _memory,
    "cache": _cache,
    "caching": _caching,
    "scaling": _scaling,
    "rules": _rules,
}


def markdown(reports: dict[str, Any]) -> str:
    lines = ["# kdflow benchmarks", ""]
    if reports:
        first = next(iter(reports.values()))
        m, s = first["machine"], first["settings"]
        lines += [
            f"Machine: {m['processor']}, {m['cpus']} CPUs, {m['platform']}, torch {m['torch']}. "
            f"Repeats: {s['repeats']} fresh processes per timed figure (medians), {s['steps']} steps each.",
            "",
        ]
    for section, report in reports.items():
        lines += RENDER[section](report)
    return "\n".join(lines)
