"""What a job is given besides its files: threads, scheduler resources, launcher, compute and training
settings, resolved from the config's `resources`, `compute`, `evaluate` and training sections."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError

# the lists a section names its models, tasks, corpora and vocabularies by: which jobs exist, not how one job
# computes; left out of a job's settings so that listing one more task does not re-run the others' jobs
LISTING_KEYS = frozenset({"models", "tasks", "corpora", "vocabularies"})
SCORING_KEYS = ("batch_size", "max_length", "add_special_tokens", "bootstrap_samples", "latency_examples")
# the rules that can run as several processes: data-parallel training, and the caches (each process writes
# every n-th shard)
PARALLEL = frozenset(
    {
        "distill_stage1",
        "distill_stage2",
        "finetune_teacher",
        "finetune_classifier",
        "cache_logits_corpus",
        "cache_logits_task",
    }
)


def stage_settings(config: dict[str, Any], run: dict[str, Any], stage: str, task: str | None) -> dict[str, Any]:
    """A run's training settings of ``stage`` on ``task``: `distill.STAGE`, with the run's own `STAGE.training`
    over them, then `task_epochs[task]` for `epochs`."""
    return task_settings({**config["distill"][stage], **run.get(stage, {}).get("training", {})}, task)


def task_settings(settings: dict[str, Any], task: str | None) -> dict[str, Any]:
    """Training settings for one task: `task_epochs[task]` replaces `epochs`; the section's lists left out."""
    out = {k: v for k, v in settings.items() if k != "task_epochs" and k not in LISTING_KEYS}
    out["epochs"] = settings.get("task_epochs", {}).get(task, settings["epochs"])
    return out


def cache_settings(config: dict[str, Any], transfer_set: bool = False) -> dict[str, Any]:
    """What one cache job computes by (`cache` without its lists), and whether a task cache holds the task's
    unlabelled inputs too (a transfer set)."""
    out = {k: v for k, v in config["cache"].items() if k not in LISTING_KEYS}
    return {**out, **({"transfer_set": True} if transfer_set else {})}


def scoring_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The evaluate settings that change scores (not which models/tasks are listed)."""
    return {k: config["evaluate"][k] for k in SCORING_KEYS}


@dataclass(frozen=True)
class RuleSettings:
    """Per-rule threads, resources, launcher and compute settings (`resources`, `compute` and their `rules`)."""

    resources: dict[str, Any]
    compute: dict[str, Any]

    def own(self, rule: str) -> dict[str, Any]:
        """`resources.rules.RULE` (empty when not given)."""
        return self.resources["rules"].get(rule, {})

    def threads(self, rule: str, default: int | None = None) -> int:
        """`resources.rules.RULE.threads`, else the rule's own default, else `resources.threads`."""
        return self.own(rule).get("threads", self.resources["threads"] if default is None else default)

    def scheduler(self, rule: str, mem_mb: int | None = None) -> dict[str, Any]:
        """A rule's resources (local and SLURM): mem_mb, runtime and processes, then `resources.rules.RULE`.
        `gpus_per_node: G` gives one process per GPU; with `nodes: N` the job is an srun job of N x G tasks."""
        own = self.own(rule)
        out = {"mem_mb": mem_mb or self.resources["mem_mb"], "runtime": self.resources["runtime"], "processes": 1}
        out.update({k: v for k, v in own.items() if k not in ("threads", "gpus_per_node")})
        per_node = own.get("gpus_per_node")
        if per_node:
            out["processes"] = own.get("processes", per_node)
            out["gpu"] = per_node
        if "nodes" in own:  # an srun job: N nodes x processes tasks
            tasks = out["processes"]
            out["mpi"] = "srun"
            if per_node:  # --gpus is per job; a per-node gres gives every node its GPUs
                out.pop("gpu")
                out["gres"] = f"gpu:{per_node}"
            out.update({"tasks_per_node": tasks} if tasks > 1 else {"tasks": own["nodes"]})
        return out

    def gpus(self, rule: str) -> int:
        """GPUs per node a rule asked the scheduler for (the job stops if it finds none)."""
        own = self.own(rule)
        gres = re.match(r"gpu(?::[^:]+)?:(\d+)$", own.get("gres", ""))
        return own.get("gpus_per_node") or own.get("gpu") or (int(gres.group(1)) if gres else 0)

    def compute_settings(self, rule: str) -> dict[str, Any]:
        """`compute`, then `compute.rules.RULE`."""
        base = {k: v for k, v in self.compute.items() if k != "rules"}
        return {**base, **self.compute["rules"].get(rule, {})}

    def launcher(self, rule: str) -> str:
        """`kdflow`; on one node with `processes` > 1, torchrun with one process per GPU; on several nodes,
        srun with one task per GPU (ranks and the rendezvous address come from SLURM's environment). The step's
        shape is given to srun explicitly: Snakemake's job-step executor strips the allocation's SLURM_*
        variables (task counts included) before it runs an `mpi` job's command."""
        resources = self.scheduler(rule)
        if "nodes" in resources:
            nodes, per_node = self.own(rule)["nodes"], resources["processes"]
            return f"srun --kill-on-bad-exit=1 --nodes {nodes} --ntasks-per-node {per_node} kdflow"
        if resources["processes"] > 1:
            return f"torchrun --standalone --nproc_per_node {resources['processes']} -m kdflow"
        return "kdflow"

    def check(self, rule_names: list[str]) -> None:
        """Refuse entries for rules the workflow lacks, and several processes where nothing launches them."""
        for section, entries in (("resources", self.resources["rules"]), ("compute", self.compute["rules"])):
            unknown = sorted(set(entries) - set(rule_names))
            if unknown:
                raise ConfigError(
                    f"config {section}.rules: unknown rule(s) {', '.join(unknown)}; "
                    f"expected some of: {', '.join(sorted(rule_names))}"
                )
        several = {
            r
            for r, v in self.resources["rules"].items()
            if max(v.get("processes", 1), v.get("gpus_per_node", 1), v.get("nodes", 1)) > 1
        }
        if several - PARALLEL:
            raise ConfigError(
                f"config resources.rules: several processes, GPUs per node or nodes launch only "
                f"{', '.join(sorted(PARALLEL))}, not {', '.join(sorted(several - PARALLEL))}"
            )
