"""A task's labelled examples and its transfer set (`tasks.*.labelled`, `runs.*.stage2.transfer_set`): labels
beyond the labelled ones are dropped at prepare time, every job but a transfer-set run trains on the labelled
examples only, and a transfer-set recipe that reads gold labels is refused before any job."""

from __future__ import annotations

import json

import pytest
import yaml

from kdflow.config import validate_config
from kdflow.errors import ConfigError
from kdflow.plan import build_plan
from kdflow.prepare import load_prepared, prepare_task


@pytest.fixture(scope="module")
def labelled_task(tmp_path_factory):
    """The embedded sentiment task: 16 training reviews, the first 10 labelled."""
    from kdflow.assets.sentiment import build_sentiment_task

    root = tmp_path_factory.mktemp("transfer")
    build_sentiment_task("embedded:rotten-tomatoes", root / "raw", seed=0)
    spec = {"name": "sst2", "labelled": 10, "max_examples": {"train": 16, "dev": 8, "test": 4}}
    prepare_task("sentiment", spec, str(root / "raw"), root / "prepared")
    return root / "prepared"


def test_labels_after_the_labelled_examples_are_dropped_at_prepare_time(labelled_task):
    rows = [json.loads(line) for line in (labelled_task / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 16
    assert all(r["label"] is not None for r in rows[:10]) and all(r["label"] is None for r in rows[10:])
    meta = json.loads((labelled_task / "task.json").read_text())
    assert meta["labelled_train"] == 10 and sum(meta["label_counts"]["train"].values()) == 10
    assert meta["splits"]["dev"] == 8 and sum(meta["label_counts"]["dev"].values()) == 8  # dev is untouched


def test_jobs_read_the_labelled_examples_unless_on_a_transfer_set(labelled_task):
    labelled = load_prepared(labelled_task, "train")
    assert len(labelled.examples) == 10 and all(ex["label"] is not None for ex in labelled.examples)
    assert len(load_prepared(labelled_task, "train", limit=4).examples) == 4
    transfer = load_prepared(labelled_task, "train", transfer_set=True)
    assert len(transfer.examples) == len(transfer.clozes) == 16
    assert [ex["idx"] for ex in transfer.examples[:10]] == [ex["idx"] for ex in labelled.examples]
    assert len(load_prepared(labelled_task, "dev").examples) == 8


def test_a_transfer_set_stage2_trains_on_every_input_and_refuses_gold_labels(labelled_task, tiny_bert):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from kdflow.distill.stage2 import Student, TaskData
    from kdflow.runtime import Runtime

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    student = Student(model, AutoTokenizer.from_pretrained(tiny_bert), "masked", classifier=True)
    needs = frozenset({"student_scores", "teacher_scores"})
    data = {"task": str(labelled_task), "teacher": str(tiny_bert)}
    settings = {"max_length": 32}
    on_labels = TaskData(data, student, torch.nn.Identity(), needs, settings, None, 0, Runtime(), None, False)
    assert on_labels.n_examples == 10 and on_labels.label_ids is not None
    transfer = TaskData(data, student, torch.nn.Identity(), needs, settings, None, 0, Runtime(), None, True)
    assert transfer.n_examples == 16 and transfer.label_ids is None  # CoDIR's negatives: any other input
    with pytest.raises(ConfigError, match="6 training inputs of the transfer set have no gold label"):
        TaskData(data, student, None, needs | {"labels"}, settings, None, 0, Runtime(), None, True)


@pytest.fixture()
def transfer_config(repo):
    config = yaml.safe_load((repo / "config" / "config.yaml").read_text())
    config["tasks"]["sentiment"]["max_examples"]["train"] = 1024
    config["tasks"]["sentiment"]["labelled"] = 512
    config["runs"]["glmd"]["stage2"]["transfer_set"] = True
    return config


def test_the_task_cache_holds_the_transfer_set_only_where_a_run_needs_it(transfer_config):
    plan = build_plan(validate_config(transfer_config))
    assert plan.runs["glmd"].stage2["sentiment"].transfer_set
    assert not plan.runs["no_distill"].stage2["sentiment"].transfer_set
    assert plan.cache_covers_transfer_set("sentiment", "half")  # glmd's student has the half vocabulary
    assert not plan.cache_covers_transfer_set("sentiment", "full")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda c: c["runs"]["no_distill"]["stage2"].update(transfer_set=True),
            r"runs\.no_distill\.stage2\.losses\.ce': reads gold labels, and the run distils on a transfer set",
        ),
        (
            lambda c: c["runs"]["codir"]["stage2"].update(
                transfer_set=True, losses={"codir": {"negatives_from": "other_label"}}
            ),
            r"runs\.codir\.stage2\.losses\.codir': reads gold labels",
        ),
        (
            lambda c: c["tasks"]["sentiment"].pop("labelled"),
            r"runs\.glmd\.stage2\.transfer_set': task 'sentiment' has no unlabelled inputs",
        ),
        (
            lambda c: c["tasks"]["sentiment"].update(labelled=1024),
            r"runs\.glmd\.stage2\.transfer_set': task 'sentiment' has no unlabelled inputs",
        ),
        (
            lambda c: c["runs"]["glmd"]["stage1"].update(transfer_set=True),
            r"runs\.glmd\.stage1\.transfer_set': stage 1 trains on a corpus",
        ),
    ],
    ids=["ce", "codir_other_label", "no_labelled", "all_labelled", "stage1"],
)
def test_transfer_set_mistakes_are_refused_at_config_time(transfer_config, edit, message):
    edit(transfer_config)
    with pytest.raises(ConfigError, match=message):
        validate_config(transfer_config)
