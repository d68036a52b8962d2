"""Errors raised by the data loaders.

Every malformed input line surfaces as a `DataFormatError` naming the file and the 1-based
line number (`u.data:17: expected 4 tab-separated fields, got 3`), never as a silent skip.
Callers who prefer to drop bad lines pass `on_error="skip"`; `ErrorPolicy` implements both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

OnError = Literal["raise", "skip"]


class DataError(Exception):
    """Base class of every error of the data package."""


class DatasetNotFoundError(DataError, FileNotFoundError):
    """A data set path or one of its required files does not exist."""

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.path = Path(path) if path is not None else None

    def __str__(self) -> str:
        return self.message


class DataFormatError(DataError, ValueError):
    """A malformed line: `path` is the file, `line` the 1-based line number (0 = whole file)."""

    def __init__(self, path: str | Path, line: int, message: str) -> None:
        self.path = Path(path)
        self.line = line
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.path.name}:{self.line}" if self.line > 0 else self.path.name
        return f"{where}: {self.message}"

    @property
    def location(self) -> str:
        """Full path and line, for messages where the bare file name is ambiguous."""
        return f"{self.path}:{self.line}" if self.line > 0 else str(self.path)


class DownloadError(DataError):
    """A download failed (unreachable host, HTTP error, truncated file, bad archive)."""


class ErrorPolicy:
    """Raise malformed-line errors (`"raise"`) or count and drop them (`"skip"`)."""

    def __init__(self, on_error: OnError = "raise") -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.on_error = on_error
        self.skipped = 0

    def __call__(self, error: DataFormatError) -> None:
        if self.on_error == "raise":
            raise error
        self.skipped += 1
