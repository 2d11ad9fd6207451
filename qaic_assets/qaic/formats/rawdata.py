"""Raw input files and input list files (qaic-exec's ``-input-list-file``), see docs/FORMATS.md.

* An input list file has one line per sample (or per batch): the raw files of that line, one per model
  input, comma-separated, in graph-input order. Relative paths resolve against the list file's
  directory; empty lines are ignored.
* A raw file is the tensor's bytes, C order, in the input's dtype, no header. A per-sample file holds one
  sample; a batched file holds B per-sample files concatenated.

Only numpy is needed here, so anything that reads calibration or held-out data can reuse it:

    specs = [InputSpec("x", np.float32, (8, 3, 224, 224))]
    for arrays, n_real in iter_batches(read_input_list("cal.txt"), specs, batch=8):
        ...  # arrays[i].shape == specs[i].shape; the last n_real < 8 samples are padding

Every problem raises :class:`RawDataError` (a ``ValueError``) whose message names the file, the input
and the fix.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qaic_assets.files import NotReadable, open_regular
from qaic_assets.qaic.formats.input_lists import InputListError, parse_input_list

__all__ = [
    "InputSpec",
    "RawDataError",
    "iter_batches",
    "load_raw",
    "read_input_list",
    "sample_nbytes",
]


class RawDataError(InputListError):
    """A list or raw file is missing, unreadable or of the wrong size; the message says which and why."""


@dataclass(frozen=True)
class InputSpec:
    """One model input with fixed dims: ``shape[0]`` is the batch dimension."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def batch(self) -> int:
        return int(self.shape[0]) if self.shape else 1

    @property
    def sample_nbytes(self) -> int:
        """Bytes of one sample (the shape without its batch dim)."""
        return sample_nbytes(self.shape, self.dtype)

    @property
    def nbytes(self) -> int:
        """Bytes of one whole batch (the full shape)."""
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize


def sample_nbytes(shape: Sequence[int], dtype) -> int:
    """Per-sample byte size of an input of fixed ``shape`` (batch dim first) and ``dtype``."""
    if any(not isinstance(d, (int, np.integer)) or d < 0 for d in shape):
        raise RawDataError(f"shape {tuple(shape)} is not fixed: give every dim a value (-batchsize, -onnx-define-symbol)")
    return math.prod(shape[1:]) * np.dtype(dtype).itemsize


def read_input_list(path: str | Path) -> list[list[Path]]:
    """The lines of an input list file, each a list of raw-file paths (relative ones made absolute)."""
    lines = parse_input_list(Path(path), what="input list file", fix="create it or fix -input-list-file",
                             error=RawDataError, require_samples=False)
    return [list(line.files) for line in lines]


def load_raw(path: str | Path, dtype, shape: Sequence[int], *, input_name: str | None = None) -> np.ndarray:
    """Load a raw file as an array of ``dtype`` and exactly ``shape`` (its size must match)."""
    path = Path(path)
    what = f" for input {input_name!r}" if input_name else ""
    dtype = np.dtype(dtype)
    expected = math.prod(shape) * dtype.itemsize
    try:
        with open_regular(path) as f:
            actual = os.fstat(f.fileno()).st_size
            if actual != expected:
                raise RawDataError(
                    f"raw file {path}{what} has {actual} bytes, expected {expected} bytes ({dtype.name} "
                    f"{tuple(shape)}): regenerate it for this shape or fix -batchsize / -onnx-define-symbol")
            data = np.fromfile(f, dtype=dtype, count=math.prod(shape))
    except FileNotFoundError:
        raise RawDataError(f"raw file {path}{what} does not exist: regenerate the input data or fix the list file") from None
    except NotReadable as exc:
        raise RawDataError(f"raw file {path}{what} {exc.strerror}: fix the list file") from None
    except OSError as exc:
        raise RawDataError(f"raw file {path}{what} is unreadable ({exc})") from None
    if data.size != math.prod(shape):  # cut short while read
        raise RawDataError(f"raw file {path}{what} changed while it was read: regenerate the input data")
    return data.reshape(tuple(shape))


def _load_line(files: list[Path], specs: Sequence[InputSpec], lineno: int, list_name: str) -> tuple[list[np.ndarray], int]:
    """Load one list line; returns (arrays with batch dim, samples in the line: the batch or 1)."""
    if len(files) != len(specs):
        raise RawDataError(
            f"{list_name} line {lineno} has {len(files)} raw file(s), the model has {len(specs)} input(s) "
            f"({', '.join(s.name for s in specs)}): give one file per input, comma-separated, in that order"
        )
    arrays: list[np.ndarray] = []
    counts: set[int] = set()
    for f, spec in zip(files, specs):
        per_sample = spec.sample_nbytes
        try:
            actual = f.stat().st_size
        except FileNotFoundError:
            raise RawDataError(
                f"raw file {f} for input {spec.name!r} ({list_name} line {lineno}) does not exist: "
                "regenerate the input data or fix the list file"
            ) from None
        if actual == spec.nbytes:
            n = spec.batch
        elif actual == per_sample:
            n = 1
        else:
            raise RawDataError(
                f"raw file {f} for input {spec.name!r} ({list_name} line {lineno}) has {actual} bytes, expected "
                f"{spec.nbytes} bytes (batch {spec.batch} x {per_sample} bytes per sample, "
                f"{np.dtype(spec.dtype).name} {tuple(spec.shape[1:])})"
                + (f" or {per_sample} bytes (one sample)" if spec.batch != 1 else "")
                + ": regenerate the raw file or fix -batchsize / -onnx-define-symbol"
            )
        counts.add(n)
        arrays.append(load_raw(f, spec.dtype, (n, *spec.shape[1:]), input_name=spec.name))
    if len(counts) > 1:
        raise RawDataError(f"{list_name} line {lineno} mixes batched and per-sample raw files: use one kind per line")
    return arrays, counts.pop()


def iter_batches(
    lines: Iterable[list[Path]],
    specs: Sequence[InputSpec],
    *,
    list_name: str = "input list",
) -> Iterator[tuple[list[np.ndarray], int]]:
    """Yield ``(arrays, n_real)`` batches of exactly the specs' shapes from list lines.

    A line holds either one whole batch (batched files, the seed's calibrate recipe) or one sample
    (per-sample files); per-sample lines are grouped ``batch`` at a time. A final incomplete batch is
    padded by repeating its last sample; ``n_real`` says how many leading samples are real.
    """
    if not specs:
        raise RawDataError("the model has no inputs to feed")
    batch = specs[0].batch
    pending: list[list[np.ndarray]] = []  # per-sample arrays waiting to form a batch
    for lineno, files in enumerate(lines, 1):
        arrays, n = _load_line(files, specs, lineno, list_name)
        if n == batch:
            if pending:  # a whole batch after per-sample lines: flush those first
                yield from _flush(pending, specs, batch)
                pending = []
            yield arrays, batch
        else:
            pending.append(arrays)
            if len(pending) == batch:
                yield from _flush(pending, specs, batch)
                pending = []
    if pending:
        yield from _flush(pending, specs, batch)


def _flush(pending: list[list[np.ndarray]], specs: Sequence[InputSpec], batch: int):
    n_real = len(pending)
    padded = pending + [pending[-1]] * (batch - n_real)
    yield [np.concatenate([p[i] for p in padded], axis=0) for i in range(len(specs))], n_real
