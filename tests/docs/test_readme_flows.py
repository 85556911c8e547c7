"""The README's command examples run as written, in order, on tiny settings.

The commands are read from the first ``bash`` block under "## Modes" of README.md, so the test follows
the README when it changes. Each command runs in-process through ``pandemonium.cli.main.main``; only
size overrides (a few samples, one epoch, a few patch steps) and the data/results roots in a temporary
folder are added, and a size override replaces a README value of the same key (``attack.steps=200``
becomes a few steps).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[2] / "README.md"

# per mode: the tiny settings appended to the README's command (key=value; +key adds a new key)
TINY = {
    "create": ("+mode.creator_kwargs.num_samples=48", "+mode.creator_kwargs.image_size=32"),
    "train": ("model=tiny", "trainer.lightning.max_epochs=1",
              "trainer.task_type_overrides.detection.lightning.max_epochs=1"),
    "attack": ("attack.steps=3", "attack.num_eval=8", "attack.batch_size=8", "model=tiny",
               "trainer.lightning.max_epochs=1", "trainer.task_type_overrides.detection.lightning.max_epochs=1"),
    "evaluate": ("mode.num_eval=8", "mode.batch_size=8", "mode.scales=[0.3]", "mode.angles=[0]",
                 "mode.brightness=[1.0]", "mode.blur=[0]", "mode.jpeg=[90]"),
    "report": ("mode.num_examples=1",),
}


def readme_commands(text: str) -> list[list[str]]:
    """The ``pandemonium`` commands of the first bash block under "## Modes", as argument lists
    (one per command: ``a && b`` is two, comments dropped)."""
    section = text.split("\n## Modes", 1)[1]
    section = re.split(r"\n## ", section, maxsplit=1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block is not None, "README: no bash block under '## Modes'"
    commands = []
    for line in block.group(1).splitlines():
        words = shlex.split(line, comments=True)
        current: list[str] = []
        for word in [*words, "&&"]:
            if word in ("&&", ";"):
                if current:
                    commands.append(current)
                current = []
            else:
                current.append(word)
    assert commands and all(c[0] == "pandemonium" for c in commands), commands
    return [c[1:] for c in commands]


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def with_tiny(args: list[str], roots: tuple[Path, Path]) -> list[str]:
    """``args`` with the mode's tiny settings (replacing the README's value of the same key) and the roots."""
    tiny = TINY.get(args[0], ())
    if any(a.startswith("continue=") for a in args):
        tiny = ()  # continue replays the run's own settings (and refuses others)
    replaced = {_key(t) for t in tiny}
    kept = [a for a in args if "=" not in a or _key(a) not in replaced]
    data_dir, out_dir = roots
    return [*kept, *tiny, f"data_dir={data_dir}", f"out_dir={out_dir}"]


def test_readme_commands_are_parsed_from_the_modes_block():
    text = "# x\n## Modes\ntext\n```bash\npandemonium a x=1 && pandemonium b  # note\n" \
           "pandemonium c y=[1,2]   # c\n```\n```bash\npandemonium d\n```\n## Next\n"
    assert readme_commands(text) == [["a", "x=1"], ["b"], ["c", "y=[1,2]"]]
    assert with_tiny(["attack", "attack.steps=200", "proj=p"], (Path("d"), Path("o")))[:3] == [
        "attack", "proj=p", "attack.steps=3"]


def test_readme_flows_work_as_written(tmp_path, monkeypatch, capsys):
    from pandemonium.cli.main import main

    roots = (tmp_path / "data", tmp_path / "results")
    monkeypatch.chdir(tmp_path)  # anything written relative to the working directory stays here
    monkeypatch.setenv("PYTHONHASHSEED", "0")
    commands = readme_commands(README.read_text(encoding="utf-8"))
    assert len(commands) >= 5, commands
    for args in commands:
        full = with_tiny(args, roots)
        code = main(full)
        out, err = capsys.readouterr()
        assert code == 0, f"`pandemonium {' '.join(args)}` exited {code}:\n{out[-3000:]}\n{err[-3000:]}"
        print(f"$ pandemonium {' '.join(args)}\n{out[-400:]}")
    projects = {a.split("=", 1)[1] for args in commands for a in args if a.startswith("proj=")}
    for proj in projects:  # every project the README names holds its runs
        assert (roots[1] / proj / "runs").is_dir(), proj
    if any(args[0] == "report" for args in commands):
        assert list(roots[1].rglob("report*.html")), "the README's report command wrote no report"
    assert not list(tmp_path.glob("mlruns")), "MLflow artifacts went to the working directory"
