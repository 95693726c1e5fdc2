"""Read one split of a task from its official release files or from HF `datasets` into normalised examples."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ..errors import DataError
from .files import read_jsonl, read_tsv
from .tasks import Example, TaskType


def _check_label(task: TaskType, ex: Example, where: str, labelled: bool) -> Example:
    label = ex["label"]
    if label is None and labelled:
        what = f"answer {ex['idx']['answer']} has" if task.kind == "multirc" else "the row has"
        raise DataError(f"{where}: {what} no 'label', and this {task.name} split is labelled")
    if label is not None and task.labels and label not in task.labels:
        raise DataError(f"{where}: label {label!r} is not in the {task.name} label set ({', '.join(task.labels)})")
    return ex


def _official(task: TaskType, folder: Path, split: str) -> Iterator[tuple[str, Example]]:
    if split not in task.files:
        raise DataError(f"task {task.name} has no '{split}' split (has: {', '.join(task.files)})")
    path = folder / task.files[split]
    if path.suffix == ".tsv":
        header, columns = task.tsv[split]
        for number, (lineno, row) in enumerate(read_tsv(path, columns, header=header)):
            row["_row"] = number
            where = f"{path}:{lineno}"
            for ex in task.row(row, where):
                yield where, ex
    else:
        for lineno, obj in read_jsonl(path):
            where = f"{path}:{lineno}"
            for ex in task.row(obj, where):
                yield where, ex


def _hub(task: TaskType, source: str, split: str) -> Iterator[tuple[str, Example]]:
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
            yield where, ex


def is_hub_source(source: str) -> bool:
    return source == "hf" or source.startswith("hf:")


def _check_pair(task: TaskType, out: list[Example], where: str) -> None:
    """AX-g: rows 2i and 2i+1 are one minimal pair (as jiant's GenderParity reads them) and share a field."""
    if task.pair_field and len(out) % 2 == 0:
        first, second = (ex["fields"][task.pair_field] for ex in out[-2:])
        if first != second:
            raise DataError(
                f"{where}: {task.name} rows pair up in file order (this row and the one before it) "
                f"and should share the {task.pair_field}; got {first!r} and {second!r}"
            )


def read_split(
    task: TaskType, source: str | Path, split: str, limit: int | None = None, labelled: bool | None = None
) -> list[Example]:
    """Examples of ``split`` (train/dev/test) from a folder of official files or a hub dataset (``hf:...``).

    ``limit`` counts whole units (`TaskType.unit`: MultiRC questions, AX-g pairs, else examples);
    ``labelled`` (default: whether the release labels ``split``) refuses a row without a label."""
    source = str(source)
    if is_hub_source(source):
        rows = _hub(task, source, split)
    else:
        folder = Path(source)
        if not folder.is_dir():
            raise DataError(f"{folder}: task folder not found for task {task.name}")
        rows = _official(task, folder, split)
    labelled = task.labelled(split) if labelled is None else labelled
    out: list[Example] = []
    units: set = set()
    where = source
    for where, ex in rows:
        unit = task.unit(ex, len(out))
        if limit is not None and unit not in units and len(units) >= limit:
            break
        units.add(unit)
        out.append(_check_label(task, ex, where, labelled))
        _check_pair(task, out, where)
    if task.pair_field and len(out) % 2:
        raise DataError(
            f"{where}: {task.name} has an odd number of rows ({len(out)}); its minimal pairs are "
            f"consecutive rows (2i, 2i+1)"
        )
    return out
