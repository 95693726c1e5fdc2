"""Teacher assistants and several teachers (issue #20): `stage2.teacher: runs/NAME` (TAKD) and
`stage2.teachers` + `multi_teacher` (TMKD, MT-BERT, Uncertainty, RL-KD, DGKD) in the config check, the plan and
the distillation engine. The combination maths is checked against GLMKD in tests/test_multi_teacher.py."""

from __future__ import annotations

import copy
import csv
from pathlib import Path

import pytest
import yaml
from conftest import TINY_TRAIN

from kdflow.config import validate_config
from kdflow.distill import distill
from kdflow.errors import ConfigError
from kdflow.finetune import finetune_classifier
from kdflow.plan import build_plan
from kdflow.students import init_student

REPO = Path(__file__).resolve().parent.parent
TINY = yaml.safe_load((REPO / "tests" / "config" / "tiny.yaml").read_text())
TRAIN = {**TINY_TRAIN, "epochs": 1, "max_steps": 2}


def _config(**runs) -> dict:
    config = copy.deepcopy(TINY)
    config["runs"].update(runs)
    return config


def _problems(config: dict) -> str:
    with pytest.raises(ConfigError) as info:
        validate_config(config)
    return str(info.value)


def test_a_teacher_assistant_chain_orders_the_dag():
    plan = build_plan(validate_config(copy.deepcopy(TINY)))
    takd, codir = plan.runs["takd"].stage2["sentiment"], plan.runs["codir"].stage2["sentiment"]
    assert takd.inputs()["teacher"] == codir.out == "results/runs/codir/sentiment"
    multi = plan.runs["mt_bert"].stage2["sentiment"].inputs()["teacher"]
    assert multi == ["results/classifiers/tiny_bert/sentiment", "results/runs/codir/sentiment"]
    assert plan.runs["kd"].stage2["sentiment"].inputs()["teacher"] == "results/teachers/sentiment"


def test_each_seed_is_taught_by_the_assistant_of_its_seed():
    config = copy.deepcopy(TINY)
    config["seeds"] = [7, 8]
    plan = build_plan(validate_config(config))
    assert plan.runs["takd.seed8"].stage2["sentiment"].inputs()["teacher"] == "results/runs/codir.seed8/sentiment"
    assert plan.runs["takd"].stage2["sentiment"].inputs()["teacher"] == "results/runs/codir/sentiment"
    assert plan.runs["mt_bert.seed8"].stage2["sentiment"].inputs()["teacher"][1] == "results/runs/codir.seed8/sentiment"


@pytest.mark.parametrize(
    ("stage2", "expected"),
    [
        ({"teacher": "runs/nope"}, "runs.bad.stage2.teacher': unknown model 'runs/nope'"),
        ({"teacher": "runs/bad"}, "a run cannot teach itself 'runs/bad'"),
        ({"teacher": "runs/glmd"}, "'runs/glmd' is not a classification model of the encoder track"),
        ({"teacher": "tiny_bert"}, "'tiny_bert' is not a classification model"),
        ({"teachers": ["runs/codir"], "teacher": "runs/codir"}, "give 'teacher' or 'teachers', not both"),
        ({"teachers": ["runs/codir", "runs/codir"]}, "a teacher is named twice"),
        ({"teacher": "runs/codir", "multi_teacher": {"method": "tmkd"}}, "needs at least two in stage2.teachers"),
        ({"multi_teacher": {"method": "tmkd"}}, "the run has one teacher"),
        ({"teachers": ["runs/codir", "runs/combined"], "multi_teacher": {"method": "x"}}, "unknown method 'x'"),
        ({"teachers": ["runs/codir", "runs/combined"], "multi_teacher": {"method": "dgkd", "survival": 0}}, "(0, 1]"),
        ({"teachers": ["runs/codir", "runs/combined"], "multi_teacher": {"method": "tmkd", "p": 1}}, "unknown setting"),
        ({"teachers": ["runs/codir", "runs/combined"], "losses": {"theseus": {}}}, "theseus read(s) one teacher's"),
        ({"teachers": ["runs/codir", "runs/combined"], "losses": {"ce": {}}}, "no loss of the run reads a teacher"),
    ],
)
def test_bad_teachers_are_refused_with_their_key(stage2, expected):
    run = {"student": "bert1", "stage2": {"losses": {"kd": {}, "ce": {}}} | stage2}
    assert expected in _problems(_config(bad=run))


def test_a_word_prediction_run_cannot_take_another_teacher():
    run = {"student": "tiny1", "stage2": {"teacher": "runs/codir", "losses": {"kd": {}}}}
    assert "other teachers are supported on the encoder track only" in _problems(_config(bad=run))


def test_a_cycle_of_assistants_is_refused():
    config = _config(a={"student": "bert1", "stage2": {"teacher": "runs/b", "losses": {"kd": {}}}})
    config["runs"]["b"] = {"student": "bert1", "stage2": {"teacher": "runs/a", "losses": {"kd": {}}}}
    assert "teacher-assistant runs form a cycle a -> b -> a" in _problems(config)


@pytest.mark.parametrize("method", ["mt_bert", "uncertainty", "rl_kd"])
def test_per_example_methods_need_a_per_example_loss(method):
    stage2 = {"teachers": ["runs/codir", "runs/combined"], "multi_teacher": {"method": method}}
    run = {"student": "bert1", "stage2": {**stage2, "losses": {"ce": {}, "pkd": {}}}}
    assert "weights each example's prediction loss" in _problems(_config(bad=run))


@pytest.mark.parametrize("method", ["mt_bert", "rl_kd"])
def test_label_reading_methods_refuse_a_transfer_set(method):
    stage2 = {"teachers": ["runs/codir", "runs/combined"], "multi_teacher": {"method": method}, "transfer_set": True}
    run = {"student": "bert1", "stage2": {**stage2, "losses": {"kd": {}}}}
    assert "reads gold labels, and the run distils on a transfer set" in _problems(_config(bad=run))


@pytest.fixture(scope="module")
def encoder(tmp_path_factory, tiny_bert, sentiment_task):
    """Two classification teachers (tiny BERT fine-tuned with two seeds) and a 1-layer student cut from it."""
    root = tmp_path_factory.mktemp("teachers")
    for seed in (0, 1):
        settings = {**TRAIN, "max_steps": 2}
        finetune_classifier(tiny_bert, sentiment_task, root / f"t{seed}", root / f"w{seed}", settings, None, seed=seed)
    init_student(tiny_bert, {"layers": {"strategy": "last", "count": 1}}, None, root / "student", seed=0)
    return root, sentiment_task


def _train(encoder, tmp_path, teachers, stage2, name="run"):
    root, task = encoder
    data = {"cache": None, "task": task, "teacher": root / teachers[0]}
    if len(teachers) > 1:
        data["teachers"] = [root / t for t in teachers]
    run = {"student": "bert1", "stage2": stage2}
    out = tmp_path / name
    distill("stage2", root / "student", out, tmp_path / f"{name}.work", run, TRAIN, data, None, seed=0)
    with open(out / "train_log.csv") as fh:
        return list(csv.DictReader(fh))


RECIPE = {"kd": {"weight": 0.5, "temperature": 2.0}, "ce": {"weight": 0.5}}


def test_one_teacher_twice_averages_to_that_teacher(encoder, tmp_path):
    """TMKD over two copies of one teacher is the single-teacher run, step by step (the teacher-free `ce` is
    counted once); DGKD with survival 1 sums them: twice the kd term."""
    single = _train(encoder, tmp_path, ["t0"], {"losses": RECIPE}, "single")
    twice = _train(encoder, tmp_path, ["t0", "t0"], {"losses": RECIPE, "multi_teacher": {"method": "tmkd"}}, "tmkd")
    for a, b in zip(single, twice, strict=True):
        assert float(b["loss"]) == pytest.approx(float(a["loss"]), rel=1e-5)
        assert float(b["kd"]) == pytest.approx(float(a["kd"]), rel=1e-5)
    dgkd = {"losses": RECIPE, "multi_teacher": {"method": "dgkd", "survival": 1.0}}
    summed = _train(encoder, tmp_path, ["t0", "t0"], dgkd, "dgkd")
    first = single[0]
    assert float(summed[0]["loss"]) == pytest.approx(float(first["loss"]) + 0.5 * float(first["kd"]), rel=1e-5)


@pytest.mark.parametrize("method", ["tmkd", "mt_bert", "uncertainty", "rl_kd", "dgkd"])
def test_every_method_trains_with_two_teachers(encoder, tmp_path, method):
    rows = _train(encoder, tmp_path, ["t0", "t1"], {"losses": RECIPE, "multi_teacher": {"method": method}})
    assert len(rows) == 2 and {"loss", "multi_teacher", "kd", "ce"} <= set(rows[0])
    student = yaml.safe_load((tmp_path / "run" / "kdflow.json").read_text())
    assert student["head"] == "classification"


def test_a_loss_that_needs_one_teachers_layers_is_refused(encoder, tmp_path):
    stage2 = {"losses": {"theseus": {}}, "multi_teacher": {"method": "tmkd"}}
    with pytest.raises(ConfigError, match="cannot run them"):
        _train(encoder, tmp_path, ["t0", "t1"], stage2)
