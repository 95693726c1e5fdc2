"""`kdflow` command line: one subcommand per pipeline stage (each Snakemake rule calls one)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .arguments import COMMANDS, compute_arguments
from .errors import KdflowError
from .hostmem import enable_huge_pages

log = logging.getLogger("kdflow")


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
        a.source,
        a.out,
        f"{meta['tokens']:,}",
        meta["splits"]["train"]["blocks"],
        meta["splits"]["valid"]["blocks"],
        meta["tokens_per_second"] or 0,
    )


def _count_tokens(a: argparse.Namespace) -> None:
    from .vocab.counts import count_tokens

    stats = count_tokens(a.corpus, a.tokenizer, a.tasks, a.out)
    log.info("counted %s tokens (%s distinct) -> %s", f"{stats['tokens']:,}", f"{stats['distinct']:,}", a.out)


def _compress_vocab(a: argparse.Namespace) -> None:
    from .vocab.stage import compress_vocab

    p = compress_vocab(a.counts, a.teacher, a.tasks, a.spec, a.out, a.name)
    log.info(
        "vocabulary %s -> %s tokens, coverage %.4f, embedding+head parameters %s -> %s (-%.1f %%)",
        f"{p['teacher_vocab_size']:,}",
        f"{p['compressed_vocab_size']:,}",
        p["coverage"],
        f"{p['uncompressed']['embedding'] + p['uncompressed']['head']:,}",
        f"{p['compressed']['embedding'] + p['compressed']['head']:,}",
        100 * p["embedding_and_head_reduction"],
    )


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
    log.info(
        "student %s: %s parameters (teacher %s), layers %s",
        a.out,
        f"{meta['parameters']['total']:,}",
        f"{meta['teacher_parameters']['total']:,}",
        meta["layers_from_teacher"],
    )


def _distill(a: argparse.Namespace) -> None:
    from .distill import distill

    teacher = a.teacher[0] if a.teacher else None
    data = {"cache": a.cache, "corpus": a.corpus, "task": a.task, "teacher": teacher}
    if len(a.teacher) > 1:
        data["teachers"] = a.teacher
    recipe = {**a.recipe, "name": a.name} if a.name else a.recipe
    meta = distill(a.stage, a.student, a.out, a.work, recipe, a.settings, data, a.deepspeed, a.seed, _runtime(a))
    log.info("%s of %s -> %s (%s steps)", a.stage, a.student, a.out, meta["steps"])


def _evaluate(a: argparse.Namespace) -> None:
    from .evaluate import evaluate

    result = evaluate(
        a.model, a.task, a.out, a.predictions, a.settings, seed=a.seed, efficiency_out=a.efficiency, runtime=_runtime(a)
    )
    log.info("%s on %s: %s", a.model, result["task"], result["metrics"])


def _submit(a: argparse.Namespace) -> None:
    from .evaluate import submit

    path = submit(a.model, a.task, a.out, a.settings, _runtime(a))
    log.info("test predictions of %s -> %s", a.model, path)


def _summarize(a: argparse.Namespace) -> None:
    from .summarize import summarize

    table = summarize(a.manifest, a.out, a.plots)
    log.info(
        "summary of %d models x %d tasks -> %s", len(table), len({e["task"] for e in a.manifest["entries"]}), a.out
    )


def _reproduce(a: argparse.Namespace) -> None:
    from .reproduce import write_comparison

    table = write_comparison(a.manifest["published"], a.manifest["metrics"], Path(a.csv), Path(a.md))
    log.info("%d published scores compared (%d with ours) -> %s", len(table), table["ours"].notna().sum(), a.md)


def _bench(a: argparse.Namespace) -> None:
    from .bench.harness import BenchSettings, run_bench

    settings = BenchSettings(
        teacher=Path(a.teacher) if a.teacher else None,
        results=Path(a.results),
        out=Path(a.out),
        sections=tuple(a.sections.split(",")),
        repeats=a.repeats,
        steps=a.steps,
        batch_size=a.batch_size,
        block_size=a.block_size,
        blocks=a.blocks,
        documents=a.documents,
        layers=a.layers,
        threads=a.threads or BenchSettings().threads,
        loss_chunk=a.loss_chunk,
        memory_positions=a.memory_positions,
    )
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


HANDLERS: dict[str, Callable[[argparse.Namespace], None]] = {
    "build-model": _build_model,
    "build-corpus": _build_corpus,
    "build-task": _build_task,
    "prepare-task": _prepare_task,
    "evaluate": _evaluate,
    "submit": _submit,
    "summarize": _summarize,
    "reproduce": _reproduce,
    "bench": _bench,
    "validate-config": _validate,
    "preprocess-corpus": _preprocess,
    "count-tokens": _count_tokens,
    "compress-vocab": _compress_vocab,
    "finetune-teacher": _finetune,
    "cache-logits": _cache,
    "init-student": _init_student,
    "distill": _distill,
    "tasks": _tasks,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kdflow", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        p = sub.add_parser(command.name, help=command.help)
        p.set_defaults(func=HANDLERS[command.name])
        command.arguments(p)
        if command.computes:
            compute_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    enable_huge_pages()  # before any command imports torch
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
