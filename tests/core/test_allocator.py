"""glibc tuning keeps step-sized buffers mapped: fewer page faults for the same work."""

from __future__ import annotations

import platform
import subprocess
import sys
import textwrap

import pytest

from pandemonium.allocator import tune_allocator

SCRIPT = textwrap.dedent(
    """
    import resource, sys, torch
    if sys.argv[1] == "on":
        from pandemonium.allocator import tune_allocator
        assert tune_allocator()
    def step():
        a = torch.empty(6 * 2**20); a.fill_(1.0)
        b = torch.empty(3 * 2**20); b.fill_(2.0)
        del a, b
    step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        step()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)

glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], check=True, capture_output=True, text=True)
    return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not glibc, reason="mallopt tuning applies to glibc only")
def test_tuned_allocator_faults_less_for_the_same_steps():
    assert _faults("on") < 0.8 * _faults("off")


def test_opt_out_changes_nothing(monkeypatch):
    monkeypatch.setenv("PANDEMONIUM_MALLOC", "default")
    assert tune_allocator() is False
