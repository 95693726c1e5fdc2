"""Official GLUE/SuperGLUE metrics, computed from normalised labels and predictions."""

from __future__ import annotations

import math
import re
import string
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

Metric = Callable[[Sequence[Any], Sequence[Any], Sequence[dict]], float]


def accuracy(golds: Sequence[Any], preds: Sequence[Any], examples: Sequence[dict] = ()) -> float:
    return float(np.mean([g == p for g, p in zip(golds, preds, strict=True)])) if golds else float("nan")


def _f1_for(golds: Sequence[Any], preds: Sequence[Any], positive: Any) -> float:
    tp = sum(g == positive and p == positive for g, p in zip(golds, preds, strict=True))
    fp = sum(g != positive and p == positive for g, p in zip(golds, preds, strict=True))
    fn = sum(g == positive and p != positive for g, p in zip(golds, preds, strict=True))
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def f1(golds: Sequence[Any], preds: Sequence[Any], examples: Sequence[dict] = ()) -> float:
    """Binary F1 of the positive class "1" (MRPC, QQP)."""
    return _f1_for(golds, preds, "1")


def macro_f1(golds: Sequence[Any], preds: Sequence[Any], examples: Sequence[dict] = ()) -> float:
    """Unweighted mean of per-class F1 over the classes present in gold or predictions (CB)."""
    classes = sorted(set(golds) | set(preds))
    return float(np.mean([_f1_for(golds, preds, c) for c in classes]))


def mcc(golds: Sequence[Any], preds: Sequence[Any], examples: Sequence[dict] = ()) -> float:
    """Matthews correlation, multi-class form (Gorodkin), as sklearn computes it."""
    classes = sorted(set(golds) | set(preds))
    index = {c: i for i, c in enumerate(classes)}
    c = np.zeros((len(classes), len(classes)))
    for g, p in zip(golds, preds, strict=True):
        c[index[g], index[p]] += 1
    t, p_, n = c.sum(axis=1), c.sum(axis=0), c.sum()
    correct = np.trace(c)
    cov_ytyp = correct * n - t @ p_
    cov_ypyp = n * n - p_ @ p_
    cov_ytyt = n * n - t @ t
    denom = math.sqrt(cov_ytyt * cov_ypyp)
    return float(cov_ytyp / denom) if denom else 0.0


def pearson(golds: Sequence[float], preds: Sequence[float], examples: Sequence[dict] = ()) -> float:
    g, p = np.asarray(golds, float), np.asarray(preds, float)
    if g.std() == 0 or p.std() == 0:
        return 0.0
    return float(np.corrcoef(g, p)[0, 1])


def _ranks(values: np.ndarray) -> np.ndarray:
    order = values.argsort(kind="mergesort")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values))
    for v in np.unique(values):  # average ranks of ties
        tie = values == v
        ranks[tie] = ranks[tie].mean()
    return ranks


def spearman(golds: Sequence[float], preds: Sequence[float], examples: Sequence[dict] = ()) -> float:
    return pearson(_ranks(np.asarray(golds, float)), _ranks(np.asarray(preds, float)))


def _group_key(example: dict) -> tuple:
    idx = example["idx"]
    return (idx["paragraph"], idx["question"])


def multirc_f1a(golds: Sequence[Any], preds: Sequence[Any], examples: Sequence[dict] = ()) -> float:
    """F1 over all answer options (the "1" class), as the SuperGLUE leaderboard reports F1a."""
    return _f1_for(golds, preds, "1")


def multirc_em(golds: Sequence[Any], preds: Sequence[Any], examples: Sequence[dict]) -> float:
    """Share of questions whose every answer option is labelled correctly."""
    per_question: dict[tuple, bool] = defaultdict(lambda: True)
    for g, p, ex in zip(golds, preds, examples, strict=True):
        key = _group_key(ex)
        per_question[key] = per_question[key] and g == p
    return float(np.mean(list(per_question.values()))) if per_question else float("nan")


def normalize_answer(text: str) -> str:
    """ReCoRD/SQuAD official normalisation: lower case, no punctuation, articles or extra spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _token_f1(prediction: str, gold: str) -> float:
    p, g = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = Counter(p) & Counter(g)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def record_f1(golds: Sequence[list[str]], preds: Sequence[str], examples: Sequence[dict] = ()) -> float:
    return float(np.mean([max(_token_f1(p, g) for g in gs) for gs, p in zip(golds, preds, strict=True)]))


def record_em(golds: Sequence[list[str]], preds: Sequence[str], examples: Sequence[dict] = ()) -> float:
    return float(
        np.mean(
            [
                max(float(normalize_answer(p) == normalize_answer(g)) for g in gs)
                for gs, p in zip(golds, preds, strict=True)
            ]
        )
    )


def gender_parity(golds: Sequence[Any], preds: Sequence[Any], examples: Sequence[dict] = ()) -> float:
    """AX-g: share of minimal pairs given the same prediction. The release pairs rows by position, (2i, 2i+1),
    which share the hypothesis (every pair_id is distinct); the reader checks that. A trailing unpaired row
    is ignored, as in jiant's GenderParity."""
    pairs = [preds[i] == preds[i + 1] for i in range(0, len(preds) - 1, 2)]
    return float(np.mean(pairs)) if pairs else float("nan")


METRICS: dict[str, Metric] = {
    "accuracy": accuracy,
    "f1": f1,
    "macro_f1": macro_f1,
    "mcc": mcc,
    "pearson": pearson,
    "spearman": spearman,
    "f1a": multirc_f1a,
    "em": multirc_em,
    "record_f1": record_f1,
    "record_em": record_em,
    "gender_parity": gender_parity,
}


def compute(names: Sequence[str], golds: Sequence[Any], preds: Sequence[Any], examples: Sequence[dict]) -> dict:
    return {name: METRICS[name](golds, preds, examples) for name in names}


def resampling_units(name: str, examples: Sequence[dict]) -> list[list[int]]:
    """What the bootstrap resamples for metric ``name``: AX-g's minimal pairs (consecutive rows), MultiRC's
    questions (all their answers), else single examples."""
    n = len(examples)
    if name == "gender_parity":
        return [list(range(i, min(i + 2, n))) for i in range(0, n, 2)]
    if name in ("f1a", "em"):
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, ex in enumerate(examples):
            groups[_group_key(ex)].append(i)
        return list(groups.values())
    return [[i] for i in range(n)]


def bootstrap_ci(
    name: str,
    golds: Sequence[Any],
    preds: Sequence[Any],
    examples: Sequence[dict],
    samples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float] | None:
    """Percentile bootstrap confidence interval of one metric, resampling `resampling_units` with replacement
    (examples; whole pairs for AX-g gender parity, whole questions for MultiRC)."""
    units = resampling_units(name, examples)
    if samples <= 0 or len(units) < 2:
        return None
    rng = np.random.default_rng(seed)
    metric = METRICS[name]
    values = []
    for _ in range(samples):
        pick = [i for u in rng.integers(0, len(units), len(units)) for i in units[u]]
        values.append(metric([golds[i] for i in pick], [preds[i] for i in pick], [examples[i] for i in pick]))
    values = np.asarray(values, float)
    values = values[~np.isnan(values)]
    if not len(values):
        return None
    alpha = (1 - level) / 2
    return float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))


def paired_bootstrap(
    name: str,
    golds: Sequence[Any],
    seeds_a: Sequence[Sequence[Any]],
    seeds_b: Sequence[Sequence[Any]],
    examples: Sequence[dict],
    samples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any] | None:
    """Paired percentile bootstrap of ``metric(A) - metric(B)`` on the same examples, averaged over seeds:
    ``seeds_a[s]`` / ``seeds_b[s]`` are the predictions of A's and B's training with seed s (pass one list
    each for one seed). Each resample draws the `resampling_units` once and scores every prediction list on
    it, so what the models share (easy and hard examples) cancels. ``difference`` is on the full set; ``wins``
    says the interval lies above 0, ``loses`` below."""
    units = resampling_units(name, examples)
    n = len(examples)
    if samples <= 0 or len(units) < 2 or len(golds) != n or not seeds_a or len(seeds_a) != len(seeds_b):
        return None
    if any(len(p) != n for p in [*seeds_a, *seeds_b]):
        return None
    metric = METRICS[name]

    def difference(pick: list[int]) -> float:
        g, ex = [golds[i] for i in pick], [examples[i] for i in pick]
        return float(
            np.mean(
                [
                    metric(g, [a[i] for i in pick], ex) - metric(g, [b[i] for i in pick], ex)
                    for a, b in zip(seeds_a, seeds_b, strict=True)
                ]
            )
        )

    rng = np.random.default_rng(seed)
    draws = [[i for u in rng.integers(0, len(units), len(units)) for i in units[u]] for _ in range(samples)]
    result = _interval(difference(list(range(n))), np.asarray([difference(pick) for pick in draws], float), level)
    return None if result is None else {**result, "seeds": len(seeds_a)}


def _interval(difference: float, draws: np.ndarray, level: float) -> dict[str, Any] | None:
    """The percentile interval of a bootstrap distribution (its undefined resamples dropped), the verdict, and
    the draws themselves (for averaging over tasks)."""
    values = draws[~np.isnan(draws)]
    if not len(values):
        return None
    alpha = (1 - level) / 2
    low, high = (_snap(float(np.quantile(values, q))) for q in (alpha, 1 - alpha))
    return {"difference": difference, "low": low, "high": high, "wins": low > 0, "loses": high < 0, "draws": draws}


def _snap(value: float, tolerance: float = 1e-9) -> float:
    """0 for a bound that is 0 up to rounding: the mean of per-seed differences that cancel is not always an
    exact 0 in floating point (``np.mean([0.1, 0.2, -0.3])`` is 1.9e-17), and such a bound is no win."""
    return 0.0 if abs(value) < tolerance else value


def average_bootstrap(results: Sequence[dict[str, Any]], level: float = 0.95) -> dict[str, Any] | None:
    """The mean over tasks of paired differences (each a `paired_bootstrap` result drawn with its own rng seed
    and the same number of samples): resample k averages the tasks' resample k, so each task's examples are
    resampled independently of the others'; resamples undefined on any task are dropped."""
    if len(results) < 2 or len({len(r["draws"]) for r in results}) != 1:
        return None
    draws = np.mean(np.stack([r["draws"] for r in results]), axis=0)
    return _interval(float(np.mean([r["difference"] for r in results])), draws, level)
