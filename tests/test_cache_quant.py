"""Quantised hidden caches (value_dtype int8 / int4): error bounds, packing, an end-to-end build + read, bytes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY_CACHE, pack_text

from kdflow.cache.build import cache_corpus
from kdflow.cache.quant import (
    bytes_per_vector,
    decode_hidden,
    dequantise,
    encode_hidden,
    group_size,
    pack_int4,
    quantise,
    unpack_int4,
)
from kdflow.cache.reader import CorpusCacheDataset
from kdflow.cache.store import ShardReader
from kdflow.config_checks import check_corpora
from kdflow.errors import ConfigError
from kdflow.modeling import load_lm

HIDDEN = {**TINY_CACHE, "mode": "hidden", "max_blocks": 6, "shard_blocks": 4}


def _outliers(rows: int = 300, d: int = 576) -> torch.Tensor:
    """Gaussian rows with two massive channels (7 and d / 2, as LM head inputs have), a zero row and a tiny row."""
    x = torch.randn(rows, d, generator=torch.Generator().manual_seed(0))
    x[:, 7] *= 60.0
    x[:, d // 2] -= 25.0
    x[3] = 0.0
    x[4] *= 1e-3
    return x


def test_group_sizes_and_bytes_per_position():
    assert [group_size("int8", 576), group_size("int4", 576)] == [64, 144]
    assert [group_size("int8", 32), group_size("int4", 768), group_size("int8", 100)] == [32, 128, 50]
    assert [bytes_per_vector(t, 576) for t in ("bf16", "fp32", "int8", "int4")] == [1152, 2304, 594, 296]


@pytest.mark.parametrize("dtype, levels", [("int8", 127), ("int4", 7)])
def test_round_trip_error_is_at_most_half_a_step(dtype, levels):
    x = _outliers()
    q, scale = quantise(x, dtype)
    assert q.dtype == torch.int8 and int(q.abs().max()) == levels and scale.dtype == torch.float16
    assert scale.shape == (300, 576 // group_size(dtype, 576))
    step = scale.float().repeat_interleave(group_size(dtype, 576), dim=1)
    error = (dequantise(q, scale) - x).abs()
    assert bool((error <= step / 2 + 1e-6 * x.abs()).all())
    assert float(error[3].max()) == 0.0  # a zero row stays zero
    # grouped scales keep the outliers' step out of the other groups: the error there is far below theirs
    outlier_group = 7 // group_size(dtype, 576)
    others = [g for g in range(scale.shape[1]) if g not in (outlier_group, 288 // group_size(dtype, 576))]
    assert float(scale[:, others].float().median()) < 0.2 * float(scale[:, outlier_group].float().median())


def test_int4_packing_round_trips_and_halves_the_bytes():
    q = torch.arange(-7, 8, dtype=torch.int8).repeat(4, 2)[:, :30]
    packed = pack_int4(q)
    assert packed.dtype == torch.uint8 and packed.shape == (4, 15)
    assert torch.equal(unpack_int4(packed), q)
    arrays = encode_hidden(_outliers(10, 32), "int4")
    assert arrays["hidden"].nbytes + arrays["hidden_scale"].nbytes == 10 * bytes_per_vector("int4", 32)
    q32, s32 = quantise(_outliers(10, 32), "int4")
    assert torch.equal(decode_hidden(arrays, slice(2, 5), "int4"), dequantise(q32, s32)[2:5])


def test_integer_dtypes_need_mode_hidden(tmp_path, tiny_llama):
    assert check_corpora({"cache": {"value_dtype": "int8", "mode": "hidden"}}) == []
    assert check_corpora({"cache": {"value_dtype": "int4"}}) == [
        "config key 'cache.value_dtype': int4 needs cache.mode 'hidden' (not 'topk'): use bf16/fp16/fp32"
    ]
    with pytest.raises(ConfigError, match="needs mode 'hidden'"):
        cache_corpus(tiny_llama, tmp_path, None, tmp_path / "c", {**TINY_CACHE, "value_dtype": "int8"}, seed=0)


@pytest.fixture(scope="module")
def caches(tmp_path_factory, tiny_llama):
    root = tmp_path_factory.mktemp("quant")
    corpus = pack_text(root, tiny_llama)
    manifests = {
        dtype: cache_corpus(tiny_llama, corpus, None, root / dtype, {**HIDDEN, "value_dtype": dtype}, seed=0)
        for dtype in ("bf16", "int8", "int4")
    }
    return root, corpus, manifests


@pytest.mark.parametrize("dtype, tolerance", [("int8", 0.01), ("int4", 0.15)])
def test_quantised_cache_decodes_close_to_the_bf16_cache(caches, tiny_llama, dtype, tolerance):
    root, corpus, _ = caches
    reference = CorpusCacheDataset(root / "bf16", corpus)
    data = CorpusCacheDataset(root / dtype, corpus)
    model, _, _ = load_lm(tiny_llama)
    head = model.get_output_embeddings().weight.detach().float()
    for i in (0, 5):
        item, ref = data[i], reference[i]
        logits, ref_logits = data.teacher_logits(item["hidden"]), reference.teacher_logits(ref["hidden"])
        # the logits' error is bounded by |W| times the half steps; bf16 adds at most |W| |h| 2^-8
        arrays = ShardReader(root / dtype).shard(i // HIDDEN["shard_blocks"])
        rows = slice((i % HIDDEN["shard_blocks"]) * 32, (i % HIDDEN["shard_blocks"] + 1) * 32)
        half_steps = torch.from_numpy(arrays["hidden_scale"][rows]).float().repeat_interleave(group_size(dtype, 32), 1)
        bound = half_steps / 2 @ head.abs().T + ref["hidden"].abs() @ head.abs().T * 2**-8
        assert bool(((logits - ref_logits).abs() <= bound + 1e-5).all())
        spread = float(ref_logits.max() - ref_logits.min())
        assert 0 < float((logits - ref_logits).abs().max()) < tolerance * spread


def test_manifest_bytes_per_token_follow_the_formula(caches):
    root, _, manifests = caches
    for dtype, manifest in manifests.items():
        assert manifest["positions"] == 6 * 32 and manifest["settings"]["value_dtype"] == dtype
        reader = ShardReader(root / dtype)
        shards = [reader.shard(i) for i in range(len(manifest["shards"]))]
        payload = sum(a.nbytes for arrays in shards for a in arrays.values())
        assert payload == manifest["positions"] * bytes_per_vector(dtype, 32)
        assert 0 < manifest["bytes"] - payload < 1024 * len(shards)  # the .npz headers
        assert manifest["bytes_per_position"] == pytest.approx(manifest["bytes"] / manifest["positions"])
    assert np.asarray(shards[0]["hidden"]).dtype == np.uint8  # int4: packed bytes
