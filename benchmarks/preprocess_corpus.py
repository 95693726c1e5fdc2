"""Benchmark: preprocessing throughput (tokens/s) and peak RSS for 1x and 10x the embedded corpus.

    .venv/bin/python benchmarks/preprocess_corpus.py [--scales 1 10] [--out results/bench/preprocess.json]

Each scale runs in a fresh process, which reports its own peak RSS, so the figures do not mix.
The 10x corpus repeats every document ten times with a copy number in front, so no copy is a duplicate.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import json, resource, sys
from kdflow.preprocess import preprocess_corpus
meta = preprocess_corpus(sys.argv[1], {}, sys.argv[2], sys.argv[3],
                         {"block_size": 128, "valid_fraction": 0.05, "batch_documents": 256}, seed=0)
meta["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(meta))
"""


def _tokenizer_dir(work: Path) -> Path:
    from kdflow.assets.models import SMOLLM2, load_tokenizer

    folder = work / "tokenizer"
    load_tokenizer(SMOLLM2).save_pretrained(folder)
    return folder


def _scaled_corpus(base: Path, scale: int, out: Path) -> Path:
    with open(base, encoding="utf-8") as src, open(out, "w", encoding="utf-8") as dst:
        lines = src.readlines()
        for copy in range(scale):
            for line in lines:
                doc = json.loads(line)
                doc["text"] = f"[copy {copy}] {doc['text']}" if scale > 1 else doc["text"]
                dst.write(json.dumps(doc) + "\n")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--out", default="results/bench/preprocess.json")
    args = parser.parse_args()
    from kdflow.assets.corpus import EMBEDDED_CORPUS, build_corpus

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tokenizer = _tokenizer_dir(work)
        base = work / "base.jsonl"
        build_corpus(EMBEDDED_CORPUS, base)
        for scale in args.scales:
            corpus = _scaled_corpus(base, scale, work / f"x{scale}.jsonl")
            started = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-c", CHILD, str(corpus), str(tokenizer), str(work / f"out{scale}")],
                capture_output=True,
                text=True,
                check=True,
            )
            meta = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append(
                {
                    "scale": scale,
                    "documents": meta["documents_read"],
                    "tokens": meta["tokens"],
                    "seconds": round(time.perf_counter() - started, 2),
                    "tokens_per_second": round(meta["tokens_per_second"]),
                    "peak_rss_mb": round(meta["peak_rss_mb"], 1),
                    "corpus_mb": round(corpus.stat().st_size / 2**20, 1),
                }
            )
    print(f"{'scale':>5} {'documents':>10} {'tokens':>11} {'corpus MB':>9} {'tokens/s':>10} {'peak RSS MB':>11}")
    for r in rows:
        print(
            f"{r['scale']:>5} {r['documents']:>10,} {r['tokens']:>11,} {r['corpus_mb']:>9} "
            f"{r['tokens_per_second']:>10,} {r['peak_rss_mb']:>11}"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
