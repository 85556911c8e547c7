"""Keep the step-sized buffers of a patch fit mapped between steps (glibc malloc tuning).

A patch-optimisation step allocates and frees the same large activation buffers every iteration. With
glibc's defaults, buffers above the (dynamic) mmap threshold are ``mmap``-ed and ``munmap``-ed each
time, and freed heap tops are trimmed back to the OS, so every step page-faults its memory in again.
Raising the mmap threshold and the trim threshold and padding the heap top keeps those pages mapped:
the same peak memory, fewer page faults (``benchmarks/pipeline_step.py --allocator`` measures it).

The CLI calls :func:`tune_allocator` at start-up. Library users opt in with one call; set
``PANDEMONIUM_MALLOC=default`` to keep glibc's behaviour. Other C libraries (musl, macOS) are left alone.

>>> from pandemonium.allocator import tune_allocator
>>> tune_allocator() in (True, False)
True
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform

__all__ = ["ENV_VAR", "tune_allocator"]

log = logging.getLogger(__name__)

ENV_VAR = "PANDEMONIUM_MALLOC"
# mallopt parameter numbers from glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
# glibc refuses an mmap threshold above HEAP_MAX_SIZE / 2, which is 32 MiB on 64-bit systems
MMAP_THRESHOLD_MAX = 32 * 2**20


def tune_allocator(
    mmap_threshold: int = MMAP_THRESHOLD_MAX,
    trim_threshold: int = 2**30,
    top_pad: int = 64 * 2**20,
) -> bool:
    """Apply the settings through ``mallopt``; ``True`` when glibc accepted all of them.

    Safe to call more than once. Returns ``False`` (and changes nothing) on other C libraries or when
    ``PANDEMONIUM_MALLOC=default``.
    """
    if os.environ.get(ENV_VAR, "").lower() in ("default", "0", "off", "false"):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    settings = {
        _M_MMAP_THRESHOLD: min(int(mmap_threshold), MMAP_THRESHOLD_MAX),
        _M_TRIM_THRESHOLD: int(trim_threshold),
        _M_TOP_PAD: int(top_pad),
    }
    accepted = all(mallopt(param, value) == 1 for param, value in settings.items())
    if not accepted:
        log.debug("mallopt refused one of %s", settings)
    return accepted
