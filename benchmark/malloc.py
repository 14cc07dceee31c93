"""glibc malloc settings for long torch loops on the CPU (no effect on any number).

Why: glibc serves an allocation above a moving threshold (128 KiB at start) with a fresh mmap
and gives it back on free, so a training step that allocates the same few-MiB tensors every
step page-faults them in anew each time. Measured on the quick bench's 2-core box: one DH-Diff
set made 8.75 M minor page faults and spent 33 s in the kernel of 194 s; with the two settings
below (given there as MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_), 0.34 M faults, 7 s and
178 s, and a byte-identical set (docs/stability.md §14).
"""
from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1   # <malloc.h>: keep this much freed memory at the heap's top
M_MMAP_THRESHOLD = -3   # <malloc.h>: allocations above this get their own mmap
MMAP_THRESHOLD = 32 * 2**20   # the ceiling of glibc's own moving threshold on 64-bit: tensors up to 32 MiB in the heap
TRIM_THRESHOLD = 2**30


def keep_freed_memory() -> bool:
    """Serve tensors up to 32 MiB from the heap and keep up to 1 GiB of freed memory in it, so
    a step reuses the last step's pages. Returns False where the C library has no mallopt
    (not glibc: nothing changes). Only speed and the resident size move: the numbers a
    process computes do not depend on where its memory lies."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
