# Config validation, the experiment plan (kdflow.plan) and the one-line input functions over it.
import json
import shlex
from pathlib import Path  # used by the rule files

from snakemake.exceptions import WorkflowError

from kdflow.config import run_recipe, validate_config
from kdflow.errors import ConfigError, KdflowError
from kdflow.fingerprint import stat_fingerprint
from kdflow.locks import hold_lock
from kdflow.plan import build_plan, cache_settings, scoring_settings, task_settings

try:
    config.update(
        validate_config(
            config, source="config (config/config.yaml + --configfile/--config)"
        )
    )
except ConfigError as exc:
    raise WorkflowError(str(exc)) from None

PLAN = build_plan(config)
R = PLAN.results
HELD_LOCKS = []  # the results-folder lock lives as long as this snakemake process


wildcard_constraints:
    **PLAN.wildcard_constraints,


def hold_results_lock():
    """One snakemake run per results folder: Snakemake's own lock covers one working directory only."""
    if not workflow.is_main_process:
        return
    try:
        HELD_LOCKS.append(
            hold_lock(
                f"{R}/.kdflow-run.lock", "running snakemake on this results folder"
            )
        )
    except KdflowError as exc:
        raise WorkflowError(str(exc)) from None


def check_rule_resources(rule_names):
    try:
        PLAN.rules.check(rule_names)
    except ConfigError as exc:
        raise WorkflowError(str(exc)) from None


def as_json(value):
    """A config entry as a compact JSON argument for a kdflow subcommand."""
    return json.dumps(value, sort_keys=True)


def rule_threads(rule, default=None):
    return PLAN.rules.threads(rule, default)


def rule_resources(rule, mem_mb=None):
    return PLAN.rules.scheduler(rule, mem_mb)


def launcher(rule):
    return PLAN.rules.launcher(rule)


def compute_args(rule):
    """`--compute JSON --gpus N` for a computing job."""
    settings = shlex.quote(as_json(PLAN.rules.compute_settings(rule)))
    return f"--compute {settings} --gpus {PLAN.rules.gpus(rule)}"


def model_dir(name, task=None):
    return PLAN.model_dir(name, task)


def model_source_state(wildcards):
    """Names, sizes and times of a local model's files: a changed local model reruns build_model."""
    return "".join(
        stat_fingerprint(p) for p in PLAN.models[wildcards.model].local_source
    )


def cache_inputs(wildcards):
    return PLAN.cache_inputs(wildcards.vocab, getattr(wildcards, "task", None))


def task_cache_settings(wildcards):
    """The cache settings, and whether this task cache holds the unlabelled inputs too (a transfer set)."""
    transfer = PLAN.cache_covers_transfer_set(wildcards.task, wildcards.vocab)
    return as_json(cache_settings(config, transfer))


def all_targets():
    return list(PLAN.targets)
