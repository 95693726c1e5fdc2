"""Benchmark of the teacher logit cache with the real SmolLM2 teacher (run after `make run`, or it builds
the assets it needs):

    .venv/bin/python benchmarks/logit_cache.py [--blocks 16] [--out results/bench/logit_cache.json]

Prints and writes:
1. bytes per token at k = 16, 64, 256 (bf16 values, uint16 ids, normalisers for T = 1 and 15) and of
   the ``hidden`` mode (the teacher's LM-head inputs, bf16), measured from the shard files;
2. KL error against dense logits at T = 1 and T = 15 on a corpus sample, with a real student (a 6-of-30
   layer cut of the teacher): the cached "top-k + tail bucket" KL, a plain top-k cache renormalised over
   its k entries (DistillKit style) at equal bytes per token, KL(p || reconstructed p), and the KL
   computed from the ``hidden`` cache;
3. caching throughput against a bare teacher forward pass over the same batches;
4. peak RSS of caching 1x and 10x the sample (each in a fresh process).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

CHILD = """
import json, resource, sys
from kdflow.cache.build import cache_corpus
settings = json.loads(sys.argv[4])
m = cache_corpus(sys.argv[1], sys.argv[2], None, sys.argv[3], settings, seed=0)
print(json.dumps({"seconds": m["seconds_this_run"], "forward": m["teacher_forward_seconds_this_run"],
                  "positions": m["positions"], "bytes": m["bytes"],
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _assets(work: Path) -> tuple[Path, Path]:
    """The SmolLM2 folder and the packed embedded corpus (reused from results/ when `make run` made them)."""
    from kdflow.assets.corpus import EMBEDDED_CORPUS, build_corpus
    from kdflow.assets.models import SMOLLM2, build_model
    from kdflow.preprocess import preprocess_corpus

    teacher, corpus = Path("results/assets/models/smollm2"), Path("results/corpus/package_texts")
    if not (teacher / "config.json").exists():
        teacher = work / "smollm2"
        build_model({"source": SMOLLM2}, teacher)
    if not (corpus / "meta.json").exists():
        build_corpus(EMBEDDED_CORPUS, work / "corpus.jsonl")
        corpus = work / "packed"
        preprocess_corpus(str(work / "corpus.jsonl"), {}, teacher, corpus,
                          {"block_size": 128, "valid_fraction": 0.05, "batch_documents": 256}, seed=1234)  # fmt: skip
    return teacher, corpus


def _settings(k: int, blocks: int, mode: str = "topk") -> dict:
    return {"k": k, "value_dtype": "bf16", "temperatures": [1.0, 15.0], "mode": mode, "shard_blocks": 64,
            "shard_examples": 64, "batch_size": 8, "max_blocks": blocks, "max_length": 128}  # fmt: skip


def _child(teacher: Path, corpus: Path, out: Path, settings: dict) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(teacher), str(corpus), str(out), json.dumps(settings)],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _student(teacher: Path):
    from kdflow.modeling import load_lm

    model, _, _ = load_lm(teacher)
    keep = [0, 6, 12, 18, 24, 29]
    model.model.layers = torch.nn.ModuleList([model.model.layers[i] for i in keep])
    model.config.num_hidden_layers = len(keep)
    for i, layer in enumerate(model.model.layers):
        layer.self_attn.layer_idx = i
    return model


@torch.no_grad()
def _kl_errors(teacher: Path, corpus: Path, cache_dir: Path, k: int, blocks: int) -> dict:
    from kdflow.cache.kl import dense_kl, reconstruct, sparse_kl
    from kdflow.cache.reader import CorpusCacheDataset
    from kdflow.modeling import load_lm

    t_model, _, _ = load_lm(teacher)
    s_model = _student(teacher)
    data = CorpusCacheDataset(cache_dir, corpus)
    hidden = CorpusCacheDataset(cache_dir.parent / "hidden", corpus)
    out = {}
    rows = {1.0: [], 15.0: []}
    for i in range(blocks):
        item = data[i]
        ids = item["input_ids"][None]
        t_logits, s_logits = t_model(ids).logits[0], s_model(ids).logits[0]
        from_hidden = hidden.teacher_logits(hidden[i]["hidden"])
        for col, temp in enumerate((1.0, 15.0)):
            dense = dense_kl(t_logits, s_logits, temp)
            cached = sparse_kl(s_logits, item["values"], item["ids"], item["log_norm"][:, col], temp)
            # plain top-k at equal bytes: the 8 normaliser bytes buy 2 more (bf16 value + uint16 id) entries
            lp = torch.log_softmax(t_logits.float(), -1)
            top = lp.topk(k + 2, -1)
            p_plain = torch.softmax(top.values / temp, -1)
            log_q = torch.log_softmax(s_logits.float() / temp, -1).gather(-1, top.indices)
            plain = (p_plain * (p_plain.log() - log_q)).sum(-1)
            p_hat = reconstruct(item["values"], item["ids"], item["log_norm"][:, col], temp, t_logits.shape[-1])
            log_p = torch.log_softmax(t_logits.float() / temp, -1)
            recon = (log_p.exp() * (log_p - p_hat.clamp(min=1e-30).log())).sum(-1)
            via_hidden = dense_kl(from_hidden, s_logits, temp)
            rows[temp].append((dense, cached, plain, recon, via_hidden))
    for temp, parts in rows.items():
        dense, cached, plain, recon, via_hidden = (torch.cat([p[j] for p in parts]) for j in range(5))
        out[f"T={temp:g}"] = {
            "dense_kl_mean": float(dense.mean()),
            "cached_kl_mean": float(cached.mean()),
            "cached_relative_error": float((dense - cached).abs().mean() / dense.mean()),
            "plain_topk_kl_mean": float(plain.mean()),
            "plain_topk_relative_error": float((dense - plain).abs().mean() / dense.mean()),
            "reconstruction_kl_mean": float(recon.mean()),
            "hidden_kl_mean": float(via_hidden.mean()),
            "hidden_relative_error": float((dense - via_hidden).abs().mean() / dense.mean()),
        }
    return out


@torch.no_grad()
def _bare_forward_seconds(teacher: Path, corpus: Path, blocks: int) -> float:
    from kdflow.modeling import load_lm
    from kdflow.preprocess import open_blocks

    model, _, _ = load_lm(teacher)
    data = open_blocks(corpus, "train")
    started = time.perf_counter()
    for b in range(0, blocks, 8):
        ids = torch.from_numpy(np.asarray(data[b : min(b + 8, blocks)]).astype(np.int64))
        model(input_ids=ids, attention_mask=torch.ones_like(ids))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=16, help="corpus blocks of 128 tokens in the sample")
    parser.add_argument("--out", default="results/bench/logit_cache.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    report: dict = {"blocks": args.blocks}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        teacher, corpus = _assets(work)
        sizes = {}
        for k in (16, 64, 256):
            m = _child(teacher, corpus, work / f"k{k}", _settings(k, args.blocks))
            sizes[k] = {"bytes_per_token": m["bytes"] / m["positions"], "seconds": m["seconds"]}
        m = _child(teacher, corpus, work / "hidden", _settings(64, args.blocks, "hidden"))
        sizes["hidden"] = {"bytes_per_token": m["bytes"] / m["positions"], "seconds": m["seconds"]}
        report["bytes_per_token"] = sizes
        report["kl"] = _kl_errors(teacher, corpus, work / "k64", 64, min(args.blocks, 8))
        bare = _bare_forward_seconds(teacher, corpus, args.blocks)
        report["throughput"] = {"bare_forward_seconds": bare, "cache_seconds_k64": sizes[64]["seconds"],
                                "ratio": bare / sizes[64]["seconds"]}  # fmt: skip
        rss = {}
        for scale in (1, 10):
            m = _child(teacher, corpus, work / f"rss{scale}", _settings(64, args.blocks * scale))
            rss[f"{scale}x"] = {"blocks": args.blocks * scale, "peak_rss_mb": round(m["peak_rss_mb"], 1),
                                "tokens_per_second": m["positions"] / m["seconds"]}  # fmt: skip
        report["peak_rss"] = rss
    print("bytes/token:", {k: round(v["bytes_per_token"], 1) for k, v in report["bytes_per_token"].items()})
    for temp, row in report["kl"].items():
        print(f"{temp}: dense KL {row['dense_kl_mean']:.4f}  cached {row['cached_kl_mean']:.4f} "
              f"(rel. error {100 * row['cached_relative_error']:.3f} %)  plain top-k at equal bytes "
              f"{row['plain_topk_kl_mean']:.4f} (rel. error {100 * row['plain_topk_relative_error']:.2f} %)  "
              f"KL(p||p_hat) {row['reconstruction_kl_mean']:.5f}  hidden mode {row['hidden_kl_mean']:.4f} "
              f"(rel. error {100 * row['hidden_relative_error']:.3f} %)")  # fmt: skip
    t = report["throughput"]
    print(f"caching throughput / bare forward: {100 * t['ratio']:.1f} % ({t['cache_seconds_k64']:.1f} s vs {t['bare_forward_seconds']:.1f} s)")
    for scale, row in report["peak_rss"].items():
        print(f"{scale}: {row['blocks']} blocks, peak RSS {row['peak_rss_mb']} MB, {row['tokens_per_second']:.0f} tokens/s")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
