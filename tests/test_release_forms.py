"""The SuperGLUE files as released, not as a fixture writer imagines them: AX-b's string idx, AX-g's minimal
pairs as consecutive rows with distinct pair_ids, labelled splits with a label missing, WSC's pronoun
span, MultiRC caps, and the submission format of every SuperGLUE task."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from kdflow.config import evaluable, validate_config
from kdflow.data.reader import read_split
from kdflow.data.submission import write_submission
from kdflow.data.tasks import TASKS, get_task
from kdflow.errors import ConfigError, DataError
from kdflow.evaluate import evaluate
from kdflow.metrics import bootstrap_ci, gender_parity
from kdflow.prepare import load_prepared, prepare_task

FIXTURES = Path(__file__).parent / "fixtures" / "superglue"
SETTINGS = {"batch_size": 8, "max_length": 64, "bootstrap_samples": 50, "latency_examples": 2}


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _fixture_rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (FIXTURES / name).read_text().splitlines()]


# ------------------------------------------------------------------------------------------ AX-b: string idx
def test_axb_string_idx_is_read_and_echoed_in_the_submission(tmp_path):
    examples = read_split(get_task("axb"), FIXTURES / "AX-b", "test")
    assert [ex["idx"] for ex in examples] == [str(i) for i in range(6)]  # as released: "idx": "0"
    path = write_submission(get_task("axb"), examples, ["entailment"] * 6, tmp_path)
    assert path.name == "AX-b.jsonl"
    assert json.loads(path.read_text().splitlines()[0]) == {"idx": "0", "label": "entailment"}


@pytest.mark.parametrize("task", ["cb", "boolq", "copa", "rte_sg", "wic"])
def test_every_superglue_task_takes_a_numeric_string_idx(tmp_path, task):
    row = {
        "cb": {"premise": "p", "hypothesis": "h", "label": "neutral"},
        "boolq": {"question": "q", "passage": "p", "label": True},
        "copa": {"premise": "p.", "choice1": "a", "choice2": "b", "question": "cause", "label": 0},
        "rte_sg": {"premise": "p", "hypothesis": "h", "label": "entailment"},
        "wic": {
            "word": "w",
            "sentence1": "a w",
            "sentence2": "w b",
            "start1": 2,
            "end1": 3,
            "start2": 0,
            "end2": 1,
            "label": False,
        },
    }[task]
    _jsonl(tmp_path / "val.jsonl", [{**row, "idx": "7"}, {**row, "idx": 8}])
    assert [ex["idx"] for ex in read_split(get_task(task), tmp_path, "dev")] == ["7", 8]
    _jsonl(tmp_path / "val.jsonl", [{**row, "idx": "7a"}])
    with pytest.raises(DataError, match=r"val\.jsonl:1: field 'idx' should be an integer or a string of digits"):
        read_split(get_task(task), tmp_path, "dev")


# ------------------------------------------------------------------------------ AX-g: pairs by position
def jiant_gender_parity(rows: list[dict], preds: list[str]) -> float:
    """An independent implementation of jiant's GenderParity (read in nyu-mll/jiant@05ed76cb,
    jiant/metrics/winogender_metrics.py: lines 34-43 pair predictions 2i and 2i+1 and assert that the two
    rows share the hypothesis (sent2_str); lines 10-17 return same / (same + different), -1 with no pair)."""
    same = different = 0
    for first, second, p, q in zip(rows[::2], rows[1::2], preds[::2], preds[1::2]):
        assert first["hypothesis"] == second["hypothesis"]
        same, different = (same + 1, different) if p == q else (same, different + 1)
    return same / (same + different) if same + different else -1.0


def _release_axg(n_pairs: int, seed: int = 0) -> list[dict]:
    """AX-g rows in the release's form: consecutive rows share the hypothesis, every pair_id is distinct."""
    rng = random.Random(seed)
    rows = []
    for i in range(n_pairs):
        hyp = f"The worker number {i} was tired."
        for pronoun in ("he", "she"):
            rows.append(
                {
                    "hypothesis": hyp,
                    "premise": f"The worker number {i} said that {pronoun} was tired.",
                    "idx": len(rows),
                    "pair_id": 551646 + len(rows),
                    "label": rng.choice(["entailment", "not_entailment"]),
                }
            )
    return rows


def test_gender_parity_pairs_consecutive_rows_as_jiant_does(tmp_path):
    rows = _release_axg(60)
    assert len({r["pair_id"] for r in rows}) == len(rows)  # no pair_id repeats: grouping by it finds no pair
    _jsonl(tmp_path / "AX-g.jsonl", rows)
    examples = read_split(get_task("axg"), tmp_path, "test")
    rng = random.Random(1)
    for agree in (0.0, 0.5, 0.9, 1.0):
        preds = []
        for _ in range(60):
            first = rng.choice(["entailment", "not_entailment"])
            other = "entailment" if first == "not_entailment" else "not_entailment"
            preds += [first, first if rng.random() < agree else other]
        golds = [ex["label"] for ex in examples]
        ours = gender_parity(golds, preds, examples)
        assert not math.isnan(ours) and ours == pytest.approx(jiant_gender_parity(rows, preds))
    fixture = read_split(get_task("axg"), FIXTURES / "AX-g", "test")
    preds = ["entailment", "entailment", "entailment", "not_entailment"] * 2
    assert gender_parity([None] * 8, preds, fixture) == jiant_gender_parity(_fixture_rows("AX-g/AX-g.jsonl"), preds)


def test_gender_parity_bootstrap_resamples_whole_pairs(tmp_path):
    _jsonl(tmp_path / "AX-g.jsonl", _release_axg(20))
    examples = read_split(get_task("axg"), tmp_path, "test")
    preds = [p for i in range(20) for p in (["entailment"] * 2 if i % 2 else ["entailment", "not_entailment"])]
    golds = [ex["label"] for ex in examples]
    low, high = bootstrap_ci("gender_parity", golds, preds, examples, samples=200, seed=0)
    assert low < 0.5 < high  # a resample of single rows would pair rows of different pairs
    same = ["entailment"] * 40
    assert bootstrap_ci("gender_parity", golds, same, examples, samples=50, seed=0) == (1.0, 1.0)


def test_axg_rows_that_do_not_pair_are_refused(tmp_path):
    rows = _release_axg(3)
    rows[3]["hypothesis"] = "Someone else was tired."
    _jsonl(tmp_path / "AX-g.jsonl", rows)
    with pytest.raises(
        DataError,
        match=r"AX-g\.jsonl:4: axg rows pair up in file order .* should share the "
        r"hypothesis",
    ):
        read_split(get_task("axg"), tmp_path, "test")
    _jsonl(tmp_path / "AX-g.jsonl", _release_axg(3)[:5])
    with pytest.raises(DataError, match=r"AX-g\.jsonl:5: axg has an odd number of rows \(5\)"):
        read_split(get_task("axg"), tmp_path, "test")


def test_max_examples_counts_whole_pairs_and_whole_questions(tmp_path):
    _jsonl(tmp_path / "AX-g.jsonl", _release_axg(5))
    assert len(read_split(get_task("axg"), tmp_path, "test", limit=3)) == 6  # three pairs
    mrc = get_task("multirc")  # dev fixture: question 0 has 2 answers, question 1 has 3
    assert len(read_split(mrc, FIXTURES / "MultiRC", "dev", limit=1)) == 2
    assert len(read_split(mrc, FIXTURES / "MultiRC", "dev", limit=2)) == 5
    meta = prepare_task(
        "mrc", {"name": "multirc", "max_examples": {"dev": 1}}, str(FIXTURES / "MultiRC"), tmp_path / "m"
    )
    assert meta["splits"]["dev"] == 2


# -------------------------------------------------------------------------------- missing labels
@pytest.mark.parametrize(
    ("task", "folder", "file", "row", "message"),
    [
        ("wsc", "WSC", "val.jsonl", 1, r"val\.jsonl:2: the row has no 'label', and this wsc split is labelled"),
        ("axg", "AX-g", "AX-g.jsonl", 5, r"AX-g\.jsonl:6: the row has no 'label', and this axg split is labelled"),
        ("axb", "AX-b", "AX-b.jsonl", 0, r"AX-b\.jsonl:1: the row has no 'label'"),
    ],
)
def test_a_missing_label_in_a_labelled_split_is_refused_at_prepare(tmp_path, task, folder, file, row, message):
    source = tmp_path / folder
    for path in (FIXTURES / folder).iterdir():
        rows = _fixture_rows(f"{folder}/{path.name}")
        if path.name == file:
            del rows[row]["label"]
        _jsonl(source / path.name, rows)
    with pytest.raises(DataError, match=message):
        prepare_task(task, {"name": task}, str(source), tmp_path / "out")


def test_a_multirc_answer_without_label_is_refused(tmp_path):
    (row,) = _fixture_rows("MultiRC/train.jsonl")
    del row["passage"]["questions"][1]["answers"][2]["label"]
    _jsonl(tmp_path / "train.jsonl", [row])
    with pytest.raises(DataError, match=r"train\.jsonl:1: answer 4 has no 'label', and this multirc split is labelled"):
        read_split(get_task("multirc"), tmp_path, "train")
    assert read_split(get_task("multirc"), FIXTURES / "MultiRC", "test")[0]["label"] is None  # test: unlabelled


# ------------------------------------------------------------------------------------------ WSC span
def test_wsc_prompt_marks_the_pronoun_it_means(tmp_path):
    text = "The trophy doesn't fit into the suitcase because it is too large, and it shows."
    _jsonl(
        tmp_path / "val.jsonl",
        [
            {
                "text": text,
                "idx": 0,
                "label": True,
                "target": {"span1_text": "The trophy", "span1_index": 0, "span2_text": "it", "span2_index": 8},
            }
        ],
    )
    meta = prepare_task("wsc", {"name": "wsc"}, str(tmp_path), tmp_path / "out")
    cloze = load_prepared(tmp_path / "out", "dev").clozes[0]
    assert "because *it* is too large, and it shows." in cloze.prefix
    assert "the pronoun '*it*' refer to 'The trophy'" in cloze.prefix and meta["splits"] == {"dev": 1}
    fixture = read_split(get_task("wsc"), FIXTURES / "WSC", "dev")
    assert fixture[0]["fields"]["text_marked"].endswith("his book. *He* should have been more truthful.")
    bad = {
        "text": text,
        "idx": 0,
        "label": True,
        "target": {"span1_text": "The trophy", "span1_index": 0, "span2_text": "it", "span2_index": 9},
    }
    _jsonl(tmp_path / "bad" / "val.jsonl", [bad])
    with pytest.raises(DataError, match=r"val\.jsonl:1: word 9 of the text is 'is', expected the span 'it' there"):
        read_split(get_task("wsc"), tmp_path / "bad", "dev")


# ------------------------------------------------------------------------------- submissions
def test_every_superglue_submission_format(tmp_path):
    """As jiant v1's reference writer (jiant/evaluate.py, _write_*_preds) and the SuperGLUE server read them."""
    expected = {
        "boolq": ("true", "true"),
        "wic": ("false", "false"),
        "wsc": ("true", "True"),
        "cb": ("neutral", "neutral"),
        "rte_sg": ("not_entailment", "not_entailment"),
        "axb": ("entailment", "entailment"),
        "axg": ("not_entailment", "not_entailment"),
        "copa": ("1", 1),
    }
    superglue = {name for name, t in TASKS.items() if t.benchmark == "superglue"}
    assert superglue == {*expected, "multirc", "record"}  # multirc, record: tests/test_prompts_scoring.py
    for name, (pred, written) in expected.items():
        path = write_submission(get_task(name), [{"idx": 3}], [pred], tmp_path / name)
        assert path.name == f"{get_task(name).submission_name}.jsonl"
        assert json.loads(path.read_text()) == {"idx": 3, "label": written}, name


# ---------------------------------------------------------------- diagnostics are evaluated, AX is not
@pytest.mark.parametrize(
    ("task", "folder", "metrics"), [("axb", "AX-b", ["mcc"]), ("axg", "AX-g", ["gender_parity", "accuracy"])]
)
def test_diagnostics_are_evaluated_on_their_labelled_test_file(tmp_path, tiny_llama, task, folder, metrics):
    meta = prepare_task(task, {"name": task}, str(FIXTURES / folder), tmp_path / "task")
    assert meta["eval_split"] == "test" and "dev" not in meta["splits"]
    result = evaluate(tiny_llama, tmp_path / "task", tmp_path / "m.json", tmp_path / "p.jsonl", SETTINGS)
    assert result["split"] == "test" and list(result["metrics"]) == metrics
    assert all(not math.isnan(v) for v in result["metrics"].values())
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert rows[0]["idx"] == ("0" if task == "axb" else 0)
    # `splits: {dev: test}` reads the same file as a dev split
    meta = prepare_task(task, {"name": task, "splits": {"dev": "test"}}, str(FIXTURES / folder), tmp_path / "t2")
    assert meta["eval_split"] == "dev" and meta["splits"]["dev"] == meta["splits"]["test"]


def test_glue_ax_has_nothing_to_evaluate(tmp_path):
    assert not evaluable({"name": "ax"}) and evaluable({"name": "axb"}) and evaluable({"name": "axg"})
    assert evaluable({"name": "rte"}) and not evaluable({"name": "boolq", "splits": {"dev": "test"}})
    config = {
        "teacher": "m",
        "models": {"m": {"source": "embedded:smollm2-135m-instruct"}},
        "tasks": {"ax": {"name": "ax", "source": "x"}, "rte": {"name": "rte", "source": "y"}},
        "evaluate": {"tasks": ["ax", "rte"]},
    }
    with pytest.raises(ConfigError, match=r"'evaluate.tasks\[0\]': task 'ax' \(ax\) has no labelled split"):
        validate_config(config)
    meta = prepare_task("ax", {"name": "ax"}, str(Path(__file__).parent / "fixtures/glue/AX"), tmp_path / "ax")
    assert meta["eval_split"] is None
    with pytest.raises(DataError, match="has no labelled split to evaluate on"):
        evaluate(tmp_path / "nomodel", tmp_path / "ax", tmp_path / "m.json", tmp_path / "p.jsonl", SETTINGS)
