"""The standard benchmark setup shared by ``pipeline_step.py`` and ``trainer_overhead.py``: the victim
network, the scene bank and the peak-memory probe, so both benchmarks measure the same thing."""

from __future__ import annotations

import threading
import time
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


class PeakMemory:
    """Peak memory of a block: CUDA max-allocated, or on CPU the peak RSS above the starting RSS."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak = 0
        self._stop = threading.Event()

    @staticmethod
    def _rss() -> int:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss() - self.start)
            time.sleep(0.002)

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        else:
            self.start = self._rss()
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


def make_bank(path: Path, size: int, n: int = 64, num_classes: int = 10) -> str:
    generator = torch.Generator().manual_seed(0)
    torch.save(
        {"images": torch.rand(n, 3, size, size, generator=generator),
         "class": torch.randint(0, num_classes, (n,), generator=generator)},
        path,
    )
    return str(path)
