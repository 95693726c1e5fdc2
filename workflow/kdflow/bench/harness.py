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
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import KdflowError

SECTIONS = ("stage1", "cache", "caching", "scaling", "rules")


class BenchError(KdflowError):
    """A benchmark workload failed or its inputs are missing."""


@dataclass
class BenchSettings:
    """What to measure and how hard: the defaults suit the embedded SmolLM2 on a 2-core CPU."""

    teacher: Path | None = None  # default: the embedded SmolLM2 (results/assets/models/smollm2 when present)
    results: Path = Path("results")
    out: Path = Path("results/bench")
    sections: tuple[str, ...] = SECTIONS
    repeats: int = 3
    steps: int = 6
    batch_size: int = 8
    block_size: int = 128
    blocks: int = 32  # corpus blocks cached / forwarded (section 3: 1x; 10x for the RSS point)
    documents: int | None = 400  # embedded-corpus documents packed for the benchmark
    layers: int = 6
    temperature: float = 1.0  # TRL's GKD loss has no temperature: compare at T = 1
    ks: tuple[int, ...] = (16, 64, 256)
    kl_temperatures: tuple[float, ...] = (1.0, 15.0)
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)


def run_child(workload: str, args: dict[str, Any], threads: int) -> dict[str, Any]:
    """One workload in a fresh Python process (kdflow.bench.child); its JSON result."""
    env = {**os.environ, "TRL_EXPERIMENTAL_SILENCE": "1", "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "kdflow.bench.child", workload, json.dumps({**args, "threads": threads})]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise BenchError(f"benchmark workload '{workload}' failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def repeated(workload: str, args: dict[str, Any], settings: BenchSettings) -> dict[str, Any]:
    """Median of each numeric field over `repeats` fresh runs, with every run's values kept."""
    runs = [run_child(workload, args, settings.threads) for _ in range(settings.repeats)]
    keys = [k for k, v in runs[0].items() if isinstance(v, (int, float))]
    return {**{k: statistics.median(r[k] for r in runs) for k in keys}, "runs": runs}


def trl_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("trl") is not None


# --- assets -------------------------------------------------------------------------------------------------


def prepare_assets(settings: BenchSettings, work: Path) -> dict[str, Path]:
    """Teacher, packed corpora (block size L and 2L), a full-vocabulary student cut from the teacher."""
    from ..assets.corpus import EMBEDDED_CORPUS, build_corpus
    from ..assets.models import SMOLLM2, build_model
    from ..preprocess import preprocess_corpus
    from ..students import init_student

    teacher = settings.teacher
    if teacher is None:
        teacher = settings.results / "assets" / "models" / "smollm2"
        if not (teacher / "config.json").exists():
            teacher = work / "teacher"
            build_model({"source": SMOLLM2}, teacher)
    documents = work / "corpus.jsonl"
    build_corpus(EMBEDDED_CORPUS, documents)
    spec = {"max_documents": settings.documents} if settings.documents else {}
    paths = {"teacher": Path(teacher)}
    for name, size in (("corpus", settings.block_size), ("corpus_long", 2 * settings.block_size)):
        paths[name] = work / name
        preprocess_corpus(
            str(documents),
            spec,
            teacher,
            paths[name],
            {"block_size": size, "valid_fraction": 0.0, "batch_documents": 64},
            seed=0,
        )
    paths["student"] = work / "student"
    init_student(teacher, {"layers": {"strategy": "uniform", "count": settings.layers}}, None, paths["student"], 0)
    return paths


def cache_settings(settings: BenchSettings, k: int, mode: str, blocks: int, length: int) -> dict[str, Any]:
    return {
        "k": k,
        "value_dtype": "bf16",
        "temperatures": sorted({*settings.kl_temperatures, settings.temperature}),
        "mode": mode,
        "shard_blocks": 64,
        "shard_examples": 64,
        "batch_size": settings.batch_size,
        "max_blocks": blocks,
        "max_length": length,
    }


def _cache_for_training(
    settings: BenchSettings, paths: dict[str, Path], work: Path, mode: str, corpus: str, blocks: int
) -> Path:
    out = work / f"train_cache_{mode}_{corpus}_{blocks}"
    if not (out / "manifest.json").exists():
        length = settings.block_size * (2 if corpus == "corpus_long" else 1)
        run_child(
            "cache",
            {
                "teacher": str(paths["teacher"]),
                "corpus": str(paths[corpus]),
                "out": str(out),
                "settings": cache_settings(settings, 64, mode, blocks, length),
            },
            settings.threads,
        )
    return out


# --- sections -----------------------------------------------------------------------------------------------


def _stage1_args(
    settings: BenchSettings,
    paths: dict[str, Path],
    corpus: str = "corpus",
    batch: int | None = None,
    cache: Path | None = None,
) -> dict[str, Any]:
    length = settings.block_size * (2 if corpus == "corpus_long" else 1)
    return {
        "teacher": str(paths["teacher"]),
        "student": str(paths["student"]),
        "corpus": str(paths[corpus]),
        "cache": str(cache) if cache else None,
        "steps": settings.steps,
        "batch_size": batch or settings.batch_size,
        "max_length": length,
        "temperature": settings.temperature,
    }


def bench_stage1(settings: BenchSettings, paths: dict[str, Path], work: Path) -> dict[str, Any]:
    blocks = settings.steps * settings.batch_size
    rows = {
        "kdflow_cached_topk": _stage1_args(
            settings, paths, cache=_cache_for_training(settings, paths, work, "topk", "corpus", blocks)
        ),
        "kdflow_cached_hidden": _stage1_args(
            settings, paths, cache=_cache_for_training(settings, paths, work, "hidden", "corpus", blocks)
        ),
        "kdflow_online": _stage1_args(settings, paths),
    }
    report: dict[str, Any] = {name: repeated("stage1", args, settings) for name, args in rows.items()}
    if trl_available():
        report["trl_gkd_offpolicy"] = repeated("trl", _stage1_args(settings, paths), settings)
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
    hidden = _cache_for_training(settings, paths, work, "hidden", "corpus", blocks)
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
        cache = _cache_for_training(settings, paths, work, "topk", corpus, settings.steps * batch)
        row = repeated("stage1", _stage1_args(settings, paths, corpus, batch, cache), settings)
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


def machine() -> dict[str, Any]:
    import torch

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


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
