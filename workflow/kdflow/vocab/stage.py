"""Rule `compress_vocab`: frequency table + must-keep answers -> vocabulary map, coverage, parameter counts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import AutoTokenizer

from ..errors import ConfigError
from ..fingerprint import tokenizer_fingerprint, weights_fingerprint
from ..jsonio import read_json, write_json
from ..modeling import count_parameters, load_lm
from ..safeio import make_dirs
from .compress import answer_token_ids, build_vocab_map, coverage_curve, special_token_ids, write_coverage
from .counts import read_counts
from .factorised import factorise_embeddings
from .model import compress_model


def compress_vocab(
    counts_csv: str | Path,
    teacher_dir: str | Path,
    task_dirs: list[str],
    spec: dict[str, Any],
    out_dir: str | Path,
    name: str = "",
) -> dict[str, Any]:
    """The vocabulary ``name`` of the config (``vocabularies.NAME``): map, coverage curve, parameter counts."""
    out_dir = make_dirs(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir, local_files_only=True)
    counts = read_counts(counts_csv)
    answers = sorted({a for d in task_dirs for a in read_json(Path(d) / "task.json")["answer_strings"]})
    model, _, _ = load_lm(teacher_dir)
    embeddings = model.get_input_embeddings().weight.detach()
    try:
        vmap = build_vocab_map(counts, tokenizer, answers, spec, embeddings)
    except ConfigError as exc:
        raise ConfigError(f"vocabularies.{name or Path(out_dir).name}.size: {exc}") from None
    vmap.meta.update(
        {
            "tokenizer_sha256": tokenizer_fingerprint(teacher_dir),
            "teacher_sha256": weights_fingerprint(teacher_dir),
            "counts": str(counts_csv),
            "answer_strings": len(answers),
            "answer_tokens": len(answer_token_ids(tokenizer, answers)),
            "special_tokens": len(special_token_ids(tokenizer)),
            "embedding_dim": spec.get("embedding_dim"),  # students on this vocabulary train factorised rows
        }
    )
    vmap.save(out_dir / "map.json")
    must = special_token_ids(tokenizer) | answer_token_ids(tokenizer, answers)
    curve = coverage_curve(counts, must)
    write_coverage(
        curve, vmap.size, vmap.meta["coverage"], len(counts), out_dir / "coverage.csv", out_dir / "coverage.png"
    )
    before = count_parameters(model)
    compressed = compress_model(model, vmap)
    after = count_parameters(compressed)
    factorised = None
    if spec.get("embedding_dim"):
        factorised = count_parameters(factorise_embeddings(compressed, spec["embedding_dim"]))
    params = {
        "teacher_vocab_size": vmap.teacher_size,
        "compressed_vocab_size": vmap.size,
        "uncompressed": before,
        "compressed": after,
        "factorised": factorised,
        "embedding_and_head_reduction": 1
        - (after["embedding"] + after["head"]) / (before["embedding"] + before["head"]),
        "coverage": vmap.meta["coverage"],
    }
    write_json(out_dir / "params.json", params)
    return params
