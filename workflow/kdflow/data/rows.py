"""Readers of one task row: an official TSV/JSONL row, or a HF `datasets` row, to normalised examples
(the schema in ``kdflow.data.tasks``). ``where`` (file:line) goes into every error."""

from __future__ import annotations

import string
from typing import Any

from ..errors import DataError
from .files import require

Example = dict[str, Any]


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


def tsv_task(field_map: dict[str, str], label_col: str | None, index_col: str | None = "index"):
    """Row parser for a TSV task: official column -> canonical field, label column, index column."""

    def parse(row: dict[str, Any], where: str) -> list[Example]:
        idx = _int(row[index_col], where, index_col) if index_col and index_col in row else row["_row"]
        fields = {canon: row[col] for col, canon in field_map.items() if col in row}
        label = _label_or_none(row, label_col) if label_col else None
        return [_ex(idx, fields, label)]

    return parse


def stsb_row(row: dict[str, Any], where: str) -> list[Example]:
    ex = tsv_task({"sentence1": "sentence1", "sentence2": "sentence2"}, None)(row, where)[0]
    if "score" in row:
        try:
            ex["label"] = float(row["score"])
        except ValueError:
            raise DataError(f"{where}: STS-B score should be a number, got {row['score']!r}") from None
        if not 0.0 <= ex["label"] <= 5.0:
            raise DataError(f"{where}: STS-B score {ex['label']} is outside 0..5")
    return [ex]


def mnli_row(row: dict[str, Any], where: str) -> list[Example]:
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


def json_task(fields: list[str], label: str = "plain"):
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


def copa_row(obj: dict[str, Any], where: str) -> list[Example]:
    ex = json_task(["premise", "choice1", "choice2", "question"])(obj, where)[0]
    if ex["fields"]["question"] not in ("cause", "effect"):
        raise DataError(f"{where}: COPA question should be 'cause' or 'effect', got {ex['fields']['question']!r}")
    ex["fields"]["connective"] = "because" if ex["fields"]["question"] == "cause" else "so"
    ex["candidates"] = [ex["fields"]["choice1"], ex["fields"]["choice2"]]
    return [ex]


def wic_row(obj: dict[str, Any], where: str) -> list[Example]:
    ex = json_task(["word", "sentence1", "sentence2"], label="bool")(obj, where)[0]
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
    return {
        "text": text,
        "text_marked": mark_span(text, i2, span2, where),
        "span1_text": span1,
        "span1_index": i1,
        "span2_text": span2,
        "span2_index": i2,
    }


def wsc_row(obj: dict[str, Any], where: str) -> list[Example]:
    target = require(obj, "target", where, dict)
    fields = _wsc_fields(
        require(obj, "text", where, str),
        require(target, "span1_text", where, str),
        require(target, "span1_index", where, int),
        require(target, "span2_text", where, str),
        require(target, "span2_index", where, int),
        where,
    )
    return [_ex(_idx(obj, "idx", where), fields, _bool_label(obj, where))]


def multirc_row(obj: dict[str, Any], where: str) -> list[Example]:
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


def record_row(obj: dict[str, Any], where: str) -> list[Example]:
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
def hf_generic(fields: list[str], label: str):
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


def hf_copa(row: dict[str, Any], features: Any) -> list[Example]:
    ex = hf_generic(["premise", "choice1", "choice2", "question"], "index")(row, features)[0]
    ex["fields"]["connective"] = "because" if row["question"] == "cause" else "so"
    ex["candidates"] = [row["choice1"], row["choice2"]]
    return [ex]


def hf_wsc(row: dict[str, Any], features: Any) -> list[Example]:
    ex = hf_generic([], "bool")(row, features)[0]
    where = f"super_glue/wsc idx={row['idx']}"
    ex["fields"] = _wsc_fields(
        row["text"], row["span1_text"], row["span1_index"], row["span2_text"], row["span2_index"], where
    )
    return [ex]


def hf_wic(row: dict[str, Any], features: Any) -> list[Example]:
    ex = hf_generic(["word", "sentence1", "sentence2"], "bool")(row, features)[0]
    ex["meta"] = {k: row[k] for k in ("start1", "end1", "start2", "end2") if k in row}
    return [ex]


def hf_multirc(row: dict[str, Any], features: Any) -> list[Example]:
    ex = hf_generic(["paragraph", "question", "answer"], "index")(row, features)[0]
    ex["idx"] = dict(row["idx"])
    return [ex]


def hf_record(row: dict[str, Any], features: Any) -> list[Example]:
    answers = sorted(set(row["answers"])) or None
    return [
        _ex(
            dict(row["idx"]),
            {"passage": row["passage"], "query": row["query"]},
            answers,
            candidates=sorted(set(row["entities"])),
        )
    ]
