"""Suite-wide test hygiene (every folder's own fixtures live in its conftest)."""

from __future__ import annotations

import logging
import os
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


@pytest.fixture(scope="session", autouse=True)
def rebuildable_caches_in_the_session_folder(tmp_path_factory):
    """pandemonium's cache (the MLflow schema template) in this session's temporary folder rather than
    the user's: each test session builds its own, as a fresh machine does."""
    previous = os.environ.get("PANDEMONIUM_CACHE_DIR")
    os.environ["PANDEMONIUM_CACHE_DIR"] = str(tmp_path_factory.getbasetemp() / "pandemonium-cache")
    yield
    if previous is None:
        os.environ.pop("PANDEMONIUM_CACHE_DIR", None)
    else:
        os.environ["PANDEMONIUM_CACHE_DIR"] = previous
