"""Distillation losses, built by name from a run's recipe (declared and checked in ``kdflow.recipes``)."""

from ..recipes import PRESETS, SettingError, expand_presets
from . import codir, interchange, layermap, minilm, prediction, representation, schedule  # registers the losses
from .base import REGISTRY, Loss, LossContext, build_losses, check_losses

__all__ = [
    "PRESETS",
    "REGISTRY",
    "Loss",
    "LossContext",
    "SettingError",
    "build_losses",
    "check_losses",
    "codir",
    "interchange",
    "layermap",
    "minilm",
    "expand_presets",
    "prediction",
    "representation",
    "schedule",
]
