"""Host memory: PyTorch's large CPU buffers on transparent huge pages.

Every large tensor PyTorch frees on the CPU goes back to the kernel (glibc maps buffers over 32 MiB on their
own), so the next one page-faults again, 4 KiB at a time: on the 2-core development machine a fresh 113 MB
tensor took 113 ms to fill against 24 ms on 2 MiB pages (README, "Benchmarks"). PyTorch asks the kernel for
huge pages for its buffers of 2 MiB and more when ``THP_MEM_ALLOC_ENABLE=1`` is in its environment before its
first allocation (Linux with transparent huge pages in ``madvise`` or ``always`` mode; elsewhere a no-op).
kdflow's command line and its benchmark processes set it unless the user did (``THP_MEM_ALLOC_ENABLE=0`` turns it
off)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

HUGE_PAGES = "THP_MEM_ALLOC_ENABLE"


def with_huge_pages(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with PyTorch's huge-page switch on, unless ``env`` already sets it either way."""
    return {**env, HUGE_PAGES: env.get(HUGE_PAGES, "1")}


def enable_huge_pages() -> None:
    """Turn the switch on for this process (unless set); must run before torch allocates its first tensor."""
    os.environ[HUGE_PAGES] = with_huge_pages(os.environ)[HUGE_PAGES]


def kernel_mode() -> str | None:
    """The kernel's transparent-huge-page mode (``always``, ``madvise`` or ``never``), None where it has none."""
    try:
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return None
    return text[text.find("[") + 1 : text.find("]")] if "[" in text else None
