"""Input list files (docs/FORMATS.md "Input list files"): one line per sample, naming that sample's raw
file per model input, comma-separated, relative paths resolved against the list's directory. The one
parser of the format, used for calibration lists, held-out lists and the CPU compiler's
``-input-list-file``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from qaic_assets import files


class InputListError(ValueError):
    """An input list that cannot be used; the message names the file and the fix."""


@dataclass(frozen=True)
class InputListLine:
    """One sample of an input list: its 1-based line number and one resolved path per model input."""

    lineno: int
    files: tuple[Path, ...]


def parse_input_list(list_file: Path, *, what: str = "input list", fix: str = "fix -input-list-file",
                     error: type[InputListError] = InputListError, require_samples: bool = True) -> list[InputListLine]:
    """Read an input list (docs/FORMATS.md). Empty lines are skipped; paths are resolved against the
    list's directory. ``what``/``fix`` name the list and the remedy in errors of type ``error``."""
    list_file = Path(list_file)
    try:
        text = files.read_text(list_file)
    except FileNotFoundError:
        raise error(f"{what} {list_file} does not exist: {fix}") from None
    except files.NotReadable as exc:  # a directory, a FIFO (whose read would block forever), a device
        raise error(f"{what} {list_file} {exc.strerror}: {fix}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{what} {list_file} cannot be read: {exc}") from exc
    base = list_file.parent
    lines: list[InputListLine] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        parts = [p.strip() for p in line.split(",")]
        if any(p == "" for p in parts):
            raise error(f"line {lineno} of {what} {list_file} has an empty file name: {raw!r}")
        lines.append(InputListLine(lineno, tuple(Path(p) if os.path.isabs(p) else base / p for p in parts)))
    if require_samples and not lines:
        raise error(f"{what} {list_file} has no samples: {fix}")
    return lines


def select_samples(
    lines: list[InputListLine], *, first: int | None = None, filter_size: int | None = None
) -> list[InputListLine]:
    """Apply ``first`` (keep the first N) then ``filter_size`` (N evenly spaced, see module doc)."""
    for name, value in (("first", first), ("filter_size", filter_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise InputListError(f"{name} must be a positive integer, got {value!r}")
    selected = list(lines)
    if first is not None:
        selected = selected[:first]
    if filter_size is not None and filter_size < len(selected):
        n = len(selected)
        selected = [selected[(i * n) // filter_size] for i in range(filter_size)]
    return selected
