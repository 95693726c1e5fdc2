"""Corpus preprocessing: sources, normalisation, dedup, deterministic split, packed memmaps."""

from __future__ import annotations

import json

import numpy as np
import pytest
from transformers import AutoTokenizer

from kdflow.assets.corpus import build_corpus
from kdflow.data.corpus import iter_documents, normalise_text
from kdflow.errors import DataError
from kdflow.preprocess import open_blocks, preprocess_corpus, token_dtype

SETTINGS = {"block_size": 16, "valid_fraction": 0.2, "batch_documents": 3}


def test_normalise_text():
    assert normalise_text("  Cafe\u0301\t\tau  lait \r\n\n\n\nnext\u00a0line ") == "Caf\u00e9 au lait\n\nnext line"


def test_sources_text_folder_jsonl(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "b.txt").write_text("second doc\n\nthird doc\n")
    (tmp_path / "d" / "a.txt").write_text("first doc\nstill first\n")
    assert list(iter_documents(str(tmp_path / "d"), {})) == ["first doc\nstill first\n", "second doc\n", "third doc\n"]
    (tmp_path / "c.jsonl").write_text('{"body": "x"}\n{"body": 3}\n')
    with pytest.raises(DataError, match=r"c\.jsonl:2: expected an object with a string field 'body'"):
        list(iter_documents(str(tmp_path / "c.jsonl"), {"text_field": "body"}))
    with pytest.raises(DataError, match="not found"):
        list(iter_documents(str(tmp_path / "missing.txt"), {}))


def test_dedup_split_and_packing(tmp_path, tiny_llama):
    docs = [f"Document number {i} has some words in it." for i in range(40)]
    docs += [docs[0], "  " + docs[1] + "  "]  # exact duplicates after normalisation
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    meta = preprocess_corpus(str(tmp_path / "c.jsonl"), {}, tiny_llama, tmp_path / "out", SETTINGS, seed=1)
    assert meta["documents_read"] == 42 and meta["duplicate_documents"] == 2
    s = meta["splits"]
    assert s["train"]["documents"] + s["valid"]["documents"] == 40 and s["valid"]["documents"] > 0
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    total = sum(len(tok(d)["input_ids"]) + 1 for d in docs[:40])
    assert s["train"]["tokens"] + s["valid"]["tokens"] == total
    for split in ("train", "valid"):
        assert s[split]["blocks"] * 16 + s[split]["tail_tokens_not_packed"] == s[split]["tokens"]
    blocks = open_blocks(tmp_path / "out", "train")
    assert blocks.shape == (s["train"]["blocks"], 16) and blocks.dtype == np.uint16
    text = tok.decode(blocks[0])
    assert text.startswith("Document number")
    assert meta["tokenizer_sha256"] and meta["dtype"] == "uint16"


def test_embedded_corpus_twice_is_byte_identical(tmp_path, tiny_llama):
    corpus = tmp_path / "c.jsonl"
    build_corpus("embedded:package-texts", corpus)
    settings = {"block_size": 128, "valid_fraction": 0.05, "batch_documents": 256}
    a = preprocess_corpus(str(corpus), {}, tiny_llama, tmp_path / "a", settings, seed=5)
    b = preprocess_corpus(str(corpus), {}, tiny_llama, tmp_path / "b", settings, seed=5)
    for name in ("train.bin", "valid.bin"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert a["tokens"] > 400_000 and a["splits"] == b["splits"]


def test_token_dtype_and_truncation_detected(tmp_path, tiny_llama):
    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32
    (tmp_path / "c.txt").write_text("\n\n".join(f"paragraph {i} " * 20 for i in range(10)))
    preprocess_corpus(str(tmp_path / "c.txt"), {}, tiny_llama, tmp_path / "out", SETTINGS, seed=0)
    path = tmp_path / "out" / "train.bin"
    path.write_bytes(path.read_bytes()[:-2])
    with pytest.raises(DataError, match="truncated"):
        open_blocks(tmp_path / "out", "train")


def test_max_documents(tmp_path, tiny_llama):
    (tmp_path / "c.txt").write_text("\n\n".join(f"paragraph {i}" for i in range(10)))
    meta = preprocess_corpus(
        str(tmp_path / "c.txt"), {"max_documents": 4}, tiny_llama, tmp_path / "out", SETTINGS, seed=0
    )
    assert meta["documents_read"] == 4
