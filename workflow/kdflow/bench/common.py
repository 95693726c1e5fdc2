"""What every `kdflow bench` section shares: settings, fresh child processes, the assets and caches measured."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import KdflowError
from ..hostmem import HUGE_PAGES, kernel_mode, with_huge_pages

SECTIONS = ("stage1", "memory", "cache", "caching", "scaling", "rules")


class BenchError(KdflowError):
    """A benchmark workload failed or its inputs are missing."""


@dataclass
class BenchSettings:
    """What to measure and how hard: the defaults suit the embedded SmolLM2 on a 2-core CPU."""

    teacher: Path | None = None  # default: the embedded SmolLM2 (results/assets/models/smollm2 when present)
    results: Path = Path("results")
    out: Path = Path("results/bench")
    sections: tuple[str, ...] = SECTIONS
    repeats: int = 3
    steps: int = 6
    batch_size: int = 8
    block_size: int = 128
    blocks: int = 32  # corpus blocks cached / forwarded (section 3: 1x; 10x for the RSS point)
    documents: int | None = 400  # embedded-corpus documents packed for the benchmark
    layers: int = 6
    temperature: float = 1.0  # TRL's GKD loss has no temperature: compare at T = 1
    ks: tuple[int, ...] = (16, 64, 256)
    kl_temperatures: tuple[float, ...] = (1.0, 15.0)
    loss_chunk: int = 256  # positions per chunk of the fused head + loss rows (compute.loss_chunk)
    memory_positions: int = 8 * 512  # section `memory`: positions of the word loss measured (P3: 8 x 512)
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)


# TRL's GKD trainer at each precision and compile setting of a kdflow online row: (name, precision, compiled)
TRL_ROWS = (
    ("trl_gkd_offpolicy", "fp32", False),
    ("trl_gkd_offpolicy_compiled", "fp32", True),
    ("trl_gkd_offpolicy_bf16", "bf16", False),
)


def run_child(workload: str, args: dict[str, Any], threads: int) -> dict[str, Any]:
    """One workload in a fresh Python process (kdflow.bench.child); its JSON result."""
    # every workload, kdflow's and the peers', in the same environment: PyTorch's huge pages on unless set
    env = with_huge_pages({**os.environ, "TRL_EXPERIMENTAL_SILENCE": "1", "OMP_NUM_THREADS": str(threads)})
    cmd = [sys.executable, "-m", "kdflow.bench.child", workload, json.dumps({**args, "threads": threads})]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise BenchError(f"benchmark workload '{workload}' failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def repeated(workload: str, args: dict[str, Any], settings: BenchSettings) -> dict[str, Any]:
    """Median of each numeric field over `repeats` fresh runs, with every run's values kept."""
    return interleaved({workload: (workload, args)}, settings)[workload]


def interleaved(jobs: dict[str, tuple[str, dict[str, Any]]], settings: BenchSettings) -> dict[str, dict[str, Any]]:
    """``repeated`` for several rows ``name -> (workload, args)`` at once, run round-robin: every row's r-th fresh
    process before any row's (r + 1)-th, so that a drift of the machine's speed during a section (10-15 % within
    minutes on the README's host) reaches every row of a ratio alike instead of the rows measured last."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in jobs}
    for _ in range(settings.repeats):
        for name, (workload, args) in jobs.items():
            runs[name].append(run_child(workload, args, settings.threads))
    return {name: _medians(row) for name, row in runs.items()}


def _medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = [k for k, v in runs[0].items() if isinstance(v, (int, float))]
    return {**{k: statistics.median(r[k] for r in runs) for k in keys}, "runs": runs}


def trl_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("trl") is not None


# --- assets -------------------------------------------------------------------------------------------------


def prepare_assets(settings: BenchSettings, work: Path) -> dict[str, Path]:
    """Teacher, packed corpora (block size L and 2L), a full-vocabulary student cut from the teacher."""
    from ..assets.corpus import EMBEDDED_CORPUS, build_corpus
    from ..assets.models import SMOLLM2, build_model
    from ..preprocess import preprocess_corpus
    from ..students import init_student

    teacher = settings.teacher
    if teacher is None:
        teacher = settings.results / "assets" / "models" / "smollm2"
        if not (teacher / "config.json").exists():
            teacher = work / "teacher"
            build_model({"source": SMOLLM2}, teacher)
    documents = work / "corpus.jsonl"
    build_corpus(EMBEDDED_CORPUS, documents)
    spec = {"max_documents": settings.documents} if settings.documents else {}
    paths = {"teacher": Path(teacher)}
    for name, size in (("corpus", settings.block_size), ("corpus_long", 2 * settings.block_size)):
        paths[name] = work / name
        preprocess_corpus(
            str(documents),
            spec,
            teacher,
            paths[name],
            {"block_size": size, "valid_fraction": 0.0, "batch_documents": 64},
            seed=0,
        )
    paths["student"] = work / "student"
    init_student(teacher, {"layers": {"strategy": "uniform", "count": settings.layers}}, None, paths["student"], 0)
    return paths


def cache_settings(settings: BenchSettings, k: int, mode: str, blocks: int, length: int) -> dict[str, Any]:
    return {
        "k": k,
        "value_dtype": "bf16",
        "temperatures": sorted({*settings.kl_temperatures, settings.temperature}),
        "mode": mode,
        "shard_blocks": 64,
        "shard_examples": 64,
        "batch_size": settings.batch_size,
        "max_blocks": blocks,
        "max_length": length,
    }


def cache_for_training(
    settings: BenchSettings, paths: dict[str, Path], work: Path, mode: str, corpus: str, blocks: int
) -> Path:
    out = work / f"train_cache_{mode}_{corpus}_{blocks}"
    if not (out / "manifest.json").exists():
        length = settings.block_size * (2 if corpus == "corpus_long" else 1)
        run_child(
            "cache",
            {
                "teacher": str(paths["teacher"]),
                "corpus": str(paths[corpus]),
                "out": str(out),
                "settings": cache_settings(settings, 64, mode, blocks, length),
            },
            settings.threads,
        )
    return out


# --- sections -----------------------------------------------------------------------------------------------


def stage1_args(
    settings: BenchSettings,
    paths: dict[str, Path],
    corpus: str = "corpus",
    batch: int | None = None,
    cache: Path | None = None,
    losses: dict[str, Any] | None = None,
    compute: dict[str, Any] | None = None,
) -> dict[str, Any]:
    length = settings.block_size * (2 if corpus == "corpus_long" else 1)
    return {
        "losses": losses,
        "compute": compute,
        "teacher": str(paths["teacher"]),
        "student": str(paths["student"]),
        "corpus": str(paths[corpus]),
        "cache": str(cache) if cache else None,
        "steps": settings.steps,
        "batch_size": batch or settings.batch_size,
        "max_length": length,
        "temperature": settings.temperature,
    }


def no_native_bf16() -> str | None:
    """Why the bf16 rows cannot be measured here (None: a CUDA device with bf16, or a CPU whose oneDNN has
    native bf16 kernels, avx512_bf16 or AMX): without them a bf16 matrix product is emulated, ~80x slower
    than fp32 on the 2-core AVX2 machine, which would measure the emulation, not either trainer."""
    import torch

    if torch.cuda.is_available():
        return None if torch.cuda.is_bf16_supported() else "this GPU has no bf16"
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return None
    return f"this CPU ({torch.backends.cpu.get_cpu_capability()}) has no native bf16 kernels (avx512_bf16 / AMX)"


def machine() -> dict[str, Any]:
    import torch

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpus": os.cpu_count(),
        "huge_pages": f"{HUGE_PAGES}={with_huge_pages(os.environ)[HUGE_PAGES]}, kernel THP mode {kernel_mode()}",
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
