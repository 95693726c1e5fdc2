"""`kdflow bench`: kdflow against its peers on one machine, in one command.

Sections (each writes `OUT/<section>.json`; `OUT/bench.md` gathers them):
1. `stage1`  - stage-1 tokens/s: the student alone (its own next-token CE: the limit of any cache, P1), kdflow
               with cached targets (top-k and hidden caches) and with an online teacher, each with and without
               the fused head + loss (`compute.loss_chunk`), compiled, and in bf16 (where bf16 is native);
               TRL's GKD trainer (off-policy, forward KL) in fp32, compiled and bf16 when `trl` is installed
               (P2, pairs at equal settings); same teacher, student (a full-vocabulary 6-layer cut, so TRL can
               run it), batches and objective.
2. `memory`  - peak memory of the stage-1 word loss (student head + KL over the vocabulary) fused vs unfused
               at 8 x 512 positions, with the relative differences of the loss and gradients (P3).
3. `cache`   - bytes/token and KL error against dense logits, for kdflow's top-k + log-normaliser cache, a
               plain top-k cache renormalised over its entries (DistillKit style) at equal bytes/token, and the
               hidden-state caches (bf16, int8, int4: goals <= 600 B and < 1 % / <= 300 B).
4. `caching` - caching throughput of the top-k and hidden caches against a bare teacher forward pass (goals
               90 % / 100 %); peak RSS at 1x and 10x the corpus.
5. `scaling` - stage-1 tokens/s and peak RSS as the sequence length and the batch double (2 points each).
6. `rules`   - wall time and peak RSS of every rule of a finished experiment (Snakemake `benchmark:` files).

Every timed figure is the median over `repeats` fresh processes; every ratio divides two medians measured in
this run. Deterministic figures (bytes, KL errors) are computed once.
"""

from __future__ import annotations

import csv
import json
import statistics
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from .common import (
    SECTIONS,
    TRL_ROWS,
    BenchError,
    BenchSettings,
    cache_for_training,
    cache_settings,
    interleaved,
    machine,
    no_native_bf16,
    prepare_assets,
    repeated,
    run_child,
    stage1_args,
    trl_available,
)

__all__ = ["SECTIONS", "BenchError", "BenchSettings", "run_bench", "trl_available"]


STUDENT_ONLY = {"lm": {"weight": 1.0}}  # the student's own next-token CE: no teacher output at all


def bench_stage1(settings: BenchSettings, paths: dict[str, Path], work: Path) -> dict[str, Any]:
    """Stage-1 tokens/s: the student alone (the limit of any cache), cached and online kdflow, with and
    without the fused head + loss (``compute.loss_chunk``) and ``compute.compile``, and TRL's GKD trainer."""
    blocks = settings.steps * settings.batch_size
    topk = cache_for_training(settings, paths, work, "topk", "corpus", blocks)
    hidden = cache_for_training(settings, paths, work, "hidden", "corpus", blocks)
    fused = {"loss_chunk": settings.loss_chunk}
    rows = {
        "student_only": stage1_args(settings, paths, losses=STUDENT_ONLY),
        "student_only_fused": stage1_args(settings, paths, losses=STUDENT_ONLY, compute=fused),
        "kdflow_cached_topk": stage1_args(settings, paths, cache=topk),
        "kdflow_cached_topk_fused": stage1_args(settings, paths, cache=topk, compute=fused),
        "kdflow_cached_hidden_fused": stage1_args(settings, paths, cache=hidden, compute=fused),
        "kdflow_online": stage1_args(settings, paths),
        "kdflow_online_fused": stage1_args(settings, paths, compute=fused),
        "kdflow_online_fused_compiled": stage1_args(settings, paths, compute={**fused, "compile": True}),
    }
    bf16 = {**fused, "precision": "bf16", "teacher_dtype": "bf16"}
    no_bf16 = no_native_bf16()
    if no_bf16 is None:
        rows["kdflow_online_fused_bf16"] = stage1_args(settings, paths, compute=bf16)
    jobs = {name: ("stage1", args) for name, args in rows.items()}
    skipped = {"kdflow_online_fused_bf16": no_bf16} if no_bf16 is not None else {}
    for name, precision, compiled in TRL_ROWS:
        if precision == "bf16" and no_bf16 is not None:
            skipped[name] = no_bf16
        elif trl_available():
            jobs[name] = ("trl", {**stage1_args(settings, paths), "precision": precision, "compile": compiled})
        else:
            skipped[name] = "trl is not installed (pip install -r envs/bench.txt)"
    report: dict[str, Any] = interleaved(jobs, settings) | {name: {"skipped": why} for name, why in skipped.items()}
    rate = {name: row["tokens_per_second"] for name, row in report.items() if "tokens_per_second" in row}
    cached = max(rate["kdflow_cached_topk"], rate["kdflow_cached_topk_fused"])
    online = max(rate["kdflow_online"], rate["kdflow_online_fused"])
    p1 = "P1 cached (best top-k row) / student alone (best row)"
    report["ratios"] = {
        p1: cached / max(rate["student_only"], rate["student_only_fused"]),
        "cached hidden fused / student alone fused": rate["kdflow_cached_hidden_fused"] / rate["student_only_fused"],
        "cached (best top-k row) / online (best uncompiled fp32 row)": cached / online,
    }
    report["goals"] = {p1: [">=", 0.9]}
    if trl_available():
        for key, ours, theirs in (
            ("P2 online (best uncompiled fp32 row) / TRL fp32", online, rate["trl_gkd_offpolicy"]),
            (
                "P2 online fp32 compiled / TRL fp32 compiled",
                rate["kdflow_online_fused_compiled"],
                rate["trl_gkd_offpolicy_compiled"],
            ),
            ("P2 online bf16 / TRL bf16", rate.get("kdflow_online_fused_bf16"), rate.get("trl_gkd_offpolicy_bf16")),
        ):
            if ours is None or theirs is None:
                continue
            report["ratios"][key] = ours / theirs
            report["goals"][key] = [">=", 1.2]
    return report


def bench_memory(settings: BenchSettings, paths: dict[str, Path], work: Path) -> dict[str, Any]:
    """P3: peak memory of the stage-1 word loss (student head + KL over the vocabulary, a cached teacher decoded
    from its head inputs), fused vs unfused, in fresh processes; the losses and gradients compared."""
    args = {"teacher": str(paths["teacher"]), "positions": settings.memory_positions, "chunk": settings.loss_chunk}
    rows = {
        name: run_child("loss_memory", {**args, "fused": name == "fused"}, settings.threads)
        for name in ("unfused", "fused")
    }
    key = "P3 fused / unfused peak memory of the loss"
    return {
        **rows,
        "agreement": run_child("loss_agreement", args, settings.threads),
        "ratios": {key: rows["fused"]["peak_loss_mb"] / rows["unfused"]["peak_loss_mb"]},
        "goals": {key: ["<=", 0.3]},
    }


HIDDEN_GOALS = {"int8": {"max_bytes_per_token": 600, "max_relative_error": 0.01}, "int4": {"max_bytes_per_token": 300}}


def _hidden_cache(settings: BenchSettings, paths: dict[str, Path], out: Path, dtype: str, blocks: int) -> dict:
    """Build a ``hidden`` corpus cache of ``blocks`` blocks with values stored as ``dtype``; its child's result."""
    cache = {**cache_settings(settings, 64, "hidden", blocks, settings.block_size), "value_dtype": dtype}
    args = {"teacher": str(paths["teacher"]), "corpus": str(paths["corpus"]), "out": str(out), "settings": cache}
    return run_child("cache", args, settings.threads)


def _hidden_goal(dtype: str, result: dict[str, Any], kl: dict[str, Any]) -> dict[str, Any]:
    """Issue #19's goal of a quantised hidden cache (none for bf16) and whether it is met."""
    goal = HIDDEN_GOALS.get(dtype)
    if goal is None:
        return {}
    met = result["bytes"] / result["positions"] <= goal["max_bytes_per_token"]
    if "max_relative_error" in goal:
        met = met and all(row["relative_error"] < goal["max_relative_error"] for row in kl.values())
    return {"goal": goal, "goal_met": met}


def bench_cache(settings: BenchSettings, paths: dict[str, Path], work: Path) -> dict[str, Any]:
    from .quality import hidden_kl_errors, kl_errors

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
    hidden: dict[str, Any] = {}
    for dtype in ("bf16", "int8", "int4"):
        m = _hidden_cache(settings, paths, work / f"hidden_{dtype}", dtype, blocks)
        kl = hidden_kl_errors(
            paths["teacher"],
            paths["student"],
            paths["corpus"],
            work / f"hidden_{dtype}",
            settings.kl_temperatures,
            blocks=min(blocks, 8),
        )
        hidden[dtype] = {"bytes_per_token": m["bytes"] / m["positions"], "kl": kl, **_hidden_goal(dtype, m, kl)}
        sizes["hidden" if dtype == "bf16" else f"hidden_{dtype}"] = {"bytes_per_token": m["bytes"] / m["positions"]}
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
    return {"bytes_per_token": sizes, "kl": quality, "hidden": hidden}


def bench_caching(settings: BenchSettings, paths: dict[str, Path], work: Path) -> dict[str, Any]:
    """Caching throughput of the top-k and the hidden cache (1x corpus) over a bare teacher forward of the same
    batches, and the top-k cache's peak RSS at 1x and 10x."""
    base = {"teacher": str(paths["teacher"]), "corpus": str(paths["corpus"])}

    def cache(mode: str, scale: int) -> tuple[str, dict[str, Any]]:
        built = cache_settings(settings, 64, mode, settings.blocks * scale, settings.block_size)
        out = work / f"caching_{mode}_{scale}x"  # emptied by each run: a cache there would be resumed
        return "cache", {**base, "out": str(out), "settings": built}

    jobs = {
        "bare forward": ("forward", {**base, "blocks": settings.blocks, "batch_size": settings.batch_size}),
        "topk 1x": cache("topk", 1),
        "hidden 1x": cache("hidden", 1),
    }
    timed = interleaved(jobs, settings)
    jobs["topk 10x"] = cache("topk", 10)
    timed["topk 10x"] = repeated(*jobs["topk 10x"], replace(settings, repeats=1))  # its peak RSS, once
    forward = timed.pop("bare forward")
    rows = {name: {"blocks": jobs[name][1]["settings"]["max_blocks"], **row} for name, row in timed.items()}
    names = {mode: f"P4 {mode} caching throughput / bare forward" for mode in ("topk", "hidden")}
    return {
        "bare_forward": forward,
        "caching": rows,
        "ratios": {names[m]: forward["seconds"] / rows[f"{m} 1x"]["seconds"] for m in names},
        "goals": {names["topk"]: [">=", 0.9], names["hidden"]: [">=", 1.0]},
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
        runners = {
            "stage1": bench_stage1,
            "memory": bench_memory,
            "cache": bench_cache,
            "caching": bench_caching,
            "scaling": bench_scaling,
        }
        for section in settings.sections:
            report = bench_rules(settings) if section == "rules" else runners[section](settings, paths, work)
            report["settings"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(settings).items()}
            report["machine"] = machine()
            (settings.out / f"{section}.json").write_text(json.dumps(report, indent=2) + "\n")
            reports[section] = report
    (settings.out / "bench.md").write_text(markdown(reports))
    return reports
