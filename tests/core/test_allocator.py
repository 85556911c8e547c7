"""glibc tuning keeps a freed step-sized buffer mapped in the heap instead of returning it to the OS."""

from __future__ import annotations

import platform
import subprocess
import sys
import textwrap

import pytest

from pandemonium.allocator import tune_allocator

# mallinfo2 reports the heap ("arena") after a 20 MiB buffer was written and freed: glibc's default
# serves it by mmap and unmaps it on free (the next step faults it in again); tuned, it stays mapped
SCRIPT = textwrap.dedent(
    """
    import ctypes, sys
    class MallInfo(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                     "fordblks", "keepcost")]
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    if sys.argv[1] == "on":
        from pandemonium.allocator import tune_allocator
        assert tune_allocator()
    size = 20 * 2**20
    buffer = libc.malloc(size)
    ctypes.memset(buffer, 1, size)
    libc.free(buffer)
    print(libc.mallinfo2().arena)
    """
)

glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def _heap_after_free(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], check=True, capture_output=True, text=True)
    return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not glibc, reason="mallopt tuning applies to glibc only")
def test_tuned_allocator_keeps_a_freed_step_buffer_mapped():
    buffer = 20 * 2**20
    assert _heap_after_free("off") < buffer <= _heap_after_free("on")


def test_opt_out_changes_nothing(monkeypatch):
    monkeypatch.setenv("PANDEMONIUM_MALLOC", "default")
    assert tune_allocator() is False
