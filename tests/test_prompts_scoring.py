"""Prompts for every task render and score with both model families; submissions in official formats."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from kdflow.data.reader import read_split
from kdflow.data.submission import write_submission
from kdflow.data.tasks import TASKS, Prompt, get_task
from kdflow.errors import ConfigError
from kdflow.evaluate import predictions
from kdflow.modeling import load_lm
from kdflow.prompts import answer_strings, label_order, resolve_prompt, to_cloze
from kdflow.scoring import score_clozes

FIXTURES = Path(__file__).parent / "fixtures"
SOURCES = {
    "cola": ("glue/CoLA", "dev"),
    "sst2": ("glue/SST-2", "dev"),
    "mrpc": ("glue/MRPC", "dev"),
    "stsb": ("glue/STS-B", "dev"),
    "rte": ("glue/RTE", "dev"),
    "cb": ("superglue/CB", "dev"),
    "copa": ("superglue/COPA", "dev"),
    "rte_sg": ("superglue/RTE", "dev"),
    "wic": ("superglue/WiC", "dev"),
    "boolq": ("superglue/BoolQ", "train"),
    "qqp": ("glue/QQP", "dev"),
    "mnli_m": ("glue/MNLI", "dev"),
    "mnli_mm": ("glue/MNLI", "dev"),
    "qnli": ("glue/QNLI", "dev"),
    "wnli": ("glue/WNLI", "dev"),
    "ax": ("glue/AX", "test"),
    "multirc": ("superglue/MultiRC", "dev"),
    "record": ("superglue/ReCoRD", "dev"),
    "wsc": ("superglue/WSC", "dev"),
    "axb": ("superglue/AX-b", "test"),
    "axg": ("superglue/AX-g", "test"),
}


def _examples(name: str, shared: Path | None, n: int = 3):
    folder, split = SOURCES[name]
    root = FIXTURES if (FIXTURES / folder).is_dir() else shared
    if root is None:
        pytest.skip("../shared/data is absent")
    return read_split(get_task(name), root / folder, split, limit=n)


@pytest.fixture(scope="module")
def shared_or_none():
    from conftest import SHARED_DATA

    return SHARED_DATA if SHARED_DATA.is_dir() else None


@pytest.mark.parametrize("family_fixture", ["tiny_llama", "tiny_bert"])
def test_every_task_scores_with_both_families(family_fixture, request, shared_or_none):
    model, tokenizer, family = load_lm(request.getfixturevalue(family_fixture))
    for name in TASKS:
        task = get_task(name)
        prompt = resolve_prompt(task, None)
        examples = _examples(name, shared_or_none)
        clozes = [to_cloze(task, prompt, ex) for ex in examples]
        scores = score_clozes(model, tokenizer, family, clozes, batch_size=4, max_length=96, progress=False)
        assert [len(s) for s in scores] == [len(c.candidates) for c in clozes], name
        assert all(math.isfinite(v) and v <= 0 for row in scores for v in row), name
        preds = predictions(task, label_order(task, prompt), scores, examples)
        if task.kind == "regression":
            assert all(0 <= p <= 5 for p in preds)
        elif task.kind == "record":
            assert all(p in ex["candidates"] for p, ex in zip(preds, examples))
        elif task.labels:
            assert set(preds) <= set(task.labels)


def test_single_token_fast_path_equals_full_continuation_scoring(tiny_llama):
    """A one-token verbalizer scored from the prompt's last logits equals its continuation log-prob."""
    import torch

    model, tok, family = load_lm(tiny_llama)
    task = get_task("sst2")
    ex = {"idx": 0, "fields": {"sentence": "a fine film"}, "label": "1"}
    cloze = to_cloze(task, task.prompt, ex)
    fast = score_clozes(model, tok, family, [cloze], progress=False)[0]
    prefix = tok(cloze.prefix.rstrip())["input_ids"]
    for j, word in enumerate(cloze.candidates):
        cont = tok(" " + word, add_special_tokens=False)["input_ids"]
        assert len(cont) == 1
        with torch.no_grad():
            logits = model(torch.tensor([prefix + cont])).logits[0]
        expected = torch.log_softmax(logits[len(prefix) - 1], -1)[cont[0]].item()
        assert fast[j] == pytest.approx(expected, abs=1e-5)


def test_multi_token_candidates_sum_log_probs(tiny_llama):
    import torch

    model, tok, family = load_lm(tiny_llama)
    task = get_task("copa")
    ex = {
        "idx": 0,
        "fields": {"premise": "It rained.", "question": "effect", "choice1": "x", "choice2": "y", "connective": "so"},
        "label": "0",
        "candidates": ["The streets were wet and shiny.", "Nothing happened at all today."],
    }
    cloze = to_cloze(task, task.prompt, ex)
    got = score_clozes(model, tok, family, [cloze], progress=False)[0]
    prefix = tok(cloze.prefix.rstrip())["input_ids"]
    for j, cand in enumerate(cloze.candidates):
        cont = tok(" " + cand + cloze.suffix, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([prefix + cont])).logits[0], -1)
        expected = sum(logp[len(prefix) - 1 + k, t].item() for k, t in enumerate(cont))
        assert got[j] == pytest.approx(expected, abs=1e-4)


def test_prompt_override_and_bad_override():
    task = get_task("sst2")
    prompt = resolve_prompt(task, {"pattern": "{sentence} It was {mask}.", "verbalizer": {"0": "bad", "1": "good"}})
    cloze = to_cloze(task, prompt, {"idx": 0, "fields": {"sentence": "Fun."}, "label": "1"})
    assert cloze.prefix == "Fun. It was " and cloze.suffix == "." and cloze.candidates == ["bad", "good"]
    with pytest.raises(ConfigError, match="must map exactly the labels"):
        resolve_prompt(task, {"verbalizer": {"pos": "good"}})
    with pytest.raises(ConfigError, match="names field"):
        to_cloze(task, Prompt("{text} {mask}", {"0": "a", "1": "b"}), {"idx": 0, "fields": {"sentence": "x"}})


def test_answer_strings_cover_verbalizers_and_candidates():
    assert answer_strings(get_task("cb"), get_task("cb").prompt, []) == ["False", "Neither", "True"]
    rec = read_split(get_task("record"), FIXTURES / "superglue/ReCoRD", "dev")
    assert answer_strings(get_task("record"), get_task("record").prompt, rec) == rec[0]["candidates"]


def test_glue_submission_format(tmp_path):
    task = get_task("stsb")
    exs = [{"idx": 0}, {"idx": 1}]
    path = write_submission(task, exs, [1.23456, 4.0], tmp_path)
    assert path.name == "STS-B.tsv"
    assert path.read_text() == "index\tprediction\n0\t1.235\n1\t4.000\n"
    path = write_submission(get_task("mnli_mm"), exs, ["entailment", "neutral"], tmp_path)
    assert path.name == "MNLI-mm.tsv" and path.read_text().splitlines()[2] == "1\tneutral"


def test_superglue_submission_formats(tmp_path):
    mrc = read_split(get_task("multirc"), FIXTURES / "superglue/MultiRC", "test")
    path = write_submission(get_task("multirc"), mrc, ["1", "0", "1", "0", "1"], tmp_path)
    (row,) = [json.loads(x) for x in path.read_text().splitlines()]
    assert row == {
        "idx": 0,
        "passage": {
            "questions": [
                {"idx": 0, "answers": [{"idx": 0, "label": 1}, {"idx": 1, "label": 0}]},
                {"idx": 1, "answers": [{"idx": 2, "label": 1}, {"idx": 3, "label": 0}, {"idx": 4, "label": 1}]},
            ]
        },
    }
    rec = read_split(get_task("record"), FIXTURES / "superglue/ReCoRD", "test")
    path = write_submission(get_task("record"), rec, ["Afghanistan"], tmp_path)
    assert json.loads(path.read_text()) == {"idx": 0, "label": "Afghanistan"}
    path = write_submission(get_task("copa"), [{"idx": 5}], ["1"], tmp_path)
    assert json.loads(path.read_text()) == {"idx": 5, "label": 1}
    path = write_submission(get_task("boolq"), [{"idx": 5}], ["true"], tmp_path)
    assert path.name == "BoolQ.jsonl" and json.loads(path.read_text()) == {"idx": 5, "label": "true"}


def _tiny_task_example(**fields):
    return {"idx": 0, "fields": fields, "label": None}


def test_pattern_slices_filters_and_maps():
    """What lm-eval's COPA and WiC templates need: slices by metadata offsets, filters, value maps, and the
    mask slot's filters applied to every candidate."""
    wic = get_task("wic")
    ex = {
        "idx": 0,
        "fields": {"word": "stripe", "sentence1": "Men of every stripe joined.", "sentence2": "x"},
        "label": "true",
        "meta": {"start1": 13, "end1": 19},
    }
    cloze = to_cloze(
        wic, Prompt("'{sentence1[start1:end1]}' {word|upper_first} {mask}", {"false": "no", "true": "yes"}), ex
    )
    assert cloze.prefix == "'stripe' Stripe "
    copa = get_task("copa")
    ex = {
        "idx": 0,
        "fields": {
            "premise": " It rained. ",
            "question": "effect",
            "choice1": "The street got wet.",
            "choice2": "Nothing.",
        },
        "label": "0",
        "candidates": ["The street got wet.", "Nothing."],
    }
    cloze = to_cloze(
        copa, Prompt("{premise|strip[:-1]} {question|cause=because,effect=therefore}  {mask|lower_first}"), ex
    )
    # lm-eval's super_glue/copa/utils.py: premise.strip()[:-1] + " therefore"; choices " " + lower-cased first letter
    assert cloze.prefix == "It rained therefore  " and cloze.candidates == ["the street got wet.", "nothing."]
    assert to_cloze(copa, Prompt("{{{premise|strip}}} {mask}"), ex).prefix == "{It rained.} "


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("{premise|shout} {mask}", r"unknown filter \|shout"),
        ("{question|cause=because} {mask}", r"the map \|cause=because has no entry for 'effect'"),
        ("{premise[a:b]} {mask}", r"slice bound 'a' should be an integer"),
        ("{premise} { {mask}", r"has a single '\{' at 10"),
        ("{premise~x} {mask}", r"cannot read '~x' in slot"),
    ],
)
def test_bad_patterns_are_clear_config_errors(pattern, message):
    ex = {"idx": 0, "fields": {"premise": "p.", "question": "effect"}, "label": "0", "candidates": ["a", "b"]}
    with pytest.raises(ConfigError, match=message):
        to_cloze(get_task("copa"), Prompt(pattern), ex)


def test_continuation_keeps_the_exact_whitespace_before_the_slot(tiny_llama):
    """lm-eval moves a context's trailing whitespace into the continuation; kdflow now does the same (a newline
    or two spaces are no longer normalised to one space)."""
    from kdflow.scoring import build_items

    _, tok, _ = load_lm(tiny_llama)
    task = get_task("copa")
    ex = {"idx": 0, "fields": {"premise": "It rained."}, "label": "0", "candidates": ["Wet streets.", "Dry."]}
    for sep in ("  ", "\n", " "):
        cloze = to_cloze(task, Prompt("{premise}" + sep + "{mask}"), ex)
        (item, _) = build_items([cloze], tok, "causal", 256)
        cont = tok(sep + "Wet streets.", add_special_tokens=False)["input_ids"]
        assert item.input_ids == tok("It rained.")["input_ids"] + cont[:-1]
        assert [t for _, pairs in item.targets for _, t in pairs] == cont


def test_truncation_point_and_special_tokens(tiny_llama):
    """The model sees at most max_length tokens; the last continuation token is predicted, never fed; the
    truncated examples are reported; add_special_tokens=False drops a BOS the tokenizer would add."""
    from tokenizers.processors import TemplateProcessing

    from kdflow.scoring import build_items

    _, tok, _ = load_lm(tiny_llama)
    long = {"idx": 0, "fields": {"sentence": "a fine film " * 20}, "label": "1"}
    task = get_task("sst2")
    cloze = to_cloze(task, task.prompt, long)
    head = tok(cloze.prefix.rstrip())["input_ids"]
    (item,) = build_items([cloze], tok, "causal", 16)
    assert item.input_ids == head[-16:] and item.truncated
    copa = get_task("copa")
    premise = " ".join(["It rained."] * 10)
    ex = {"idx": 0, "fields": {"premise": premise}, "label": "0", "candidates": ["Wet streets today.", "No."]}
    first, _ = build_items([to_cloze(copa, Prompt("{premise} {mask}"), ex)], tok, "causal", 8)
    cont = tok(" Wet streets today.", add_special_tokens=False)["input_ids"]
    whole = tok(premise)["input_ids"] + cont
    assert first.input_ids == whole[-9:-1] and first.truncated
    assert [p for _, pairs in first.targets for p, _ in pairs] == list(range(8 - len(cont), 8))
    tok.backend_tokenizer.post_processor = TemplateProcessing(
        single=f"{tok.bos_token} $A", special_tokens=[(tok.bos_token, tok.bos_token_id)]
    )
    short = to_cloze(task, task.prompt, {"idx": 0, "fields": {"sentence": "fun"}, "label": "1"})
    assert build_items([short], tok, "causal", 64)[0].input_ids[0] == tok.bos_token_id
    assert build_items([short], tok, "causal", 64, add_special_tokens=False)[0].input_ids[0] != tok.bos_token_id


def test_lm_eval_prompt_set_covers_its_nine_tasks_and_refuses_others():
    from kdflow.data.prompt_sets import LM_EVAL

    assert set(LM_EVAL) == {"sst2", "rte", "mrpc", "cola", "boolq", "cb", "copa", "rte_sg", "wic"}
    for name, prompt in LM_EVAL.items():
        assert set(prompt.verbalizer or {}) == set(get_task(name).prompt.verbalizer or {}), name
    with pytest.raises(ConfigError, match="prompt set 'lm-eval' has no template for it"):
        resolve_prompt(get_task("stsb"), None, "lm-eval")
    with pytest.raises(ConfigError, match="unknown prompt set 'gpt'"):
        resolve_prompt(get_task("sst2"), None, "gpt")
