"""Presets: a paper's combination of losses under one name, ``fn(weight, stage, **settings) -> {loss: settings}``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import ConfigError
from .values import SettingError, number

Preset = Callable[..., dict[str, dict[str, Any]]]


def tinybert(
    weight: float,
    stage: str,
    switch: float | None = None,
    temperature: float = 1.0,
    layers: str | list[int] = "uniform",
) -> dict[str, dict[str, Any]]:
    """TinyBERT's phases. Stage 1 (general distillation): the intermediate layers only (embeddings and
    hidden states with one projection, attention scores), no prediction layer. Stage 2 (task distillation):
    the intermediate layers for the first ``switch`` (default 0.5) of the steps, then the prediction layer,
    TinyBERT's soft cross-entropy at ``temperature`` averaged over examples and candidates (``switch: 1.0``
    keeps only the intermediate phase)."""
    switch = number("switch", switch if switch is not None else (1.0 if stage == "stage1" else 0.5))
    if not 0.0 < switch <= 1.0:
        raise SettingError("switch", f"expected a fraction of the steps in (0, 1], got {switch:g}")
    if stage == "stage1" and switch < 1.0:
        raise SettingError(
            "switch",
            "TinyBERT's general distillation (stage 1) has no prediction layer: leave 'switch' out (or 1.0) in stage1",
        )
    window = {"stop": switch} if switch < 1.0 else {}
    parts: dict[str, dict[str, Any]] = {
        "tinybert_hidden": {"weight": weight, "layers": layers, "embeddings": True, **window},
        "tinybert_attention": {"weight": weight, "layers": layers, **window},
    }
    if switch < 1.0:
        parts["candidate_kd"] = {"weight": weight, "temperature": temperature, "per_candidate": True, "start": switch}
    return parts


def distilbert(weight: float, stage: str, temperature: float = 2.0) -> dict[str, dict[str, Any]]:
    """DistilBERT (Sanh et al. 2019): 5 x soft-target KL (T) + 2 x MLM + 1 x hidden-state cosine."""
    if stage != "stage1":
        raise ConfigError("preset 'distilbert' distils during pre-training: use it in stage1")
    return {
        "word_kl": {"weight": 5.0 * weight, "temperature": temperature},
        "lm": {"weight": 2.0 * weight},
        "hidden_cosine": {"weight": weight},
    }


def pd(weight: float, stage: str, temperature: float = 1.0) -> dict[str, dict[str, Any]]:
    """PD, pre-trained distillation (Turc et al. 2019), as GKD runs it (aitsc/GLMKD
    ``distill/ft_logs/16_1e-5_110M-66M/PD.json``): the student pre-trained alone with its own language-modelling
    loss (stage 1), then distilled on the task with the teacher's soft targets only, no gold labels (stage 2:
    ``--student_model=kd --distill_ft_soft --distill_temperature=1``, GLMKD's soft cross-entropy)."""
    if stage == "stage1":
        return {"lm": {"weight": weight}}
    return {"candidate_kd": {"weight": weight, "temperature": temperature}}


PRESETS: dict[str, Preset] = {"tinybert": tinybert, "distilbert": distilbert, "pd": pd}
