"""Errors of the tasks layer: each names the task and, where there is one, the sample or file."""

from __future__ import annotations

from collections.abc import Iterable

from pandemonium.errors import PandemoniumError


class TaskError(PandemoniumError):
    """Base class of every error the tasks layer raises on bad input."""


class TaskNameError(TaskError, ValueError):
    """A task name that cannot be a folder name (separator, whitespace, leading dot, ...)."""


class TaskNotFoundError(TaskError, LookupError):
    """The task is neither on disk nor creatable; the message lists what is."""

    def __init__(self, name: str, known: Iterable[str] = (), creatable: Iterable[str] = ()) -> None:
        self.name = name
        self.known = sorted(known)
        self.creatable = sorted(creatable)
        known_txt = ", ".join(self.known) or "none"
        creatable_txt = ", ".join(self.creatable) or "none"
        super().__init__(
            f"unknown task {name!r}: tasks on disk: {known_txt}; creatable tasks: {creatable_txt}"
        )

    def __str__(self) -> str:  # LookupError would otherwise quote the whole message
        return self.args[0]


class TaskFormatError(TaskError):
    """``task.json`` is missing, not JSON, or lacks a required field."""


class TaskFileError(TaskError):
    """A sample file is missing or cannot be decoded."""


class TaskVerificationError(TaskError):
    """A sample violates a modality constraint (label out of range, box outside the image, ...)."""


class TaskCreationError(TaskError):
    """A task creator failed; the half-built task was discarded."""
