"""kdflow against lm-evaluation-harness, example by example, on the official GLUE/SuperGLUE files.

Both sides score the same model object on the same rows: kdflow with the `lm-eval` prompt set
(`kdflow.data.prompt_sets`), lm-eval (``pip install lm-eval``, optional) with its own built-in task configs
(``lm_eval/tasks/glue``, ``lm_eval/tasks/super_glue``) whose dataset is switched to a local JSON file, so
that nothing is fetched from a hub. The JSON rows are written from the release files by a reader of their
own (`hf_rows`), in the form of the HF datasets lm-eval expects (integer labels), independent of kdflow's
readers. ``python -m kdflow.bench.lmeval --help`` runs the comparison on a model folder.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# kdflow task type -> (lm-eval task name, folder under the shared data, dev file)
TASKS: dict[str, tuple[str, str, str]] = {
    "sst2": ("sst2", "glue/SST-2", "dev.tsv"),
    "rte": ("rte", "glue/RTE", "dev.tsv"),
    "mrpc": ("mrpc", "glue/MRPC", "dev.tsv"),
    "cola": ("cola", "glue/CoLA", "dev.tsv"),
    "boolq": ("boolq", "superglue/BoolQ", "val.jsonl"),
    "cb": ("cb", "superglue/CB", "val.jsonl"),
    "copa": ("copa", "superglue/COPA", "val.jsonl"),
    "rte_sg": ("sglue_rte", "superglue/RTE", "val.jsonl"),
    "wic": ("wic", "superglue/WiC", "val.jsonl"),
}
# label names -> the HF datasets' class indices (nyu-mll/glue rte, aps/super_glue cb / rte)
_CLASS = {
    "rte": {"entailment": 0, "not_entailment": 1},
    "rte_sg": {"entailment": 0, "not_entailment": 1},
    "cb": {"entailment": 0, "contradiction": 1, "neutral": 2},
}


def hf_rows(task: str, data_root: str | Path, limit: int | None = None) -> list[dict[str, Any]]:
    """The first ``limit`` dev rows of a release file as HF `datasets` rows (the fields lm-eval's templates read)."""
    _, folder, name = TASKS[task]
    path = Path(data_root) / folder / name
    rows: list[dict[str, Any]] = []
    if path.suffix == ".tsv":
        with open(path, encoding="utf-8-sig", newline="") as fh:
            lines = list(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
        if task == "cola":  # no header: source, label, original mark, sentence
            rows = [{"sentence": r[3], "label": int(r[1])} for r in lines]
        elif task == "sst2":
            rows = [{"sentence": r[0], "label": int(r[1])} for r in lines[1:]]
        elif task == "mrpc":
            rows = [{"sentence1": r[3], "sentence2": r[4], "label": int(r[0])} for r in lines[1:]]
        else:
            rows = [{"sentence1": r[1], "sentence2": r[2], "label": _CLASS[task][r[3]]} for r in lines[1:]]
    else:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                row = json.loads(line)
                label = row["label"]
                row["label"] = int(label) if isinstance(label, bool) else _CLASS.get(task, {}).get(label, label)
                rows.append(row)
    for i, row in enumerate(rows):
        row.setdefault("idx", i)
    return rows[:limit]


@functools.cache
def _task_manager() -> Any:
    from lm_eval.tasks import TaskManager

    return TaskManager()


def lmeval_scores(
    model: Any,
    tokenizer: Any,
    task: str,
    rows: list[dict[str, Any]],
    workdir: str | Path,
    batch_size: int = 16,
    max_length: int | None = None,
    add_bos_token: bool | None = None,
) -> list[list[float]]:
    """lm-eval's log-likelihood of every choice of every row: its built-in task config, data from ``rows``."""
    from lm_eval.evaluator import evaluate as lm_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks._yaml_loader import load_yaml

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    data = workdir / f"{task}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    manager = _task_manager()
    name = TASKS[task][0]
    config = load_yaml(manager.task_index[name].yaml_path, resolve_func=True)
    config.update(
        dataset_path="json",
        dataset_name=None,
        training_split=None,
        test_split=None,
        validation_split="validation",
        fewshot_split=None,
        dataset_kwargs={"data_files": {"validation": str(data)}, "cache_dir": str(workdir / "hf")},
    )
    config.pop("tag", None)
    lm = HFLM(
        pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length, add_bos_token=add_bos_token
    )
    out = lm_evaluate(lm, manager.load([config]), log_samples=True, bootstrap_iters=0)
    samples = sorted(out["samples"][name], key=lambda s: s["doc_id"])
    return [[float(resp[0][0]) for resp in s["resps"]] for s in samples]


def kdflow_scores(
    model: Any,
    tokenizer: Any,
    task: str,
    data_root: str | Path,
    limit: int | None = None,
    batch_size: int = 16,
    max_length: int | None = None,
    add_special_tokens: bool = True,
) -> tuple[list[list[float]], list[str], list[int]]:
    """kdflow's candidate scores with the lm-eval prompt set, the gold labels, and the truncated examples."""
    from ..data.reader import read_split
    from ..data.tasks import get_task
    from ..prompts import label_order, resolve_prompt, to_cloze
    from ..scoring import score_clozes

    spec = get_task(task)
    prompt = resolve_prompt(spec, None, "lm-eval")
    examples = read_split(spec, Path(data_root) / TASKS[task][1], "dev", limit)
    clozes = [to_cloze(spec, prompt, ex) for ex in examples]
    truncated: list[int] = []
    scores = score_clozes(
        model,
        tokenizer,
        "causal",
        clozes,
        batch_size=batch_size,
        max_length=max_length,
        progress=False,
        add_special_tokens=add_special_tokens,
        truncated=truncated,
    )
    labels = label_order(spec, prompt)
    golds = [ex["label"] if spec.kind == "candidates" else str(labels.index(ex["label"])) for ex in examples]
    return scores, golds, truncated


def _argmax(row: list[float]) -> int:
    return max(range(len(row)), key=row.__getitem__)


@dataclass
class Agreement:
    """One task scored by both: accuracies, predictions that differ, the largest log-likelihood gap."""

    task: str
    examples: int
    kdflow_accuracy: float
    lmeval_accuracy: float
    differing: list[dict[str, Any]] = field(default_factory=list)
    max_abs_diff: float = 0.0
    truncated: int = 0
    seconds: dict[str, float] = field(default_factory=dict)


def compare(
    kd: list[list[float]], lm: list[list[float]], kd_golds: list[str], lm_golds: list[str], task: str
) -> Agreement:
    """Both sides' scores of the same rows (and each side's gold choice) -> accuracies, differing predictions."""
    if len(kd) != len(lm) or kd_golds != lm_golds:
        raise ValueError(
            f"{task}: kdflow read {len(kd)} rows, lm-eval {len(lm)}; gold choices equal: {kd_golds == lm_golds}"
        )
    diffs, differing = [], []
    for i, (a, b) in enumerate(zip(kd, lm, strict=True)):
        if len(a) != len(b):
            raise ValueError(f"{task} row {i}: kdflow has {len(a)} choices, lm-eval {len(b)}")
        diffs.extend(abs(x - y) for x, y in zip(a, b, strict=True))
        if _argmax(a) != _argmax(b):
            margin = sorted(b)[-1] - sorted(b)[-2]
            differing.append({"row": i, "kdflow": a, "lmeval": b, "lmeval_margin": margin})
    acc = [
        sum(str(_argmax(s)) == g for s, g in zip(side, golds, strict=True)) / len(golds)
        for side, golds in ((kd, kd_golds), (lm, lm_golds))
    ]
    return Agreement(task, len(kd), acc[0], acc[1], differing, max(diffs, default=0.0))


def run(
    model_dir: str | Path,
    data_root: str | Path,
    tasks: list[str],
    limits: dict[str, int | None],
    workdir: str | Path,
    batch_size: int = 16,
    max_length: int | None = None,
    done: Any = None,
) -> list[Agreement]:
    """Load the model once and compare both sides on every task, on its first ``limits[task]`` dev rows (all
    when None); ``done(results)`` after each task."""
    from ..modeling import load_lm

    model, tokenizer, _ = load_lm(model_dir)
    results = []
    for task in tasks:
        limit = limits.get(task)
        started = time.perf_counter()
        kd, golds, truncated = kdflow_scores(model, tokenizer, task, data_root, limit, batch_size, max_length)
        middle = time.perf_counter()
        rows = hf_rows(task, data_root, limit)
        lm = lmeval_scores(model, tokenizer, task, rows, workdir, batch_size, max_length)
        result = compare(kd, lm, golds, [str(r["label"]) for r in rows], task)
        result.truncated = len(truncated)
        result.seconds = {"kdflow": middle - started, "lmeval": time.perf_counter() - middle}
        log.info(
            "%s: %d rows, accuracy kdflow %.4f lm-eval %.4f, %d predictions differ, max |diff| %.2e",
            task,
            result.examples,
            result.kdflow_accuracy,
            result.lmeval_accuracy,
            len(result.differing),
            result.max_abs_diff,
        )
        results.append(result)
        if done is not None:
            done(results)
    return results


def markdown(results: list[Agreement]) -> str:
    """The side-by-side table of the README."""
    lines = [
        "| task | rows | kdflow acc | lm-eval acc | predictions that differ | max abs log-lik diff | "
        "seconds kdflow / lm-eval |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.task} | {r.examples} | {100 * r.kdflow_accuracy:.2f} | {100 * r.lmeval_accuracy:.2f} | "
            f"{len(r.differing)} | {r.max_abs_diff:.1e} | {r.seconds['kdflow']:.0f} / "
            f"{r.seconds['lmeval']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m kdflow.bench.lmeval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a causal LM folder (e.g. results/assets/models/smollm2)")
    parser.add_argument("--data", required=True, help="the folder with glue/ and superglue/ release files")
    parser.add_argument("--tasks", nargs="*", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--limit", type=int, default=None, help="the first N dev rows of each task (default: all)")
    parser.add_argument("--limits", nargs="*", default=[], metavar="TASK=N", help="per-task caps (N: all for 'all')")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=None, help="default: the model's context length")
    parser.add_argument("--out", required=True, help="folder for lmeval_agreement.{json,md} and lm-eval's data")
    a = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    out = Path(a.out)

    def write(results: list[Agreement]) -> None:
        (out / "lmeval_agreement.json").write_text(json.dumps([r.__dict__ for r in results], indent=2) + "\n")
        (out / "lmeval_agreement.md").write_text(markdown(results))

    limits: dict[str, int | None] = {t: a.limit for t in a.tasks}
    for item in a.limits:
        task, _, n = item.partition("=")
        limits[task] = None if n == "all" else int(n)
    results = run(a.model, a.data, a.tasks, limits, out / "work", a.batch_size, a.max_length, write)
    print(markdown(results))
    if any(math.isnan(r.max_abs_diff) for r in results):
        raise SystemExit("a log-likelihood is NaN")


if __name__ == "__main__":
    main()
