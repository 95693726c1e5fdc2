"""Loss recipes checked without building any loss: names, presets, settings, stages and the tensors a
recipe needs. (Interface first; the torch-free implementation replaces this delegation.)"""

from __future__ import annotations

from typing import Any

Problem = tuple[str, str]  # (the setting's key below the loss group, e.g. "word_kl.temperature"; the message)


def check_recipe(spec: dict[str, Any], stage: str) -> list[Problem]:
    """Every problem of ``{loss or preset: settings}`` in ``stage`` (unknown names or settings, bad values, a
    loss outside its stages, steps without an active loss); empty when the recipe is sound."""
    from .losses import check_losses

    return check_losses(spec, stage)[1]


def expand_presets(spec: dict[str, Any], stage: str) -> dict[str, dict[str, Any]]:
    """``{loss: settings}`` with presets replaced by their losses (ConfigError on a bad recipe)."""
    from .losses import expand_presets as expand

    return expand(spec, stage)


def recipe_needs(spec: dict[str, Any], stage: str) -> frozenset[str]:
    """The tensors a recipe's losses need (presets expanded)."""
    from .losses import REGISTRY

    return frozenset().union(*(REGISTRY[name].needs for name in expand_presets(spec, stage)))
