"""Distillation losses, registered by name and composed from a run's config."""

from .base import REGISTRY, Loss, build_losses
from . import prediction  # noqa: F401  (registers the losses)

__all__ = ["REGISTRY", "Loss", "build_losses"]
