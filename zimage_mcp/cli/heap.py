"""glibc's heap kept for the server's large per-request buffers instead of handed back to the OS at each free.

Every request allocates the same few large buffers (a 1024^2 image's pixels and PNG rows, 3 MB each; its
PNG, preview and reply). glibc serves a block over its mmap threshold from a fresh ``mmap`` and unmaps it when
freed, and trims a heap's free top: the next request then pays a page fault for each 4 KiB it touches. On a
worker thread, as the server's job runs, converting a 1024^2 image to pixels and PNG rows took 5.3-6.6 ms, and
1.0-1.35 ms with the memory kept; its preview 10.8-13.3 against 5.1-7.2 ms (this project's CPU machine, with
``benchmarks/probe_store_save.py``; 512^2 showed no difference there). Freed blocks under 32 MiB now stay in
the heap for reuse, and a heap keeps up to 64 MiB of free memory. Weights and other tensors of 32 MiB or more
are still mapped apart.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)
MMAP_THRESHOLD = 32 << 20  # the largest glibc takes on a 64-bit host
TRIM_THRESHOLD = 64 << 20
# The user's own settings win: glibc reads these from the environment at start.
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


def keep_freed_memory() -> bool:
    """Tune glibc's malloc as above; False where it is not glibc on Linux or the user set the heap up."""
    if not sys.platform.startswith("linux") or any(name in os.environ for name in USER_SETTINGS):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process runs on
    except (OSError, AttributeError):
        return False
    # musl's mallopt does nothing and returns 0; so does glibc for a value it refuses
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
