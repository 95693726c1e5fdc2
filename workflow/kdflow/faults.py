"""Fault injection for the reliability tests, read in this one place.

``KDFLOW_FAULT=POINT:N`` makes the process act at the N-th time it passes ``POINT``:

* ``train_step`` / ``shard`` / ``before_save``: die at once, as ``kill -9`` would (exit 137, nothing cleaned up);
* ``nan_weights``: poison the model's parameters after the N-th optimizer step (a NaN that the loss has not
  seen yet, as a too-large step would leave).

Unset (always, outside the tests), every call is a no-op.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)
VARIABLE = "KDFLOW_FAULT"
POINTS = ("train_step", "shard", "before_save", "nan_weights")


def armed(point: str, count: int) -> bool:
    """True when ``KDFLOW_FAULT`` asks for ``point`` at its ``count``-th pass."""
    spec = os.environ.get(VARIABLE, "")
    if not spec:
        return False
    name, _, at = spec.partition(":")
    if name not in POINTS:
        raise ValueError(f"{VARIABLE}={spec!r}: unknown point (known: {', '.join(POINTS)})")
    return name == point and count == int(at or 1)


def die_at(point: str, count: int) -> None:
    """Exit abruptly (137, no clean-up) when the fault is armed here."""
    if armed(point, count):
        log.error("fault injection: dying at %s %d", point, count)
        os._exit(137)
