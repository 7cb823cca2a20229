"""Keep freed memory inside the process, so a CPU training step does not fault in fresh pages for its activations.

glibc's malloc serves large blocks (from 128 KiB, a threshold it raises as such blocks are freed, up to 32 MiB) with
their own mmap and hands them back to the OS on free; it also trims free memory off the top of its heap. A training
step allocates the same activations again every step (a 64 x 64 x 32-channel decoder map of batch 16 is 8 MiB in
fp32), and the kernel maps and zeroes whatever was handed back: 47,000-62,000 page faults per step at
benchmarks/step_speed.py's matched config on one thread, ~10-15 % of the step. ``keep_freed_memory`` raises both thresholds with ``mallopt``: blocks up to
``MMAP_THRESHOLD`` come from the heap and stay there for the next step. It changes where memory lives, never a
result; the process keeps its peak resident memory instead of shrinking between steps.

No effect (and ``False`` returned) where the C library is not glibc (macOS, musl) or on a GPU, whose allocator
already caches.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1  # mallopt parameter: free bytes at the heap top before glibc returns them to the OS
M_MMAP_THRESHOLD = -3  # mallopt parameter: blocks at least this large get their own mmap (returned on free)
MMAP_THRESHOLD = 256 << 20  # 256 MiB: every activation of the CPU presets lies below it
TRIM_THRESHOLD = 1 << 30  # 1 GiB of free heap kept before any is returned


def glibc():
    """The process's C library when it is glibc (it has ``mallopt`` and ``gnu_get_libc_version``), else None."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "gnu_get_libc_version") else None


def keep_freed_memory() -> bool:
    """Let glibc keep freed blocks up to MMAP_THRESHOLD for reuse instead of unmapping them; True when applied."""
    libc = glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
