"""Loss recipes, checked without torch: ``{loss or preset: settings}`` per stage (or per phase of a stage).
The config check and the workflow's plan read recipes here; ``kdflow.losses`` builds them."""

from __future__ import annotations

import inspect
from typing import Any

from ..errors import ConfigError
from . import specs_interchange, specs_layermap, specs_schedule  # noqa: F401  (registers the specs)
from .presets import PRESETS
from .specs import NEEDS, SPECS, LossSpec
from .values import SettingError, number

Problem = tuple[str, str]  # (the setting's key below the loss group, e.g. "word_kl.temperature"; the message)

__all__ = [
    "NEEDS",
    "PRESETS",
    "SPECS",
    "LossSpec",
    "Problem",
    "SettingError",
    "check_recipe",
    "expand_presets",
    "preset_settings",
    "recipe_needs",
    "resolve",
]


def preset_settings(name: str) -> list[str]:
    """The settings a preset accepts (its function's named parameters, ``stage`` aside)."""
    return [p.name for p in inspect.signature(PRESETS[name]).parameters.values() if p.name != "stage"]


def _unknown(key: str, settings: dict[str, Any], allowed: list[str], what: str) -> list[Problem]:
    return [
        (f"{key}.{k}", f"unknown setting of {what} (its settings: {', '.join(allowed)})")
        for k in settings
        if k not in allowed
    ]


def _preset_parts(name: str, settings: dict[str, Any], stage: str) -> tuple[dict[str, Any], list[Problem]]:
    bad = _unknown(name, settings, preset_settings(name), f"preset '{name}'")
    if bad:
        return {}, bad
    settings = dict(settings)
    try:
        return PRESETS[name](number("weight", settings.pop("weight", 1.0)), stage, **settings), []
    except SettingError as exc:
        return {}, [(f"{name}.{exc.key}", f"preset '{name}': {exc}")]
    except ConfigError as exc:
        return {}, [(name, str(exc))]


def _expand(spec: dict[str, Any], stage: str) -> tuple[dict[str, tuple[str, dict[str, Any]]], list[Problem]]:
    """Presets replaced by their losses: {loss: (the config key it came from, settings)}, and the problems."""
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    problems: list[Problem] = []
    for name, settings in spec.items():
        settings = dict(settings or {})
        if name in PRESETS:
            parts, found = _preset_parts(name, settings, stage)
            problems += found
        elif name in SPECS:
            parts = {name: settings}
        else:
            known = ", ".join(sorted([*SPECS, *PRESETS]))
            problems.append((name, f"unknown loss '{name}' (registered losses and presets: {known})"))
            continue
        for part, part_settings in parts.items():
            if part in out:
                problems.append((name, f"loss '{part}' is named twice in {stage} (directly or through a preset)"))
            out[part] = (name, part_settings)
    return out, problems


def _checked(part: str, origin: str, settings: dict[str, Any], stage: str) -> tuple[LossSpec | None, list[Problem]]:
    cls = SPECS[part]
    what = f"loss '{part}'" if part == origin else f"loss '{part}' (from preset '{origin}')"
    if stage not in cls.stages:
        return None, [(origin, f"{what} works in {' and '.join(cls.stages)} only, not in {stage}")]
    if part == origin:
        bad = _unknown(origin, settings, cls.setting_names(), what)
        if bad:
            return None, bad
    try:
        return cls(**settings), []
    except SettingError as exc:
        key = f"{origin}.{exc.key}" if part == origin or exc.key in preset_settings(origin) else origin
        return None, [(key, f"{what}: {exc}")]


def _uncovered(specs: list[LossSpec]) -> float | None:
    """The first fraction of the steps from which no loss is active, or None when every step has one."""
    edge = 0.0
    for start, stop in sorted((s.start, s.stop) for s in specs):
        if start > edge:
            break
        edge = max(edge, stop)
    return None if edge >= 1.0 else edge


def resolve(spec: dict[str, Any], stage: str) -> tuple[list[LossSpec], list[Problem]]:
    """The checked settings of every loss of ``spec`` (presets expanded), and every problem found: unknown
    loss or setting, a bad value, a loss outside its stages, a step without an active loss."""
    parts, problems = _expand(spec, stage)
    specs = []
    for part, (origin, settings) in parts.items():
        checked, found = _checked(part, origin, settings, stage)
        problems += found
        if checked is not None:
            specs.append(checked)
    if not problems and specs:
        edge = _uncovered(specs)
        if edge is not None:
            problems.append(("", f"no loss is active from {edge:.2f} of the steps on (check start/stop)"))
    return specs, problems


def check_recipe(spec: dict[str, Any], stage: str) -> list[Problem]:
    """Every problem of ``{loss or preset: settings}`` in ``stage``; empty when the recipe is sound."""
    return resolve(spec, stage)[1]


def expand_presets(spec: dict[str, Any], stage: str) -> dict[str, dict[str, Any]]:
    """``{loss: settings}`` with presets replaced by their losses (ConfigError on a loss named twice)."""
    parts, problems = _expand(spec, stage)
    if problems:
        raise ConfigError(problems[0][1])
    return {part: settings for part, (_, settings) in parts.items()}


def recipe_needs(spec: dict[str, Any], stage: str) -> frozenset[str]:
    """The tensors a recipe's losses need (presets expanded)."""
    return frozenset().union(*(SPECS[name].needs for name in expand_presets(spec, stage)))
