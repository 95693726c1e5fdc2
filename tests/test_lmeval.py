"""kdflow's zero-shot scoring with `prompts: lm-eval` against lm-evaluation-harness itself, example by example,
on the real dev files of ../shared/data and a tiny random LLaMA (lm-eval runs offline: its built-in task
configs, the data switched to local JSON rows, the model object passed in)."""

from __future__ import annotations

import shutil

import pytest

try:
    import lm_eval  # noqa: F401
except ImportError:  # pragma: no cover - depends on the environment
    pytest.skip(
        "lm-eval is not installed (make venv installs it from envs/eval.txt): the agreement with "
        "lm-evaluation-harness is not tested",
        allow_module_level=True,
    )

from kdflow.bench.lmeval import TASKS, compare, hf_rows, kdflow_scores, lmeval_scores
from kdflow.modeling import load_lm

ROWS = 32  # the first rows of each dev file
TOLERANCE = 1e-4


def _agree(model, tok, task, data, workdir, max_length=None, add_special_tokens=True, add_bos_token=None):
    kd, golds, truncated = kdflow_scores(model, tok, task, data, ROWS, 8, max_length, add_special_tokens)
    rows = hf_rows(task, data, ROWS)
    lm = lmeval_scores(model, tok, task, rows, workdir, 8, max_length, add_bos_token)
    result = compare(kd, lm, golds, [str(r["label"]) for r in rows], task)
    assert result.examples == ROWS and not result.differing, (task, result.differing)
    assert result.max_abs_diff < TOLERANCE, (task, result.max_abs_diff)
    assert result.kdflow_accuracy == result.lmeval_accuracy
    return kd, truncated


@pytest.fixture(scope="module")
def lm(tiny_llama):
    model, tok, family = load_lm(tiny_llama)
    assert family == "causal" and model.config.max_position_embeddings == 512
    return model, tok


@pytest.mark.parametrize("task", list(TASKS))
def test_same_loglikelihoods_and_predictions_as_lmeval(lm, task, shared_data, tmp_path):
    """The nine tasks at the model's own window (512 tokens: lm-eval's default max_length for this model)."""
    _agree(*lm, task, shared_data, tmp_path)


@pytest.mark.parametrize("task", ["boolq", "cb", "copa", "wic"])
def test_same_truncation_point_as_lmeval(lm, task, shared_data, tmp_path):
    """Contexts longer than max_length lose the same tokens on both sides (one-token and multi-token choices)."""
    _, truncated = _agree(*lm, task, shared_data, tmp_path, max_length=16)
    assert truncated, f"{task}: nothing was truncated at 16 tokens, the test tests nothing"


@pytest.fixture(scope="module")
def bos_llama(tiny_llama, tmp_path_factory):
    """The tiny LLaMA with a tokenizer whose post-processor prepends BOS (as Llama-2/3 tokenizers do)."""
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("bos") / "model"
    shutil.copytree(tiny_llama, folder)
    tok = AutoTokenizer.from_pretrained(folder)
    bos = tok.bos_token
    tok.backend_tokenizer.post_processor = TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tok.bos_token_id)]
    )
    tok.save_pretrained(folder)
    model, tok, _ = load_lm(folder)
    assert tok("x")["input_ids"][0] == tok.bos_token_id
    return model, tok


@pytest.mark.parametrize("task", ["sst2", "copa"])
def test_bos_is_a_deliberate_choice(bos_llama, task, shared_data, tmp_path):
    """add_special_tokens true (kdflow's default) = lm-eval 0.4.13's default (the tokenizer's BOS);
    false = lm-eval's add_bos_token=False; and the BOS does change the scores."""
    with_bos, _ = _agree(*bos_llama, task, shared_data, tmp_path / "a")
    without, _ = _agree(*bos_llama, task, shared_data, tmp_path / "b", add_special_tokens=False, add_bos_token=False)
    assert max(abs(a - b) for x, y in zip(with_bos, without) for a, b in zip(x, y)) > 1e-3
