"""Logit cache: exactness of top-k + normaliser, integrity checks, fingerprints, resume after a kill."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPEATED_TEXT as TEXT
from conftest import TINY_CACHE, pack_text

from kdflow.buffers import ChunkBuffers
from kdflow.cache.build import cache_corpus, cache_task
from kdflow.cache.format import bytes_per_position, sparse_targets
from kdflow.cache.kl import dense_kl, reconstruct, sparse_kl
from kdflow.cache.reader import CorpusCacheDataset, TaskCacheDataset
from kdflow.errors import DataError
from kdflow.modeling import load_lm
from kdflow.prepare import prepare_task, read_prepared
from kdflow.preprocess import open_blocks
from kdflow.prompts import resolve_prompt, to_cloze
from kdflow.scoring import score_clozes

SETTINGS = {**TINY_CACHE, "max_blocks": 12, "max_length": 64}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tiny_llama):
    return pack_text(tmp_path_factory.mktemp("corpus"), tiny_llama)


@pytest.mark.parametrize("temperature", [1.0, 15.0])
def test_sparse_kl_equals_dense_kl_when_k_is_the_vocabulary(temperature):
    torch.manual_seed(0)
    teacher, student = torch.randn(5, 50) * 3, torch.randn(5, 50) * 3
    full = sparse_targets(teacher, 50, [1.0, temperature])
    got = sparse_kl(student, full["values"], full["ids"], full["log_norm"][:, 1], temperature)
    assert torch.allclose(got, dense_kl(teacher, student, temperature), atol=1e-5)
    top = sparse_targets(teacher, 8, [1.0, temperature])
    bound = sparse_kl(student, top["values"], top["ids"], top["log_norm"][:, 1], temperature)
    assert (bound <= dense_kl(teacher, student, temperature) + 1e-6).all()  # a lower bound
    probs = reconstruct(top["values"], top["ids"], top["log_norm"][:, 1], temperature, 50)
    assert torch.allclose(probs.sum(-1), torch.ones(5), atol=1e-5)
    expected = torch.softmax(teacher / temperature, -1).gather(-1, top["ids"])
    assert torch.allclose(probs.gather(-1, top["ids"]), expected, atol=1e-6)


def test_sparse_targets_in_the_callers_buffer_equal_the_copying_ones():
    """``overwrite`` (the cache builder's fresh logits) gives the same targets and uses the buffer as workspace:
    it ends as exp((z - max) / 15), the last temperature's terms, divided in place."""
    torch.manual_seed(3)
    logits = torch.randn(6, 70) * 4
    kept = logits.clone()
    copied = sparse_targets(logits, 9, [1.0, 15.0])
    assert torch.equal(logits, kept)
    in_place = sparse_targets(logits, 9, [1.0, 15.0], overwrite=True)
    for key in copied:
        assert torch.equal(copied[key], in_place[key])
    assert torch.equal(logits, ((kept - kept.max(-1, keepdim=True).values) / 15.0).exp())


def test_sparse_targets_with_a_reused_scratch_buffer_equal_fresh_ones():
    """The cache builder reuses its exp buffer from batch to batch (``ChunkBuffers``): a smaller batch takes a view
    of the same storage, a larger one or another dtype a new buffer; the targets equal those of fresh buffers."""
    torch.manual_seed(4)
    buffers = ChunkBuffers(torch.device("cpu"))
    pointers = []
    for rows in (6, 4, 8):
        logits = torch.randn(rows, 70) * 4
        fresh = sparse_targets(logits.clone(), 9, [1.0, 15.0])
        scratch = buffers.take("exp", (rows, 70))
        pointers.append(scratch.data_ptr())
        reused = sparse_targets(logits, 9, [1.0, 15.0], overwrite=True, scratch=scratch)
        for key in fresh:
            assert torch.equal(fresh[key], reused[key])
    assert pointers[0] == pointers[1] != pointers[2]
    assert buffers.take("exp", (2, 3), torch.bfloat16).dtype == torch.bfloat16


def test_bytes_per_position():
    assert bytes_per_position(64, "bf16", 49152, 2) == 64 * 4 + 8


def test_corpus_cache_reader_matches_the_teacher(tmp_path, tiny_llama, corpus):
    manifest = cache_corpus(tiny_llama, corpus, None, tmp_path / "cache", SETTINGS, seed=0)
    assert manifest["blocks"] == 12 and len(manifest["shards"]) == 3
    data = CorpusCacheDataset(tmp_path / "cache", corpus, tokenizer_dir=tiny_llama)
    item = data[5]
    model, _, _ = load_lm(tiny_llama)
    with torch.no_grad():
        logits = model(item["input_ids"][None]).logits[0]
    lp = torch.log_softmax(logits, -1)
    top = lp.topk(16, -1)
    assert torch.equal(item["ids"], top.indices)
    assert torch.allclose(item["values"], top.values, atol=1e-4)
    assert torch.allclose(item["log_norm"][:, 1], torch.logsumexp(lp / 15.0, -1), atol=1e-4)


def test_the_head_chunk_size_changes_no_stored_target(tmp_path, tiny_llama, corpus, monkeypatch):
    """The LM head runs a chunk of rows at a time (CHUNK_ELEMENTS, sized for speed): one row per chunk and
    every row of a batch at once store the same targets."""
    import kdflow.cache.head as head

    caches = {}
    for name, elements in (("row", 1), ("batch", 1 << 26)):
        monkeypatch.setattr(head, "CHUNK_ELEMENTS", elements)
        cache_corpus(tiny_llama, corpus, None, tmp_path / name, SETTINGS, seed=0)
        caches[name] = CorpusCacheDataset(tmp_path / name, corpus, tokenizer_dir=tiny_llama)
    for i in (0, 7, 11):
        row, batch = caches["row"][i], caches["batch"][i]
        assert torch.equal(row["ids"], batch["ids"])
        assert torch.allclose(row["values"], batch["values"], atol=1e-2)
        assert torch.allclose(row["log_norm"], batch["log_norm"], atol=1e-5)


def test_corrupted_shard_is_reported_by_name(tmp_path, tiny_llama, corpus):
    cache_corpus(tiny_llama, corpus, None, tmp_path / "cache", SETTINGS, seed=0)
    shard = tmp_path / "cache" / "shard_00001.npz"
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    shard.write_bytes(bytes(raw))
    data = CorpusCacheDataset(tmp_path / "cache", corpus)
    data[0]  # shard 0 is intact
    with pytest.raises(DataError, match=r"shard_00001\.npz: cache shard is corrupted or truncated"):
        data[4]
    shard.write_bytes(bytes(raw[:100]))
    with pytest.raises(DataError, match="shard_00001.npz"):
        CorpusCacheDataset(tmp_path / "cache", corpus)[5]


def test_mismatched_fingerprint_is_refused(tmp_path, tiny_llama, tiny_bert, corpus):
    cache_corpus(tiny_llama, corpus, None, tmp_path / "cache", SETTINGS, seed=0)
    other = pack_text(tmp_path, tiny_llama, TEXT.replace("fox", "cat"), name="other")
    with pytest.raises(DataError, match="built from other inputs than this job's .*data"):
        CorpusCacheDataset(tmp_path / "cache", other)
    with pytest.raises(DataError, match="tokenizer"):
        CorpusCacheDataset(tmp_path / "cache", corpus, tokenizer_dir=tiny_bert)


@pytest.mark.slow
def test_killed_job_resumes_to_an_identical_cache(tmp_path, tiny_llama, corpus, tool_env):
    cache_corpus(tiny_llama, corpus, None, tmp_path / "clean", SETTINGS, seed=0)
    cmd = [
        sys.executable,
        "-m",
        "kdflow",
        "cache-logits",
        "--teacher",
        str(tiny_llama),
        "--corpus",
        str(corpus),
        "--settings",
        json.dumps(SETTINGS),
        "--out",
        str(tmp_path / "killed"),
    ]
    first = subprocess.run(cmd, env={**tool_env, "KDFLOW_FAULT": "shard:2"}, capture_output=True, text=True)
    assert first.returncode == 137
    assert not (tmp_path / "killed" / "manifest.json").exists()
    assert sorted(p.name for p in (tmp_path / "killed").glob("shard_*.json")) == [
        "shard_00000.json",
        "shard_00001.json",
    ]
    second = subprocess.run(cmd, env=tool_env, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "resuming" in second.stderr
    for name in ("shard_00000.npz", "shard_00001.npz", "shard_00002.npz"):
        assert (tmp_path / "clean" / name).read_bytes() == (tmp_path / "killed" / name).read_bytes()
    clean = json.loads((tmp_path / "clean" / "manifest.json").read_text())
    killed = json.loads((tmp_path / "killed" / "manifest.json").read_text())
    assert clean["shards"] == killed["shards"] and clean["fingerprints"] == killed["fingerprints"]


def test_masked_lm_cache_reproduces_the_masking(tmp_path, tiny_bert):
    packed = pack_text(tmp_path, tiny_bert)
    manifest = cache_corpus(tiny_bert, packed, None, tmp_path / "cache", SETTINGS, seed=3)
    assert manifest["family"] == "masked"
    data = CorpusCacheDataset(tmp_path / "cache", packed, tokenizer_dir=tiny_bert)
    item = data[2]
    assert 0 < len(item["positions"]) < 32 and item["values"].shape == (len(item["positions"]), 16)
    model, tok, _ = load_lm(tiny_bert)
    with torch.no_grad():
        logits = model(item["input_ids"][None]).logits[0, item["positions"]]
    assert torch.equal(item["ids"], logits.topk(16, -1).indices)
    assert (item["input_ids"] == tok.mask_token_id).sum() > 0


def test_task_cache_holds_word_targets_and_candidate_scores(tmp_path, tiny_llama, shared_or_fixture_task):
    manifest = cache_task(tiny_llama, shared_or_fixture_task, None, tmp_path / "cache", SETTINGS)
    data = TaskCacheDataset(tmp_path / "cache", shared_or_fixture_task)
    assert len(data) == manifest["examples"]
    item = data[3 % len(data)]
    meta = json.loads((shared_or_fixture_task / "task.json").read_text())
    from kdflow.data.tasks import get_task

    task = get_task(meta["task"])
    ex = read_prepared(shared_or_fixture_task / "train.jsonl")[3 % len(data)]
    model, tok, family = load_lm(tiny_llama)
    expected = score_clozes(
        model, tok, family, [to_cloze(task, resolve_prompt(task, meta["prompt"]), ex)], progress=False
    )
    assert torch.allclose(item["candidate_scores"], torch.tensor(expected[0]), atol=1e-4)
    assert len(item["positions"]) == len(item["input_ids"]) == item["values"].shape[0]


@pytest.fixture(params=[("qnli", "glue/QNLI"), ("record", "superglue/ReCoRD")], ids=["single-token", "multi-token"])
def shared_or_fixture_task(tmp_path, request):
    from pathlib import Path

    name, source = request.param
    fixtures = Path(__file__).parent / "fixtures"
    folder = tmp_path / name
    prepare_task(name, {"name": name}, str(fixtures / source), folder)
    # two train rows in the fixture: duplicate them so the cache has several shards
    rows = (folder / "train.jsonl").read_text().splitlines() * 6
    (folder / "train.jsonl").write_text("\n".join(rows) + "\n")
    return folder


def test_dense_mode_and_vocabulary_projection(tmp_path, tiny_llama, corpus):
    from transformers import AutoTokenizer

    from kdflow.fingerprint import tokenizer_fingerprint
    from kdflow.vocab.compress import build_vocab_map

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    counts = np.zeros(len(tok), dtype=np.int64)
    text_ids = tok(TEXT)["input_ids"]
    counts[np.asarray(text_ids)] += 1
    vmap = build_vocab_map(counts, tok, [], {"size": 128, "round_to": 64})
    vmap.meta["tokenizer_sha256"] = tokenizer_fingerprint(tiny_llama)
    vmap.save(tmp_path / "map.json")
    settings = {**SETTINGS, "mode": "dense", "max_blocks": 4}
    manifest = cache_corpus(tiny_llama, corpus, tmp_path / "map.json", tmp_path / "cache", settings, seed=0)
    assert manifest["student_vocab_size"] == 128 and manifest["fingerprints"]["vocab_map"] != "full"
    item = CorpusCacheDataset(tmp_path / "cache", corpus, tmp_path / "map.json")[1]
    assert item["dense"].shape == (32, 128) and int(item["input_ids"].max()) < 128
    model, _, _ = load_lm(tiny_llama)
    with torch.no_grad():
        teacher_ids = torch.from_numpy(np.asarray(open_blocks(corpus)[1]).astype(np.int64))
        logits = model(teacher_ids[None]).logits[0]
    expected = torch.log_softmax(vmap.project_logits(logits), -1)  # kept columns, renormalised
    assert torch.allclose(item["dense"], expected, atol=1e-4)
    with pytest.raises(DataError, match="vocab_map"):
        CorpusCacheDataset(tmp_path / "cache", corpus)  # read as full-vocabulary: refused


@pytest.mark.parametrize("family", ["tiny_llama", "tiny_bert"])
def test_hidden_mode_reconstructs_the_teacher_logits(tmp_path, family, request):
    teacher = request.getfixturevalue(family)
    packed = pack_text(tmp_path, teacher)
    settings = {**SETTINGS, "mode": "hidden", "max_blocks": 4}
    manifest = cache_corpus(teacher, packed, None, tmp_path / "cache", settings, seed=1)
    assert manifest["head_sha256"] and (tmp_path / "cache" / "head.safetensors").exists()
    data = CorpusCacheDataset(tmp_path / "cache", packed, tokenizer_dir=teacher)
    item = data[2]
    model, _, _ = load_lm(teacher)
    with torch.no_grad():
        expected = model(item["input_ids"][None]).logits[0, item["positions"]]
    assert torch.allclose(data.teacher_logits(item["hidden"]), expected, atol=1e-4)
    (tmp_path / "cache" / "head.safetensors").write_bytes(b"broken")
    with pytest.raises(DataError, match="head"):
        CorpusCacheDataset(tmp_path / "cache", packed, tokenizer_dir=teacher).teacher_logits(item["hidden"])


def test_a_failed_background_write_surfaces_and_stops_the_writes(tmp_path, monkeypatch):
    """Shards are written by a background thread: its first failure is raised in the caller (at the next add,
    at finish or on leaving the block) and no later shard is written."""
    from types import SimpleNamespace

    from kdflow.cache import store

    written: list[str] = []

    def fails_second(path, arrays):
        written.append(path.name)
        if len(written) == 2:
            raise OSError("disk gone")
        return real(path, arrays)

    real = store.write_shard
    monkeypatch.setattr(store, "write_shard", fails_second)
    with pytest.raises(OSError, match="disk gone"):
        with store.ShardWriter(tmp_path, {"header": 1}) as writer:
            for index in range(4):
                writer.add(index, {"x": np.arange(3)}, {"positions": 3})
            writer.finish(4, {}, SimpleNamespace(barrier=lambda: None))
    assert written == ["shard_00000.npz", "shard_00001.npz"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard_00000.json", "shard_00000.npz"]
    assert not writer._background.thread.is_alive()
