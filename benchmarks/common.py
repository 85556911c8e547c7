"""The standard benchmark setup shared by ``pipeline_step.py`` and ``trainer_overhead.py``: the victim
network, the scene bank and the peak-memory probe, so both benchmarks measure the same thing."""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn


def conv_net(num_classes: int = 10) -> nn.Module:
    """The benchmark's victim: 4 conv layers (3->32->64->64->128, strides 1,2,2,2), pool, linear."""
    layers: list[nn.Module] = []
    channels = [3, 32, 64, 64, 128]
    for i, (cin, cout) in enumerate(zip(channels[:-1], channels[1:])):
        layers += [nn.Conv2d(cin, cout, 3, stride=1 if i == 0 else 2, padding=1), nn.ReLU(inplace=True)]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels[-1], num_classes)]
    return nn.Sequential(*layers)


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def _malloc_in_use() -> Callable[[], int] | None:
    """glibc's bytes in use (arenas + mmapped chunks, all threads), or None where there is no mallinfo2."""
    try:
        libc = ctypes.CDLL(None)
        mallinfo2 = libc.mallinfo2
    except (OSError, AttributeError):  # not glibc, or glibc < 2.33
        return None
    mallinfo2.restype = _Mallinfo2

    def in_use() -> int:
        info = mallinfo2()
        return info.uordblks + info.hblkhd

    return in_use


_IN_USE = _malloc_in_use()


def _rss() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def memory_kind(device: torch.device) -> str:
    """What :class:`PeakMemory` measures on ``device``, for table headers."""
    if device.type == "cuda":
        return "CUDA max allocated"
    if _IN_USE is not None:
        return "peak malloc in-use increase, sampled every 2 ms"
    return "peak RSS increase, sampled every 2 ms"


class PeakMemory:
    """Peak memory of a block: CUDA max-allocated; on CPU the peak of glibc's bytes in use (or, without
    glibc, of the RSS) above the start, sampled every 2 ms. In-use bytes, not RSS: with the allocator
    tuned to keep step-sized buffers mapped, the RSS no longer rises during a warmed-up step."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak = 0
        self._stop = threading.Event()
        self._probe = _IN_USE or _rss

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._probe() - self.start)
            time.sleep(0.002)

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        else:
            self.start = self._probe()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.start
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self._probe() - self.start)


def make_bank(path: Path, size: int, n: int = 64, num_classes: int = 10) -> str:
    generator = torch.Generator().manual_seed(0)
    torch.save(
        {"images": torch.rand(n, 3, size, size, generator=generator),
         "class": torch.randint(0, num_classes, (n,), generator=generator)},
        path,
    )
    return str(path)
