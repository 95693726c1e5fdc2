# Config validation, paths and input functions shared by every rule file.
import json
import re
import shlex
from pathlib import Path

from snakemake.exceptions import WorkflowError

from kdflow.config import (
    corpus_tokenizer,
    evaluable,
    run_recipe,
    stage1_corpus,
    stage_phases,
    student_teacher,
    validate_config,
)
from kdflow.errors import ConfigError, KdflowError
from kdflow.fingerprint import stat_fingerprint
from kdflow.locks import hold_lock
from kdflow.losses import REGISTRY, expand_presets

try:
    config.update(
        validate_config(
            config, source="config (config/config.yaml + --configfile/--config)"
        )
    )
except ConfigError as exc:
    raise WorkflowError(str(exc)) from None

R = config["results"]
THREADS = config["resources"]["threads"]
MEM_MB = config["resources"]["mem_mb"]
EMBEDDED_TASKS = {"embedded:rotten-tomatoes"}
EMBEDDED_CORPORA = {"embedded:package-texts"}
FINETUNED = "teacher_finetuned"  # model name of the teacher fine-tuned on each task
CLASSIFIERS = config["classifier_finetune"]["models"]  # encoders fine-tuned with a head


wildcard_constraints:
    model="|".join(
        [
            *config["models"],
            FINETUNED,
            *[f"runs/{r}" for r in config["runs"]],
            *[f"classifiers/{m}" for m in CLASSIFIERS],
        ]
    ),
    classifier="|".join(CLASSIFIERS) or "-",
    run="|".join(config["runs"]) or "-",
    student="|".join(config["students"]) or "-",
    task="|".join(config["tasks"]),
    corpus="|".join(config["corpora"]) or "-",
    vocab="|".join([*config["vocabularies"], "full"]),


HELD_LOCKS = []  # the results-folder lock lives as long as this snakemake process


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


def scoring_settings():
    """The evaluate settings that change scores (not which models/tasks are listed)."""
    keys = (
        "batch_size",
        "max_length",
        "add_special_tokens",
        "bootstrap_samples",
        "latency_examples",
    )
    return as_json({k: config["evaluate"][k] for k in keys})


def as_json(value):
    """A config entry as a compact JSON argument for a kdflow subcommand."""
    return json.dumps(value, sort_keys=True)


def task_settings(settings, task):
    """Training settings for one task: `task_epochs[task]` replaces `epochs`."""
    out = {k: v for k, v in settings.items() if k != "task_epochs"}
    out["epochs"] = settings.get("task_epochs", {}).get(task, settings["epochs"])
    return as_json(out)


def model_dir(name, task=None):
    """An asset model folder, the teacher fine-tuned on `task`, an encoder fine-tuned on it with a head
    (`classifiers/MODEL`), or (`runs/RUN`) the run's student for it."""
    if name == FINETUNED:
        return f"{R}/teachers/{task}"
    if name.startswith(("runs/", "classifiers/")):
        return f"{R}/{name}/{task}"
    return f"{R}/assets/models/{name}"


def local_model_source(wildcards):
    """The folder of a model given by local path (an input of build_model), else nothing."""
    source = config["models"][wildcards.model]["source"]
    local = source != "random" and not source.startswith(("embedded:", "hf:"))
    return [source] if local and Path(source).exists() else []


def model_source_state(wildcards):
    """Names, sizes and times of a local model's files: a changed local model reruns build_model."""
    return "".join(stat_fingerprint(p) for p in local_model_source(wildcards))


def task_source(wildcards):
    """Where prepare_task reads a task from: the embedded asset folder, a local folder, or hf:..."""
    source = config["tasks"][wildcards.task]["source"]
    if source in EMBEDDED_TASKS:
        return f"{R}/assets/tasks/{wildcards.task}"
    return source


def required_splits(wildcards):
    """The splits of a task the experiment uses (prepare_task refuses a folder that lacks one)."""
    task = wildcards.task
    trained = [
        *config["teacher_finetune"]["tasks"],
        *config["classifier_finetune"]["tasks"],
        *config["cache"]["tasks"],
        *(config["distill"]["tasks"] if config["runs"] else []),
        *[t for v in config["vocabularies"].values() for t in v["count_tasks"]],
    ]
    evaluated = {t for _, t in eval_pairs()}
    splits = ["train"] if task in trained else []
    if task in evaluated:
        splits.append("dev")
        if config["evaluate"]["test_submissions"]:
            splits.append("test")
    return " ".join(splits)


def task_inputs(wildcards):
    source = task_source(wildcards)
    return [] if source.startswith("hf") else [source]


def corpus_source(wildcards):
    """The embedded corpus asset file, or the user's path / hf: name."""
    source = config["corpora"][wildcards.corpus]["source"]
    if source in EMBEDDED_CORPORA:
        return f"{R}/assets/corpora/{wildcards.corpus}.jsonl"
    return source


def corpus_inputs(wildcards):
    """The corpus file/folder to track; nothing for hub datasets (hf:...), which are streamed."""
    source = corpus_source(wildcards)
    return [] if source.startswith("hf") else [source]


def corpus_tokenizer_dir(wildcards):
    return model_dir(corpus_tokenizer(config, wildcards.corpus))


def vocab_corpus(name):
    """The corpus whose counts rank a vocabulary: its own, else the first one tokenised by the teacher."""
    teacher_corpora = [
        c for c in config["corpora"] if corpus_tokenizer(config, c) == config["teacher"]
    ]
    return config["vocabularies"][name]["corpus"] or next(
        iter(teacher_corpora or config["corpora"])
    )


def task_teacher_name(task):
    """The teacher of a task: fine-tuned on it when teacher_finetune lists it, else the base teacher."""
    if task in config["teacher_finetune"]["tasks"]:
        return FINETUNED
    return config["teacher"]


def task_teacher(task):
    return model_dir(task_teacher_name(task), task)


def cache_inputs(wildcards):
    """Teacher folder and (unless `full`) vocabulary map of a cache_logits job."""
    task = getattr(wildcards, "task", None)
    teacher = task_teacher(task) if task else model_dir(config["teacher"])
    vmap = (
        [] if wildcards.vocab == "full" else [f"{R}/vocab/{wildcards.vocab}/map.json"]
    )
    return {"teacher": teacher, "vmap": vmap}


def rule_threads(rule, default=THREADS):
    """A rule's threads: `resources.rules.RULE.threads`, else the rule's own default."""
    return config["resources"]["rules"].get(rule, {}).get("threads", default)


def rule_resources(rule, mem_mb=MEM_MB):
    """A rule's resources (local and SLURM): mem_mb, runtime and processes, then `resources.rules.RULE`
    (gpu, gpu_model, gres, cpus_per_task, slurm_partition, ...; see config/README.md). `gpus_per_node: G`
    gives one process per GPU; with `nodes: N` the job is an srun job of N x G tasks (the SLURM
    executor's `mpi`, `nodes`, `tasks_per_node`/`tasks` and a per-node `gres`).
    """
    own = config["resources"]["rules"].get(rule, {})
    spec = {"mem_mb": mem_mb, "runtime": config["resources"]["runtime"], "processes": 1}
    out = {
        **spec,
        **{k: v for k, v in own.items() if k not in ("threads", "gpus_per_node")},
    }
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


def rule_gpus(rule):
    """GPUs per node a rule asked the scheduler for (the job stops if it finds none)."""
    own = config["resources"]["rules"].get(rule, {})
    gres = re.match(r"gpu(?::[^:]+)?:(\d+)$", own.get("gres", ""))
    return (
        own.get("gpus_per_node")
        or own.get("gpu")
        or (int(gres.group(1)) if gres else 0)
    )


def compute_args(rule):
    """`--compute JSON --gpus N` for a computing job (`compute`, then `compute.rules.RULE`)."""
    base = {k: v for k, v in config["compute"].items() if k != "rules"}
    settings = {**base, **config["compute"]["rules"].get(rule, {})}
    return f"--compute {shlex.quote(as_json(settings))} --gpus {rule_gpus(rule)}"


def check_rule_resources(rule_names):
    """Refuse `resources.rules` entries for rules this workflow lacks, and processes where nothing launches them."""
    given = config["resources"]["rules"]
    for section, entries in (
        ("resources", given),
        ("compute", config["compute"]["rules"]),
    ):
        unknown = sorted(set(entries) - set(rule_names))
        if unknown:
            raise WorkflowError(
                f"config {section}.rules: unknown rule(s) {', '.join(unknown)}; "
                f"expected some of: {', '.join(sorted(rule_names))}"
            )
    trainers = {
        "distill_stage1",
        "distill_stage2",
        "finetune_teacher",
        "finetune_classifier",
    }
    several = sorted(
        r
        for r, v in given.items()
        if max(v.get("processes", 1), v.get("gpus_per_node", 1), v.get("nodes", 1)) > 1
    )
    if set(several) - trainers:
        raise WorkflowError(
            f"config resources.rules: several processes, GPUs per node or nodes launch only "
            f"{', '.join(sorted(trainers))}, "
            f"not {', '.join(sorted(set(several) - trainers))}"
        )


def launcher(rule):
    """`kdflow`; on one node with `processes` > 1, torchrun with one process per GPU; on several nodes,
    srun with one task per GPU (ranks and the rendezvous address come from SLURM's environment).
    """
    resources = rule_resources(rule)
    if "nodes" in resources:
        return "srun --kill-on-bad-exit=1 kdflow"
    if resources["processes"] > 1:
        return (
            f"torchrun --standalone --nproc_per_node {resources['processes']} -m kdflow"
        )
    return "kdflow"


def vocab_inputs(vocab):
    return [] if vocab == "full" else [f"{R}/vocab/{vocab}/map.json"]


def student_inputs(wildcards):
    vocab = config["students"][wildcards.student]["vocabulary"]
    teacher = student_teacher(config, wildcards.student)
    return {"teacher": model_dir(teacher), "vmap": vocab_inputs(vocab)}


def run_vocab(run):
    return config["students"][config["runs"][run]["student"]]["vocabulary"]


def run_needs(run, stage):
    """The tensors a run's losses need in a stage (presets expanded, every phase)."""
    phases = stage_phases(config["runs"][run][stage])
    losses = [name for spec in phases for name in expand_presets(spec, stage)]
    return set().union(*(REGISTRY[name].needs for name in losses))


def run_teacher(run):
    return student_teacher(config, config["runs"][run]["student"])


def stage2_teacher_name(run, task):
    """A classification-head teacher (encoder track), the fine-tuned teacher, or the student's base teacher."""
    teacher = run_teacher(run)
    if teacher in CLASSIFIERS:
        return f"classifiers/{teacher}"
    if teacher == config["teacher"]:
        return task_teacher_name(task)
    return teacher


def stage2_teacher(run, task):
    return model_dir(stage2_teacher_name(run, task), task)


def stage1_inputs(wildcards):
    run = config["runs"][wildcards.run]
    corpus = stage1_corpus(config, wildcards.run)
    cached = config["distill"]["stage1"]["teacher"] == "cached"
    words = "word_targets" in run_needs(wildcards.run, "stage1")
    cache = f"{R}/cache/corpus/{corpus}/{run_vocab(wildcards.run)}/manifest.json"
    return {
        "student": f"{R}/students/{run['student']}",
        "corpus": f"{R}/corpus/{corpus}",
        "teacher": model_dir(run_teacher(wildcards.run)),
        "cache": [cache] if cached and words else [],
    }


def stage2_inputs(wildcards):
    run = config["runs"][wildcards.run]
    start = (
        f"{R}/runs/{wildcards.run}/stage1"
        if "stage1" in run
        else f"{R}/students/{run['student']}"
    )
    classifier = run_teacher(wildcards.run) in CLASSIFIERS
    cache = f"{R}/cache/task/{wildcards.task}/{run_vocab(wildcards.run)}/manifest.json"
    return {
        "student": start,
        "task": f"{R}/tasks/{wildcards.task}",
        "teacher": stage2_teacher(wildcards.run, wildcards.task),
        "cache": [] if classifier else [cache],
    }


def eval_models():
    return config["evaluate"].get("models") or [config["teacher"]]


def eval_tasks():
    """`evaluate.tasks`, else every task with a labelled split to score (not GLUE AX)."""
    return config["evaluate"].get("tasks") or [
        t for t, spec in config["tasks"].items() if evaluable(spec)
    ]


def submit_pairs():
    """Test-split submissions: every evaluated pair, and the evaluated models on the tasks that have no
    labelled split (GLUE AX), which are never evaluated."""
    unscored = [t for t, spec in config["tasks"].items() if not evaluable(spec)]
    return eval_pairs() + [(m, t) for m in eval_models() for t in unscored]


def all_targets():
    targets = [model_dir(m) for m in config["models"]]
    targets += [f"{R}/corpus/{c}" for c in config["corpora"]]
    targets += [f"{R}/tasks/{t}" for t in config["tasks"]]
    targets += [f"{R}/vocab/{v}/map.json" for v in config["vocabularies"]]
    cache = config["cache"]
    targets += [
        f"{R}/cache/corpus/{c}/{v}/manifest.json"
        for c in cache["corpora"]
        for v in cache["vocabularies"]
    ]
    targets += [
        f"{R}/cache/task/{t}/{v}/manifest.json"
        for t in cache["tasks"]
        for v in cache["vocabularies"]
    ]
    pairs = eval_pairs()
    targets += [f"{R}/metrics/{m}/{t}.json" for m, t in pairs]
    if config["evaluate"]["test_submissions"]:
        targets += [f"{R}/submissions/{m}/{t}" for m, t in submit_pairs()]
    targets += [f"{R}/summary.csv", f"{R}/summary.md"]
    if config["published"]:
        targets.append(f"{R}/reproduce.md")
    return targets


def eval_pairs():
    """Every evaluated (model, task): listed models, the fine-tuned teachers, every run's students."""
    pairs = [(m, t) for m in eval_models() for t in eval_tasks()]
    pairs += [(FINETUNED, t) for t in config["teacher_finetune"]["tasks"]]
    pairs += [
        (f"classifiers/{m}", t)
        for m in CLASSIFIERS
        for t in config["classifier_finetune"]["tasks"]
    ]
    pairs += [
        (f"runs/{r}", t) for r in config["runs"] for t in config["distill"]["tasks"]
    ]
    return list(dict.fromkeys(pairs))


def published_metrics():
    """Our metrics JSON for every (model, task) a published row names and this experiment evaluates."""
    evaluated = set(eval_pairs())
    metrics = {}
    for entry in config["published"]:
        model = entry["compare_with"]
        for task in entry["scores"]:
            if (model, task) in evaluated:
                metrics.setdefault(model, {})[task] = f"{R}/metrics/{model}/{task}.json"
    return metrics


def reproduce_inputs(wildcards):
    return [path for tasks in published_metrics().values() for path in tasks.values()]


def model_role(name):
    if name == config["teacher"]:
        return (
            "teacher (zero-shot)" if config["teacher_finetune"]["tasks"] else "teacher"
        )
    if name == FINETUNED:
        return "teacher (fine-tuned)"
    if name.startswith("classifiers/"):
        return "teacher (fine-tuned classifier)"
    return "run" if name.startswith("runs/") else "model"


def run_description(name):
    """A run as the summary shows it: student, vocabulary, losses, training logs."""
    run = config["runs"][name]
    student = config["students"][run["student"]]
    logs = {t: f"{R}/runs/{name}/{t}/train_log.csv" for t in config["distill"]["tasks"]}
    if "stage1" in run:
        logs = {"stage1": f"{R}/runs/{name}/stage1/train_log.csv", **logs}
    reference = {t: stage2_teacher_name(name, t) for t in config["distill"]["tasks"]}
    return {
        "description": run.get("description") or "",
        "reference": reference,
        "student": run["student"],
        "layers": layer_description(student["layers"]),
        "vocabulary": student["vocabulary"],
        "stage1": run.get("stage1"),
        "stage2": run["stage2"],
        "logs": logs,
    }


def layer_description(layers):
    """`uniform 6` / `last 2` / `layers 0, 5, 11`: which teacher layers a student keeps."""
    if layers.get("strategy") == "explicit":
        return "layers " + ", ".join(str(i) for i in layers["list"])
    return f"{layers.get('strategy', 'uniform')} {layers.get('count', '')}".strip()


def summary_manifest():
    """What `summarize` reads: every metrics/efficiency JSON, the runs, the vocabularies' coverage."""
    finetuned = config["teacher_finetune"]["tasks"]
    return {
        "teacher": config["teacher"],
        "entries": [
            {
                "model": m,
                "task": t,
                "role": model_role(m),
                "metrics": f"{R}/metrics/{m}/{t}.json",
                "efficiency": f"{R}/efficiency/{m}/{t}.json",
            }
            for m, t in eval_pairs()
        ],
        "reference": {
            t: FINETUNED if t in finetuned else config["teacher"]
            for t in config["tasks"]
        },
        "runs": {r: run_description(r) for r in config["runs"]},
        "vocabularies": {
            v: {
                "coverage": f"{R}/vocab/{v}/coverage.csv",
                "params": f"{R}/vocab/{v}/params.json",
            }
            for v in config["vocabularies"]
        },
    }


def summary_inputs(wildcards):
    manifest = summary_manifest()
    files = [e["metrics"] for e in manifest["entries"]]
    files += [e["efficiency"] for e in manifest["entries"]]
    files += [v["params"] for v in manifest["vocabularies"].values()]
    files += [v["coverage"] for v in manifest["vocabularies"].values()]
    files += [model_dir(m, t) for m, t in eval_pairs() if m.startswith("runs/")]
    files += [
        f"{R}/runs/{r}/stage1" for r, run in config["runs"].items() if "stage1" in run
    ]
    return sorted(set(files))
