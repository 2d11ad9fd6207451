"""The SDK compiler's flag grammar (qaic-exec and qaic-compile alike), over the table in flag_table.py.

Every argument is ``-name`` or ``-name=value`` (one argv item, never split); an alias (``-m``) means its
flag (``-model``). Repeatable flags (``-onnx-define-symbol=name,value``, ``-aic-profiling-type``,
``-keep-original-precision-for-nodes``) accumulate (a later value for the same symbol wins); for every
other flag the last occurrence wins. A misspelled flag or a value outside the documented set is an
error naming the flag and the fix. Values are never rewritten: the compiler gets them as written.

Flags the table does not know are, unless ``strict``, kept in ``ParsedFlags.unknown`` and passed to
the SDK compiler unchecked (SDKs add flags; the user's SDK knows them); the CPU reference compiler
parses strictly and refuses them by name. ``normalize_args`` first brings pasted argument shapes to
one ``-name[=value]`` item each, as the SDK's parser (LLVM's command line library) reads them.

    parsed = parse_argv(["-m=m.onnx", "-batchsize=8", "-onnx-define-symbol=seq,384"])
    parsed.get("model") -> "m.onnx";   parsed.symbols -> {"seq": 384}
"""

from __future__ import annotations

import difflib
import math
import os
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from qaic_assets.qaic.flag_table import (  # noqa: F401 - re-exported: the table is part of the contract
    ALIASES,
    APPLIED,
    CALIBRATIONS,
    FLAGS,
    NOT_APPLICABLE,
    SCHEMAS,
    Flag,
)

LLVM_TRUE = ("true", "TRUE", "True", "1")
LLVM_FALSE = ("false", "FALSE", "False", "0")
_TOKEN = re.compile(r"[A-Za-z0-9_.,:/+@%\[\]-]+")  # no blanks, quotes or shell metacharacters
# an ONNX dim name may hold blanks and operators ('past_sequence_length + sequence_length', in a real
# LLM compile): anything but a comma, a NUL or a newline; one argv item, never through a shell
_SYMBOL = re.compile(r"([A-Za-z_][^,\x00\n]*),([0-9]+)")
_INTS = re.compile(r"[0-9]+(,[0-9]+)*")
FILE_KINDS = ("infile", "outfile", "outdir")


class FlagError(ValueError):
    """A malformed or unknown flag; the message names it and the fix."""


@dataclass
class ParsedFlags:
    """Flags by canonical name in first-appearance order; a repeated flag's value is its last occurrence
    (``repeats`` keeps every value of a repeatable flag, ``symbols`` the -onnx-define-symbol pairs)."""

    values: dict[str, str | None] = field(default_factory=dict)
    symbols: dict[str, int] = field(default_factory=dict)
    repeats: dict[str, list[str]] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)  # not in the table (strict=False): passed through as written

    def __contains__(self, name: str) -> bool:
        return name in self.values

    def get(self, name: str, default: str | None = None) -> str | None:
        v = self.values.get(name, default)
        return default if v is None else v

    def get_int(self, name: str, default: int | None = None) -> int | None:
        return int(self.values[name]) if self.values.get(name) is not None else default

    def get_float(self, name: str, default: float | None = None) -> float | None:
        return float(self.values[name]) if self.values.get(name) is not None else default

    def get_bool(self, name: str, default: bool = False) -> bool:
        if name not in self.values:
            return default
        v = self.values[name]
        return v is None or v in LLVM_TRUE

    def get_list(self, name: str) -> list[str]:
        if name in self.repeats:
            return [x.strip() for v in self.repeats[name] for x in v.split(",") if x.strip()]
        v = self.values.get(name)
        return [x.strip() for x in v.split(",") if x.strip()] if v else []

    @property
    def calibrating(self) -> bool:
        return "dump-profile" in self.values

    def split_by_cpu_status(self) -> tuple[list[str], list[str]]:
        """(applied flag names, not-applicable-on-CPU flag names) among those given; a flag whose value
        only the card implements (``-quantization-calibration=MSE``) is not applicable."""
        applied, na = [], []
        for name, value in self.values.items():
            (applied if FLAGS[name].cpu_status(value) == APPLIED else na).append(name)
        return applied, na


def canonical(name: str) -> str:
    """The flag's name with aliases resolved (``m`` -> ``model``); unknown names unchanged."""
    return ALIASES.get(name, name)


def split_arg(arg: str) -> tuple[str, str | None]:
    """``-name=value`` -> (canonical name, value); ``-name`` -> (name, None). No validation."""
    name, sep, value = arg[1:].partition("=")
    return canonical(name), (value if sep else None)


def _case_typo(name: str) -> bool:
    """A known flag written in another case: LLVM's names are case-sensitive, so no SDK has both, and
    the compiler would refuse it; refused here even when unknown flags pass through."""
    return name.lower() in {k.lower() for k in (*FLAGS, *ALIASES)} and canonical(name) not in FLAGS


def did_you_mean(name: str) -> str:
    """' (did you mean -x?)' for a name close to a known flag, else ''."""
    close = difflib.get_close_matches(name, list(FLAGS) + list(ALIASES), n=1, cutoff=0.85)
    return f" (did you mean -{close[0]}?)" if close else ""


def _unknown(name: str) -> FlagError:
    known = list(FLAGS) + list(ALIASES)
    close = difflib.get_close_matches(name, known, n=1)
    if not close:  # LLVM names are case-sensitive: -custom-io-list-file is not -custom-IO-list-file
        by_lower = {k.lower(): k for k in known}
        close = [by_lower[name.lower()]] if name.lower() in by_lower else []
    hint = f" (did you mean -{close[0]}?)" if close else " (docs/FORMATS.md lists the compiler's flags)"
    return FlagError(f"unknown flag -{name}: remove it or fix its spelling{hint}")


def normalize_args(args: str | Sequence[str]) -> list[str]:
    """Compiler arguments as one ``-name[=value]`` item each, read the way the SDK's parser (LLVM's
    command line library) reads them: a string is split as a shell splits it (a pasted line); an item
    made of several flags (``"-aic-enable-depth-first -aic-depth-first-mem=32"``) is split; ``--name`` is
    ``-name``; ``-name value`` is ``-name=value`` for a known flag that takes a value (LLVM's booleans
    take theirs only after ``=``). Values are not changed."""
    items = shlex.split(args) if isinstance(args, str) else list(args)
    split: list[str] = []
    for item in items:
        # several flags in one item: blanks before any '=' (in "-compiler-args=-a -b" they are the value's)
        if isinstance(item, str) and item.startswith("-") and re.match(r"-[^=\s]*\s", item):
            try:
                parts = shlex.split(item)
            except ValueError:
                parts = [item]
            if len(parts) > 1 and all(p.startswith("-") for p in parts):
                split += parts
                continue
        split.append(item)
    out: list[str] = []
    i = 0
    while i < len(split):
        item = split[i]
        if isinstance(item, str) and item.startswith("--") and len(item) > 2:
            item = item[1:]
        if isinstance(item, str) and item.startswith("-") and "=" not in item and i + 1 < len(split):
            flag = FLAGS.get(canonical(item[1:]))
            value = split[i + 1]
            if flag is not None and flag.kind not in ("bool", "switch") and isinstance(value, str) and (
                    not value.startswith("-") or re.fullmatch(r"-[0-9.]+", value)):
                item, i = f"{item}={value}", i + 1
        out.append(item)
        i += 1
    return out


def unknown_flags(argv: Sequence[str]) -> list[str]:
    """The arguments of ``argv`` that the flag table does not know (passed through unchecked)."""
    return parse_argv(argv, strict=False).unknown


def describe_unknown(args: Sequence[str]) -> str:
    """``-x=1 (did you mean -y?), -z``: unchecked flags as a user reads them in a warning."""
    return ", ".join(arg + did_you_mean(arg[1:].partition("=")[0]) for arg in args)


def parse_argv(argv: Sequence[str], *, strict: bool = True) -> ParsedFlags:
    """Parse compiler arguments; raises FlagError naming the first bad one. ``strict=False``: a flag the
    table does not know is kept in ``unknown`` instead (its value is not checked)."""
    parsed = ParsedFlags()
    for arg in argv:
        if not isinstance(arg, str) or not arg.startswith("-") or arg.startswith("--") or len(arg) < 2:
            raise FlagError(f"unexpected argument {arg!r}: the compiler takes only -name or -name=value flags "
                            "(one list item each)")
        raw_name = arg[1:].partition("=")[0]
        name, val = split_arg(arg)
        flag = FLAGS.get(name)
        if flag is None and not strict and not _case_typo(raw_name):
            parsed.unknown.append(arg)
            continue
        if flag is None:
            raise _unknown(raw_name)
        check_value(flag, val)
        if flag.kind == "symbol":
            sym, _, num = val.partition(",")
            parsed.symbols.pop(sym, None)  # keep order of the latest definition
            parsed.symbols[sym] = int(num)
        if flag.repeat:
            parsed.repeats.setdefault(name, []).append(val)
        parsed.values.pop(name, None)  # last occurrence wins (and moves to the end)
        parsed.values[name] = val
    return parsed


def check_value(flag: Flag, val: str | None) -> None:
    """Raise FlagError when ``val`` is not a documented value of ``flag`` (None: given bare)."""

    def bad(what: str) -> FlagError:
        return FlagError(f"flag -{flag.name}: {what}")

    if flag.kind == "switch":
        if val is not None:
            raise bad(f"takes no value, got {val!r}: write -{flag.name}")
        return
    if flag.kind == "bool":
        if val is not None and val not in LLVM_TRUE + LLVM_FALSE:
            raise bad(f"is a switch: write -{flag.name} or -{flag.name}=true|false|1|0, got {val!r}")
        return
    if val is None or val == "":
        raise bad(f"needs a value: write -{flag.name}=<value>")
    if "\x00" in val or ("\n" in val and flag.kind not in FILE_KINDS):  # a file name may hold a newline
        raise bad("the value holds a NUL or newline")
    if flag.kind == "int":
        if not re.fullmatch(r"-?[0-9]+", val):
            raise bad(f"expects an integer, got {val!r}")
        _check_range(flag, int(val), bad)
    elif flag.kind == "float":
        try:
            number = float(val)
        except ValueError:
            raise bad(f"expects a number, got {val!r}") from None
        if not math.isfinite(number):
            raise bad(f"expects a finite number, got {val!r}")
        _check_range(flag, number, bad)
    elif flag.kind == "symbol":
        m = _SYMBOL.fullmatch(val)
        if not m or int(m.group(2)) < 1:
            raise bad(f"expects name,value with a positive integer value, got {val!r}")
    elif flag.kind == "ints":
        if not _INTS.fullmatch(val):
            raise bad(f"expects integers separated by commas, got {val!r}")
    elif flag.kind in ("str", "names"):
        if not _TOKEN.fullmatch(val) or (flag.kind == "names" and "" in val.split(",")):
            raise bad(f"expects {'comma-separated names' if flag.kind == 'names' else 'one token'} without "
                      f"blanks, quotes or shell metacharacters, got {val!r}")
        if flag.pattern and not re.fullmatch(flag.pattern, val):
            raise bad(f"expects a value matching {flag.pattern} ({flag.meaning}), got {val!r}")
    elif flag.kind == "choice" and val not in flag.choices:
        close = [c for c in flag.choices if c.lower() == val.lower()]
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise bad(f"expects one of {', '.join(flag.choices)}, got {val!r}{hint}")


def _check_range(flag: Flag, number: float, bad) -> None:
    if flag.low is not None and number < flag.low or flag.high is not None and number > flag.high:
        lo = "" if flag.low is None else f"{flag.low:g}"
        hi = "" if flag.high is None else f"{flag.high:g}"
        span = f"between {lo} and {hi}" if lo and hi else (f"at least {lo}" if lo else f"at most {hi}")
        raise bad(f"must be {span}, got {number:g}")


def check_mode(parsed: ParsedFlags, calibrate: bool) -> None:
    """A flag of the other mode (``-dump-profile`` in a compile, ``-aic-hw`` in a calibration) is an error,
    except the calibration list in a compile: that is one-step quantization (the SDK profiles the list,
    then quantizes), so it excludes ``-load-profile``."""
    wrong = "compile" if calibrate else "calibrate"
    for name in parsed.values:
        if FLAGS[name].mode == wrong and name != "input-list-file":
            raise FlagError(f"flag -{name} is not valid when {'calibrating' if calibrate else 'compiling'}: "
                            f"remove it")
    if not calibrate and {"input-list-file", "load-profile"} <= set(parsed.values):
        raise FlagError("flags -input-list-file and -load-profile together: a compile quantizes with the loaded "
                        "profile or calibrates the list itself (one-step quantization); remove one of them")
    if "convert-to-quantize" in parsed and ({"load-profile", "dump-profile"} & set(parsed.values)):
        raise FlagError("flag -convert-to-quantize cannot be combined with -load-profile or -dump-profile: "
                        "remove it, or set `quantize: false` for this model")


def file_flags(argv: Sequence[str], kinds: tuple[str, ...] = ("infile",)) -> list[tuple[str, str]]:
    """(canonical flag, value) of every argument naming a file of these kinds, in argv order."""
    out = []
    for arg in argv:
        if isinstance(arg, str) and arg.startswith("-") and not arg.startswith("--"):
            name, val = split_arg(arg)
            flag = FLAGS.get(name)
            if flag is not None and flag.kind in kinds and val:
                out.append((name, val))
    return out


def resolve_file_flags(argv: Sequence[str], base_dir: Path) -> list[str]:
    """Input-file values made absolute against ``base_dir`` (the config file's folder), so they name the
    same file from the build directory the compiler runs in. Other items are returned unchanged."""
    out = []
    for arg in argv:
        if isinstance(arg, str) and arg.startswith("-") and not arg.startswith("--"):
            name, val = split_arg(arg)
            flag = FLAGS.get(name)
            if flag is not None and val and flag.kind == "infile" and not os.path.isabs(val):
                arg = f"{arg.partition('=')[0]}={os.path.normpath(Path(base_dir) / Path(val).expanduser())}"
        out.append(arg)
    return out


def check_output_paths(argv: Sequence[str]) -> None:
    """Files a flag makes the compiler write must stay inside the build directory (relative, no '..')."""
    for name, val in file_flags(argv, ("outfile", "outdir")):
        if os.path.isabs(val) or ".." in Path(val).parts:
            raise FlagError(f"flag -{name}={val}: an output must stay inside the build directory; give a "
                            "relative path without '..'")
