"""Task readers: official files (shared data and fixtures), HF rows, bad input with file:line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kdflow.data.reader import read_split
from kdflow.data.tasks import TASKS, get_task
from kdflow.errors import DataError
from kdflow.prepare import prepare_task

FIXTURES = Path(__file__).parent / "fixtures"

# Official row counts (../shared/data/README.md).
SHARED = {
    ("cola", "glue/CoLA"): {"train": 8551, "dev": 1043, "test": 1063},
    ("sst2", "glue/SST-2"): {"train": 67349, "dev": 872, "test": 1821},
    ("mrpc", "glue/MRPC"): {"train": 3668, "dev": 408, "test": 1725},
    ("stsb", "glue/STS-B"): {"train": 5749, "dev": 1500, "test": 1379},
    ("rte", "glue/RTE"): {"train": 2490, "dev": 277, "test": 3000},
    ("boolq", "superglue/BoolQ"): {"dev": 3270, "test": 3245},
    ("cb", "superglue/CB"): {"train": 250, "dev": 56, "test": 250},
    ("copa", "superglue/COPA"): {"train": 400, "dev": 100, "test": 500},
    ("rte_sg", "superglue/RTE"): {"train": 2490, "dev": 277, "test": 3000},
    ("wic", "superglue/WiC"): {"train": 5428, "dev": 638, "test": 1400},
}

# Fixture tasks: (task type, folder, split -> examples expected).
FIXTURE_TASKS = [
    ("qqp", "glue/QQP", {"train": 3, "dev": 3, "test": 2}),
    ("mnli_m", "glue/MNLI", {"train": 3, "dev": 2, "test": 1}),
    ("mnli_mm", "glue/MNLI", {"train": 3, "dev": 2, "test": 1}),
    ("qnli", "glue/QNLI", {"train": 2, "dev": 2, "test": 1}),
    ("wnli", "glue/WNLI", {"train": 2, "dev": 2, "test": 1}),
    ("ax", "glue/AX", {"test": 2}),
    ("boolq", "superglue/BoolQ", {"train": 2}),
    ("multirc", "superglue/MultiRC", {"train": 5, "dev": 5, "test": 5}),
    ("record", "superglue/ReCoRD", {"train": 1, "dev": 1, "test": 1}),
    ("wsc", "superglue/WSC", {"train": 2, "dev": 2, "test": 2}),
    ("axb", "superglue/AX-b", {"test": 6}),
    ("axg", "superglue/AX-g", {"test": 8}),
]


@pytest.mark.parametrize(("task", "folder"), list(SHARED), ids=[t for t, _ in SHARED])
def test_shared_task_row_counts_and_labels(shared_data, task, folder):
    spec = get_task(task)
    for split, expected in SHARED[(task, folder)].items():
        examples = read_split(spec, shared_data / folder, split)
        assert len(examples) == expected, (task, split)
        labelled = [ex for ex in examples if ex["label"] is not None]
        if split == "test":
            assert not labelled
        else:
            assert len(labelled) == expected
            if spec.labels:
                assert {ex["label"] for ex in labelled} <= set(spec.labels)
            else:
                assert all(0.0 <= ex["label"] <= 5.0 for ex in labelled)


def test_shared_quirks(shared_data):
    mrpc = read_split(get_task("mrpc"), shared_data / "glue/MRPC", "train")
    assert mrpc[0]["fields"]["sentence1"].startswith("Amrozi accused")  # BOM header handled
    assert '"the witness"' in mrpc[0]["fields"]["sentence1"]  # quotes kept verbatim
    cola = read_split(get_task("cola"), shared_data / "glue/CoLA", "dev")
    assert cola[0]["fields"]["sentence"] == "The sailors rode the breeze clear of the rocks."
    copa = read_split(get_task("copa"), shared_data / "superglue/COPA", "dev")
    assert copa[0]["candidates"] == ["The toilet filled with water.", "Water flowed from the spout."]
    assert copa[0]["label"] == "1"


@pytest.mark.parametrize(("task", "folder", "counts"), FIXTURE_TASKS, ids=[t[0] for t in FIXTURE_TASKS])
def test_fixture_tasks_load(task, folder, counts):
    spec = get_task(task)
    for split, expected in counts.items():
        examples = read_split(spec, FIXTURES / folder, split)
        assert len(examples) == expected, (task, split)
        for ex in examples:
            json.dumps(ex)  # the normalised schema is JSON-serialisable
            assert set(ex) >= {"idx", "fields", "label"}


def test_fixture_details():
    mm = read_split(get_task("mnli_mm"), FIXTURES / "glue/MNLI", "dev")
    assert mm[0]["label"] == "contradiction" and mm[0]["fields"]["premise"].startswith("Your contribution")
    mrc = read_split(get_task("multirc"), FIXTURES / "superglue/MultiRC", "dev")
    assert mrc[3]["idx"] == {"paragraph": 0, "question": 1, "answer": 3} and mrc[3]["label"] == "0"
    rec = read_split(get_task("record"), FIXTURES / "superglue/ReCoRD", "dev")[0]
    assert rec["candidates"] == ["Afghan", "Afghanistan", "Clementine Malpas"] and rec["label"] == ["Afghanistan"]
    wsc = read_split(get_task("wsc"), FIXTURES / "superglue/WSC", "dev")
    assert wsc[0]["fields"]["span1_text"] == "Mark" and wsc[0]["fields"]["span2_index"] == 13
    axg = read_split(get_task("axg"), FIXTURES / "superglue/AX-g", "test")
    assert axg[0]["meta"]["pair_id"] == 551646 and axg[1]["meta"]["pair_id"] == 551647  # distinct, as released


def test_every_task_type_has_a_tested_source():
    covered = {t for t, _ in SHARED} | {t for t, _, _ in FIXTURE_TASKS}
    assert covered == set(TASKS)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_malformed_tsv_row_names_file_and_line(tmp_path):
    _write(tmp_path / "dev.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\ta\tb\n")
    with pytest.raises(DataError, match=r"dev\.tsv:3: expected 4 tab-separated columns"):
        read_split(get_task("rte"), tmp_path, "dev")


def test_label_outside_label_set_names_file_and_line(tmp_path):
    _write(tmp_path / "dev.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\ta\tb\tmaybe\n")
    with pytest.raises(DataError, match=r"dev\.tsv:3: label 'maybe' is not in the rte label set"):
        read_split(get_task("rte"), tmp_path, "dev")


def test_malformed_jsonl_row_names_file_and_line(tmp_path):
    good = json.dumps({"premise": "p", "hypothesis": "h", "label": "entailment", "idx": 0})
    _write(tmp_path / "val.jsonl", good + "\n{not json\n")
    with pytest.raises(
        DataError,
        match=r"val\.jsonl:2: not valid JSON: Expecting property name enclosed in double "
        r"quotes \(column 2\)",
    ):
        read_split(get_task("cb"), tmp_path, "dev")


def test_missing_field_names_file_line_and_field(tmp_path):
    _write(tmp_path / "val.jsonl", json.dumps({"premise": "p", "label": "entailment", "idx": 0}) + "\n")
    with pytest.raises(DataError, match=r"val\.jsonl:1: missing field 'hypothesis'"):
        read_split(get_task("cb"), tmp_path, "dev")


def test_wrong_label_type_in_boolq(tmp_path):
    _write(tmp_path / "val.jsonl", json.dumps({"question": "q", "passage": "p", "label": "yes", "idx": 0}) + "\n")
    with pytest.raises(DataError, match=r"val\.jsonl:1: field 'label' should be true/false"):
        read_split(get_task("boolq"), tmp_path, "dev")


def test_missing_header_column(tmp_path):
    _write(tmp_path / "dev.tsv", "sentence\tlabl\nfine\t1\n")
    with pytest.raises(DataError, match=r"dev\.tsv:1: header lacks column\(s\) label"):
        read_split(get_task("sst2"), tmp_path, "dev")


def test_hub_rows_match_official_rows(monkeypatch):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features(
        {
            "premise": datasets.Value("string"),
            "hypothesis": datasets.Value("string"),
            "idx": datasets.Value("int32"),
            "label": datasets.ClassLabel(names=["entailment", "contradiction", "neutral"]),
        }
    )
    rows = {"premise": ["p0", "p1"], "hypothesis": ["h0", "h1"], "idx": [0, 1], "label": [1, 2]}
    fake = datasets.Dataset.from_dict(rows, features=features)
    calls = []

    def load_dataset(name, config, split):
        calls.append((name, config, split))
        return fake

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    examples = read_split(get_task("cb"), "hf", "dev")
    assert calls == [("aps/super_glue", "cb", "validation")]
    assert [ex["label"] for ex in examples] == ["contradiction", "neutral"]
    assert examples[0]["fields"] == {"premise": "p0", "hypothesis": "h0"}


def test_prepare_task_writes_splits_and_answers(tmp_path, shared_data):
    meta = prepare_task(
        "copa", {"name": "copa", "max_examples": {"train": 10}}, str(shared_data / "superglue/COPA"), tmp_path
    )
    assert meta["splits"] == {"train": 10, "dev": 100, "test": 500}
    assert "Water flowed from the spout." in meta["answer_strings"]
    meta = prepare_task("boolq", {"name": "boolq"}, str(shared_data / "superglue/BoolQ"), tmp_path / "b")
    assert meta["splits"] == {"dev": 3270, "test": 3245} and meta["missing_files"] == ["train.jsonl"]
    assert meta["answer_strings"] == ["No", "Yes"]
