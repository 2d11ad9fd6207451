"""Batched calibration inputs for ``qaic-exec -dump-profile``: the seed's ``create_batched_inputs``
(B samples concatenated per batch, the last padded), for models with several inputs, with the seed's
``first`` / ``filter_size`` selection, everything validated before anything is written. The rules:
docs/FORMATS.md "Batched calibration inputs".
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from qaic_assets.files import NotReadable, open_regular
from qaic_assets.qaic.formats.input_lists import InputListError, InputListLine, parse_input_list, select_samples

#: Name of the written list (the seed's name).
BATCHED_LIST_NAME = "batched_input_files"
_RAW_DIR = "raw"
_CHUNK = 1 << 20


class CalibrationInputError(InputListError):
    """The calibration list or one of its files cannot be used; the message says which and why."""


@dataclass
class BatchedInputs:
    """What prepare_batched_inputs wrote.

    ``list_path``: the list for ``-input-list-file`` (absolute paths, one line per batch, one file per
    input). ``n_samples``: selected samples (without padding). ``n_batches``: lines in the list.
    ``files``: per batch, one path per input (the list's content). ``n_padding``: samples repeated to
    fill the last batch. ``sha256``: hash of the batched bytes in list order (independent of paths).
    """

    list_path: Path
    n_samples: int
    n_batches: int
    files: list[tuple[Path, ...]]
    n_inputs: int = 1
    n_padding: int = 0
    sha256: str = ""
    source_lines: list[int] = field(default_factory=list)


_HOW_TO_FILL = (
    "put one line per calibration sample in it, each naming the preprocessed raw file(s) of that "
    "sample (the tensor's bytes in the model input's dtype, batch 1), comma-separated in the order "
    "of the model's inputs; relative paths resolve against the list's directory"
)


def parse_calibration_list(list_file: Path) -> list[InputListLine]:
    return parse_input_list(list_file, what="calibration list", fix=f"create it and {_HOW_TO_FILL}",
                            error=CalibrationInputError)


def _validate(
    list_file: Path, lines: list[InputListLine], input_sizes: list[int] | None
) -> list[int]:
    """Check every file of ``lines``; return the per-sample byte size of each input."""
    n_inputs = len(input_sizes) if input_sizes is not None else len(lines[0].files)
    expected_sizes: list[int | None] = list(input_sizes) if input_sizes is not None else [None] * n_inputs
    for line in lines:
        if len(line.files) != n_inputs:
            why = (
                f"the model has {n_inputs} input(s)"
                if input_sizes is not None
                else f"line {lines[0].lineno} has {n_inputs}"
            )
            raise CalibrationInputError(
                f"line {line.lineno} of calibration list {list_file} names {len(line.files)} file(s) "
                f"but {why}: give one raw file per model input, comma-separated"
            )
        for k, path in enumerate(line.files):
            where = f"(line {line.lineno} of calibration list {list_file}, input {k})"
            if "," in str(path):
                raise CalibrationInputError(f"calibration input file {path} {where}: path contains a comma")
            try:
                with open_regular(path) as f:
                    size = os.fstat(f.fileno()).st_size
            except FileNotFoundError:
                raise CalibrationInputError(f"calibration input file {path} {where} does not exist") from None
            except NotReadable as exc:
                raise CalibrationInputError(f"calibration input file {path} {where} {exc.strerror}") from None
            except OSError as exc:
                raise CalibrationInputError(
                    f"calibration input file {path} {where} is not readable: {exc.strerror or exc}"
                ) from exc
            if expected_sizes[k] is None:
                if size == 0:
                    raise CalibrationInputError(f"calibration input file {path} {where} is empty")
                expected_sizes[k] = size
            elif size != expected_sizes[k]:
                origin = (
                    "one sample of this model input"
                    if input_sizes is not None
                    else f"the size of input {k}'s file on line {lines[0].lineno}"
                )
                raise CalibrationInputError(
                    f"calibration input file {path} {where} has {size} bytes, expected "
                    f"{expected_sizes[k]} bytes ({origin}); raw files must hold exactly one sample "
                    f"in the model input's dtype and shape"
                )
    return [int(s) for s in expected_sizes]  # type: ignore[arg-type]


def _batched_name(batch_idx: int, k: int, n_inputs: int, first_file: Path) -> str:
    base = first_file.name
    if base.endswith(".rgb32"):  # the seed's renaming
        base = base[: -len(".rgb32")] + ".raw"
    prefix = f"b{batch_idx:05d}" if n_inputs == 1 else f"b{batch_idx:05d}-in{k}"
    return f"{prefix}-{base}"


def _chunks(src: Path):
    with open_regular(src) as f:
        while chunk := f.read(_CHUNK):
            yield chunk


def _copy_into(dst, src: Path, digest) -> None:
    for chunk in _chunks(src):
        dst.write(chunk)
        digest.update(chunk)


def _hash_into(src: Path, digest) -> None:
    for chunk in _chunks(src):
        digest.update(chunk)


def prepare_batched_inputs(
    list_file: Path,
    batch: int,
    out_dir: Path,
    *,
    input_sizes: list[int] | None = None,
    first: int | None = None,
    filter_size: int | None = None,
) -> BatchedInputs:
    """Validate the calibration list and write ``<out_dir>/batched_input_files`` (+ ``raw/``).

    Batches are B consecutive selected samples concatenated per input; the last batch is padded by
    repeating the last sample. ``out_dir`` is the calibration's working directory (the caller's
    temporary directory, renamed into place as a whole), so batched files are listed relative to it
    (``raw/...``) and stay valid after the rename. For ``batch == 1`` no data is copied: the list
    names the source files (absolute paths). Raises CalibrationInputError before writing anything if
    the inputs are unusable.
    """
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise CalibrationInputError(f"batch must be a positive integer, got {batch!r}")
    if input_sizes is not None:
        input_sizes = [int(s) for s in input_sizes]
        if not input_sizes or any(s <= 0 for s in input_sizes):
            raise CalibrationInputError(f"input_sizes must be positive byte counts, got {input_sizes!r}")
    list_file = Path(list_file)
    out_dir = Path(os.path.abspath(out_dir))
    if "," in str(out_dir):
        raise CalibrationInputError(f"output dir {out_dir} contains a comma, which input lists cannot hold")

    lines = select_samples(parse_calibration_list(list_file), first=first, filter_size=filter_size)
    sizes = _validate(list_file, lines, input_sizes)
    n_inputs = len(sizes)
    n_samples = len(lines)
    n_batches = -(-n_samples // batch)
    n_padding = n_batches * batch - n_samples
    padded = lines + [lines[-1]] * n_padding

    digest = hashlib.sha256()
    files: list[tuple[Path, ...]] = []
    list_path = out_dir / BATCHED_LIST_NAME
    out_dir.mkdir(parents=True, exist_ok=True)
    if batch == 1:
        for line in padded:
            row = tuple(Path(os.path.abspath(p)) for p in line.files)
            for p in row:
                _hash_into(p, digest)
            files.append(row)
    else:
        (out_dir / _RAW_DIR).mkdir(exist_ok=True)
        for b in range(n_batches):
            group = padded[b * batch : (b + 1) * batch]
            row = []
            for k in range(n_inputs):
                name = _batched_name(b, k, n_inputs, group[0].files[k])
                with open(out_dir / _RAW_DIR / name, "wb") as dst:
                    for line in group:
                        _copy_into(dst, line.files[k], digest)
                row.append(Path(_RAW_DIR) / name)  # relative to out_dir
            files.append(tuple(row))
    text = "".join(",".join(str(p) for p in row) + "\n" for row in files)
    list_path.write_text(text, encoding="utf-8")

    return BatchedInputs(
        list_path=list_path,
        n_samples=n_samples,
        n_batches=n_batches,
        files=files,
        n_inputs=n_inputs,
        n_padding=n_padding,
        sha256=digest.hexdigest(),
        source_lines=[line.lineno for line in lines],
    )


def selection_sha256(
    list_file: Path,
    *,
    input_sizes: list[int] | None = None,
    first: int | None = None,
    filter_size: int | None = None,
) -> str:
    """Validate the selected samples as prepare_batched_inputs does and hash their bytes in order:
    the identity of a calibration set, for the calibration cache key (nothing is written)."""
    list_file = Path(list_file)
    lines = select_samples(parse_calibration_list(list_file), first=first, filter_size=filter_size)
    _validate(list_file, lines, input_sizes)
    digest = hashlib.sha256()
    for line in lines:
        for path in line.files:
            _hash_into(Path(path), digest)
    return digest.hexdigest()
