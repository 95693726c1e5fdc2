"""The arguments of every `kdflow` subcommand (one small function each) and the table of subcommands."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


def parse_json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from None


def compute_arguments(p: argparse.ArgumentParser) -> None:
    """``--compute`` / ``--gpus`` of the subcommands that run a model (see kdflow.runtime)."""
    p.add_argument(
        "--compute",
        type=parse_json,
        default=None,
        help="the rule's compute settings (device, precision, teacher_dtype, tf32, "
        "attn_implementation, gradient_checkpointing), as JSON",
    )
    p.add_argument(
        "--gpus", type=int, default=0, help="GPUs the scheduler gave this job: with none visible, the job stops"
    )


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    computes: bool = False  # runs a model: takes --compute and --gpus


def _build_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("--spec", type=parse_json, required=True, help="the model's config entry, as JSON")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)


def _build_corpus(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", required=True)
    p.add_argument("--out", required=True)


def _build_task(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)


def _prepare_task(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", required=True)
    p.add_argument("--spec", type=parse_json, required=True)
    p.add_argument("--source", required=True, help="folder of official files, or hf:DATASET")
    p.add_argument("--out", required=True)
    p.add_argument(
        "--require",
        nargs="*",
        default=[],
        choices=["train", "dev", "test"],
        help="splits the experiment uses: a missing file of one is an error",
    )


def _evaluate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True)
    p.add_argument("--task", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--predictions", required=True)
    p.add_argument("--efficiency", default=None, help="JSON of parameters, disk size, latency and throughput")
    p.add_argument("--settings", type=parse_json, required=True)
    p.add_argument("--seed", type=int, default=0)


def _submit(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True)
    p.add_argument("--task", required=True)
    p.add_argument("--out", required=True, help="folder for <TASK>.tsv / <TASK>.jsonl")
    p.add_argument("--settings", type=parse_json, required=True)


def _summarize(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--manifest", type=parse_json, required=True, help="entries, runs, vocabularies (see rule summarize)"
    )
    p.add_argument("--out", required=True, help="folder for summary.csv/.md/.html and runs.html")
    p.add_argument("--plots", required=True, help="folder for the PNG plots")


def _reproduce(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", type=parse_json, required=True, help="published rows and our metrics paths")
    p.add_argument("--csv", required=True)
    p.add_argument("--md", required=True)


def _bench(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--sections",
        default="stage1,memory,cache,caching,scaling,rules",
        help="comma-separated: stage1, memory, cache, caching, scaling, rules",
    )
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
    p.add_argument("--loss-chunk", type=int, default=256, help="positions per chunk of the fused head + loss rows")
    p.add_argument("--memory-positions", type=int, default=4096, help="positions of the memory section's loss")


def _validate_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("config")


def _preprocess_corpus(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", required=True)
    p.add_argument("--spec", type=parse_json, required=True, help="the corpus's config entry, as JSON")
    p.add_argument("--tokenizer", required=True, help="model folder whose tokenizer is used")
    p.add_argument("--settings", type=parse_json, required=True, help="the config's preprocess section")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)


def _count_tokens(p: argparse.ArgumentParser) -> None:
    p.add_argument("--corpus", required=True, help="preprocessed corpus folder")
    p.add_argument("--tokenizer", required=True, help="model folder whose tokenizer tokenised the corpus")
    p.add_argument("--tasks", nargs="*", default=[], help="prepared task folders whose training inputs count too")
    p.add_argument("--out", required=True)


def _compress_vocab(p: argparse.ArgumentParser) -> None:
    p.add_argument("--counts", required=True)
    p.add_argument("--teacher", required=True, help="teacher model folder")
    p.add_argument("--tasks", nargs="*", default=[], help="prepared task folders (their answers are kept)")
    p.add_argument("--spec", type=parse_json, required=True, help="the vocabulary's config entry, as JSON")
    p.add_argument("--name", default="", help="the vocabulary's name in the config (named in errors)")
    p.add_argument("--out", required=True)


def _finetune_teacher(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher", required=True)
    p.add_argument("--task", required=True, help="prepared task folder")
    p.add_argument("--out", required=True, help="fine-tuned model folder")
    p.add_argument("--work", required=True, help="checkpoints and logs (kept across failures)")
    p.add_argument("--settings", type=parse_json, required=True, help="the config's teacher_finetune section")
    p.add_argument(
        "--head",
        choices=["cloze", "classification"],
        default="cloze",
        help="cloze: word prediction on the prompt's candidates; classification: a new task head",
    )
    p.add_argument("--deepspeed", type=parse_json, default=None)
    p.add_argument("--seed", type=int, default=0)


def _cache_logits(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher", required=True)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--corpus", help="preprocessed corpus folder (stage 1)")
    source.add_argument("--task", help="prepared task folder (stage 2)")
    p.add_argument("--vocab-map", default="", help="map.json of a compressed vocabulary (default: full)")
    p.add_argument("--settings", type=parse_json, required=True, help="the config's cache section")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)


def _init_student(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher", required=True)
    p.add_argument("--spec", type=parse_json, required=True, help="the student's config entry, as JSON")
    p.add_argument("--vocab-map", default="")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)


def _distill(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stage", choices=["stage1", "stage2"], required=True)
    p.add_argument("--student", required=True, help="the student folder to start from")
    p.add_argument("--recipe", type=parse_json, required=True, help="the run's config entry, as JSON")
    p.add_argument("--name", default="", help="the run's name (recorded in kdflow.json)")
    p.add_argument("--settings", type=parse_json, required=True, help="the config's distill.<stage> section")
    p.add_argument("--cache", help="logit cache folder")
    p.add_argument("--corpus", help="preprocessed corpus folder (stage 1)")
    p.add_argument("--task", help="prepared task folder (stage 2)")
    p.add_argument(
        "--teacher",
        nargs="+",
        default=[],
        help="teacher folder (online teacher, masked-LM cache checks); several for a multi-teacher stage 2",
    )
    p.add_argument("--out", required=True)
    p.add_argument("--work", required=True, help="checkpoints and logs (kept across failures)")
    p.add_argument("--deepspeed", type=parse_json, default=None)
    p.add_argument("--seed", type=int, default=0)


def _tasks(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompts", action="store_true", help="also show the pattern and verbalizer")
    p.add_argument("--prompt-set", default="pet", choices=["pet", "lm-eval"], help="prompt set shown by --prompts")


COMMANDS = [
    Command("build-model", "write a model source as a save_pretrained folder", _build_model),
    Command("build-corpus", "write an embedded corpus as JSONL", _build_corpus),
    Command("build-task", "write the embedded sentiment task as SST-2 TSV splits", _build_task),
    Command("prepare-task", "read a task's splits into normalised JSONL", _prepare_task),
    Command("evaluate", "score a model on a prepared task (dev metrics, test submission)", _evaluate, computes=True),
    Command("submit", "predict a task's test split in the benchmark's submission format", _submit, computes=True),
    Command("summarize", "one table, the runs described, and the plots of every evaluated model", _summarize),
    Command("reproduce", "the papers' published numbers next to ours (config `published`)", _reproduce),
    Command("bench", "kdflow against TRL and DistillKit-style caches; rule wall times (results/bench)", _bench),
    Command("validate-config", "check a config file against the schema", _validate_config),
    Command("preprocess-corpus", "tokenise and pack a corpus into flat memmaps", _preprocess_corpus),
    Command("count-tokens", "token frequency table of a preprocessed corpus (+ task inputs)", _count_tokens),
    Command("compress-vocab", "build a compressed vocabulary map from token counts", _compress_vocab),
    Command(
        "finetune-teacher",
        "fine-tune a teacher on a task (cloze prompts, or a classification head)",
        _finetune_teacher,
        computes=True,
    ),
    Command(
        "cache-logits", "run the teacher once and cache sparse targets (corpus or task)", _cache_logits, computes=True
    ),
    Command("init-student", "build a student: teacher layer subset / narrower width / vocabulary", _init_student),
    Command("distill", "train a student with a run's losses (stage1: corpus, stage2: task)", _distill, computes=True),
    Command("tasks", "list the task types", _tasks),
]
