"""What `summarize` and `reproduce` are told: every evaluated pair with its role and files, the runs
described, the vocabularies' files, and our metrics next to each published row."""

from __future__ import annotations

from typing import Any

from . import names
from .names import CLASSIFIERS, FINETUNED, RUNS

Pairs = tuple[tuple[str, str], ...]


def model_role(config: dict[str, Any], name: str) -> str:
    """The role the summary gives a model: the teacher (zero-shot or not), a fine-tuned teacher, a run, a model."""
    if name == config["teacher"]:
        return "teacher (zero-shot)" if config["teacher_finetune"]["tasks"] else "teacher"
    if name == FINETUNED:
        return "teacher (fine-tuned)"
    if name.startswith(CLASSIFIERS):
        return "teacher (fine-tuned classifier)"
    return "run" if name.startswith(RUNS) else "model"


def layer_description(layers: dict[str, Any]) -> str:
    """`uniform 6` / `last 2` / `layers 0, 5, 11`: which teacher layers a student keeps."""
    if layers.get("strategy") == "explicit":
        return "layers " + ", ".join(str(i) for i in layers["list"])
    return f"{layers.get('strategy', 'uniform')} {layers.get('count', '')}".strip()


def run_logs(config: dict[str, Any], results: str, name: str) -> dict[str, str]:
    """A run's training logs: stage 1 (if any), then each task's stage 2."""
    logs = {"stage1": f"{results}/runs/{name}/stage1/train_log.csv"} if "stage1" in config["runs"][name] else {}
    return {**logs, **{t: f"{results}/runs/{name}/{t}/train_log.csv" for t in config["distill"]["tasks"]}}


def run_description(config: dict[str, Any], results: str, name: str) -> dict[str, Any]:
    """A run as the summary shows it: description, teachers, student, layers, vocabulary, losses, logs."""
    run = config["runs"][name]
    student = config["students"][run["student"]]
    tasks = config["distill"]["tasks"]
    return {
        "description": run.get("description") or "",
        "reference": {t: names.stage2_teacher_name(config, name, t) for t in tasks},
        "student": run["student"],
        "layers": layer_description(student["layers"]),
        "vocabulary": student["vocabulary"],
        "stage1": run.get("stage1"),
        "stage2": run["stage2"],
        "logs": run_logs(config, results, name),
    }


def summary_manifest(config: dict[str, Any], results: str, pairs: Pairs) -> dict[str, Any]:
    """What `summarize` reads: every metrics/efficiency JSON, the runs, the vocabularies' coverage."""
    entries = [{"model": m, "task": t, "role": model_role(config, m), "metrics": f"{results}/metrics/{m}/{t}.json",
                "efficiency": f"{results}/efficiency/{m}/{t}.json"} for m, t in pairs]  # fmt: skip
    vocabularies = {v: {"coverage": f"{results}/vocab/{v}/coverage.csv", "params": f"{results}/vocab/{v}/params.json"}
                    for v in config["vocabularies"]}  # fmt: skip
    return {
        "teacher": config["teacher"],
        "entries": entries,
        "reference": {t: names.task_teacher_name(config, t) for t in config["tasks"]},
        "runs": {r: run_description(config, results, r) for r in config["runs"]},
        "vocabularies": vocabularies,
    }


def summary_inputs(config: dict[str, Any], results: str, manifest: dict[str, Any], pairs: Pairs) -> tuple[str, ...]:
    """Every file and folder `summarize` reads (sorted): metrics, efficiency, vocabularies, run folders."""
    files = [e[key] for e in manifest["entries"] for key in ("metrics", "efficiency")]
    files += [v[key] for v in manifest["vocabularies"].values() for key in ("params", "coverage")]
    files += [names.model_folder(results, m, t) for m, t in pairs if m.startswith(RUNS)]
    files += [f"{results}/runs/{r}/stage1" for r, run in config["runs"].items() if "stage1" in run]
    return tuple(sorted(set(files)))


def published_metrics(config: dict[str, Any], results: str, pairs: Pairs) -> dict[str, dict[str, str]]:
    """Our metrics JSON for every (model, task) a published row names and this experiment evaluates."""
    evaluated = set(pairs)
    metrics: dict[str, dict[str, str]] = {}
    for entry in config["published"]:
        model = entry["compare_with"]
        for task in entry["scores"]:
            if (model, task) in evaluated:
                metrics.setdefault(model, {})[task] = f"{results}/metrics/{model}/{task}.json"
    return metrics
