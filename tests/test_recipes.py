"""Recipes are checked without torch, and every loss class takes its declaration from its recipe entry."""

import subprocess
import sys

import pytest

from kdflow.recipes import NEEDS, PRESETS, SPECS, check_recipe, expand_presets, recipe_needs


def test_checking_a_recipe_imports_no_torch():
    code = (
        "import sys; from kdflow.recipes import check_recipe; "
        "assert not check_recipe({'word_kl': {'temperature': 2.0}}, 'stage1'); "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_every_recipe_entry_has_exactly_one_loss_class_with_its_declaration():
    from kdflow.losses import REGISTRY

    assert set(REGISTRY) == set(SPECS)
    for name, cls in REGISTRY.items():
        spec = SPECS[name]
        assert (cls.needs, cls.stages, cls.uses_labels, cls.token_aligned) == (
            spec.needs,
            spec.stages,
            spec.uses_labels,
            spec.token_aligned,
        )
        assert cls.needs <= NEEDS


def test_built_losses_carry_their_checked_settings():
    from kdflow.losses import build_losses

    (loss,) = build_losses({"codir": {"negatives": 7, "temperature": 1}}, "stage2")
    assert (loss.negatives, loss.temperature, loss.layers, loss.weight) == (7, 1.0, "odd", 1.0)
    assert isinstance(loss.temperature, float)


@pytest.mark.parametrize(
    "spec, key, words",
    [
        ({"pkd": {"exclude_last": "no"}}, "pkd.exclude_last", "expected true or false"),
        ({"hidden_cosine": {"layers": "uniform"}}, "hidden_cosine.layers", "unknown setting"),
        ({"tinybert_attention": {"pooling": "mean"}}, "tinybert_attention.pooling", "unknown setting"),
        ({"codir": {"momentum": 1.0}}, "codir.momentum", "expected a value in [0, 1)"),
        ({"kd": {"temperature": 0}}, "kd.temperature", "expected a number > 0"),
        ({"tinybert": {"switch": 0.5}}, "tinybert.switch", "no prediction layer"),
        ({"word_kl": {"start": 0.5}}, "", "no loss is active from 0.00"),
    ],
)
def test_bad_settings_are_named_by_key(spec, key, words):
    problems = check_recipe(spec, "stage1" if "tinybert" in spec or "word_kl" in spec else "stage2")
    assert any(k == key and words in message for k, message in problems), problems


def test_stage_and_needs_of_presets():
    assert check_recipe({"kd": {}}, "stage1") == [("kd", "loss 'kd' works in stage2 only, not in stage1")]
    assert set(expand_presets({"distilbert": {}}, "stage1")) == {"word_kl", "lm", "hidden_cosine"}
    assert recipe_needs({"distilbert": {}}, "stage1") == {
        "word_logits",
        "word_targets",
        "word_labels",
        "student_hidden",
        "teacher_hidden",
    }
    assert set(PRESETS) == {"tinybert", "distilbert", "pd"}
    assert recipe_needs({"pd": {}}, "stage2") == {"student_scores", "teacher_scores"}  # no gold labels
