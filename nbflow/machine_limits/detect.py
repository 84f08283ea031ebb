"""Capacities nbflow knows without ``nbflow.limit``: ``CPU`` cores, ``MEMORY`` bytes, ``GPU`` devices.

Detected capacities are never written to disk, so a later ``nbflow.limit`` always wins.
"""

from __future__ import annotations

import os

from ..devices import visible

_nvidia_smi: list[int] = []  # cached count of `nvidia-smi -L` lines (empty list = not asked yet)


def detected_capacity(name: str) -> float | None:
    """The machine's capacity for ``name``, or None when it cannot be known (or is 0)."""
    if name == "CPU":
        value = os.cpu_count() or 0
    elif name == "MEMORY":
        value = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    elif name == "GPU":
        value = gpu_count()
    else:
        return None
    return float(value) if value > 0 else None


def gpu_count() -> int:
    """Devices in ``CUDA_VISIBLE_DEVICES`` (read each call, parsed as devices are handed out: ``""`` means
    none), else ``nvidia-smi -L`` lines."""
    ids = visible()
    if ids is not None:
        return len(ids)
    if not _nvidia_smi:
        _nvidia_smi.append(_count_nvidia_smi())
    return _nvidia_smi[0]


def _count_nvidia_smi() -> int:
    import shutil
    import subprocess

    binary = shutil.which("nvidia-smi")
    if binary is None:
        return 0
    try:
        out = subprocess.run([binary, "-L"], capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))
