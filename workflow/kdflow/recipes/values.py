"""Checks for loss and preset settings: each returns the value or raises a SettingError naming the key."""

from __future__ import annotations

import numbers
from dataclasses import dataclass, fields
from typing import Any

from ..errors import ConfigError

POOLINGS = ("auto", "first", "mean", "last")


class SettingError(ConfigError):
    """A loss or preset setting with a bad value; ``key`` names the setting."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class Settings:
    """Checked settings as a frozen dataclass (a loss's, a multi-teacher method's): the fields are the settings;
    ``check`` validates them after construction and normalises them with ``set``."""

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Check (and normalise with ``set``) the settings."""

    def set(self, **values: Any) -> None:
        for key, value in values.items():
            object.__setattr__(self, key, value)

    @classmethod
    def setting_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def values(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.setting_names()}


def number(key: str, value: Any) -> float:
    """``value`` as a float; a string, a boolean or ``None`` is a SettingError naming ``key``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise SettingError(key, f"expected a number, got {type(value).__name__} {value!r}")
    return float(value)


def at_least(key: str, value: Any, minimum: float) -> float:
    """A number >= ``minimum``."""
    value = number(key, value)
    if value < minimum:
        raise SettingError(key, f"expected a number >= {minimum:g}, got {value:g}")
    return value


def positive(key: str, value: Any) -> float:
    """A number > 0 (temperatures, scales)."""
    value = number(key, value)
    if not value > 0:
        raise SettingError(key, f"expected a number > 0, got {value:g}")
    return value


def count(key: str, value: Any, minimum: int = 1) -> int:
    """An integer >= ``minimum`` (negatives, dimensions, heads)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise SettingError(key, f"expected an integer >= {minimum}, got {value!r}")
    return int(value)


def optional_count(key: str, value: Any) -> int | None:
    """``None`` (a default chosen from the models) or an integer >= 1."""
    return None if value is None else count(key, value)


def flag(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise SettingError(key, f"expected true or false, got {value!r}")
    return value


def choice(key: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise SettingError(key, f"{value!r}: expected {', '.join(allowed)}")
    return value


def layer_spec(value: Any, named: tuple[str, ...] = ("uniform", "last")) -> str | list[int]:
    """``layers``: one of ``named`` or a list of teacher layers (1-based)."""
    if isinstance(value, list):
        if not value or any(isinstance(j, bool) or not isinstance(j, int) or j < 1 for j in value):
            raise SettingError("layers", f"{value}: expected a list of teacher layers (integers >= 1)")
        return value
    if value not in named:
        raise SettingError("layers", f"{value!r}: expected {', '.join(named)} or a list of teacher layers")
    return value
