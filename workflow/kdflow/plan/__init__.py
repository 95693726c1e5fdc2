"""The experiment plan: everything the workflow runs, worked out once from a validated config (torch-free).

`build_plan(config)` gives a frozen `Plan`: the models with their folders, corpora, tasks, vocabularies,
students, every run's stage jobs (teacher, corpus or task, vocabulary, cache, student), the evaluated and
submitted (model, task) pairs, the summary manifest and the workflow's targets. The Snakefile's input
functions, the wildcard constraints, config validation and `summarize` read it or its naming scheme."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import experiment, names, summary
from .experiment import Corpus, Model, Run, StageJob, Student, Task, Vocabulary, vocab_map
from .settings import RuleSettings, cache_settings, scoring_settings, task_settings

__all__ = [
    "Corpus",
    "Model",
    "Plan",
    "Run",
    "RuleSettings",
    "StageJob",
    "Student",
    "Task",
    "Vocabulary",
    "build_plan",
    "names",
    "cache_settings",
    "scoring_settings",
    "task_settings",
]


@dataclass(frozen=True)
class Plan:
    """The whole experiment of one validated config (see the module docstring)."""

    results: str
    teacher: str
    models: dict[str, Model]
    corpora: dict[str, Corpus]
    tasks: dict[str, Task]
    vocabularies: dict[str, Vocabulary]
    students: dict[str, Student]
    runs: dict[str, Run]
    eval_pairs: tuple[tuple[str, str], ...]
    submit_pairs: tuple[tuple[str, str], ...]
    summary: dict[str, Any]
    summary_inputs: tuple[str, ...]
    published_metrics: dict[str, dict[str, str]]
    targets: tuple[str, ...]
    rules: RuleSettings

    def model_dir(self, name: str, task: str | None = None) -> str:
        """A model's folder (on ``task`` for per-task models)."""
        return self.models[name].folder(task)

    def cache_inputs(self, vocab: str, task: str | None = None) -> dict[str, Any]:
        """Teacher folder and vocabulary map of a logit-cache job: the task's teacher on a task, else the teacher."""
        teacher = self.model_dir(self.tasks[task].teacher, task) if task else self.model_dir(self.teacher)
        return {"teacher": teacher, "vmap": list(vocab_map(self.results, vocab))}

    def cache_covers_transfer_set(self, task: str, vocab: str) -> bool:
        """Whether a task cache must hold every training input (a run reading it distils on a transfer set)."""
        jobs = [job for run in self.runs.values() for job in run.stage2.values()]
        return any(j.transfer_set for j in jobs if j.task == task and j.cache and j.vocabulary == vocab)

    @property
    def wildcard_constraints(self) -> dict[str, str]:
        """A regex of the names each wildcard may take (`-` where there are none, matching no name)."""
        choices = {
            "model": list(self.models),
            "classifier": [m.removeprefix(names.CLASSIFIERS) for m in self.models if m.startswith(names.CLASSIFIERS)],
            "run": list(self.runs),
            "student": list(self.students),
            "task": list(self.tasks),
            "corpus": list(self.corpora),
            "vocab": [*self.vocabularies, "full"],
        }
        return {key: "|".join(values) or "-" for key, values in choices.items()}


def targets(config: dict[str, Any], plan_parts: dict[str, Any]) -> tuple[str, ...]:
    """Everything `all` builds: assets, corpora, tasks, vocabularies, caches, metrics, submissions, summary."""
    results, cache = plan_parts["results"], config["cache"]
    out = [plan_parts["models"][m].folder() for m in config["models"]]
    out += [c.folder for c in plan_parts["corpora"].values()] + [t.folder for t in plan_parts["tasks"].values()]
    out += [v.map for v in plan_parts["vocabularies"].values()]
    out += [f"{results}/cache/corpus/{c}/{v}/manifest.json" for c in cache["corpora"] for v in cache["vocabularies"]]
    out += [f"{results}/cache/task/{t}/{v}/manifest.json" for t in cache["tasks"] for v in cache["vocabularies"]]
    out += [f"{results}/metrics/{m}/{t}.json" for m, t in plan_parts["eval_pairs"]]
    if config["evaluate"]["test_submissions"]:
        out += [f"{results}/submissions/{m}/{t}" for m, t in plan_parts["submit_pairs"]]
    out += [f"{results}/summary.csv", f"{results}/summary.md"]
    return tuple(out + ([f"{results}/reproduce.md"] if config["published"] else []))


def build_plan(config: dict[str, Any]) -> Plan:
    """The plan of a validated config (defaults filled by `kdflow.config.validate_config`)."""
    results = config["results"]
    pairs = experiment.eval_pairs(config)
    evaluated = {t for _, t in pairs}
    manifest = summary.summary_manifest(config, results, pairs)
    parts: dict[str, Any] = {
        "results": results,
        "teacher": config["teacher"],
        "models": experiment.build_models(config, results),
        "corpora": {c: experiment.build_corpus(config, results, c) for c in config["corpora"]},
        "tasks": {t: experiment.build_task(config, results, t, evaluated) for t in config["tasks"]},
        "vocabularies": {v: experiment.build_vocabulary(config, results, v) for v in config["vocabularies"]},
        "students": {s: experiment.build_student(config, results, s) for s in config["students"]},
        "runs": {r: experiment.build_run(config, results, r) for r in names.run_instances(config)},
        "eval_pairs": pairs,
        "submit_pairs": experiment.submit_pairs(config, pairs),
        "summary": manifest,
        "summary_inputs": summary.summary_inputs(config, results, manifest, pairs),
        "published_metrics": summary.published_metrics(config, results, pairs),
        "rules": RuleSettings(config["resources"], config["compute"]),
    }
    return Plan(**parts, targets=targets(config, parts))
