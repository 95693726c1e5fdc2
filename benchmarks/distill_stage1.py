"""Benchmark: stage-1 distillation tokens/s and peak RSS with cached teacher targets vs an online teacher,
on the same teacher (SmolLM2), student (6-of-30 layers, half vocabulary), batches and objective (word_kl,
T = 15). Needs the default experiment's outputs (`make run`): the student, the corpus and its caches.

    .venv/bin/python benchmarks/distill_stage1.py [--steps 8] [--out results/bench/distill_stage1.json]

Each setting runs in a fresh process (its own peak RSS); figures are medians of the per-step tokens/s,
after one warm-up step.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CHILD = """
import csv, json, resource, statistics, sys, tempfile
from pathlib import Path
from kdflow.distill import distill
teacher, cache, corpus, student, mode, steps = sys.argv[1:7]
run = {"student": "s", "stage1": {"losses": {"word_kl": {"weight": 1.0, "temperature": 15.0}}}, "stage2": {"losses": {"ce": {}}}}
settings = {"epochs": 100, "max_steps": int(steps), "batch_size": 8, "grad_accum": 1, "lr": 1e-4, "warmup_ratio": 0.0,
            "weight_decay": 0.0, "max_grad_norm": 1.0, "checkpoint_every": 10**6, "max_length": 128, "teacher": mode}
with tempfile.TemporaryDirectory() as tmp:
    distill("stage1", student, Path(tmp) / "out", Path(tmp) / "work", run, settings,
            {"cache": cache if mode == "cached" else None, "corpus": corpus, "teacher": teacher}, None, seed=0)
    with open(Path(tmp) / "out" / "train_log.csv") as fh:
        rates = [float(r["tokens_per_second"]) for r in csv.DictReader(fh)][1:]
print(json.dumps({"tokens_per_second": statistics.median(rates), "steps": len(rates),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--results", default="results")
    parser.add_argument("--student", default="s6")
    parser.add_argument("--vocab", default="half")
    parser.add_argument("--cache", default=None, help="a corpus cache folder (default: the experiment's)")
    parser.add_argument("--out", default="results/bench/distill_stage1.json")
    args = parser.parse_args()
    r = Path(args.results)
    paths = {
        "teacher": r / "assets/models/smollm2",
        "cache": Path(args.cache) if args.cache else r / f"cache/corpus/package_texts/{args.vocab}",
        "corpus": r / "corpus/package_texts",
        "student": r / f"students/{args.student}",
    }
    missing = [str(p) for p in paths.values() if not p.exists()]
    if missing:
        sys.exit(f"run the default experiment first (make run); missing: {', '.join(missing)}")
    report = {}
    for mode in ("cached", "online"):
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, *(str(paths[k]) for k in ("teacher", "cache", "corpus", "student")),
             mode, str(args.steps)], capture_output=True, text=True, check=True,
        )  # fmt: skip
        report[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    manifest = json.loads((paths["cache"] / "manifest.json").read_text())
    report["cache_mode"] = manifest["settings"]["mode"]
    report["speed_ratio_cached_over_online"] = report["cached"]["tokens_per_second"] / report["online"]["tokens_per_second"]
    for mode in ("cached", "online"):
        row = report[mode]
        print(f"{mode:7s} {row['tokens_per_second']:8.1f} tokens/s (median of {row['steps']} steps)  "
              f"peak RSS {row['peak_rss_mb']:.0f} MB")
    print(f"cached ({report['cache_mode']} cache) / online: {report['speed_ratio_cached_over_online']:.2f}x")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
