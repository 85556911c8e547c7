from __future__ import annotations

import sys
from pathlib import Path

import pytest

SUPPORT = Path(__file__).parent / "support"
RUNS_SUPPORT = Path(__file__).parent.parent / "runs" / "support"
for folder in (SUPPORT, RUNS_SUPPORT):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))  # the test schedulers, imported by their `_target_`


@pytest.fixture
def user_configs(monkeypatch: pytest.MonkeyPatch) -> str:
    """The validation and orchestration test modes (`fault`, `recording`) on the config search path."""
    path = f"{SUPPORT / 'configs'}:{RUNS_SUPPORT / 'configs'}"
    monkeypatch.setenv("PANDEMONIUM_CONFIGS_PATH", path)
    return path


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


@pytest.fixture
def snapshot():
    """snapshot(folder) -> every file and folder below it with size and modification time."""
    return _snapshot
