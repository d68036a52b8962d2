"""File helpers shared by the loaders: locating files, reading (gzip) text with line numbers.

Files ending in `.gz` are decompressed transparently. Line numbers are 1-based, matching what an
editor or `sed -n 17p` shows, and are the numbers `DataFormatError` reports.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from training.data.errors import DataFormatError, DatasetNotFoundError, ErrorPolicy


def existing_path(path: str | Path) -> Path:
    """The path (a directory or a file), or DatasetNotFoundError when it does not exist."""
    path = Path(path)
    if not path.exists():
        raise DatasetNotFoundError(f"{path}: no such file or directory", path)
    return path


def find_optional(directory: Path, candidates: list[str]) -> Path | None:
    """The first existing `directory/candidate` (names or glob patterns, each also tried as .gz)."""
    for candidate in candidates:
        for name in (candidate, candidate + ".gz"):
            matches = sorted(directory.glob(name)) if any(c in name for c in "*?[") else [directory / name]
            for match in matches:
                if match.is_file():
                    return match
    return None


def find_file(directory: Path, candidates: list[str], what: str) -> Path:
    """Like `find_optional`, but a missing file raises DatasetNotFoundError naming `what`."""
    found = find_optional(directory, candidates)
    if found is None:
        looked = ", ".join(candidates)
        raise DatasetNotFoundError(f"{directory}: no {what} file (looked for {looked})", directory)
    return found


def read_lines(path: Path, encoding: str = "utf-8") -> Iterator[tuple[int, str]]:
    """Yield `(line_number, line)` without the line ending; gzip handled."""
    if path.suffix == ".gz":
        handle = gzip.open(path, "rt", encoding=encoding, newline="")
    else:
        handle = open(path, encoding=encoding, newline="")  # noqa: SIM115
    with handle:
        for number, line in enumerate(handle, start=1):
            yield number, line.rstrip("\r\n")


def open_text(path: Path, encoding: str = "utf-8") -> Any:
    """A text handle on the file (gzip handled), for the csv module."""
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding=encoding, newline="")
    return open(path, encoding=encoding, newline="")  # noqa: SIM115


def parse_json_line(path: Path, number: int, line: str) -> dict[str, Any]:
    """One JSON object, or DataFormatError naming the file and line."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataFormatError(path, number, f"invalid JSON: {exc.msg} at column {exc.colno}") from None
    if not isinstance(record, dict):
        raise DataFormatError(path, number, f"expected a JSON object, got {type(record).__name__}")
    return record


def require_fields(path: Path, number: int, record: dict[str, Any], names: tuple[str, ...]) -> None:
    """DataFormatError when a required field is missing or null."""
    missing = [name for name in names if record.get(name) is None]
    if missing:
        raise DataFormatError(path, number, f"missing field(s) {', '.join(missing)}")


def as_int(path: Path, number: int, value: Any, what: str) -> int:
    """An integer field (ints, or strings of digits), or DataFormatError."""
    if isinstance(value, bool):
        raise DataFormatError(path, number, f"{what} is not an integer: {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    try:
        return int(str(value).strip())
    except ValueError:
        raise DataFormatError(path, number, f"{what} is not an integer: {value!r}") from None


def as_float(path: Path, number: int, value: Any, what: str) -> float:
    """A numeric field, or DataFormatError."""
    if isinstance(value, bool):
        raise DataFormatError(path, number, f"{what} is not a number: {value!r}")
    try:
        result = float(value)
    except (TypeError, ValueError):
        raise DataFormatError(path, number, f"{what} is not a number: {value!r}") from None
    if result != result:  # NaN
        raise DataFormatError(path, number, f"{what} is not a number: {value!r}")
    return result


def distinct_json_records(
    path: Path, policy: ErrorPolicy, counters: dict[str, int]
) -> Iterator[tuple[int, dict[str, Any]]]:
    """`(line_number, object)` of each distinct non-empty line; repeats counted in `duplicate_lines`."""
    seen: set[str] = set()
    counters.setdefault("duplicate_lines", 0)
    for number, line in read_lines(path):
        if not line.strip():
            continue
        if line in seen:
            counters["duplicate_lines"] += 1
            continue
        seen.add(line)
        try:
            yield number, parse_json_line(path, number, line)
        except DataFormatError as error:
            policy(error)
