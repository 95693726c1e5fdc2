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

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import DataError
from .rows import (
    Example,
    copa_row,
    hf_copa,
    hf_generic,
    hf_multirc,
    hf_record,
    hf_wic,
    hf_wsc,
    json_task,
    mnli_row,
    multirc_row,
    record_row,
    stsb_row,
    tsv_task,
    wic_row,
    wsc_row,
)


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


_NLI3 = ("entailment", "neutral", "contradiction")
_NLI2 = ("entailment", "not_entailment")
_TF = ("false", "true")
_YES_NO_BOOL = {"true": "Yes", "false": "No"}
_ENTAIL_P = Prompt(
    "{premise} Question: {hypothesis} True, False or Neither? Answer: {mask}.",
    {"entailment": "True", "contradiction": "False", "neutral": "Neither"},
)
_RTE_P = Prompt(
    "{premise} Question: {hypothesis} True or False? Answer: {mask}.", {"entailment": "True", "not_entailment": "False"}
)
_S12_RTE_P = Prompt(
    "{sentence1} Question: {sentence2} True or False? Answer: {mask}.",
    {"entailment": "True", "not_entailment": "False"},
)


_HF_SPLITS = {"train": "train", "dev": "validation", "test": "test"}
_STD = {"train": "train.tsv", "dev": "dev.tsv", "test": "test.tsv"}
_SG = {"train": "train.jsonl", "dev": "val.jsonl", "test": "test.jsonl"}


def _glue(
    name: str,
    *,
    submission: str,
    labels: tuple[str, ...],
    metrics: tuple[str, ...],
    columns: dict,
    row: Callable,
    hf_config: str,
    hf_label: str,
    hf_fields: list[str],
    prompt: Prompt,
    kind: str = "classification",
    files: dict[str, str] = _STD,
    hf_splits: dict[str, str] = _HF_SPLITS,
) -> TaskType:
    """A GLUE task: TSV files (``columns``: split -> (has a header, column names)) and nyu-mll/glue."""
    return TaskType(
        name=name,
        benchmark="glue",
        submission_name=submission,
        kind=kind,
        labels=labels,
        metrics=metrics,
        files=files,
        tsv=columns,
        row=row,
        prompt=prompt,
        hf=("nyu-mll/glue", hf_config, hf_splits),
        hf_row=hf_generic(hf_fields, hf_label),
    )


def _superglue(
    name: str,
    *,
    submission: str,
    labels: tuple[str, ...],
    metrics: tuple[str, ...],
    row: Callable,
    hf_config: str,
    hf_row: Callable,
    prompt: Prompt,
    kind: str = "classification",
    files: dict[str, str] = _SG,
    hf_splits: dict[str, str] = _HF_SPLITS,
    **extra: Any,
) -> TaskType:
    """A SuperGLUE task: JSONL files and aps/super_glue."""
    return TaskType(
        name=name,
        benchmark="superglue",
        submission_name=submission,
        kind=kind,
        labels=labels,
        metrics=metrics,
        files=files,
        row=row,
        prompt=prompt,
        hf=("aps/super_glue", hf_config, hf_splits),
        hf_row=hf_row,
        **extra,
    )


# Submission labels as the SuperGLUE server reads them (the reference writer is jiant v1's
# jiant/evaluate.py, _write_*_preds): BoolQ and WiC "true"/"false" (our normalised labels, written by
# `str`), WSC "True"/"False", COPA and MultiRC integers, CB/RTE/AX-b/AX-g the label names.
def _int_out(label: Any) -> int:
    return int(label)


def _wsc_out(label: Any) -> str:
    return {"true": "True", "false": "False"}[label]


def _columns(*names: str, header: bool = True) -> dict[str, tuple[bool, list[str]]]:
    """The same columns in every split's TSV."""
    return {split: (header, list(names)) for split in _STD}


# The task table: one entry per task type, aligned as a table (ruff format would give each argument a line).
# fmt: off
_SAME_MEANING = Prompt("{sentence1} Question: Does this mean the same as \"{sentence2}\"? Answer: {mask}.",
                       {"1": "Yes", "0": "No"})
_COLA_COLUMNS = ["source", "label", "original", "sentence"]
_QQP_COLUMNS = ["id", "question1", "question2", "is_duplicate"]
_MRPC_COLUMNS = ["Quality", "#1 String", "#2 String"]
_PAIR = {"sentence1": "sentence1", "sentence2": "sentence2"}

TASKS: dict[str, TaskType] = {
    t.name: t
    for t in [
        _glue("cola", submission="CoLA", labels=("0", "1"), metrics=("mcc",),
              columns={"train": (False, _COLA_COLUMNS), "dev": (False, _COLA_COLUMNS),
                       "test": (True, ["index", "sentence"])},
              row=tsv_task({"sentence": "sentence"}, "label"), hf_config="cola", hf_label="index",
              hf_fields=["sentence"],
              prompt=Prompt("{sentence} Question: Is this sentence grammatical? Answer: {mask}.",
                            {"1": "Yes", "0": "No"})),
        _glue("sst2", submission="SST-2", labels=("0", "1"), metrics=("accuracy",),
              columns={"train": (True, ["sentence", "label"]), "dev": (True, ["sentence", "label"]),
                       "test": (True, ["index", "sentence"])},
              row=tsv_task({"sentence": "sentence"}, "label"), hf_config="sst2", hf_label="index",
              hf_fields=["sentence"],
              prompt=Prompt("Review: {sentence}\nSentiment: {mask}", {"0": "negative", "1": "positive"})),
        _glue("mrpc", submission="MRPC", labels=("0", "1"), metrics=("f1", "accuracy"),
              columns={"train": (True, _MRPC_COLUMNS), "dev": (True, _MRPC_COLUMNS),
                       "test": (True, ["index", "#1 String", "#2 String"])},
              row=tsv_task({"#1 String": "sentence1", "#2 String": "sentence2"}, "Quality"), hf_config="mrpc",
              hf_label="index", hf_fields=["sentence1", "sentence2"], prompt=_SAME_MEANING),
        _glue("stsb", submission="STS-B", kind="regression", labels=(), metrics=("pearson", "spearman"),
              columns=_columns("index", "sentence1", "sentence2"), row=stsb_row, hf_config="stsb",
              hf_label="float", hf_fields=["sentence1", "sentence2"],
              prompt=Prompt(_SAME_MEANING.pattern, {"high": "Yes", "low": "No"})),
        _glue("qqp", submission="QQP", labels=("0", "1"), metrics=("f1", "accuracy"),
              columns={"train": (True, _QQP_COLUMNS), "dev": (True, _QQP_COLUMNS),
                       "test": (True, ["id", "question1", "question2"])},
              row=tsv_task({"question1": "question1", "question2": "question2"}, "is_duplicate", "id"),
              hf_config="qqp", hf_label="index", hf_fields=["question1", "question2"],
              prompt=Prompt("{question1} Question: Is this the same question as \"{question2}\"? Answer: {mask}.",
                            {"1": "Yes", "0": "No"})),
        _glue("mnli_m", submission="MNLI-m", labels=_NLI3, metrics=("accuracy",),
              files={"train": "train.tsv", "dev": "dev_matched.tsv", "test": "test_matched.tsv"},
              columns=_columns("index", "sentence1", "sentence2"), row=mnli_row, hf_config="mnli",
              hf_label="name", hf_fields=["premise", "hypothesis"], prompt=_ENTAIL_P,
              hf_splits={"train": "train", "dev": "validation_matched", "test": "test_matched"}),
        _glue("mnli_mm", submission="MNLI-mm", labels=_NLI3, metrics=("accuracy",),
              files={"train": "train.tsv", "dev": "dev_mismatched.tsv", "test": "test_mismatched.tsv"},
              columns=_columns("index", "sentence1", "sentence2"), row=mnli_row, hf_config="mnli",
              hf_label="name", hf_fields=["premise", "hypothesis"], prompt=_ENTAIL_P,
              hf_splits={"train": "train", "dev": "validation_mismatched", "test": "test_mismatched"}),
        _glue("qnli", submission="QNLI", labels=_NLI2, metrics=("accuracy",),
              columns=_columns("index", "question", "sentence"),
              row=tsv_task({"question": "question", "sentence": "sentence"}, "label"), hf_config="qnli",
              hf_label="name", hf_fields=["question", "sentence"],
              prompt=Prompt("{sentence} Question: {question} Does the sentence answer the question? Answer: {mask}.",
                            {"entailment": "Yes", "not_entailment": "No"})),
        _glue("rte", submission="RTE", labels=_NLI2, metrics=("accuracy",),
              columns=_columns("index", "sentence1", "sentence2"), row=tsv_task(_PAIR, "label"), hf_config="rte",
              hf_label="name", hf_fields=["sentence1", "sentence2"], prompt=_S12_RTE_P),
        _glue("wnli", submission="WNLI", labels=("0", "1"), metrics=("accuracy",),
              columns=_columns("index", "sentence1", "sentence2"), row=tsv_task(_PAIR, "label"), hf_config="wnli",
              hf_label="index", hf_fields=["sentence1", "sentence2"],
              prompt=Prompt("{sentence1} Question: {sentence2} True or False? Answer: {mask}.",
                            {"1": "True", "0": "False"})),
        _glue("ax", submission="AX", labels=_NLI3, metrics=("mcc",), files={"test": "AX.tsv"},
              columns={"test": (True, ["index", "sentence1", "sentence2"])},
              row=tsv_task({"sentence1": "premise", "sentence2": "hypothesis"}, None), hf_config="ax",
              hf_label="name", hf_fields=["premise", "hypothesis"], prompt=_ENTAIL_P, hf_splits={"test": "test"}),
        _superglue("boolq", submission="BoolQ", labels=_TF, metrics=("accuracy",),
                   row=json_task(["question", "passage"], "bool"), hf_config="boolq",
                   hf_row=hf_generic(["question", "passage"], "bool"),
                   prompt=Prompt("{passage} Question: {question}? Answer: {mask}.", _YES_NO_BOOL)),
        _superglue("cb", submission="CB", labels=("entailment", "contradiction", "neutral"),
                   metrics=("accuracy", "macro_f1"), row=json_task(["premise", "hypothesis"]), hf_config="cb",
                   hf_row=hf_generic(["premise", "hypothesis"], "name"), prompt=_ENTAIL_P),
        _superglue("copa", submission="COPA", kind="candidates", labels=("0", "1"), metrics=("accuracy",),
                   row=copa_row, hf_config="copa", hf_row=hf_copa,
                   prompt=Prompt("{premise} What was the {question}? {mask}"), submit=_int_out),
        _superglue("multirc", submission="MultiRC", kind="multirc", labels=("0", "1"), metrics=("f1a", "em"),
                   row=multirc_row, hf_config="multirc", hf_row=hf_multirc,
                   prompt=Prompt("{paragraph} Question: {question} Is the answer \"{answer}\"? Answer: {mask}.",
                                 {"1": "Yes", "0": "No"}), submit=_int_out),
        _superglue("record", submission="ReCoRD", kind="record", labels=(), metrics=("record_f1", "record_em"),
                   row=record_row, hf_config="record", hf_row=hf_record, prompt=Prompt("{passage}\n{query}")),
        _superglue("rte_sg", submission="RTE", labels=_NLI2, metrics=("accuracy",),
                   row=json_task(["premise", "hypothesis"]), hf_config="rte",
                   hf_row=hf_generic(["premise", "hypothesis"], "name"), prompt=_RTE_P),
        _superglue("wic", submission="WiC", labels=_TF, metrics=("accuracy",), row=wic_row, hf_config="wic",
                   hf_row=hf_wic,
                   prompt=Prompt("{sentence1} {sentence2} Question: Is the word '{word}' used in the same sense in "
                                 "the two sentences above? Answer: {mask}.", _YES_NO_BOOL)),
        _superglue("wsc", submission="WSC", labels=_TF, metrics=("accuracy",), row=wsc_row, hf_config="wsc",
                   hf_row=hf_wsc,
                   prompt=Prompt("{text_marked} Question: In the passage above, does the pronoun '*{span2_text}*' "
                                 "refer to '{span1_text}'? Answer: {mask}.", _YES_NO_BOOL), submit=_wsc_out),
        _superglue("axb", submission="AX-b", labels=_NLI2, metrics=("mcc",), files={"test": "AX-b.jsonl"},
                   row=json_task(["sentence1", "sentence2"]), hf_config="axb",
                   hf_row=hf_generic(["sentence1", "sentence2"], "name"), prompt=_S12_RTE_P,
                   hf_splits={"test": "test"}, labelled_test=True),
        _superglue("axg", submission="AX-g", labels=_NLI2, metrics=("gender_parity", "accuracy"),
                   files={"test": "AX-g.jsonl"}, row=json_task(["premise", "hypothesis"]), hf_config="axg",
                   hf_row=hf_generic(["premise", "hypothesis"], "name"), prompt=_RTE_P, hf_splits={"test": "test"},
                   labelled_test=True, pair_field="hypothesis"),
    ]
}
# fmt: on


def get_task(name: str) -> TaskType:
    if name not in TASKS:
        raise DataError(f"unknown task type '{name}' (known: {', '.join(sorted(TASKS))})")
    return TASKS[name]
