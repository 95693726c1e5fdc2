"""Distillation losses and presets, registered by name and composed from a run's config."""

from .base import PRESETS, REGISTRY, Loss, LossContext, SettingError, build_losses, check_losses, expand_presets
from . import codir, prediction, representation  # registers the losses

__all__ = ["PRESETS", "REGISTRY", "Loss", "LossContext", "SettingError", "build_losses", "check_losses", "codir",
           "expand_presets", "prediction", "representation"]
