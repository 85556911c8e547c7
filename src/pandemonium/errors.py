"""Errors that the CLI reports as one line (no traceback) with a non-zero exit code."""

from __future__ import annotations


class PandemoniumError(Exception):
    """Base class of user-facing errors: the message names the culprit (task, key, file, value)."""

    exit_code: int = 2


class ConfigError(PandemoniumError):
    """A config file, key or value is wrong (malformed YAML, unknown mode, bad `_target_`)."""


class UnknownTaskError(PandemoniumError):
    """A task name is not created on disk and no creator knows it."""


class UnknownSubroutineError(PandemoniumError):
    """`mode.subroutines` names a subroutine the scheduler does not offer."""


class RunLockedError(PandemoniumError):
    """Another process holds the lock of this run directory."""


class ContinueError(PandemoniumError):
    """`continue=...` points to nothing resumable or to a run with a different plan."""


class PluginError(PandemoniumError):
    """A plugin failed to load or register; the message names the plugin."""
