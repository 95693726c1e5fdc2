"""The experiment plan (kdflow.plan): models and their folders, each run's teachers, corpora and caches, the
evaluated pairs and the summary, on the default, test and experiment configs; it imports no torch; and the
dry-run job list of every shipped config is the recorded one (tests/fixtures/dryrun, see tests/dryrun.py)."""

from __future__ import annotations

import copy
import difflib
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from dryrun import FIXTURES, configs, job_list

from kdflow.config import load_config, validate_config
from kdflow.errors import ConfigError
from kdflow.plan import build_plan, names

CONFIGS = configs()


def plan_of(name: str):
    return build_plan(load_config(CONFIGS[name]))


def tiny_with(**changes) -> dict:
    """The tiny test config with top-level keys replaced, validated."""
    raw = yaml.safe_load(CONFIGS["tests-tiny"].read_text())
    return validate_config({**copy.deepcopy(raw), **changes})


def test_plan_module_imports_no_torch():
    """Importing the plan, validating a config (its loss recipes included) and building the plan: no torch,
    so the scheduler process does not need it."""
    code = (
        "import sys, kdflow.plan, kdflow.config; "
        "kdflow.plan.build_plan(kdflow.config.load_config('config/config.yaml')); print('torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    ).stdout
    assert out.strip() == "False"


def test_default_plan_models_and_folders():
    plan = plan_of("default")
    assert plan.teacher == "smollm2" and plan.results == "results"
    assert plan.model_dir("smollm2") == "results/assets/models/smollm2"
    assert plan.model_dir("teacher_finetuned", "sentiment") == "results/teachers/sentiment"
    assert plan.model_dir("classifiers/minilm", "sentiment") == "results/classifiers/minilm/sentiment"
    assert plan.model_dir("runs/glmd", "sentiment") == "results/runs/glmd/sentiment"
    assert {"runs/codir", "classifiers/minilm", "teacher_finetuned", "minilm"} <= set(plan.models)
    assert plan.wildcard_constraints["classifier"] == "minilm"
    assert plan.wildcard_constraints["vocab"] == "half|quarter|full"


def test_default_plan_runs_teachers_corpora_and_caches():
    plan = plan_of("default")
    glmd = plan.runs["glmd"]
    assert (glmd.student, glmd.teacher, glmd.vocabulary) == ("s15", "smollm2", "half")
    assert glmd.stage1.data == "results/corpus/package_texts"  # the first corpus tokenised by SmolLM2
    assert glmd.stage1.cache == "results/cache/corpus/package_texts/half/manifest.json"  # word_kl, cached teacher
    job = glmd.stage2["sentiment"]
    assert job.teacher == "teacher_finetuned" and job.teacher_folder == "results/teachers/sentiment"
    assert job.start == "results/runs/glmd/stage1" and job.out == "results/runs/glmd/sentiment"
    assert job.cache == "results/cache/task/sentiment/half/manifest.json"
    assert list(job.inputs()) == ["student", "task", "teacher", "cache"]
    assert job.transfer_set and not plan.runs["no_distill"].stage2["sentiment"].transfer_set  # GLMD reads no labels
    baseline = plan.runs["no_distill"]
    assert baseline.stage1 is None and baseline.stage2["sentiment"].start == "results/students/s15"
    codir = plan.runs["codir"]  # encoder track: the student of all-MiniLM-L6-v2
    assert codir.teacher == "minilm" and codir.stage1 is None
    assert codir.stage2["sentiment"].teacher == "classifiers/minilm" and codir.stage2["sentiment"].cache is None
    assert plan.students["e3"].inputs() == {"teacher": "results/assets/models/minilm", "vmap": []}
    assert plan.students["s15"].inputs()["vmap"] == ["results/vocab/half/map.json"]


def test_default_plan_vocabularies_tasks_and_pairs():
    plan = plan_of("default")
    assert {v.corpus for v in plan.vocabularies.values()} == {"package_texts"}
    assert plan.tasks["sentiment"].teacher == "teacher_finetuned" and plan.tasks["sentiment"].splits == ("train", "dev")
    assert plan.tasks["sentiment"].source == "results/assets/tasks/sentiment"
    assert plan.eval_pairs[:3] == (
        ("smollm2", "sentiment"),
        ("teacher_finetuned", "sentiment"),
        ("classifiers/minilm", "sentiment"),
    )
    assert {m for m, _ in plan.eval_pairs} >= {f"runs/{r}" for r in plan.runs}
    assert plan.cache_inputs("half", "sentiment") == {
        "teacher": "results/teachers/sentiment",
        "vmap": ["results/vocab/half/map.json"],
    }
    assert plan.cache_inputs("full") == {"teacher": "results/assets/models/smollm2", "vmap": []}


def test_default_plan_summary():
    plan = plan_of("default")
    roles = {e["model"]: e["role"] for e in plan.summary["entries"]}
    assert roles["smollm2"] == "teacher (zero-shot)" and roles["teacher_finetuned"] == "teacher (fine-tuned)"
    assert roles["classifiers/minilm"] == "teacher (fine-tuned classifier)" and roles["runs/codir"] == "run"
    assert plan.summary["reference"] == {"sentiment": "teacher_finetuned"}
    glmd = plan.summary["runs"]["glmd"]
    assert glmd["layers"] == "bottom 15" and glmd["reference"] == {"sentiment": "teacher_finetuned"}
    assert list(glmd["logs"]) == ["stage1", "sentiment"]
    assert plan.summary["runs"]["codir"]["reference"] == {"sentiment": "classifiers/minilm"}
    assert "results/runs/glmd/stage1" in plan.summary_inputs and list(plan.summary_inputs) == sorted(
        plan.summary_inputs
    )
    assert plan.targets[-2:] == ("results/summary.csv", "results/summary.md")


def test_tiny_plan_submissions_and_splits():
    plan = plan_of("tests-tiny")
    assert plan.tasks["sentiment"].splits == ("train", "dev", "test")  # evaluate.test_submissions
    assert plan.submit_pairs == plan.eval_pairs and len(plan.eval_pairs) == 13
    assert "results/submissions/runs/glmd/sentiment" in plan.targets
    assert plan.vocabularies["half"].tokenizer_folder == "results/assets/models/tiny_llama"


def test_diagnostics_plans_submit_ax_but_never_evaluate_it():
    for name, teacher in (("tests-diagnostics", "tiny_llama"), ("experiments-diagnostics", "smollm2")):
        plan = plan_of(name)
        assert plan.eval_pairs == ((teacher, "axb"), (teacher, "axg"))
        assert plan.submit_pairs == plan.eval_pairs + ((teacher, "ax"),)
        assert plan.tasks["ax"].splits == () and plan.tasks["axb"].splits == ("dev", "test")
        assert not plan.runs and not plan.corpora


@pytest.mark.parametrize("name", [n for n in CONFIGS if n.startswith("experiments-")])
def test_experiment_plans_are_consistent(name):
    """Every run's stage-2 job on each of its tasks (its own `tasks`, else every distilled task), with the teacher
    its student's track gives it."""
    config = load_config(CONFIGS[name])
    plan = build_plan(config)
    assert plan.results == config["results"]
    for run in plan.runs.values():
        assert set(run.stage2) == set(config["runs"][run.base].get("tasks") or config["distill"]["tasks"])
        for task, job in run.stage2.items():
            classifier = run.teacher in config["classifier_finetune"]["models"]
            expected = f"classifiers/{run.teacher}" if classifier else plan.tasks[task].teacher
            chosen = config["runs"][run.base]["stage2"]  # its own teacher(s): teacher assistants, multi-teacher
            expected = (chosen.get("teachers") or [chosen.get("teacher") or expected])[0]
            assert job.teacher == expected and (job.cache is None) == classifier
            assert job.teacher_folder == plan.model_dir(expected, task)
            assert (names.run_model(run.name), task) in plan.eval_pairs
    assert len(set(plan.eval_pairs)) == len(plan.eval_pairs)


def test_experiment_plans_concrete():
    codir = plan_of("experiments-codir-glue")
    assert codir.runs["codir_pre"].stage1.data == "results/codir-glue/corpus/wikitext"
    assert codir.runs["kd"].stage2["rte"].teacher_folder == "results/codir-glue/classifiers/roberta_base/rte"
    assert len(codir.eval_pairs) == 50 and codir.published_metrics
    glmd = plan_of("experiments-glmd-10b")
    assert glmd.runs["glmd"].stage2["wsc"].teacher_folder == "results/glmd-10b/teachers/wsc"
    assert glmd.runs["glmd"].stage1.cache is None  # the stage-1 teacher runs live, no corpus cache
    assert glmd.vocabularies["half"].corpus == "wikitext"
    teacher_eval = plan_of("experiments-teacher-glue-superglue")
    assert not teacher_eval.runs and all(t.splits == ("dev",) for t in teacher_eval.tasks.values())
    assert len(plan_of("experiments-gkd-methods").eval_pairs) == 273


def test_vocabulary_and_stage1_corpus_default_to_the_first_corpus_of_the_teacher():
    """Not the first corpus: the first one tokenised by the teacher (by the run's teacher for stage 1)."""
    raw = yaml.safe_load(CONFIGS["tests-tiny"].read_text())
    corpora = dict(reversed(list(raw["corpora"].items())))  # the BERT-tokenised corpus first
    config = tiny_with(corpora=corpora)
    plan = build_plan(config)
    assert list(plan.corpora)[0] == "package_texts_bert"
    assert plan.vocabularies["half"].corpus == "package_texts"
    assert plan.runs["glmd"].stage1.data == "results/corpus/package_texts"
    config["distill"]["corpus"] = "package_texts_bert"
    assert names.stage1_corpus(config, "glmd") == "package_texts_bert"  # distill.corpus wins, and then
    with pytest.raises(ConfigError, match=r"config key 'runs\.glmd\.stage1': corpus 'package_texts_bert' is tok"):
        validate_config(config)  # the validation refuses a corpus of another tokenizer


def test_bad_reference_names_the_config_key():
    with pytest.raises(ConfigError, match=r"config key 'runs\.glmd\.student': unknown student 'nobody'"):
        raw = yaml.safe_load(CONFIGS["tests-tiny"].read_text())
        tiny_with(runs={**raw["runs"], "glmd": {**raw["runs"]["glmd"], "student": "nobody"}})


def test_schema_ships_inside_the_package():
    from kdflow import config

    assert config.SCHEMA_PATH.parent.name == "kdflow" and config.SCHEMA_PATH.is_file()


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_dry_run_job_list_is_the_recorded_one(name, tool_env, request):
    if "../shared/" in CONFIGS[name].read_text():
        request.getfixturevalue("shared_data")  # a config over the real tasks: skipped, with why, without them
    expected = (FIXTURES / f"{name}.txt").read_text()
    got = job_list(CONFIGS[name], tool_env)
    diff = "\n".join(list(difflib.unified_diff(expected.splitlines(), got.splitlines(), lineterm=""))[:60])
    assert got == expected, f"{name}: the dry-run jobs changed (python tests/dryrun.py {name} if meant):\n{diff}"


def test_several_processes_launch_training_and_caching_rules_only():
    raw = yaml.safe_load(CONFIGS["tests-tiny"].read_text())
    resources = {
        **raw["resources"],
        "rules": {"cache_logits_task": {"processes": 2}, "distill_stage1": {"nodes": 1, "processes": 2}},
    }
    rules = build_plan(tiny_with(resources=resources)).rules
    rules.check(["cache_logits_task", "distill_stage1", "evaluate"])
    assert rules.launcher("cache_logits_task") == "torchrun --standalone --nproc_per_node 2 -m kdflow"
    assert rules.launcher("distill_stage1") == "srun --kill-on-bad-exit=1 --nodes 1 --ntasks-per-node 2 kdflow"
    assert rules.scheduler("distill_stage1")["tasks_per_node"] == 2
    bad = build_plan(tiny_with(resources={**raw["resources"], "rules": {"evaluate": {"processes": 2}}})).rules
    with pytest.raises(ConfigError, match="launch only .*cache_logits_corpus.*, not evaluate"):
        bad.check(["evaluate"])


@pytest.mark.slow
def test_seeds_repeat_every_run_as_its_own_jobs():
    """`seeds: [7, 8]`: every run twice (RUN with seed 7, RUN.seed8 with seed 8), each with its own jobs,
    evaluations and comparisons paired by seed; the dry run has twice the distillation jobs."""
    plan = build_plan(tiny_with(seeds=[7, 8]))
    one = build_plan(tiny_with())
    assert set(plan.runs) == set(one.runs) | {f"{r}.seed8" for r in one.runs}
    assert (plan.runs["glmd"].seed, plan.runs["glmd.seed8"].seed, plan.runs["glmd.seed8"].base) == (7, 8, "glmd")
    assert plan.runs["glmd.seed8"].stage2["sentiment"].start == plan.runs["glmd.seed8"].stage1.out
    assert ("runs/glmd.seed8", "sentiment") in plan.eval_pairs
    (first, *_) = [c for c in plan.summary["comparisons"] if c["run"] == "glmd" and c["baseline"] == "no_distill"]
    assert first["pairs"] == [["runs/glmd", "runs/no_distill"], ["runs/glmd.seed8", "runs/no_distill.seed8"]]
    raw = yaml.safe_load(CONFIGS["tests-tiny"].read_text())
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "seeds.yaml"
        config.write_text(yaml.safe_dump({**raw, "seeds": [7, 8]}))
        jobs = {name: job_list(path) for name, path in (("one", CONFIGS["tests-tiny"]), ("two", config))}
    count = {k: len(re.findall(r"^rule distill_stage2$", v, re.M)) for k, v in jobs.items()}
    assert count["two"] == 2 * count["one"] > 0
    assert "--name glmd.seed8 " in jobs["two"] and "--seed 8 " in jobs["two"]


def test_bad_baselines_and_seed_name_clashes_name_their_key():
    raw = yaml.safe_load(CONFIGS["tests-tiny"].read_text())
    with pytest.raises(ConfigError, match="'evaluate.compare_with': 'nope' is not a run"):
        tiny_with(evaluate={**raw["evaluate"], "compare_with": ["nope"]})
    runs = {**raw["runs"], "kd.seed2": raw["runs"]["kd"]}
    with pytest.raises(ConfigError, match=r"'runs.kd.seed2': the name of run 'kd' under another seed"):
        tiny_with(runs=runs, seeds=[1, 2])


def test_a_run_overrides_the_stage_training_settings_it_names():
    raw = yaml.safe_load(CONFIGS["tests-tiny"].read_text())
    raw["runs"]["codir"]["stage2"]["training"] = {"max_steps": 12, "lr": 5.0e-4}
    raw["runs"]["glmd"]["stage1"]["training"] = {"teacher": "online"}
    plan = build_plan(validate_config(raw))
    codir, kd = plan.runs["codir"].stage2["sentiment"].settings, plan.runs["kd"].stage2["sentiment"].settings
    assert (codir["max_steps"], codir["lr"]) == (12, 5.0e-4)
    assert (kd["max_steps"], kd["lr"]) == (3, 1.0e-3)  # distill.stage2 of the tiny config
    assert {k: v for k, v in codir.items() if k not in ("max_steps", "lr")} == {
        k: v for k, v in kd.items() if k not in ("max_steps", "lr")
    }
    assert plan.runs["glmd"].stage1.settings["teacher"] == "online" and plan.runs["glmd"].stage1.cache is None
    raw["runs"]["codir"]["stage2"]["training"] = {"max_step": 12, "lr": -1}
    with pytest.raises(ConfigError) as info:
        validate_config(raw)
    assert "runs.codir.stage2.training.max_step" in str(info.value)
    assert "runs.codir.stage2.training.lr" in str(info.value)


def test_a_run_distils_on_its_own_subset_of_the_tasks():
    """`runs.NAME.tasks`: that run's stage-2 jobs, evaluations, logs and comparisons cover only its tasks; the
    other runs keep every task of distill.tasks; a task outside distill.tasks is refused with its key."""
    raw = yaml.safe_load(CONFIGS["tests-tiny"].read_text())
    raw["tasks"]["reviews"] = copy.deepcopy(raw["tasks"]["sentiment"])
    for section in ("teacher_finetune", "classifier_finetune", "cache", "distill"):
        raw[section]["tasks"] = ["sentiment", "reviews"]
    raw["runs"]["kd"]["tasks"] = ["reviews"]
    plan = build_plan(validate_config(raw))
    assert set(plan.runs["kd"].stage2) == {"reviews"}
    assert set(plan.runs["no_distill"].stage2) == {"sentiment", "reviews"}
    assert ("runs/kd", "reviews") in plan.eval_pairs and ("runs/kd", "sentiment") not in plan.eval_pairs
    assert ("runs/no_distill", "sentiment") in plan.eval_pairs
    assert set(plan.summary["runs"]["kd"]["logs"]) == {"reviews"}  # kd has no stage 1
    assert set(plan.summary["runs"]["kd"]["reference"]) == {"reviews"}
    tasks = {(c["run"], c["baseline"]): [] for c in plan.summary["comparisons"]}
    for c in plan.summary["comparisons"]:
        tasks[(c["run"], c["baseline"])].append(c["task"])
    assert tasks[("kd", "no_distill")] == ["reviews"]
    assert tasks[("glmd", "no_distill")] == ["sentiment", "reviews"]
    assert tasks[("glmd", "kd")] == ["reviews"]
    raw["runs"]["kd"]["tasks"] = ["reviews", "nope"]
    with pytest.raises(ConfigError, match=r"'runs.kd.tasks\[1\]': 'nope' is not one of distill.tasks"):
        validate_config(raw)


def test_listing_one_more_task_leaves_the_other_jobs_commands_alone():
    """The sections' lists (tasks, models, corpora, vocabularies) say which jobs exist, not how one computes:
    adding a task to every list changes no command of the jobs that were already there (so snakemake's params
    trigger re-runs none of them), while a changed training setting does change its jobs' commands."""
    raw = yaml.safe_load(CONFIGS["tests-tiny"].read_text())
    grown = copy.deepcopy(raw)
    grown["tasks"]["reviews"] = copy.deepcopy(raw["tasks"]["sentiment"])
    for section in ("teacher_finetune", "classifier_finetune", "cache", "distill", "evaluate"):
        grown[section]["tasks"] = ["sentiment", "reviews"]
    changed = copy.deepcopy(raw)
    changed["teacher_finetune"]["lr"] = 2 * raw["teacher_finetune"]["lr"]
    with tempfile.TemporaryDirectory() as tmp:
        lists = {}
        for name, cfg in (("base", raw), ("grown", grown), ("changed", changed)):
            path = Path(tmp) / f"{name}.yaml"
            path.write_text(yaml.safe_dump(cfg))
            jobs = job_list(path).split("\n\n")
            lists[name] = {
                re.search(r"  output: (.*)", j).group(1): re.search(r"  shell: (.*)", j).group(1)
                for j in jobs
                if re.match(r"rule (finetune_teacher|finetune_classifier|cache_logits_\w+|distill_stage\d)\n", j)
            }
    assert lists["base"] and set(lists["base"]) < set(lists["grown"])
    assert {out: lists["grown"][out] for out in lists["base"]} == lists["base"]
    ft = [out for out in lists["base"] if "/teachers/" in out]
    assert ft and all(lists["changed"][out] != lists["base"][out] for out in ft)
