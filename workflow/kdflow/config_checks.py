"""Cross-key checks of a config that its schema cannot express (names that must exist, recipes, corpora
tokenised for the right teacher), one function per section; each problem names its config key."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from .data.prompt_sets import PROMPT_SETS
from .data.tasks import TASKS
from .plan import names
from .plan.students import check_students
from .plan.teachers import check_teachers
from .recipes import check_recipe, expand_presets, recipe_needs

Config = dict[str, Any]
WORD_NEEDS = frozenset({"word_logits", "word_targets", "word_labels"})


def _unknown(key: str, kind: str, given: Iterable[str], known: Iterable[str]) -> list[str]:
    """`config key 'KEY[i]': unknown KIND 'NAME'` for each listed name that is not known."""
    known = set(known)
    return [f"config key '{key}[{i}]': unknown {kind} '{name}'" for i, name in enumerate(given) if name not in known]


def check_models(config: Config) -> list[str]:
    """The teacher, reserved names and every list of models."""
    models = config.get("models", {})
    problems = []
    if config.get("teacher") not in models:
        problems.append(
            f"config key 'teacher': '{config.get('teacher')}' is not a key of 'models' (defined: {', '.join(models)})"
        )
    for name in models:
        if name in names.RESERVED_MODEL_NAMES:
            problems.append(
                f"config key 'models.{name}': '{name}' is reserved (results/metrics/{name} holds "
                f"{names.RESERVED_MODEL_NAMES[name]}); rename the model"
            )
    problems += _unknown("evaluate.models", "model", config.get("evaluate", {}).get("models", []), models)
    problems += _unknown(
        "classifier_finetune.models", "model", config.get("classifier_finetune", {}).get("models", []), models
    )
    if config.get("teacher_finetune", {}).get("models"):
        problems.append("config key 'teacher_finetune.models': only classifier_finetune lists models")
    tok_model = config.get("preprocess", {}).get("tokenizer_model")
    if tok_model is not None and tok_model not in models:
        problems.append(f"config key 'preprocess.tokenizer_model': unknown model '{tok_model}'")
    return problems


def check_tasks(config: Config) -> list[str]:
    """Task types and prompt sets, the evaluated tasks, and every list of tasks."""
    tasks, problems = config.get("tasks", {}), []
    for i, name in enumerate(config.get("evaluate", {}).get("tasks", [])):
        if name not in tasks:
            problems.append(f"config key 'evaluate.tasks[{i}]': unknown task '{name}'")
        elif tasks[name].get("name") in TASKS and not names.evaluable(tasks[name]):
            problems.append(
                f"config key 'evaluate.tasks[{i}]': task '{name}' ({tasks[name]['name']}) has no labelled "
                f"split to evaluate on; leave it out (with evaluate.test_submissions its test split is "
                f"still written for submission)"
            )
    for section in ("teacher_finetune", "classifier_finetune", "cache", "distill"):
        problems += _unknown(f"{section}.tasks", "task", config.get(section, {}).get("tasks", []), tasks)
    if config.get("runs") and not config.get("distill", {}).get("tasks"):
        problems.append("config key 'distill.tasks': runs are defined but no task to distil on")
    for name, task in tasks.items():
        if task.get("name") not in TASKS:
            problems.append(
                f"config key 'tasks.{name}.name': unknown task type '{task.get('name')}' "
                f"(known: {', '.join(sorted(TASKS))})"
            )
            continue
        prompt_set = task.get("prompts") or config.get("prompts", "pet")
        if task["name"] not in PROMPT_SETS[prompt_set]:
            problems.append(
                f"config key 'tasks.{name}.prompts': prompt set '{prompt_set}' has no template for "
                f"{task['name']} (it has: {', '.join(PROMPT_SETS[prompt_set])}); set prompts: pet "
                f"for this task"
            )
    return problems


def check_corpora(config: Config) -> list[str]:
    """Corpus tokenizers, vocabularies (corpus, counted tasks), the cached corpora and vocabularies, and the cache's
    value dtype (int8 / int4 quantise head inputs: mode hidden only)."""
    corpora, vocabularies, problems = config.get("corpora", {}), config.get("vocabularies", {}), []
    for name, corpus in corpora.items():
        if corpus.get("tokenizer_model") is not None and corpus["tokenizer_model"] not in config.get("models", {}):
            problems.append(f"config key 'corpora.{name}.tokenizer_model': unknown model '{corpus['tokenizer_model']}'")
    for name, vocab in vocabularies.items():
        corpus = vocab.get("corpus")
        if corpus is None and not corpora:
            problems.append(f"config key 'vocabularies.{name}': needs a corpus, and 'corpora' is empty")
        elif corpus is not None and corpus not in corpora:
            problems.append(f"config key 'vocabularies.{name}.corpus': unknown corpus '{corpus}'")
        problems += _unknown(
            f"vocabularies.{name}.count_tasks", "task", vocab.get("count_tasks", []), config.get("tasks", {})
        )
    problems += _unknown("cache.corpora", "corpus", config.get("cache", {}).get("corpora", []), corpora)
    for i, vocab in enumerate(config.get("cache", {}).get("vocabularies", [])):
        if vocab != "full" and vocab not in vocabularies:
            problems.append(f"config key 'cache.vocabularies[{i}]': '{vocab}' is neither 'full' nor a vocabulary")
    dtype, mode = config.get("cache", {}).get("value_dtype"), config.get("cache", {}).get("mode", "topk")
    if dtype in ("int8", "int4") and mode != "hidden":
        problems.append(
            f"config key 'cache.value_dtype': {dtype} needs cache.mode 'hidden' (not '{mode}'): use bf16/fp16/fp32"
        )
    return problems


def _loss_groups(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A stage's loss recipes by key below the stage: `losses`, `phases[i].losses`, `task_losses.TASK`."""
    groups = {f"phases[{i}].losses": p["losses"] for i, p in enumerate(spec.get("phases", []))}
    groups.update({"losses": spec["losses"]} if "losses" in spec else {})
    groups.update({f"task_losses.{t}": losses for t, losses in spec.get("task_losses", {}).items()})
    return groups


def _word_losses(losses: dict[str, Any], stage: str) -> list[str]:
    """The losses of a recipe that learn word predictions."""
    return [
        loss
        for loss, settings in expand_presets(losses, stage).items()
        if recipe_needs({loss: settings}, stage) & WORD_NEEDS
    ]


def check_stage(config: Config, run: str, stage: str, classifier: bool) -> list[str]:
    """A run's stage: `losses` or `phases`, every recipe sound, no word losses for a classifier student."""
    spec = config["runs"][run][stage]
    if ("losses" in spec) == ("phases" in spec):
        return [
            f"config key 'runs.{run}.{stage}': give either 'losses' or 'phases' (a list of "
            "{losses: ...} trained one after the other), not both or neither"
        ]
    problems = [
        f"config key 'runs.{run}.{stage}.task_losses.{t}': unknown task '{t}'"
        for t in spec.get("task_losses", {})
        if t not in config.get("tasks", {})
    ]
    for key, losses in _loss_groups(spec).items():
        where = f"runs.{run}.{stage}.{key}"
        found = check_recipe(losses, stage)
        problems += [f"config key '{where}{'.' + k if k else ''}': {message}" for k, message in found]
        words = _word_losses(losses, stage) if not found and stage == "stage2" and classifier else []
        if words:
            teacher = names.student_teacher(config, config["runs"][run]["student"])
            problems.append(
                f"config key '{where}': {', '.join(words)} learn(s) word predictions, and the student "
                f"of run '{run}' is a classifier in stage 2 (its teacher '{teacher}' is in "
                f"classifier_finetune.models)"
            )
    return problems


def _has_unlabelled(task: dict[str, Any]) -> bool:
    labelled, limit = task.get("labelled"), (task.get("max_examples") or {}).get("train")
    return labelled is not None and (limit is None or labelled < limit)


def check_transfer_set(config: Config, run: str) -> list[str]:
    """`stage2.transfer_set`: no loss reads gold labels, and every task of the run has unlabelled inputs."""
    spec = config["runs"][run]
    if spec.get("stage1", {}).get("transfer_set") is not None:
        return [f"config key 'runs.{run}.stage1.transfer_set': stage 1 trains on a corpus; a transfer set is a task's"]
    if not spec.get("stage2", {}).get("transfer_set"):
        return []
    problems = []
    for key, losses in _loss_groups(spec["stage2"]).items():
        if check_recipe(losses, "stage2"):
            continue  # reported by check_stage
        for loss, settings in expand_presets(losses, "stage2").items():
            other_label = (settings or {}).get("negatives_from") == "other_label"
            if "labels" in recipe_needs({loss: settings}, "stage2") or other_label:
                problems.append(
                    f"config key 'runs.{run}.stage2.{key}.{loss}': reads gold labels, and the run distils on a "
                    "transfer set (stage2.transfer_set), whose inputs have none"
                )
    tasks = config.get("tasks", {})
    problems += [
        f"config key 'runs.{run}.stage2.transfer_set': task '{t}' has no unlabelled inputs (set "
        f"tasks.{t}.labelled below its max_examples.train)"
        for t in spec.get("tasks") or config.get("distill", {}).get("tasks", [])
        if t in tasks and not _has_unlabelled(tasks[t])
    ]
    return problems


def check_stage1_corpus(config: Config, run: str) -> list[str]:
    """A run's stage-1 corpus exists and is tokenised by its student's teacher."""
    spec, corpora = config["runs"][run], config.get("corpora", {})
    corpus = spec.get("stage1", {}).get("corpus")
    if corpus is not None and corpus not in corpora:
        return [f"config key 'runs.{run}.stage1.corpus': unknown corpus '{corpus}'"]
    if "stage1" not in spec or spec.get("student") not in config.get("students", {}):
        return []
    teacher, corpus = names.student_teacher(config, spec["student"]), names.stage1_corpus(config, run)
    tokenizer = names.corpus_tokenizer(config, corpus) if corpus is not None else teacher
    if tokenizer == teacher:
        return []
    return [
        f"config key 'runs.{run}.stage1': corpus '{corpus}' is tokenised by '{tokenizer}', the student's "
        f"teacher is '{teacher}' (add a corpus with tokenizer_model: {teacher}, or set runs.{run}.stage1.corpus)"
    ]


def check_runs(config: Config) -> list[str]:
    """Each run's student, stages and corpora."""
    students, problems = config.get("students", {}), []
    classifiers = set(config.get("classifier_finetune", {}).get("models", []))
    for name, run in config.get("runs", {}).items():
        if run.get("student") not in students:
            problems.append(f"config key 'runs.{name}.student': unknown student '{run.get('student')}'")
        if "stage2" not in run:
            problems.append(f"config key 'runs.{name}.stage2': every run needs a stage 2 (the task)")
        if "task_losses" in run.get("stage1", {}):
            problems.append(f"config key 'runs.{name}.stage1.task_losses': stage 1 trains on a corpus, not a task")
        classifier = run.get("student") in students and names.student_teacher(config, run["student"]) in classifiers
        for stage in ("stage1", "stage2"):
            problems += check_stage(config, name, stage, classifier) if run.get(stage) is not None else []
        problems += check_stage1_corpus(config, name)
        problems += check_transfer_set(config, name)
        distilled = config.get("distill", {}).get("tasks", [])
        problems += [
            f"config key 'runs.{name}.tasks[{i}]': '{t}' is not one of distill.tasks ({', '.join(distilled) or 'none'})"
            for i, t in enumerate(run.get("tasks", []))
            if t not in distilled
        ]
        if run.get("stage2", {}).get("corpus") is not None:
            problems.append(f"config key 'runs.{name}.stage2.corpus': stage 2 trains on the task, not a corpus")
    return problems


def check_stage1_grouping(config: Config) -> list[str]:
    """`group_by_length` is for tasks: stage 1's corpus blocks all have one length."""
    keys = {"distill.stage1": config.get("distill", {}).get("stage1", {})}
    for name, stage1 in ((n, r.get("stage1") or {}) for n, r in config.get("runs", {}).items()):
        keys[f"runs.{name}.stage1.training"] = stage1.get("training", {})
        phases = enumerate(stage1.get("phases", []))
        keys.update({f"runs.{name}.stage1.phases[{i}].training": p.get("training", {}) for i, p in phases})
    why = "stage 1's corpus blocks all have one length (set it for stage 2 or the fine-tunings)"
    return [f"config key '{k}.group_by_length': {why}" for k, v in keys.items() if v.get("group_by_length")]


def check_published(config: Config) -> list[str]:
    """Each published row compares with a model of this experiment, on its tasks."""
    comparable, problems = set(names.model_names(config)), []
    for i, entry in enumerate(config.get("published", [])):
        if entry["compare_with"] not in comparable:
            problems.append(
                f"config key 'published[{i}].compare_with': '{entry['compare_with']}' is not a model "
                f"of this experiment (have: {', '.join(sorted(comparable))})"
            )
        problems += [
            f"config key 'published[{i}].scores.{task}': unknown task '{task}'"
            for task in entry["scores"]
            if task not in config.get("tasks", {})
        ]
    return problems


def check_seeds_and_baselines(config: Config) -> list[str]:
    """Seed instances do not take a configured run's name; every named baseline is a run."""
    runs, problems = config.get("runs", {}), []
    for base in runs:
        for seed in names.seeds(config)[1:]:
            if f"{base}.seed{seed}" in runs:
                problems.append(
                    f"config key 'runs.{base}.seed{seed}': the name of run '{base}' under another seed (seeds)"
                )
    chosen = config.get("evaluate", {}).get("compare_with") or []
    problems += [
        f"config key 'evaluate.compare_with': '{b}' is not a run (runs: {', '.join(runs) or 'none'})"
        for b in chosen
        if b not in runs
    ]
    return problems


CHECKS: tuple[Callable[[Config], list[str]], ...] = (
    check_models,
    check_corpora,
    check_students,
    check_runs,
    check_stage1_grouping,
    check_teachers,
    check_published,
    check_tasks,
    check_seeds_and_baselines,
)


def check_references(config: Config) -> list[str]:
    """Every cross-key problem of a schema-valid config with its defaults filled."""
    return [problem for check in CHECKS for problem in check(config)]
