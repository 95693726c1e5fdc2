"""`kdflow` command line: one subcommand per pipeline stage (each Snakemake rule calls one)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import KdflowError

log = logging.getLogger("kdflow")


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from None


def _runtime(a: argparse.Namespace) -> Any:
    """This job's runtime (device, precision, ranks) from ``--compute`` and ``--gpus``, logged once."""
    from .runtime import Runtime

    runtime = Runtime.create(a.compute, a.gpus)
    runtime.log_once()
    return runtime


def _build_model(a: argparse.Namespace) -> None:
    from .assets.models import build_model

    meta = build_model(a.spec, a.out, seed=a.seed)
    log.info("model %s -> %s (%s parameters)", meta["source"], a.out, f"{meta['parameters']['total']:,}")


def _build_corpus(a: argparse.Namespace) -> None:
    from .assets.corpus import build_corpus

    meta = build_corpus(a.source, a.out)
    log.info("corpus %s -> %s (%s documents)", a.source, a.out, sum(meta["documents"].values()))


def _build_task(a: argparse.Namespace) -> None:
    from .assets.sentiment import build_sentiment_task

    meta = build_sentiment_task(a.source, a.out, seed=a.seed)
    log.info("task %s -> %s %s", a.source, a.out, meta["counts"])


def _prepare_task(a: argparse.Namespace) -> None:
    from .prepare import prepare_task

    meta = prepare_task(a.name, a.spec, a.source, a.out, a.require)
    log.info("task %s (%s) -> %s %s", a.name, meta["task"], a.out, meta["splits"])


def _preprocess(a: argparse.Namespace) -> None:
    from .preprocess import preprocess_corpus

    meta = preprocess_corpus(a.source, a.spec, a.tokenizer, a.out, a.settings, seed=a.seed)
    log.info(
        "corpus %s -> %s: %s tokens, %s train / %s valid blocks, %.0f tokens/s",
        a.source, a.out, f"{meta['tokens']:,}", meta["splits"]["train"]["blocks"],
        meta["splits"]["valid"]["blocks"], meta["tokens_per_second"] or 0,
    )  # fmt: skip


def _count_tokens(a: argparse.Namespace) -> None:
    from .vocab.counts import count_tokens

    stats = count_tokens(a.corpus, a.tokenizer, a.tasks, a.out)
    log.info("counted %s tokens (%s distinct) -> %s", f"{stats['tokens']:,}", f"{stats['distinct']:,}", a.out)


def _compress_vocab(a: argparse.Namespace) -> None:
    from .vocab.stage import compress_vocab

    p = compress_vocab(a.counts, a.teacher, a.tasks, a.spec, a.out, a.name)
    log.info(
        "vocabulary %s -> %s tokens, coverage %.4f, embedding+head parameters %s -> %s (-%.1f %%)",
        f"{p['teacher_vocab_size']:,}", f"{p['compressed_vocab_size']:,}", p["coverage"],
        f"{p['uncompressed']['embedding'] + p['uncompressed']['head']:,}",
        f"{p['compressed']['embedding'] + p['compressed']['head']:,}", 100 * p["embedding_and_head_reduction"],
    )  # fmt: skip


def _finetune(a: argparse.Namespace) -> None:
    from .finetune import finetune_classifier, finetune_teacher

    run = finetune_classifier if a.head == "classification" else finetune_teacher
    info = run(a.teacher, a.task, a.out, a.work, a.settings, a.deepspeed, a.seed, _runtime(a))
    log.info("fine-tuned teacher %s: %s steps on %s examples", a.out, info.get("steps"), info.get("training_examples"))


def _cache(a: argparse.Namespace) -> None:
    from .cache.build import cache_corpus, cache_task

    vocab, runtime = a.vocab_map or None, _runtime(a)
    if a.corpus:
        m = cache_corpus(a.teacher, a.corpus, vocab, a.out, a.settings, a.seed, runtime)
    else:
        m = cache_task(a.teacher, a.task, vocab, a.out, a.settings, runtime)
    log.info("cache %s: %s positions, %.1f bytes/position", a.out, f"{m['positions']:,}", m["bytes_per_position"] or 0)


def _init_student(a: argparse.Namespace) -> None:
    from .students import init_student

    meta = init_student(a.teacher, a.spec, a.vocab_map or None, a.out, a.seed)
    log.info("student %s: %s parameters (teacher %s), layers %s", a.out, f"{meta['parameters']['total']:,}",
             f"{meta['teacher_parameters']['total']:,}", meta["layers_from_teacher"])  # fmt: skip


def _distill(a: argparse.Namespace) -> None:
    from .distill import distill

    data = {"cache": a.cache, "corpus": a.corpus, "task": a.task, "teacher": a.teacher}
    recipe = {**a.recipe, "name": a.name} if a.name else a.recipe
    meta = distill(a.stage, a.student, a.out, a.work, recipe, a.settings, data, a.deepspeed, a.seed, _runtime(a))
    log.info("%s of %s -> %s (%s steps)", a.stage, a.student, a.out, meta["steps"])


def _evaluate(a: argparse.Namespace) -> None:
    from .evaluate import evaluate

    result = evaluate(a.model, a.task, a.out, a.predictions, a.settings, seed=a.seed, efficiency_out=a.efficiency,
                      runtime=_runtime(a))  # fmt: skip
    log.info("%s on %s: %s", a.model, result["task"], result["metrics"])


def _submit(a: argparse.Namespace) -> None:
    from .evaluate import submit

    path = submit(a.model, a.task, a.out, a.settings, _runtime(a))
    log.info("test predictions of %s -> %s", a.model, path)


def _summarize(a: argparse.Namespace) -> None:
    from .summarize import summarize

    table = summarize(a.manifest, a.out, a.plots)
    log.info("summary of %d models x %d tasks -> %s", len(table), len({e["task"] for e in a.manifest["entries"]}),
             a.out)  # fmt: skip


def _reproduce(a: argparse.Namespace) -> None:
    from .reproduce import write_comparison

    table = write_comparison(a.manifest["published"], a.manifest["metrics"], Path(a.csv), Path(a.md))
    log.info("%d published scores compared (%d with ours) -> %s", len(table), table["ours"].notna().sum(), a.md)


def _bench(a: argparse.Namespace) -> None:
    from .bench.harness import BenchSettings, run_bench

    settings = BenchSettings(teacher=Path(a.teacher) if a.teacher else None, results=Path(a.results), out=Path(a.out),
                             sections=tuple(a.sections.split(",")), repeats=a.repeats, steps=a.steps,
                             batch_size=a.batch_size, block_size=a.block_size, blocks=a.blocks, documents=a.documents,
                             layers=a.layers, threads=a.threads or BenchSettings().threads)  # fmt: skip
    run_bench(settings)
    print((settings.out / "bench.md").read_text())


def _validate(a: argparse.Namespace) -> None:
    from .config import load_config

    load_config(a.config)
    print(f"{a.config}: valid")


def _tasks(a: argparse.Namespace) -> None:
    from .data.prompt_sets import PROMPT_SETS
    from .data.tasks import TASKS

    prompts = PROMPT_SETS[a.prompt_set]
    for t in TASKS.values():
        print(f"{t.name:8s} {t.benchmark:9s} {t.kind:14s} metrics: {', '.join(t.metrics)}")
        if a.prompts and t.name in prompts:
            print(f"    pattern:    {prompts[t.name].pattern!r}")
            print(f"    verbalizer: {prompts[t.name].verbalizer or 'the example candidates'}")
        elif a.prompts:
            print(f"    (no template in prompt set {a.prompt_set})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kdflow", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, func: Callable[[argparse.Namespace], None], help_: str,
            computes: bool = False) -> argparse.ArgumentParser:  # fmt: skip
        p = sub.add_parser(name, help=help_)
        p.set_defaults(func=func)
        if computes:
            p.add_argument("--compute", type=_json, default=None,
                           help="the rule's compute settings (device, precision, teacher_dtype, tf32, "
                                "attn_implementation, gradient_checkpointing), as JSON")  # fmt: skip
            p.add_argument("--gpus", type=int, default=0,
                           help="GPUs the scheduler gave this job: with none visible, the job stops")  # fmt: skip
        return p

    p = add("build-model", _build_model, "write a model source as a save_pretrained folder")
    p.add_argument("--spec", type=_json, required=True, help="the model's config entry, as JSON")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)

    p = add("build-corpus", _build_corpus, "write an embedded corpus as JSONL")
    p.add_argument("--source", required=True)
    p.add_argument("--out", required=True)

    p = add("build-task", _build_task, "write the embedded sentiment task as SST-2 TSV splits")
    p.add_argument("--source", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)

    p = add("prepare-task", _prepare_task, "read a task's splits into normalised JSONL")
    p.add_argument("--name", required=True)
    p.add_argument("--spec", type=_json, required=True)
    p.add_argument("--source", required=True, help="folder of official files, or hf:DATASET")
    p.add_argument("--out", required=True)
    p.add_argument("--require", nargs="*", default=[], choices=["train", "dev", "test"],
                   help="splits the experiment uses: a missing file of one is an error")  # fmt: skip

    p = add("evaluate", _evaluate, "score a model on a prepared task (dev metrics, test submission)", computes=True)
    p.add_argument("--model", required=True)
    p.add_argument("--task", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--predictions", required=True)
    p.add_argument("--efficiency", default=None, help="JSON of parameters, disk size, latency and throughput")
    p.add_argument("--settings", type=_json, required=True)
    p.add_argument("--seed", type=int, default=0)

    p = add("submit", _submit, "predict a task's test split in the benchmark's submission format", computes=True)
    p.add_argument("--model", required=True)
    p.add_argument("--task", required=True)
    p.add_argument("--out", required=True, help="folder for <TASK>.tsv / <TASK>.jsonl")
    p.add_argument("--settings", type=_json, required=True)

    p = add("summarize", _summarize, "one table, the runs described, and the plots of every evaluated model")
    p.add_argument("--manifest", type=_json, required=True, help="entries, runs, vocabularies (see rule summarize)")
    p.add_argument("--out", required=True, help="folder for summary.csv/.md/.html and runs.html")
    p.add_argument("--plots", required=True, help="folder for the PNG plots")

    p = add("reproduce", _reproduce, "the papers' published numbers next to ours (config `published`)")
    p.add_argument("--manifest", type=_json, required=True, help="published rows and our metrics paths")
    p.add_argument("--csv", required=True)
    p.add_argument("--md", required=True)

    p = add("bench", _bench, "kdflow against TRL and DistillKit-style caches; rule wall times (results/bench)")
    p.add_argument("--sections", default="stage1,cache,caching,scaling,rules",
                   help="comma-separated: stage1, cache, caching, scaling, rules")  # fmt: skip
    p.add_argument("--teacher", help="teacher folder (default: the embedded SmolLM2)")
    p.add_argument("--results", default="results", help="an experiment's results folder (rule wall times)")
    p.add_argument("--out", default="results/bench")
    p.add_argument("--repeats", type=int, default=3, help="fresh processes per timed figure (median)")
    p.add_argument("--steps", type=int, default=6, help="training steps per stage-1 measurement")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--blocks", type=int, default=32, help="corpus blocks cached in section 3 (1x; 10x for RSS)")
    p.add_argument("--documents", type=int, default=400, help="embedded-corpus documents packed")
    p.add_argument("--layers", type=int, default=6, help="student layers cut from the teacher")
    p.add_argument("--threads", type=int, default=0, help="torch threads per workload (default: all CPUs)")

    p = add("validate-config", _validate, "check a config file against the schema")
    p.add_argument("config")

    p = add("preprocess-corpus", _preprocess, "tokenise and pack a corpus into flat memmaps")
    p.add_argument("--source", required=True)
    p.add_argument("--spec", type=_json, required=True, help="the corpus's config entry, as JSON")
    p.add_argument("--tokenizer", required=True, help="model folder whose tokenizer is used")
    p.add_argument("--settings", type=_json, required=True, help="the config's preprocess section")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)

    p = add("count-tokens", _count_tokens, "token frequency table of a preprocessed corpus (+ task inputs)")
    p.add_argument("--corpus", required=True, help="preprocessed corpus folder")
    p.add_argument("--tokenizer", required=True, help="model folder whose tokenizer tokenised the corpus")
    p.add_argument("--tasks", nargs="*", default=[], help="prepared task folders whose training inputs count too")
    p.add_argument("--out", required=True)

    p = add("compress-vocab", _compress_vocab, "build a compressed vocabulary map from token counts")
    p.add_argument("--counts", required=True)
    p.add_argument("--teacher", required=True, help="teacher model folder")
    p.add_argument("--tasks", nargs="*", default=[], help="prepared task folders (their answers are kept)")
    p.add_argument("--spec", type=_json, required=True, help="the vocabulary's config entry, as JSON")
    p.add_argument("--name", default="", help="the vocabulary's name in the config (named in errors)")
    p.add_argument("--out", required=True)

    p = add("finetune-teacher", _finetune, "fine-tune a teacher on a task (cloze prompts, or a classification head)", computes=True)
    p.add_argument("--teacher", required=True)
    p.add_argument("--task", required=True, help="prepared task folder")
    p.add_argument("--out", required=True, help="fine-tuned model folder")
    p.add_argument("--work", required=True, help="checkpoints and logs (kept across failures)")
    p.add_argument("--settings", type=_json, required=True, help="the config's teacher_finetune section")
    p.add_argument("--head", choices=["cloze", "classification"], default="cloze",
                   help="cloze: word prediction on the prompt's candidates; classification: a new task head")
    p.add_argument("--deepspeed", type=_json, default=None)
    p.add_argument("--seed", type=int, default=0)

    p = add("cache-logits", _cache, "run the teacher once and cache sparse targets (corpus or task)", computes=True)
    p.add_argument("--teacher", required=True)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--corpus", help="preprocessed corpus folder (stage 1)")
    source.add_argument("--task", help="prepared task folder (stage 2)")
    p.add_argument("--vocab-map", default="", help="map.json of a compressed vocabulary (default: full)")
    p.add_argument("--settings", type=_json, required=True, help="the config's cache section")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)

    p = add("init-student", _init_student, "build a student: teacher layer subset / narrower width / vocabulary")
    p.add_argument("--teacher", required=True)
    p.add_argument("--spec", type=_json, required=True, help="the student's config entry, as JSON")
    p.add_argument("--vocab-map", default="")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)

    p = add("distill", _distill, "train a student with a run's losses (stage1: corpus, stage2: task)", computes=True)
    p.add_argument("--stage", choices=["stage1", "stage2"], required=True)
    p.add_argument("--student", required=True, help="the student folder to start from")
    p.add_argument("--recipe", type=_json, required=True, help="the run's config entry, as JSON")
    p.add_argument("--name", default="", help="the run's name (recorded in kdflow.json)")
    p.add_argument("--settings", type=_json, required=True, help="the config's distill.<stage> section")
    p.add_argument("--cache", help="logit cache folder")
    p.add_argument("--corpus", help="preprocessed corpus folder (stage 1)")
    p.add_argument("--task", help="prepared task folder (stage 2)")
    p.add_argument("--teacher", help="teacher folder (online teacher, masked-LM cache checks)")
    p.add_argument("--out", required=True)
    p.add_argument("--work", required=True, help="checkpoints and logs (kept across failures)")
    p.add_argument("--deepspeed", type=_json, default=None)
    p.add_argument("--seed", type=int, default=0)

    p = add("tasks", _tasks, "list the task types")
    p.add_argument("--prompts", action="store_true", help="also show the pattern and verbalizer")
    p.add_argument("--prompt-set", default="pet", choices=["pet", "lm-eval"], help="prompt set shown by --prompts")
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except KdflowError as exc:
        print(f"kdflow: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # an unwrapped read or write: name the path and the cause, not a traceback
        if exc.filename is None:
            raise
        print(f"kdflow: error: {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
