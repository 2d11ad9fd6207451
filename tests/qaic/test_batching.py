"""qaic_assets.qaic.formats.batching (and the input-list parser): the seed's batching of calibration samples, validated up front."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from qaic_assets.qaic.formats.batching import BATCHED_LIST_NAME, CalibrationInputError, prepare_batched_inputs
from qaic_assets.qaic.formats.input_lists import InputListError, parse_input_list, select_samples


def make_samples(d: Path, n: int, size: int = 4, prefix: str = "s", suffix: str = ".raw") -> list[Path]:
    d.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(1, n + 1):
        p = d / f"{prefix}{i}{suffix}"
        p.write_bytes(bytes([i]) * size)
        paths.append(p)
    return paths


def write_list(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def list_lines(batched) -> list[list[str]]:
    """List entries resolved as qaic-exec does, against the list's directory (its working dir)."""
    base = batched.list_path.parent
    return [[str(base / item) for item in line.split(",")]
            for line in batched.list_path.read_text().splitlines()]


# ------------------------------------------------------------------------------------------ batching


def test_five_files_batch_two_gives_three_padded(tmp_path):
    files = make_samples(tmp_path / "data", 5)
    lst = write_list(tmp_path / "data" / "cal.txt", [p.name for p in files])  # relative to the list
    out = tmp_path / "work" / "bs2"
    res = prepare_batched_inputs(lst, 2, out)
    assert (res.n_samples, res.n_batches, res.n_padding, res.n_inputs) == (5, 3, 1, 1)
    assert res.list_path == out / BATCHED_LIST_NAME
    lines = list_lines(res)
    assert len(lines) == 3 and all(len(line) == 1 for line in lines)
    raw = res.list_path.read_text().split()
    assert all(item.startswith("raw/") for item in raw)  # relative: valid after the dir is renamed
    contents = [Path(line[0]).read_bytes() for line in lines]
    assert contents == [b"\x01" * 4 + b"\x02" * 4, b"\x03" * 4 + b"\x04" * 4, b"\x05" * 4 + b"\x05" * 4]
    assert [tuple(out / x for x in row) for row in res.files] == [tuple(Path(x) for x in line) for line in lines]
    assert len(res.sha256) == 64


def test_exact_multiple_has_no_padding_and_seed_renaming(tmp_path):
    files = make_samples(tmp_path / "d", 4, suffix=".rgb32")
    lst = write_list(tmp_path / "cal.txt", [str(p) for p in files])
    res = prepare_batched_inputs(lst, 2, tmp_path / "out")
    assert (res.n_batches, res.n_padding) == (2, 0)
    names = [Path(line[0]).name for line in list_lines(res)]
    assert all(n.endswith(".raw") for n in names) and "s1" in names[0] and "s3" in names[1]


def test_batch_larger_than_samples_pads_one_batch(tmp_path):
    files = make_samples(tmp_path / "d", 3)
    res = prepare_batched_inputs(write_list(tmp_path / "l.txt", [str(p) for p in files]), 8, tmp_path / "o")
    assert (res.n_batches, res.n_padding) == (1, 5)
    assert Path(list_lines(res)[0][0]).read_bytes() == b"\x01" * 4 + b"\x02" * 4 + b"\x03" * 4 * 6


def test_batch_one_lists_sources(tmp_path):
    files = make_samples(tmp_path / "d", 3)
    lst = write_list(tmp_path / "d" / "l.txt", ["", *(p.name for p in files), ""])  # blank lines ignored
    res = prepare_batched_inputs(lst, 1, tmp_path / "o")
    assert list_lines(res) == [[str(p)] for p in files]
    assert res.n_batches == 3 and res.n_padding == 0


def test_multi_input_lines(tmp_path):
    d = tmp_path / "squad"
    ids = make_samples(d, 3, size=8, prefix="ids")
    mask = make_samples(d, 3, size=4, prefix="mask")
    seg = make_samples(d, 3, size=2, prefix="seg")
    lst = write_list(d / "cal.txt", [f"{a.name}, {b.name},{c.name}" for a, b, c in zip(ids, mask, seg)])
    res = prepare_batched_inputs(lst, 2, tmp_path / "out", input_sizes=[8, 4, 2])
    assert (res.n_samples, res.n_batches, res.n_inputs) == (3, 2, 3)
    lines = list_lines(res)
    assert all(len(line) == 3 for line in lines)
    assert len({p for line in lines for p in line}) == 6  # one distinct batched file per input per batch
    got = [[Path(p).read_bytes() for p in line] for line in lines]
    assert got[0] == [b"\x01" * 8 + b"\x02" * 8, b"\x01" * 4 + b"\x02" * 4, b"\x01" * 2 + b"\x02" * 2]
    assert got[1] == [b"\x03" * 16, b"\x03" * 8, b"\x03" * 4]


def test_same_content_same_sha256_regardless_of_location(tmp_path):
    files = make_samples(tmp_path / "d", 5)
    lst = write_list(tmp_path / "l.txt", [str(p) for p in files])
    a = prepare_batched_inputs(lst, 2, tmp_path / "a")
    b = prepare_batched_inputs(lst, 2, tmp_path / "b")
    c = prepare_batched_inputs(lst, 4, tmp_path / "c")
    assert a.sha256 == b.sha256 != c.sha256


# ------------------------------------------------------------------------------------------ selection


def test_first_keeps_first_n(tmp_path):
    files = make_samples(tmp_path / "d", 5)
    lst = write_list(tmp_path / "l.txt", [str(p) for p in files])
    res = prepare_batched_inputs(lst, 2, tmp_path / "o", first=3)
    assert (res.n_samples, res.n_batches) == (3, 2)
    assert Path(list_lines(res)[1][0]).read_bytes() == b"\x03" * 8
    assert res.source_lines == [1, 2, 3]


def test_filter_size_takes_evenly_spaced_samples(tmp_path):
    files = make_samples(tmp_path / "d", 10)
    lst = write_list(tmp_path / "l.txt", [str(p) for p in files])
    res = prepare_batched_inputs(lst, 1, tmp_path / "o", filter_size=4)
    assert [Path(line[0]).name for line in list_lines(res)] == ["s1.raw", "s3.raw", "s6.raw", "s8.raw"]
    # deterministic, exact size, and larger filters keep everything
    again = prepare_batched_inputs(lst, 1, tmp_path / "o2", filter_size=4)
    assert list_lines(again) == list_lines(res)
    assert prepare_batched_inputs(lst, 1, tmp_path / "o3", filter_size=50).n_samples == 10


def test_first_then_filter_size(tmp_path):
    files = make_samples(tmp_path / "d", 10)
    lines = parse_input_list(write_list(tmp_path / "l.txt", [str(p) for p in files]))
    sel = select_samples(lines, first=6, filter_size=3)
    assert [line.lineno for line in sel] == [1, 3, 5]
    with pytest.raises(InputListError, match="first"):
        select_samples(lines, first=0)


def test_filter_only_validates_selected_lines(tmp_path):
    files = make_samples(tmp_path / "d", 4)
    lst = write_list(tmp_path / "l.txt", [str(p) for p in files] + [str(tmp_path / "gone.raw")])
    assert prepare_batched_inputs(lst, 2, tmp_path / "o", first=4).n_samples == 4


# ------------------------------------------------------------------------------------------ errors


def test_missing_list_names_it_and_says_what_to_put(tmp_path):
    lst = tmp_path / "nolist.txt"
    with pytest.raises(CalibrationInputError) as ei:
        prepare_batched_inputs(lst, 2, tmp_path / "o")
    assert str(lst) in str(ei.value) and "one line per calibration sample" in str(ei.value)
    assert not (tmp_path / "o").exists()


def test_empty_list(tmp_path):
    lst = write_list(tmp_path / "empty.txt", ["", "   "])
    with pytest.raises(CalibrationInputError) as ei:
        prepare_batched_inputs(lst, 2, tmp_path / "o")
    assert str(lst) in str(ei.value) and "no samples" in str(ei.value)
    assert "one line per calibration sample" in str(ei.value)


def test_missing_file_names_file_and_line(tmp_path):
    files = make_samples(tmp_path / "d", 3)
    files[2].unlink()
    lst = write_list(tmp_path / "l.txt", [str(files[0]), "", str(files[1]), str(files[2])])  # file 3 on line 4
    with pytest.raises(CalibrationInputError) as ei:
        prepare_batched_inputs(lst, 2, tmp_path / "o")
    msg = str(ei.value)
    assert str(files[2]) in msg and "line 4" in msg and str(lst) in msg and "does not exist" in msg
    assert not (tmp_path / "o").exists()


def test_directory_instead_of_file(tmp_path):
    (tmp_path / "adir").mkdir()
    lst = write_list(tmp_path / "l.txt", ["adir"])
    with pytest.raises(CalibrationInputError, match="adir.*line 1.*is a directory: only a regular file can be read here"):
        prepare_batched_inputs(lst, 1, tmp_path / "o")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read any file")
def test_unreadable_file(tmp_path):  # pragma: no cover - CI runs as root
    files = make_samples(tmp_path / "d", 2)
    files[1].chmod(0)
    lst = write_list(tmp_path / "l.txt", [str(p) for p in files])
    with pytest.raises(CalibrationInputError, match="not readable"):
        prepare_batched_inputs(lst, 1, tmp_path / "o")


def test_size_mismatch_with_input_sizes(tmp_path):
    d = tmp_path / "d"
    ids = make_samples(d, 2, size=8, prefix="ids")
    mask = make_samples(d, 2, size=4, prefix="mask")
    mask[1].write_bytes(b"\x00" * 5)
    lst = write_list(tmp_path / "l.txt", [f"{a},{b}" for a, b in zip(ids, mask)])
    with pytest.raises(CalibrationInputError) as ei:
        prepare_batched_inputs(lst, 2, tmp_path / "o", input_sizes=[8, 4])
    msg = str(ei.value)
    assert str(mask[1]) in msg and "input 1" in msg and "5 bytes" in msg and "expected 4 bytes" in msg
    assert "line 2" in msg


def test_size_mismatch_on_first_line_against_model(tmp_path):
    files = make_samples(tmp_path / "d", 2, size=4)
    lst = write_list(tmp_path / "l.txt", [str(p) for p in files])
    with pytest.raises(CalibrationInputError) as ei:
        prepare_batched_inputs(lst, 1, tmp_path / "o", input_sizes=[602112])
    assert str(files[0]) in str(ei.value) and "expected 602112 bytes" in str(ei.value)


def test_inconsistent_sizes_without_input_sizes(tmp_path):
    files = make_samples(tmp_path / "d", 3, size=4)
    files[2].write_bytes(b"\x00" * 3)
    lst = write_list(tmp_path / "l.txt", [str(p) for p in files])
    with pytest.raises(CalibrationInputError) as ei:
        prepare_batched_inputs(lst, 2, tmp_path / "o")
    assert str(files[2]) in str(ei.value) and "3 bytes" in str(ei.value) and "input 0" in str(ei.value)


def test_wrong_number_of_inputs(tmp_path):
    files = make_samples(tmp_path / "d", 2)
    lst = write_list(tmp_path / "l.txt", [f"{files[0]},{files[1]}", str(files[1])])
    with pytest.raises(CalibrationInputError, match="line 2 .* names 1 file"):
        prepare_batched_inputs(lst, 1, tmp_path / "o")
    with pytest.raises(CalibrationInputError, match="line 1 .* names 2 file.*model has 1 input"):
        prepare_batched_inputs(lst, 1, tmp_path / "o", input_sizes=[4])


def test_bad_batch(tmp_path):
    files = make_samples(tmp_path / "d", 2)
    lst = write_list(tmp_path / "l.txt", [str(p) for p in files])
    with pytest.raises(CalibrationInputError, match="batch"):
        prepare_batched_inputs(lst, 0, tmp_path / "o")


def test_error_is_a_value_error():
    assert issubclass(CalibrationInputError, ValueError)


# ------------------------------------------------------------------------------------- validate first


def test_nothing_written_when_validation_fails(tmp_path):
    files = make_samples(tmp_path / "d", 5)
    lst = write_list(tmp_path / "l.txt", [str(p) for p in files])
    files[4].unlink()
    out = tmp_path / "work" / "bs2"
    with pytest.raises(CalibrationInputError, match="s5.raw"):
        prepare_batched_inputs(lst, 2, out)
    assert not out.exists()
