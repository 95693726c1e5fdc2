"""Rule `prepare_task`: read a task's splits (official files or hub) into normalised JSONL + metadata."""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .data.reader import read_split
from .data.tasks import Example, Prompt, TaskType, get_task
from .errors import DataError
from .jsonio import read_json, write_json
from .prompts import Cloze, answer_strings, label_order, resolve_prompt, to_cloze
from .safeio import atomic_path, make_dirs

log = logging.getLogger(__name__)
SPLITS = ("train", "dev", "test")
REQUIRED_BY = {
    "train": "fine-tuning, distillation or a task cache use it",
    "dev": "`evaluate` scores it",
    "test": "`evaluate.test_submissions` predicts it",
}


def write_jsonl(path: Path, examples: list[Example]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(ex, ensure_ascii=False) + "\n" for ex in examples)


def read_prepared(path: str | Path) -> list[Example]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def _unlabel_after(task: TaskType, examples: list[Example], labelled: int | None) -> list[Example]:
    """Training examples with the gold labels of the first ``labelled`` units only (`tasks.*.labelled`, counted
    as `max_examples` counts): the rest are unlabelled inputs, for runs that distil on a transfer set. Their
    labels are dropped here, so that no job can read them."""
    if labelled is None:
        return examples
    units: set = set()
    out = []
    for i, ex in enumerate(examples):
        units.add(task.unit(ex, i))
        out.append(ex if len(units) <= labelled else {**ex, "label": None})
    return out


def check_required_files(name: str, task: TaskType, source: str, required: Iterable[str]) -> None:
    """Refuse, before any work, a task folder that lacks the file of a split the experiment uses."""
    if source.startswith("hf"):
        return
    for need in required:
        split = need
        if need == "dev" and "dev" not in task.files and task.labelled("test"):
            split = "test"  # a diagnostic set (AX-b, AX-g): evaluate scores its labelled test file
        if split not in task.files:
            raise DataError(
                f"task {name}: the experiment needs its {split} split, and {task.name} has none "
                f"(has: {', '.join(task.files)})"
            )
        path = Path(source) / task.files[split]
        if not path.is_file():
            raise DataError(f"{path}: file not found; task {name} needs its {split} split ({REQUIRED_BY[need]})")


def prepare_task(
    name: str, spec: dict[str, Any], source: str, out_dir: str | Path, required: Iterable[str] = ()
) -> dict[str, Any]:
    """Write ``{split}.jsonl`` for every split the task has, and ``task.json`` (counts, labels, prompt, answers).
    ``required``: splits the experiment uses; a missing file of one of them is an error, not a warning."""
    task = get_task(spec["name"])
    prompt = resolve_prompt(task, spec.get("prompt"), spec.get("prompts", "pet"))
    check_required_files(name, task, source, required)
    out_dir = make_dirs(out_dir)
    split_names = spec.get("splits") or {}
    limits = spec.get("max_examples") or {}
    counts, labels, answers, missing = {}, {}, set(), []
    for split in SPLITS:
        available = task.hf[2] if source.startswith("hf") and task.hf else task.files
        origin = split_names.get(split, split)  # `splits:` reads this split from another of the source
        if origin not in available:
            continue
        if not source.startswith("hf") and not (Path(source) / task.files[origin]).exists():
            missing.append(task.files[origin])
            log.warning("task %s: %s has no %s, the %s split is skipped", name, source, task.files[origin], split)
            continue
        labelled = split != "test" or task.labelled(origin)
        examples = read_split(task, source, origin, limits.get(split), labelled=labelled)
        if not examples:
            raise DataError(f"task {name}: split '{split}' of {source} has no examples")
        if split == "train":
            examples = _unlabel_after(task, examples, spec.get("labelled"))
        write_jsonl(out_dir / f"{split}.jsonl", examples)
        counts[split] = len(examples)
        labels[split] = dict(Counter(str(ex["label"]) for ex in examples if ex["label"] is not None))
        answers.update(answer_strings(task, prompt, examples))
    meta = {
        "name": name,
        "task": task.name,
        "benchmark": task.benchmark,
        "kind": task.kind,
        "source": source,
        "splits": counts,
        "labelled_train": sum(labels.get("train", {}).values()),
        "missing_files": missing,
        "label_counts": labels,
        "metrics": list(task.metrics),
        "eval_split": eval_split(counts, labels),
        "prompt_set": spec.get("prompts", "pet"),
        "prompt": {"pattern": prompt.pattern, "verbalizer": prompt.verbalizer},
        "answer_strings": sorted(answers),
    }
    write_json(out_dir / "task.json", meta)
    return meta


def eval_split(counts: dict[str, int], labels: dict[str, dict[str, int]]) -> str | None:
    """The prepared split that `evaluate` scores: dev, else (AX-b, AX-g) the labelled test file."""
    for split in ("dev", "test"):
        if split in counts and sum(labels.get(split, {}).values()) == counts[split]:
            return split
    return None


@dataclass(frozen=True)
class PreparedTask:
    """A prepared task split, ready for scoring or training: its type, resolved prompt, examples, clozes."""

    meta: dict[str, Any]
    task: TaskType
    prompt: Prompt
    labels: list[str]
    examples: list[Example]
    clozes: list[Cloze]


def load_prepared(
    task_dir: str | Path, split: str, limit: int | None = None, transfer_set: bool = False
) -> PreparedTask:
    """Open split ``split`` of a `prepare_task` folder (at most ``limit`` examples). The train split holds its
    labelled examples only (`tasks.*.labelled`), unless ``transfer_set``: then the unlabelled inputs after them
    too."""
    task_dir = Path(task_dir)
    meta = read_json(task_dir / "task.json")
    task = get_task(meta["task"])
    if split not in meta["splits"]:
        raise DataError(f"{task_dir}: task {meta['name']} has no {split} split")
    prompt = resolve_prompt(task, meta["prompt"], meta.get("prompt_set", "pet"))
    examples = read_prepared(task_dir / f"{split}.jsonl")
    if split == "train" and not transfer_set:
        examples = examples[: meta.get("labelled_train", len(examples))]
    examples = examples[:limit]
    clozes = [to_cloze(task, prompt, ex) for ex in examples]
    return PreparedTask(meta, task, prompt, label_order(task, prompt), examples, clozes)
