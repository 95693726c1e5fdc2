"""`kdflow bench`: kdflow against its peers on one machine, in one command.

Sections (each writes `OUT/<section>.json`; `OUT/bench.md` gathers them):
1. `stage1`  - stage-1 tokens/s: kdflow with cached targets (top-k and hidden caches), kdflow with an online
               teacher, TRL's GKD trainer (off-policy, forward KL) when `trl` is installed; same teacher, student
               (a full-vocabulary 6-layer cut, so TRL can run it), batches and objective.
2. `cache`   - bytes/token and KL error against dense logits, for kdflow's top-k + log-normaliser cache and a
               plain top-k cache renormalised over its entries (DistillKit style) at equal bytes/token.
3. `caching` - caching throughput against a bare teacher forward pass; peak RSS at 1x and 10x the corpus.
4. `scaling` - stage-1 tokens/s and peak RSS as the sequence length and the batch double (2 points each).
5. `rules`   - wall time and peak RSS of every rule of a finished experiment (Snakemake `benchmark:` files).

Every timed figure is the median over `repeats` fresh processes; every ratio divides two medians measured in
this run. Deterministic figures (bytes, KL errors) are computed once.
"""

from __future__ import annotations

import csv
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

from .common import (
    SECTIONS,
    BenchError,
    BenchSettings,
    cache_for_training,
    cache_settings,
    machine,
    prepare_assets,
    repeated,
    run_child,
    stage1_args,
    trl_available,
)

__all__ = ["SECTIONS", "BenchError", "BenchSettings", "run_bench", "trl_available"]


def bench_stage1(settings: BenchSettings, paths: dict[str, Path], work: Path) -> dict[str, Any]:
    blocks = settings.steps * settings.batch_size
    rows = {
        "kdflow_cached_topk": stage1_args(
            settings, paths, cache=cache_for_training(settings, paths, work, "topk", "corpus", blocks)
        ),
        "kdflow_cached_hidden": stage1_args(
            settings, paths, cache=cache_for_training(settings, paths, work, "hidden", "corpus", blocks)
        ),
        "kdflow_online": stage1_args(settings, paths),
    }
    report: dict[str, Any] = {name: repeated("stage1", args, settings) for name, args in rows.items()}
    if trl_available():
        report["trl_gkd_offpolicy"] = repeated("trl", stage1_args(settings, paths), settings)
    else:
        report["trl_gkd_offpolicy"] = {"skipped": "trl is not installed (pip install -r envs/bench.txt)"}
    online = report["kdflow_online"]["tokens_per_second"]
    ratios = {
        "cached_topk_over_online": report["kdflow_cached_topk"]["tokens_per_second"] / online,
        "cached_hidden_over_online": report["kdflow_cached_hidden"]["tokens_per_second"] / online,
    }
    if "tokens_per_second" in report["trl_gkd_offpolicy"]:
        ratios["online_over_trl"] = online / report["trl_gkd_offpolicy"]["tokens_per_second"]
    report["ratios"] = ratios
    report["goals"] = {"online_over_trl": 1.2, "cached_topk_over_online": 3.0}
    return report


def bench_cache(settings: BenchSettings, paths: dict[str, Path], work: Path) -> dict[str, Any]:
    from .quality import kl_errors

    blocks = min(settings.blocks, 16)
    sizes: dict[str, Any] = {}
    for k in settings.ks:
        m = run_child(
            "cache",
            {
                "teacher": str(paths["teacher"]),
                "corpus": str(paths["corpus"]),
                "out": str(work / f"k{k}"),
                "settings": cache_settings(settings, k, "topk", blocks, settings.block_size),
            },
            settings.threads,
        )
        sizes[f"topk_k{k}"] = {"bytes_per_token": m["bytes"] / m["positions"]}
    hidden = cache_for_training(settings, paths, work, "hidden", "corpus", blocks)
    manifest = json.loads((hidden / "manifest.json").read_text())
    sizes["hidden"] = {"bytes_per_token": manifest["bytes"] / manifest["positions"]}
    vocab = json.loads((paths["teacher"] / "config.json").read_text())["vocab_size"]
    sizes["dense_fp32"] = {"bytes_per_token": 4.0 * vocab}
    quality = {
        f"k{k}": kl_errors(
            paths["teacher"],
            paths["student"],
            paths["corpus"],
            work / f"k{k}",
            k,
            settings.kl_temperatures,
            blocks=min(blocks, 8),
        )
        for k in settings.ks
    }
    return {"bytes_per_token": sizes, "kl": quality}


def bench_caching(settings: BenchSettings, paths: dict[str, Path], work: Path) -> dict[str, Any]:
    base = {"teacher": str(paths["teacher"]), "corpus": str(paths["corpus"])}
    forward = repeated("forward", {**base, "blocks": settings.blocks, "batch_size": settings.batch_size}, settings)
    rss = {}
    for scale in (1, 10):
        blocks = settings.blocks * scale
        runs = []
        for r in range(settings.repeats if scale == 1 else 1):
            out = work / f"caching_{scale}x_{r}"
            args = {
                **base,
                "out": str(out),
                "settings": cache_settings(settings, 64, "topk", blocks, settings.block_size),
            }
            runs.append(run_child("cache", args, settings.threads))
        rss[f"{scale}x"] = {
            "blocks": blocks,
            "positions": runs[0]["positions"],
            "seconds": statistics.median(r["seconds"] for r in runs),
            "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in runs),
            "runs": runs,
        }
    cache_seconds = rss["1x"]["seconds"]
    return {
        "bare_forward": forward,
        "caching": rss,
        "throughput_ratio": forward["seconds"] / cache_seconds,
        "goal": 0.9,
    }


def bench_scaling(settings: BenchSettings, paths: dict[str, Path], work: Path) -> dict[str, Any]:
    points = {
        "base": ("corpus", settings.batch_size),
        "double_length": ("corpus_long", settings.batch_size),
        "double_batch": ("corpus", 2 * settings.batch_size),
    }
    report = {}
    for name, (corpus, batch) in points.items():
        cache = cache_for_training(settings, paths, work, "topk", corpus, settings.steps * batch)
        row = repeated("stage1", stage1_args(settings, paths, corpus, batch, cache), settings)
        report[name] = {
            "block_size": settings.block_size * (2 if corpus == "corpus_long" else 1),
            "batch_size": batch,
            **row,
        }
    return report


def bench_rules(settings: BenchSettings) -> dict[str, Any]:
    """Every `benchmark:` TSV under RESULTS/benchmarks: rule, job, seconds, peak RSS."""
    root = settings.results / "benchmarks"
    rows = []
    for path in sorted(root.rglob("*.tsv")) if root.is_dir() else []:
        with open(path, newline="") as fh:
            records = list(csv.DictReader(fh, delimiter="\t"))
        if not records:
            continue
        rel = path.relative_to(root).with_suffix("")
        seconds = [float(r["s"]) for r in records]
        rss = [float(r["max_rss"]) for r in records if r.get("max_rss") not in (None, "", "-", "NA")]
        rows.append(
            {
                "rule": rel.parts[0],
                "job": "/".join(rel.parts[1:]),
                "seconds": statistics.median(seconds),
                "max_rss_mb": statistics.median(rss) if rss else None,
                "runs": len(records),
            }
        )
    return {"source": str(root), "jobs": rows, "total_seconds": sum(r["seconds"] for r in rows)}


def run_bench(settings: BenchSettings) -> dict[str, Any]:
    """Run the chosen sections; write OUT/<section>.json and OUT/bench.md; return every section's report."""
    from .report import markdown

    unknown = set(settings.sections) - set(SECTIONS)
    if unknown:
        raise BenchError(f"unknown benchmark section(s) {', '.join(sorted(unknown))}; known: {', '.join(SECTIONS)}")
    settings.out.mkdir(parents=True, exist_ok=True)
    reports: dict[str, Any] = {}
    needs_assets = set(settings.sections) - {"rules"}
    with tempfile.TemporaryDirectory(prefix="kdflow-bench-") as tmp:
        work = Path(tmp)
        paths = prepare_assets(settings, work) if needs_assets else {}
        runners = {"stage1": bench_stage1, "cache": bench_cache, "caching": bench_caching, "scaling": bench_scaling}
        for section in settings.sections:
            report = bench_rules(settings) if section == "rules" else runners[section](settings, paths, work)
            report["settings"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(settings).items()}
            report["machine"] = machine()
            (settings.out / f"{section}.json").write_text(json.dumps(report, indent=2) + "\n")
            reports[section] = report
    (settings.out / "bench.md").write_text(markdown(reports))
    return reports
