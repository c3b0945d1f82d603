"""Whether a dataset fits in memory: checked before it is built or moved, so a set that is too large is
refused with the number of bytes it needs instead of swapping (host) or failing half-way (GPU).

igan keeps every dataset whole on the training device (``igan.datasets.base``), so the question is
simply: are there ``nbytes`` free? Host memory is ``MemAvailable`` from ``/proc/meminfo`` (what the
kernel can hand out without swapping), else ``sysconf``; CUDA memory is ``torch.cuda.mem_get_info``.
Where neither is known (other platforms, other devices) nothing is refused.
"""

from __future__ import annotations

import os

from igan.errors import IganError

__all__ = ["format_bytes", "available_host_memory", "free_device_memory", "require_memory"]


def format_bytes(n: int | float) -> str:
    """1536 -> '1.5 KiB', 123456789 -> '117.7 MiB' (binary units, one decimal)."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def available_host_memory() -> int | None:
    """Bytes of host memory available without swapping, or None when the platform does not say."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


def free_device_memory(device) -> int | None:
    """Free bytes on ``device`` (a torch.device or its name): host memory for the CPU, the CUDA
    allocator's view for a GPU, None where unknown."""
    import torch

    device = torch.device(device)
    if device.type == "cpu":
        return available_host_memory()
    if device.type == "cuda" and torch.cuda.is_available():
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    return None


def require_memory(nbytes: int, device, what: str, hint: str | None = None) -> None:
    """Raise ``IganError`` when ``nbytes`` do not fit in the free memory of ``device``."""
    import torch

    free = free_device_memory(device)
    if free is None or nbytes <= free:
        return
    where = "host" if torch.device(device).type == "cpu" else str(device)
    raise IganError(f"{what} needs {format_bytes(nbytes)} of {where} memory, but only {format_bytes(free)} is free",
                    hint=hint or "free memory, use fewer or smaller images, or train on a device with more memory")
