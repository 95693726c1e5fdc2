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
    logs = {"stage1": f"{results}/runs/{name}/stage1/train_log.csv"} if "stage1" in names.run_spec(config, name) else {}
    return {**logs, **{t: f"{results}/runs/{name}/{t}/train_log.csv" for t in names.run_tasks(config, name)}}


def run_description(config: dict[str, Any], results: str, name: str) -> dict[str, Any]:
    """A run as the summary shows it: description, teachers, student, layers, vocabulary, losses, logs."""
    run = names.run_spec(config, name)
    base, seed = names.run_instances(config)[name]
    student = config["students"][run["student"]]
    tasks = names.run_tasks(config, name)
    return {
        "base": base,
        "seed": seed,
        "description": run.get("description") or "",
        "reference": {t: names.stage2_teacher_name(config, name, t) for t in tasks},
        "student": run["student"],
        "layers": layer_description(student["layers"]),
        "vocabulary": student["vocabulary"],
        "stage1": run.get("stage1"),
        "stage2": run["stage2"],
        "logs": run_logs(config, results, name),
    }


def comparisons(config: dict[str, Any]) -> list[dict[str, Any]]:
    """The paired comparisons the summary shows: every run against each baseline of `compare_with` that
    distils students of the same teacher, on every distilled task, seed by seed (instances paired by seed)."""
    instances = names.run_instances(config)
    by_seed = {(base, seed): name for name, (base, seed) in instances.items()}
    track = {r: names.student_teacher(config, spec["student"]) for r, spec in config["runs"].items()}
    out, seen = [], set()
    for baseline in names.compare_with(config):
        for run in config["runs"]:
            if run == baseline or track[run] != track[baseline] or frozenset((run, baseline)) in seen:
                continue
            seen.add(frozenset((run, baseline)))
            pairs = [
                [names.run_model(by_seed[(run, s)]), names.run_model(by_seed[(baseline, s)])]
                for s in names.seeds(config)
            ]
            tasks = [t for t in names.run_tasks(config, run) if t in names.run_tasks(config, baseline)]
            out += [{"run": run, "baseline": baseline, "task": t, "pairs": pairs} for t in tasks]
    return out


def summary_manifest(config: dict[str, Any], results: str, pairs: Pairs) -> dict[str, Any]:
    """What `summarize` reads: every metrics/efficiency JSON, the runs, the vocabularies' coverage."""
    entries = [
        {
            "model": m,
            "task": t,
            "role": model_role(config, m),
            "metrics": f"{results}/metrics/{m}/{t}.json",
            "efficiency": f"{results}/efficiency/{m}/{t}.json",
            "predictions": f"{results}/predictions/{m}/{t}.jsonl",
        }
        for m, t in pairs
    ]
    vocabularies = {
        v: {"coverage": f"{results}/vocab/{v}/coverage.csv", "params": f"{results}/vocab/{v}/params.json"}
        for v in config["vocabularies"]
    }
    return {
        "teacher": config["teacher"],
        "entries": entries,
        "reference": {t: names.task_teacher_name(config, t) for t in config["tasks"]},
        "runs": {r: run_description(config, results, r) for r in names.run_instances(config)},
        "comparisons": comparisons(config),
        "bootstrap_samples": config["evaluate"]["bootstrap_samples"],
        "vocabularies": vocabularies,
    }


def summary_inputs(config: dict[str, Any], results: str, manifest: dict[str, Any], pairs: Pairs) -> tuple[str, ...]:
    """Every file and folder `summarize` reads (sorted): metrics, efficiency, vocabularies, run folders."""
    files = [e[key] for e in manifest["entries"] for key in ("metrics", "efficiency")]
    files += [v[key] for v in manifest["vocabularies"].values() for key in ("params", "coverage")]
    files += [names.model_folder(results, m, t) for m, t in pairs if m.startswith(RUNS)]
    files += [e["predictions"] for e in manifest["entries"] if e["model"].startswith(RUNS)]
    files += [
        f"{results}/runs/{r}/stage1" for r in names.run_instances(config) if "stage1" in names.run_spec(config, r)
    ]
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
