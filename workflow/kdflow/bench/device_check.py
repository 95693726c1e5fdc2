"""Stage-1 distillation on one device in three precisions: the figures of `scripts/gpu-check.sh`.

``python -m kdflow.bench.device_check --device cuda --out DIR`` builds (or takes) the SmolLM2 teacher, packs
the embedded corpus, cuts a student, and trains it with the online teacher (word_kl) in fp32, in bf16 autocast
and under DeepSpeed ZeRO-2 bf16, each in a fresh process; it prints device, tokens/s and peak memory and writes
``DIR/device_check.json``. On a CPU (``--device cpu``) the same runs take the CPU's bf16 and DeepSpeed's CPU
accelerator."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .harness import BenchSettings, prepare_assets, run_child

MODES: dict[str, dict[str, Any]] = {
    "plain fp32": {"precision": "fp32", "deepspeed": None},
    "plain bf16 autocast": {"precision": "bf16", "deepspeed": None},
    "DeepSpeed ZeRO-2 bf16": {"precision": "bf16", "deepspeed": {"zero_optimization": {"stage": 2}}},
}


def check(
    device: str,
    out: Path,
    teacher: Path | None,
    steps: int,
    batch_size: int,
    block_size: int,
    layers: int,
    documents: int,
) -> list[dict[str, Any]]:
    settings = BenchSettings(
        teacher=teacher,
        results=out / "none",
        out=out,
        steps=steps,
        batch_size=batch_size,
        block_size=block_size,
        layers=layers,
        documents=documents,
    )
    paths = prepare_assets(settings, out / "assets")
    rows = []
    for name, mode in MODES.items():
        args = {
            "teacher": str(paths["teacher"]),
            "student": str(paths["student"]),
            "corpus": str(paths["corpus"]),
            "steps": steps,
            "batch_size": batch_size,
            "max_length": block_size,
            "temperature": 1.0,
            "compute": {"device": device, "precision": mode["precision"]},
            "deepspeed": mode["deepspeed"],
        }
        result = run_child("stage1", args, settings.threads)
        rows.append(
            {
                "mode": name,
                "device": device,
                **{
                    k: result.get(k)
                    for k in ("tokens_per_second", "peak_gpu_mb", "peak_rss_mb", "steps", "device_name")
                },
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    parser.add_argument("--out", default="results/device_check")
    parser.add_argument("--teacher", default=None, help="teacher folder (default: the embedded SmolLM2)")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--documents", type=int, default=400)
    a = parser.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = check(
        a.device,
        out,
        Path(a.teacher) if a.teacher else None,
        a.steps,
        a.batch_size,
        a.block_size,
        a.layers,
        a.documents,
    )
    (out / "device_check.json").write_text(json.dumps(rows, indent=2) + "\n")
    print("| mode | device | tokens/s | peak GPU MiB | peak RSS MiB |\n|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['mode']} | {r['device_name'] or r['device']} | {r['tokens_per_second']:.1f} | "
            f"{r['peak_gpu_mb'] if r['peak_gpu_mb'] is not None else '-'} | {r['peak_rss_mb']} |"
        )


if __name__ == "__main__":
    main()
