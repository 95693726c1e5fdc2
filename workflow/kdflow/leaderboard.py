"""Benchmark scores as the GLUE and SuperGLUE leaderboards compute them.

A task's score is the unweighted mean of its official metrics (x100): MRPC and QQP average F1 and
accuracy, STS-B Pearson and Spearman, CB accuracy and macro-F1, MultiRC F1a and EM, ReCoRD F1 and EM.
The benchmark score is the unweighted mean of its tasks' scores. On GLUE, MNLI is one task whose score
is the mean of its matched and mismatched accuracies; the diagnostics (AX, AX-b, AX-g) are reported but
never averaged, as on the leaderboards.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

# benchmark -> leaderboard task -> task types that make it up
BENCHMARK_TASKS: dict[str, dict[str, tuple[str, ...]]] = {
    "glue": {
        "cola": ("cola",),
        "sst2": ("sst2",),
        "mrpc": ("mrpc",),
        "stsb": ("stsb",),
        "qqp": ("qqp",),
        "mnli": ("mnli_m", "mnli_mm"),
        "qnli": ("qnli",),
        "rte": ("rte",),
        "wnli": ("wnli",),
    },
    "superglue": {
        "boolq": ("boolq",),
        "cb": ("cb",),
        "copa": ("copa",),
        "multirc": ("multirc",),
        "record": ("record",),
        "rte": ("rte_sg",),
        "wic": ("wic",),
        "wsc": ("wsc",),
    },
}
DIAGNOSTICS = frozenset({"ax", "axb", "axg"})


def task_score(metrics: Mapping[str, float]) -> float:
    """The leaderboard score of one task: the mean of its official metrics, in points (x100)."""
    values = [float(v) for v in metrics.values()]
    if not values or any(math.isnan(v) for v in values):
        return math.nan
    return 100.0 * sum(values) / len(values)


def benchmark_average(benchmark: str, scores: Mapping[str, float]) -> tuple[float, int, int]:
    """(average, tasks present, tasks in the benchmark) from task-type scores (``{"rte": 61.2, ...}``).

    A leaderboard task counts when every task type in it has a score; the average is over those tasks,
    so a partial table says how many of the benchmark's tasks it covers."""
    groups = BENCHMARK_TASKS[benchmark]
    present = []
    for types in groups.values():
        values = [scores[t] for t in types if t in scores and not math.isnan(scores[t])]
        if len(values) == len(types):
            present.append(sum(values) / len(values))
    average = sum(present) / len(present) if present else math.nan
    return average, len(present), len(groups)
