"""Suite-wide test hygiene (every folder's own fixtures live in its conftest)."""

from __future__ import annotations

import logging
import sys

import pytest


@pytest.fixture(autouse=True)
def library_log_handlers_outlive_captured_streams():
    """Libraries (Lightning, Optuna, Ray, torchmetrics, torch submodules) bind a StreamHandler to the
    ``sys.stderr`` of the moment they are imported. Imported during a test that captures output (capsys),
    that is the test's capture stream, closed when the test ends, and the next test that logs through
    the library prints "--- Logging error ---" with a traceback. Point such handlers at the live stderr."""
    yield
    loggers = [logging.getLogger(), *(lg for lg in logging.Logger.manager.loggerDict.values()
                                      if isinstance(lg, logging.Logger))]
    for logger in loggers:
        for handler in logger.handlers:
            stream = getattr(handler, "stream", None)
            if (type(handler) is not logging.FileHandler and stream is not None
                    and getattr(stream, "closed", False)):
                handler.stream = sys.stderr  # not setStream(): it flushes the closed stream first
