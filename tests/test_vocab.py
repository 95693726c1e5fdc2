"""GLMD vocabulary compression: counts, must-keep set, replacements, compressed and exported students."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

from kdflow.errors import ConfigError, DataError
from kdflow.fingerprint import tokenizer_fingerprint
from kdflow.modeling import count_parameters, load_lm
from kdflow.preprocess import preprocess_corpus
from kdflow.vocab.compress import answer_token_ids, build_vocab_map, nearest_kept, special_token_ids, target_size
from kdflow.vocab.counts import count_tokens, read_counts
from kdflow.vocab.model import CompressedTokenizer, compress_model, export_compressed
from kdflow.vocab.vmap import RESERVED, VocabMap

TEXTS = [
    "The film was a great success with critics and audiences alike.",
    "A terrible, boring mess of a movie that nobody should see.",
    "Critics praised the acting, the music and the direction of the film.",
] * 5
ANSWERS = ["positive", "negative", "Neither", "supercalifragilistic"]


def _zipf_counts(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.zipf(1.3, size=n).astype(np.int64) * rng.integers(0, 2, size=n)


def test_counts_match_a_direct_count(tmp_path, tiny_llama):
    (tmp_path / "c.txt").write_text("\n\n".join(TEXTS))
    settings = {"block_size": 8, "valid_fraction": 0.3, "batch_documents": 4}
    meta = preprocess_corpus(str(tmp_path / "c.txt"), {}, tiny_llama, tmp_path / "corpus", settings, seed=0)
    count_tokens(tmp_path / "corpus", tiny_llama, [], tmp_path / "counts.csv")
    counts = read_counts(tmp_path / "counts.csv")
    packed = sum(meta["splits"][s]["blocks"] for s in ("train", "valid")) * 8
    assert counts.sum() == packed
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    the = tok(" the", add_special_tokens=False)["input_ids"][0]
    assert counts[the] > 0
    header = (tmp_path / "counts.csv").read_text().splitlines()[0]
    assert header == "token_id,token,count,frequency,rank"


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_bert"])
def test_every_verbalizer_token_survives(fixture, request):
    folder = request.getfixturevalue(fixture)
    tok = AutoTokenizer.from_pretrained(folder)
    counts = _zipf_counts(len(tok))
    vmap = build_vocab_map(counts, tok, ANSWERS, {"size": 256, "round_to": 64})
    kept = vmap.kept_mask()
    must = special_token_ids(tok) | answer_token_ids(tok, ANSWERS)
    assert all(kept[i] for i in must)
    assert vmap.size == 256
    # the rest is filled by frequency: every kept non-must token is at least as frequent as every dropped one
    free = [i for i in range(len(tok)) if kept[i] and i not in must]
    dropped = np.flatnonzero(~kept)
    assert counts[free].min() >= counts[dropped].max()


def test_size_rounding_and_too_small_size():
    assert target_size({"size": 0.5, "round_to": 64}, 49152) == 24576
    assert target_size({"size": 1000, "round_to": 64}, 49152) == 1024
    assert target_size({"size": 0.3, "round_to": 8}, 30522) == 9160


def test_size_smaller_than_must_keep_names_both(tiny_llama):
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    with pytest.raises(ConfigError, match=r"vocabulary size 8 .* smaller than the must-keep set of \d+ tokens"):
        build_vocab_map(_zipf_counts(len(tok)), tok, ANSWERS, {"size": 8, "round_to": 8})


def test_nearest_on_a_hand_built_embedding():
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [10.0, 10.0], [0.9, 0.1], [0.1, 3.0], [4.0, 4.4]])
    kept, dropped = np.array([0, 1, 2]), np.array([3, 4, 5])
    # cosine: 3 -> 0, 4 -> 1, 5 -> 2 (direction of (1,1.1) is closest to (1,1))
    assert nearest_kept(emb, kept, dropped, "cosine").tolist() == [0, 1, 2]
    # dot: largest inner product: (10,10) wins for all
    assert nearest_kept(emb, kept, dropped, "dot").tolist() == [2, 2, 2]
    # euclidean: 3 -> 0 (0.14), 4 -> 1 (2.0), 5 -> 1? |(4,4.4)-(0,1)|=5.2, |-(10,10)|=8.2, |-(1,0)|=5.4 -> 1
    assert nearest_kept(emb, kept, dropped, "euclidean", chunk=2).tolist() == [0, 1, 1]


def test_remap_round_trips_and_replacements(tiny_llama):
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    counts = _zipf_counts(len(tok))
    vmap = build_vocab_map(counts, tok, ANSWERS, {"size": 512, "round_to": 64})
    kept_ids = vmap.kept[vmap.kept != RESERVED]
    assert np.array_equal(vmap.unmap(vmap.remap(kept_ids)), kept_ids)
    dropped = np.flatnonzero(~vmap.kept_mask())
    assert set(vmap.remap(dropped).tolist()) == {int(vmap.old_to_new[tok.unk_token_id])}
    ids = torch.tensor([[5, 100, 2000]])
    assert torch.equal(vmap.remap(ids), torch.as_tensor(vmap.old_to_new[[5, 100, 2000]])[None])


def test_reserved_unknown_row_without_an_unk_token(tiny_llama):
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    tok.unk_token = None
    assert tok.unk_token_id is None
    vmap = build_vocab_map(_zipf_counts(len(tok)), tok, ANSWERS, {"size": 128, "round_to": 64})
    assert vmap.reserved == vmap.size - 1 and vmap.kept[-1] == RESERVED
    dropped = np.flatnonzero(~vmap.kept_mask())
    assert set(vmap.old_to_new[dropped].tolist()) == {vmap.reserved}
    logits = torch.randn(2, len(tok))
    projected = vmap.project_logits(logits)
    # kept columns + the dropped mass bucket carry exactly the full distribution
    assert torch.allclose(torch.logsumexp(projected, -1), torch.logsumexp(logits, -1), atol=1e-5)


def test_projected_teacher_logits_renormalise_over_kept_columns(tiny_llama):
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    vmap = build_vocab_map(_zipf_counts(len(tok)), tok, ANSWERS, {"size": 256, "round_to": 64})
    logits = torch.randn(3, len(tok))
    probs = torch.softmax(vmap.project_logits(logits), -1)
    kept = torch.as_tensor(vmap.kept)
    expected = torch.softmax(logits, -1)[:, kept]
    assert torch.allclose(probs, expected / expected.sum(-1, keepdim=True), atol=1e-6)


@pytest.mark.parametrize(
    ("fixture", "auto"), [("tiny_llama", AutoModelForCausalLM), ("tiny_bert", AutoModelForMaskedLM)]
)
def test_exported_student_matches_in_pipeline_logits(fixture, auto, request, tmp_path):
    folder = request.getfixturevalue(fixture)
    model, tok, _ = load_lm(folder)
    must = [*ANSWERS, "The film was", "the film was"]  # kept, so that they decode back
    vmap = build_vocab_map(_zipf_counts(len(tok), seed=3), tok, must, {"size": 0.25, "round_to": 64})
    vmap.meta["tokenizer_sha256"] = tokenizer_fingerprint(folder)
    before = count_parameters(model)
    student = compress_model(model, vmap)
    after = count_parameters(student)
    assert (after["embedding"] + after["head"]) <= 0.6 * (before["embedding"] + before["head"])
    text = ["The film was a great success.", "A supercalifragilistic, boring mess."]
    enc = tok(text, return_tensors="pt", padding=True)
    with torch.no_grad():
        inside = student(input_ids=vmap.remap(enc["input_ids"]), attention_mask=enc["attention_mask"]).logits
    out = export_compressed(student, folder, vmap, tmp_path / "export")
    loaded = auto.from_pretrained(out, local_files_only=True)
    ctok = CompressedTokenizer.from_pretrained(out)
    enc2 = ctok(text, return_tensors="pt", padding=True)
    assert int(enc2["input_ids"].max()) < vmap.size and len(ctok) == vmap.size
    with torch.no_grad():
        exported = loaded(**enc2).logits
    assert exported.shape[-1] == vmap.size
    assert torch.equal(inside, exported)
    assert json.loads((out / "kdflow.json").read_text())["vocab_size"] == vmap.size
    kept_text = ctok.decode(ctok("The film was", add_special_tokens=False)["input_ids"])
    assert kept_text.strip().lower() == "the film was"


def test_map_for_another_tokenizer_is_refused(tmp_path, tiny_llama, tiny_bert):
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    vmap = build_vocab_map(_zipf_counts(len(tok)), tok, ANSWERS, {"size": 256})
    vmap.meta["tokenizer_sha256"] = tokenizer_fingerprint(tiny_llama)
    vmap.save(tmp_path / "map.json")
    assert VocabMap.load(tmp_path / "map.json", tokenizer_fingerprint(tiny_llama)).size == 256
    with pytest.raises(DataError, match="built for tokenizer"):
        VocabMap.load(tmp_path / "map.json", tokenizer_fingerprint(tiny_bert))


def test_tokenizer_fingerprint_ignores_load_time_keys(tmp_path, tiny_llama):
    """A teacher fine-tuned offline re-saves its tokenizer with `local_files_only: true` (cpu-long's COPA cache
    was refused for it, 2026-12-04); that key is not the tokenizer. A changed special token is."""
    import shutil

    copy = shutil.copytree(tiny_llama, tmp_path / "copy")
    config_path = copy / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "local_files_only": not config.get("local_files_only", False)}))
    assert tokenizer_fingerprint(copy) == tokenizer_fingerprint(tiny_llama)
    config_path.write_text(json.dumps({**config, "pad_token": "<not-the-pad>"}))
    assert tokenizer_fingerprint(copy) != tokenizer_fingerprint(tiny_llama)


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_bert"])
def test_factorised_embedding_full_rank_is_exact_and_merges(fixture, request, tmp_path):
    from kdflow.vocab.factorised import FactorisedEmbedding, factorise_embeddings, merge_factorised

    folder = request.getfixturevalue(fixture)
    model, tok, _ = load_lm(folder)
    ids = tok(["The film was a great success."], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        reference = model(input_ids=ids).logits
    hidden = model.config.hidden_size
    model = factorise_embeddings(model, hidden)  # full rank: the same function
    assert isinstance(model.get_input_embeddings(), FactorisedEmbedding)
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, reference, atol=1e-4)
    small, _, _ = load_lm(folder)
    before = count_parameters(small)["embedding"]
    small = factorise_embeddings(small, 8)
    assert count_parameters(small)["embedding"] == len(tok) * 8 + 8 * hidden < before
    with torch.no_grad():
        factorised_logits = small(input_ids=ids).logits
    merge_factorised(small).save_pretrained(tmp_path / "m")
    auto = AutoModelForCausalLM if fixture == "tiny_llama" else AutoModelForMaskedLM
    with torch.no_grad():
        reloaded = auto.from_pretrained(tmp_path / "m", local_files_only=True)(input_ids=ids).logits
    assert torch.allclose(reloaded, factorised_logits, atol=1e-5)


def test_vocabulary_embedding_dim_builds_trains_and_exports_a_factorised_student(tiny_llama, tmp_path):
    """`vocabularies.*.embedding_dim`: init_student factorises the student's rows (saved as their rank-e
    product, loadable as a plain model), distillation trains the N*e + e*d factors, the result loads again."""
    from conftest import pack_text

    from kdflow.distill import distill
    from kdflow.students import init_student
    from kdflow.vocab.factorised import FactorisedEmbedding, refactorise

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    vmap = build_vocab_map(_zipf_counts(len(tok)), tok, ANSWERS, {"size": 256, "round_to": 64})
    vmap.meta.update(tokenizer_sha256=tokenizer_fingerprint(tiny_llama), embedding_dim=8)
    vmap.save(tmp_path / "map.json")
    meta = init_student(
        tiny_llama, {"layers": {"strategy": "last", "count": 1}}, tmp_path / "map.json", tmp_path / "student", seed=0
    )
    hidden = AutoModelForCausalLM.from_pretrained(tmp_path / "student").config.hidden_size
    assert meta["embedding_dim"] == 8 and meta["factorised_parameters"]["embedding"] == 256 * 8 + 8 * hidden
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "student", local_files_only=True)
    assert torch.linalg.matrix_rank(plain.get_input_embeddings().weight.detach()) <= 8
    model = refactorise(plain, tmp_path / "student")
    assert isinstance(model.get_input_embeddings(), FactorisedEmbedding)
    assert count_parameters(model)["embedding"] == 256 * 8 + 8 * hidden
    pack_text(tmp_path, tiny_llama, name="corpus")
    settings = {
        "epochs": 1,
        "max_steps": 2,
        "batch_size": 4,
        "grad_accum": 1,
        "lr": 1e-2,
        "warmup_ratio": 0.0,
        "weight_decay": 0.0,
        "max_grad_norm": 1.0,
        "checkpoint_every": 2,
        "teacher": "online",
    }
    run = {"student": "s", "stage1": {"losses": {"word_kl": {"temperature": 2.0}}}}
    data = {"cache": None, "corpus": tmp_path / "corpus", "teacher": tiny_llama}
    out = distill("stage1", tmp_path / "student", tmp_path / "out", tmp_path / "w", run, settings, data, None, seed=0)
    assert out["embedding_dim"] == 8
    trained = AutoModelForCausalLM.from_pretrained(tmp_path / "out", local_files_only=True)
    trained = trained.get_input_embeddings().weight
    assert torch.linalg.matrix_rank(trained.detach()) <= 8
    assert not torch.allclose(trained, plain.get_input_embeddings().weight)
