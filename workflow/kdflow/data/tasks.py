"""Registry of every GLUE/SuperGLUE task type: official files, HF datasets, labels, metrics, prompts.

Every reader produces one normalised example schema (a JSON-serialisable dict)::

    {"idx": int | str | dict, "fields": {name: str | int}, "label": str | float | list[str] | None,
     "candidates": [str, ...] (candidate tasks only), "meta": {...} (optional)}

Field names follow the HF `datasets` versions (nyu-mll/glue, super_glue), so both sources agree.
``idx`` keeps the release's form (AX-b numbers its rows with JSON strings, ``"idx": "0"``), so that
submissions echo it. Labels are strings from the task's label set (floats for STS-B, answer texts for
ReCoRD); unlabelled splits carry ``label: None``.
"""

from __future__ import annotations

import string
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import DataError
from .files import require

Example = dict[str, Any]


@dataclass(frozen=True)
class Prompt:
    """PET-style pattern (``{field}`` slots and one ``{mask}``) and verbalizer (label -> word)."""

    pattern: str
    verbalizer: dict[str, str] | None = None


@dataclass(frozen=True)
class TaskType:
    name: str
    benchmark: str  # glue | superglue
    submission_name: str  # file stem of the benchmark's submission file
    kind: str  # classification | regression | candidates | multirc | record
    labels: tuple[str, ...]
    metrics: tuple[str, ...]
    files: dict[str, str]  # split -> official file name
    prompt: Prompt
    tsv: dict[str, tuple[bool, list[str]]] = field(default_factory=dict)  # split -> (header, columns)
    row: Callable[[dict[str, Any], str], list[Example]] | None = None  # official row -> examples
    hf: tuple[str, str, dict[str, str]] | None = None  # (dataset, config, split -> HF split)
    hf_row: Callable[[dict[str, Any], Any], list[Example]] | None = None
    submit: Callable[[Any], Any] = str  # normalised label -> submission label
    labelled_test: bool = False  # the release's test file carries labels (the SuperGLUE diagnostics)
    pair_field: str | None = None  # rows 2i and 2i+1 form a minimal pair that shares this field (AX-g)

    @property
    def eval_split(self) -> str | None:
        """The labelled split that `evaluate` scores: dev, else a labelled test file, else none (GLUE AX)."""
        if "dev" in self.files:
            return "dev"
        return "test" if self.labelled_test else None

    def labelled(self, split: str) -> bool:
        """Whether every example of the release's ``split`` must carry a label."""
        return split in ("train", "dev") or (split == "test" and self.labelled_test)

    def unit(self, example: Example, position: int) -> Any:
        """What `max_examples` counts: a MultiRC question, an AX-g minimal pair, else one example."""
        if self.kind == "multirc":
            return (example["idx"]["paragraph"], example["idx"]["question"])
        return position // 2 if self.pair_field else position


def _ex(idx: Any, fields: dict[str, Any], label: Any, **extra: Any) -> Example:
    return {"idx": idx, "fields": fields, "label": label, **extra}


def _idx(obj: dict[str, Any], key: str, where: str) -> int | str:
    """A SuperGLUE index as released: a JSON integer, or a string of digits (AX-b: ``"idx": "0"``)."""
    value = require(obj, key, where)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isdigit():
        return value
    raise DataError(f"{where}: field '{key}' should be an integer or a string of digits, got {value!r}")


def _int(value: Any, where: str, name: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise DataError(f"{where}: field '{name}' should be an integer, got {value!r}") from None


# ---------------------------------------------------------------- GLUE (TSV) rows
def _label_or_none(row: dict[str, str], column: str) -> str | None:
    return row[column] if column in row else None


def _tsv_task(field_map: dict[str, str], label_col: str | None, index_col: str | None = "index"):
    """Row parser for a TSV task: official column -> canonical field, label column, index column."""

    def parse(row: dict[str, Any], where: str) -> list[Example]:
        idx = _int(row[index_col], where, index_col) if index_col and index_col in row else row["_row"]
        fields = {canon: row[col] for col, canon in field_map.items() if col in row}
        label = _label_or_none(row, label_col) if label_col else None
        return [_ex(idx, fields, label)]

    return parse


def _stsb_label(row: dict[str, Any], where: str) -> list[Example]:
    ex = _tsv_task({"sentence1": "sentence1", "sentence2": "sentence2"}, None)(row, where)[0]
    if "score" in row:
        try:
            ex["label"] = float(row["score"])
        except ValueError:
            raise DataError(f"{where}: STS-B score should be a number, got {row['score']!r}") from None
        if not 0.0 <= ex["label"] <= 5.0:
            raise DataError(f"{where}: STS-B score {ex['label']} is outside 0..5")
    return [ex]


def _mnli_row(row: dict[str, Any], where: str) -> list[Example]:
    idx = _int(row["index"], where, "index")
    label = row.get("gold_label")
    return [_ex(idx, {"premise": row["sentence1"], "hypothesis": row["sentence2"]}, label)]


# ------------------------------------------------------------ SuperGLUE (JSONL) rows
def _bool_label(obj: dict[str, Any], where: str) -> str | None:
    if "label" not in obj:
        return None
    value = obj["label"]
    if not isinstance(value, bool):
        raise DataError(f"{where}: field 'label' should be true/false, got {value!r}")
    return "true" if value else "false"


def _json_task(fields: list[str], label: str = "plain"):
    """Row parser for a flat SuperGLUE JSONL task: copy ``fields``; label plain/bool/int."""

    def parse(obj: dict[str, Any], where: str) -> list[Example]:
        values = {f: require(obj, f, where) for f in fields}
        if label == "bool":
            lab = _bool_label(obj, where)
        elif "label" in obj:
            lab = str(obj["label"])
        else:
            lab = None
        extra = {"meta": {"pair_id": obj["pair_id"]}} if "pair_id" in obj else {}
        return [_ex(_idx(obj, "idx", where), values, lab, **extra)]

    return parse


def _copa_row(obj: dict[str, Any], where: str) -> list[Example]:
    ex = _json_task(["premise", "choice1", "choice2", "question"])(obj, where)[0]
    if ex["fields"]["question"] not in ("cause", "effect"):
        raise DataError(f"{where}: COPA question should be 'cause' or 'effect', got {ex['fields']['question']!r}")
    ex["fields"]["connective"] = "because" if ex["fields"]["question"] == "cause" else "so"
    ex["candidates"] = [ex["fields"]["choice1"], ex["fields"]["choice2"]]
    return [ex]


def _wic_row(obj: dict[str, Any], where: str) -> list[Example]:
    ex = _json_task(["word", "sentence1", "sentence2"], label="bool")(obj, where)[0]
    ex["meta"] = {k: obj[k] for k in ("start1", "end1", "start2", "end2") if k in obj}
    return [ex]


def mark_span(text: str, index: int, span: str, where: str) -> str:
    """``text`` with the span that starts at word ``index`` (whitespace-split, as WSC's span indices count)
    between asterisks, as PET marks the WSC pronoun: ``... because *it* is too large.``"""
    words = text.split()
    n = max(1, len(span.split()))
    if not 0 <= index <= len(words) - n:
        raise DataError(f"{where}: span index {index} is outside the text's {len(words)} words")
    found = " ".join(words[index : index + n])
    lead = len(found) - len(found.lstrip(string.punctuation))
    if not found[lead:].lower().startswith(span.lower()):
        raise DataError(f"{where}: word {index} of the text is {found!r}, expected the span {span!r} there")
    end = lead + len(span)
    marked = f"{found[:lead]}*{found[lead:end]}*{found[end:]}"
    return " ".join([*words[:index], marked, *words[index + n :]])


def _wsc_fields(text: str, span1: str, i1: int, span2: str, i2: int, where: str) -> dict[str, Any]:
    """WSC fields; ``text_marked`` is the text with the pronoun (span 2) between asterisks."""
    return {"text": text, "text_marked": mark_span(text, i2, span2, where), "span1_text": span1,
            "span1_index": i1, "span2_text": span2, "span2_index": i2}  # fmt: skip


def _wsc_row(obj: dict[str, Any], where: str) -> list[Example]:
    target = require(obj, "target", where, dict)
    fields = _wsc_fields(require(obj, "text", where, str), require(target, "span1_text", where, str),
                         require(target, "span1_index", where, int), require(target, "span2_text", where, str),
                         require(target, "span2_index", where, int), where)  # fmt: skip
    return [_ex(_idx(obj, "idx", where), fields, _bool_label(obj, where))]


def _multirc_row(obj: dict[str, Any], where: str) -> list[Example]:
    p_idx = _idx(obj, "idx", where)
    passage = require(obj, "passage", where, dict)
    text = require(passage, "text", where, str)
    out = []
    for question in require(passage, "questions", where, list):
        q_idx = _idx(question, "idx", where)
        q_text = require(question, "question", where, str)
        for answer in require(question, "answers", where, list):
            a_idx = _idx(answer, "idx", where)
            label = answer.get("label")
            if label is not None and label not in (0, 1):
                raise DataError(f"{where}: MultiRC answer {a_idx} label should be 0 or 1, got {label!r}")
            out.append(
                _ex(
                    {"paragraph": p_idx, "question": q_idx, "answer": a_idx},
                    {"paragraph": text, "question": q_text, "answer": require(answer, "text", where, str)},
                    None if label is None else str(label),
                )
            )
    return out


def _record_row(obj: dict[str, Any], where: str) -> list[Example]:
    p_idx = _idx(obj, "idx", where)
    passage = require(obj, "passage", where, dict)
    text = require(passage, "text", where, str)
    entities = []
    for ent in require(passage, "entities", where, list):
        start, end = require(ent, "start", where, int), require(ent, "end", where, int)
        if not 0 <= start <= end < len(text):
            raise DataError(f"{where}: ReCoRD entity span {start}..{end} is outside the passage")
        entities.append(text[start : end + 1])
    candidates = sorted(set(entities))
    out = []
    for qa in require(obj, "qas", where, list):
        query = require(qa, "query", where, str)
        if "@placeholder" not in query:
            raise DataError(f"{where}: ReCoRD query {qa.get('idx')} has no @placeholder")
        answers = [require(a, "text", where, str) for a in qa.get("answers", [])] or None
        out.append(
            _ex(
                {"passage": p_idx, "query": _idx(qa, "idx", where)},
                {"passage": text, "query": query},
                sorted(set(answers)) if answers else None,
                candidates=candidates,
            )
        )
    return out


# --------------------------------------------------------------------- HF datasets rows
def _hf_generic(fields: list[str], label: str):
    """HF row -> example. ``label``: 'index' (str(int)), 'name' (ClassLabel name), 'bool', 'float'."""

    def parse(row: dict[str, Any], features: Any) -> list[Example]:
        value = row.get("label")
        lab: Any
        if value is None or (isinstance(value, int) and value < 0):
            lab = None
        elif label == "name":
            lab = features["label"].int2str(value)
        elif label == "bool":
            lab = "true" if value == 1 else "false"
        elif label == "float":
            lab = float(value)
        else:
            lab = str(value)
        ex = _ex(row["idx"], {f: row[f] for f in fields}, lab)
        if "pair_id" in row:
            ex["meta"] = {"pair_id": row["pair_id"]}
        return [ex]

    return parse


def _hf_copa(row: dict[str, Any], features: Any) -> list[Example]:
    ex = _hf_generic(["premise", "choice1", "choice2", "question"], "index")(row, features)[0]
    ex["fields"]["connective"] = "because" if row["question"] == "cause" else "so"
    ex["candidates"] = [row["choice1"], row["choice2"]]
    return [ex]


def _hf_wsc(row: dict[str, Any], features: Any) -> list[Example]:
    ex = _hf_generic([], "bool")(row, features)[0]
    where = f"super_glue/wsc idx={row['idx']}"
    ex["fields"] = _wsc_fields(row["text"], row["span1_text"], row["span1_index"], row["span2_text"],
                               row["span2_index"], where)  # fmt: skip
    return [ex]


def _hf_wic(row: dict[str, Any], features: Any) -> list[Example]:
    ex = _hf_generic(["word", "sentence1", "sentence2"], "bool")(row, features)[0]
    ex["meta"] = {k: row[k] for k in ("start1", "end1", "start2", "end2") if k in row}
    return [ex]


def _hf_multirc(row: dict[str, Any], features: Any) -> list[Example]:
    ex = _hf_generic(["paragraph", "question", "answer"], "index")(row, features)[0]
    ex["idx"] = dict(row["idx"])
    return [ex]


def _hf_record(row: dict[str, Any], features: Any) -> list[Example]:
    answers = sorted(set(row["answers"])) or None
    return [
        _ex(
            dict(row["idx"]),
            {"passage": row["passage"], "query": row["query"]},
            answers,
            candidates=sorted(set(row["entities"])),
        )
    ]


# ------------------------------------------------------------------------- the registry
_NLI3 = ("entailment", "neutral", "contradiction")
_NLI2 = ("entailment", "not_entailment")
_TF = ("false", "true")
_YES_NO_BOOL = {"true": "Yes", "false": "No"}
_ENTAIL_P = Prompt(
    "{premise} Question: {hypothesis} True, False or Neither? Answer: {mask}.",
    {"entailment": "True", "contradiction": "False", "neutral": "Neither"},
)
_RTE_P = Prompt("{premise} Question: {hypothesis} True or False? Answer: {mask}.", {"entailment": "True", "not_entailment": "False"})
_S12_RTE_P = Prompt("{sentence1} Question: {sentence2} True or False? Answer: {mask}.", {"entailment": "True", "not_entailment": "False"})


def _glue(name, sub, kind, labels, metrics, files, tsv, row, hf_cfg, hf_label, hf_fields, prompt, hf_splits=None):
    splits = hf_splits or {"train": "train", "dev": "validation", "test": "test"}
    return TaskType(
        name=name, benchmark="glue", submission_name=sub, kind=kind, labels=labels, metrics=metrics,
        files=files, tsv=tsv, row=row, prompt=prompt,
        hf=("nyu-mll/glue", hf_cfg, splits), hf_row=_hf_generic(hf_fields, hf_label),
    )  # fmt: skip


def _superglue(name, sub, kind, labels, metrics, files, row, hf_cfg, hf_row, prompt, submit=str, hf_splits=None,
               **extra):
    splits = hf_splits or {"train": "train", "dev": "validation", "test": "test"}
    return TaskType(
        name=name, benchmark="superglue", submission_name=sub, kind=kind, labels=labels, metrics=metrics,
        files=files, row=row, prompt=prompt, hf=("aps/super_glue", hf_cfg, splits), hf_row=hf_row,
        submit=submit, **extra,
    )  # fmt: skip


_STD = {"train": "train.tsv", "dev": "dev.tsv", "test": "test.tsv"}
_SG = {"train": "train.jsonl", "dev": "val.jsonl", "test": "test.jsonl"}


# Submission labels as the SuperGLUE server reads them (the reference writer is jiant v1's
# jiant/evaluate.py, _write_*_preds): BoolQ and WiC "true"/"false" (our normalised labels, written by
# `str`), WSC "True"/"False", COPA and MultiRC integers, CB/RTE/AX-b/AX-g the label names.
def _int_out(label: Any) -> int:
    return int(label)


def _wsc_out(label: Any) -> str:
    return {"true": "True", "false": "False"}[label]


TASKS: dict[str, TaskType] = {
    t.name: t
    for t in [
        _glue("cola", "CoLA", "classification", ("0", "1"), ("mcc",), _STD,
              {"train": (False, ["source", "label", "original", "sentence"]),
               "dev": (False, ["source", "label", "original", "sentence"]),
               "test": (True, ["index", "sentence"])},
              _tsv_task({"sentence": "sentence"}, "label"), "cola", "index", ["sentence"],
              Prompt("{sentence} Question: Is this sentence grammatical? Answer: {mask}.", {"1": "Yes", "0": "No"})),
        _glue("sst2", "SST-2", "classification", ("0", "1"), ("accuracy",), _STD,
              {"train": (True, ["sentence", "label"]), "dev": (True, ["sentence", "label"]),
               "test": (True, ["index", "sentence"])},
              _tsv_task({"sentence": "sentence"}, "label"), "sst2", "index", ["sentence"],
              Prompt("Review: {sentence}\nSentiment: {mask}", {"0": "negative", "1": "positive"})),
        _glue("mrpc", "MRPC", "classification", ("0", "1"), ("f1", "accuracy"), _STD,
              {"train": (True, ["Quality", "#1 String", "#2 String"]), "dev": (True, ["Quality", "#1 String", "#2 String"]),
               "test": (True, ["index", "#1 String", "#2 String"])},
              _tsv_task({"#1 String": "sentence1", "#2 String": "sentence2"}, "Quality"), "mrpc", "index",
              ["sentence1", "sentence2"],
              Prompt("{sentence1} Question: Does this mean the same as \"{sentence2}\"? Answer: {mask}.",
                     {"1": "Yes", "0": "No"})),
        _glue("stsb", "STS-B", "regression", (), ("pearson", "spearman"), _STD,
              {s: (True, ["index", "sentence1", "sentence2"]) for s in _STD}, _stsb_label, "stsb", "float",
              ["sentence1", "sentence2"],
              Prompt("{sentence1} Question: Does this mean the same as \"{sentence2}\"? Answer: {mask}.",
                     {"high": "Yes", "low": "No"})),
        _glue("qqp", "QQP", "classification", ("0", "1"), ("f1", "accuracy"), _STD,
              {"train": (True, ["id", "question1", "question2", "is_duplicate"]),
               "dev": (True, ["id", "question1", "question2", "is_duplicate"]),
               "test": (True, ["id", "question1", "question2"])},
              _tsv_task({"question1": "question1", "question2": "question2"}, "is_duplicate", "id"), "qqp",
              "index", ["question1", "question2"],
              Prompt("{question1} Question: Is this the same question as \"{question2}\"? Answer: {mask}.",
                     {"1": "Yes", "0": "No"})),
        _glue("mnli_m", "MNLI-m", "classification", _NLI3, ("accuracy",),
              {"train": "train.tsv", "dev": "dev_matched.tsv", "test": "test_matched.tsv"},
              {s: (True, ["index", "sentence1", "sentence2"]) for s in _STD}, _mnli_row, "mnli", "name",
              ["premise", "hypothesis"], _ENTAIL_P,
              {"train": "train", "dev": "validation_matched", "test": "test_matched"}),
        _glue("mnli_mm", "MNLI-mm", "classification", _NLI3, ("accuracy",),
              {"train": "train.tsv", "dev": "dev_mismatched.tsv", "test": "test_mismatched.tsv"},
              {s: (True, ["index", "sentence1", "sentence2"]) for s in _STD}, _mnli_row, "mnli", "name",
              ["premise", "hypothesis"], _ENTAIL_P,
              {"train": "train", "dev": "validation_mismatched", "test": "test_mismatched"}),
        _glue("qnli", "QNLI", "classification", _NLI2, ("accuracy",), _STD,
              {s: (True, ["index", "question", "sentence"]) for s in _STD},
              _tsv_task({"question": "question", "sentence": "sentence"}, "label"), "qnli", "name",
              ["question", "sentence"],
              Prompt("{sentence} Question: {question} Does the sentence answer the question? Answer: {mask}.",
                     {"entailment": "Yes", "not_entailment": "No"})),
        _glue("rte", "RTE", "classification", _NLI2, ("accuracy",), _STD,
              {s: (True, ["index", "sentence1", "sentence2"]) for s in _STD},
              _tsv_task({"sentence1": "sentence1", "sentence2": "sentence2"}, "label"), "rte", "name",
              ["sentence1", "sentence2"], _S12_RTE_P),
        _glue("wnli", "WNLI", "classification", ("0", "1"), ("accuracy",), _STD,
              {s: (True, ["index", "sentence1", "sentence2"]) for s in _STD},
              _tsv_task({"sentence1": "sentence1", "sentence2": "sentence2"}, "label"), "wnli", "index",
              ["sentence1", "sentence2"],
              Prompt("{sentence1} Question: {sentence2} True or False? Answer: {mask}.", {"1": "True", "0": "False"})),
        _glue("ax", "AX", "classification", _NLI3, ("mcc",), {"test": "AX.tsv"},
              {"test": (True, ["index", "sentence1", "sentence2"])},
              _tsv_task({"sentence1": "premise", "sentence2": "hypothesis"}, None), "ax", "name",
              ["premise", "hypothesis"], _ENTAIL_P, {"test": "test"}),
        _superglue("boolq", "BoolQ", "classification", _TF, ("accuracy",), _SG,
                   _json_task(["question", "passage"], "bool"), "boolq", _hf_generic(["question", "passage"], "bool"),
                   Prompt("{passage} Question: {question}? Answer: {mask}.", _YES_NO_BOOL)),
        _superglue("cb", "CB", "classification", ("entailment", "contradiction", "neutral"), ("accuracy", "macro_f1"),
                   _SG, _json_task(["premise", "hypothesis"]), "cb", _hf_generic(["premise", "hypothesis"], "name"),
                   _ENTAIL_P),
        _superglue("copa", "COPA", "candidates", ("0", "1"), ("accuracy",), _SG, _copa_row, "copa", _hf_copa,
                   Prompt("{premise} What was the {question}? {mask}"), _int_out),
        _superglue("multirc", "MultiRC", "multirc", ("0", "1"), ("f1a", "em"), _SG, _multirc_row, "multirc",
                   _hf_multirc,
                   Prompt("{paragraph} Question: {question} Is the answer \"{answer}\"? Answer: {mask}.",
                          {"1": "Yes", "0": "No"}), _int_out),
        _superglue("record", "ReCoRD", "record", (), ("record_f1", "record_em"), _SG, _record_row, "record",
                   _hf_record, Prompt("{passage}\n{query}")),
        _superglue("rte_sg", "RTE", "classification", _NLI2, ("accuracy",), _SG,
                   _json_task(["premise", "hypothesis"]), "rte", _hf_generic(["premise", "hypothesis"], "name"),
                   _RTE_P),
        _superglue("wic", "WiC", "classification", _TF, ("accuracy",), _SG, _wic_row, "wic", _hf_wic,
                   Prompt("{sentence1} {sentence2} Question: Is the word '{word}' used in the same sense in the "
                          "two sentences above? Answer: {mask}.", _YES_NO_BOOL)),
        _superglue("wsc", "WSC", "classification", _TF, ("accuracy",), _SG, _wsc_row, "wsc", _hf_wsc,
                   Prompt("{text_marked} Question: In the passage above, does the pronoun '*{span2_text}*' refer "
                          "to '{span1_text}'? Answer: {mask}.", _YES_NO_BOOL), _wsc_out),
        _superglue("axb", "AX-b", "classification", _NLI2, ("mcc",), {"test": "AX-b.jsonl"},
                   _json_task(["sentence1", "sentence2"]), "axb", _hf_generic(["sentence1", "sentence2"], "name"),
                   _S12_RTE_P, hf_splits={"test": "test"}, labelled_test=True),
        _superglue("axg", "AX-g", "classification", _NLI2, ("gender_parity", "accuracy"), {"test": "AX-g.jsonl"},
                   _json_task(["premise", "hypothesis"]), "axg", _hf_generic(["premise", "hypothesis"], "name"),
                   _RTE_P, hf_splits={"test": "test"}, labelled_test=True, pair_field="hypothesis"),
    ]
}  # fmt: skip


def get_task(name: str) -> TaskType:
    if name not in TASKS:
        raise DataError(f"unknown task type '{name}' (known: {', '.join(sorted(TASKS))})")
    return TASKS[name]
