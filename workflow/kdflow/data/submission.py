"""Write test-split predictions in each benchmark's official submission format."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from .tasks import Example, TaskType


def _glue_value(task: TaskType, pred: Any) -> str:
    return f"{pred:.3f}" if task.kind == "regression" else str(pred)


def write_submission(task: TaskType, examples: list[Example], preds: list[Any], out_dir: str | Path) -> Path:
    """GLUE: ``<TASK>.tsv`` (index, prediction); SuperGLUE: ``<TASK>.jsonl`` (idx, label; nested for MultiRC)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if task.benchmark == "glue":
        path = out_dir / f"{task.submission_name}.tsv"
        with open(path, "w", encoding="utf-8") as fh:
            fh.write("index\tprediction\n")
            for ex, pred in zip(examples, preds, strict=True):
                fh.write(f"{ex['idx']}\t{_glue_value(task, pred)}\n")
        return path
    path = out_dir / f"{task.submission_name}.jsonl"
    rows: list[dict[str, Any]]
    if task.kind == "multirc":
        tree: dict[int, dict[int, list[dict]]] = defaultdict(lambda: defaultdict(list))
        for ex, pred in zip(examples, preds, strict=True):
            idx = ex["idx"]
            tree[idx["paragraph"]][idx["question"]].append({"idx": idx["answer"], "label": task.submit(pred)})
        rows = [
            {"idx": p, "passage": {"questions": [{"idx": q, "answers": a} for q, a in qs.items()]}}
            for p, qs in tree.items()
        ]
    elif task.kind == "record":
        rows = [{"idx": ex["idx"]["query"], "label": pred} for ex, pred in zip(examples, preds, strict=True)]
    else:
        rows = [{"idx": ex["idx"], "label": task.submit(pred)} for ex, pred in zip(examples, preds, strict=True)]
    with open(path, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    return path
