"""Exceptions with messages meant for the person at the terminal.

The CLI turns every :class:`TinySaverError` into one line on stderr and exit code 2, so a message
must say *which* input is wrong and *what* is wrong with it, without a traceback.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union


class TinySaverError(Exception):
    """Base class of errors caused by the user's input, not by a bug in TinySaver."""


class ThresholdError(TinySaverError, ValueError):
    """Thresholds a cascade cannot use: a wrong count for its stages, NaN, not a number.

    Also a ``ValueError``, the error Python code expects for a bad argument value.
    """


class DataNotFoundError(TinySaverError):
    """A dataset folder that does not exist (the tools add which setting points at the data)."""


class RecordError(TinySaverError, ValueError):
    """A prediction record (or a pair of records) that cannot be used.

    Args:
        path: The record file the problem is in (``None`` for in-memory arrays).
        problem: What is wrong, as a short phrase.
    """

    def __init__(self, path: Optional[Union[str, Path]], problem: str) -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)
