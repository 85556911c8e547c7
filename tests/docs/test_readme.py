"""The README's Python example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_python_example_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "README.md has no ```python block"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)  # noqa: S102 - the point is to run the docs
    result = namespace["result"]
    assert result.steps_run == 20
    assert result.patch.shape == (3, 12, 12)
    assert torch.equal(namespace["y"], namespace["y_again"])
    assert (tmp_path / "patch_run").is_dir()
    assert result.best_patch.shape == (3, 12, 12) and result.best_step in (0, 10, 20)
    assert (tmp_path / "patch_run" / "checkpoints" / "last.pt").is_file()  # the default Checkpoint callback
