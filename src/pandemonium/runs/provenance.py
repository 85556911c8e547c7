"""Where results came from: the command line, the device, short artifact ids."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch

log = logging.getLogger(__name__)


def command_line() -> str:
    """The command that started this process, as a user would retype it."""
    args = list(sys.argv)
    if args and Path(args[0]).name in ("pandemonium", "__main__.py", "main.py"):
        args[0] = "pandemonium"
    return " ".join(args)


def resolve_device(spec: str | None) -> str:

    spec = str(spec or "auto")
    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return spec


def artifact_id(path: str | Path | None) -> str:
    """A short, stable id of a stored artifact: ``<task>/<file stem>`` (e.g. ``shapes_cls/patches_0001``)."""
    if not path:
        return ""
    path = Path(path)
    return f"{path.parent.name}/{path.stem}"
