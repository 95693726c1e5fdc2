"""Read one split of a task from its official release files or from HF `datasets` into normalised examples."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ..errors import DataError
from .files import read_jsonl, read_tsv
from .tasks import Example, TaskType


def _check_label(task: TaskType, ex: Example, where: str) -> Example:
    label = ex["label"]
    if label is not None and task.labels and label not in task.labels:
        raise DataError(
            f"{where}: label {label!r} is not in the {task.name} label set ({', '.join(task.labels)})"
        )
    return ex


def _official(task: TaskType, folder: Path, split: str) -> Iterator[Example]:
    if split not in task.files:
        raise DataError(f"task {task.name} has no '{split}' split (has: {', '.join(task.files)})")
    path = folder / task.files[split]
    if path.suffix == ".tsv":
        header, columns = task.tsv[split]
        for number, (lineno, row) in enumerate(read_tsv(path, columns, header=header)):
            row["_row"] = number
            where = f"{path}:{lineno}"
            for ex in task.row(row, where):
                yield _check_label(task, ex, where)
    else:
        for lineno, obj in read_jsonl(path):
            where = f"{path}:{lineno}"
            for ex in task.row(obj, where):
                yield _check_label(task, ex, where)


def _hub(task: TaskType, source: str, split: str) -> Iterator[Example]:
    import datasets

    dataset, config, split_names = task.hf
    if source not in ("hf", f"hf:{dataset}") and source.removeprefix("hf:") != dataset:
        dataset = source.removeprefix("hf:")
    if split not in split_names:
        raise DataError(f"task {task.name} has no '{split}' split on the hub (has: {', '.join(split_names)})")
    data = datasets.load_dataset(dataset, config, split=split_names[split])
    for row in data:
        where = f"{dataset}/{config}[{split_names[split]}] idx={row.get('idx')}"
        for ex in task.hf_row(row, data.features):
            yield _check_label(task, ex, where)


def is_hub_source(source: str) -> bool:
    return source == "hf" or source.startswith("hf:")


def read_split(task: TaskType, source: str | Path, split: str, limit: int | None = None) -> list[Example]:
    """Examples of ``split`` (train/dev/test) from a folder of official files or a hub dataset (``hf:...``)."""
    source = str(source)
    if is_hub_source(source):
        rows = _hub(task, source, split)
    else:
        folder = Path(source)
        if not folder.is_dir():
            raise DataError(f"{folder}: task folder not found for task {task.name}")
        rows = _official(task, folder, split)
    out: list[Example] = []
    for ex in rows:
        if limit is not None and len(out) >= limit:
            break
        out.append(ex)
    return out
