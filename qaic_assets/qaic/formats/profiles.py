"""Calibration profiles in the layout of the SDK's ``qaic-exec -dump-profile`` (Glow's serializer,
``lib/Quantization/Serialization.cpp`` in pytorch/glow), both ways; the one reader/writer of the project.

A profile is three YAML documents, each opened by ``---`` and closed by ``...``::

    ---
    GlowToolsVersion: 2021-06-30
    ...
    ---
    GraphPreLowerHash: 0x693AC39E8BB9E42C
    ...
    ---
    - NodeOutputName:  'input:0'
      Min:             -2.1179039478302001953125
      Max:             2.6399998664855957031250
      Histogram:       [ 500, 0, 1.67772e+07, ... ]
    ...

Names are ``<name>:<result#>``: result N of the node called (or whose first output is) ``name``;
entries are sorted by name and may cover nodes that exist only inside the compiler and constants.
Headers are read as strings (``2021-06-30`` is not a date here). The reader also takes Glow's older
two-document layout (no tools version) and our former one-document list with bare tensor names.
An entry whose Min or Max is not a finite number (``-nan`` in SDK profiles of 2021) gives no
quantization parameters: the reader sets it aside as unusable (``Profile.unusable``, by name).
docs/FORMATS.md documents it with its sources.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from qaic_assets import files

#: the tools-version document of profiles this project's CPU compiler writes starts with this
OUR_TOOL = "qaic-exec-cpu"


class ProfileError(ValueError):
    """A profile that cannot be used; the message names the file and the fix."""


@dataclass
class ProfileEntry:
    name: str
    min: float
    max: float
    histogram: list[float]

    @property
    def usable(self) -> bool:
        """A range quantization parameters can come from: finite Min and Max (not ``-nan``)."""
        return math.isfinite(self.min) and math.isfinite(self.max)


@dataclass
class Profile:
    """A parsed profile: ``layout`` is ``glow`` (3 documents), ``glow-2doc`` or ``legacy`` (1 list);
    ``entries`` in the order written (sorted by name), ``unusable`` the names of entries set aside."""

    entries: list[ProfileEntry]
    tools_version: str | None = None
    graph_hash: str | None = None  # "0x" + 16 upper-case hex digits, as written
    layout: str = "glow"
    path: str | None = None
    unusable: list[str] = field(default_factory=list)  # Min/Max not finite (-nan): no quantization parameters

    @property
    def written_by_us(self) -> bool:
        return (self.tools_version or "").split(" ", 1)[0] == OUR_TOOL


def graph_hash_text(value: int) -> str:
    """``GraphPreLowerHash`` as Glow prints a Hex64: ``0x`` + 16 upper-case hex digits."""
    return f"0x{value & (2**64 - 1):016X}"


# ------------------------------------------------------------------------------------------- write


def _glow_float(v: float) -> str:
    """Min/Max as Glow's FloatWrapper: every decimal of the float32, trailing zeros cut (one kept)."""
    v = float(v)
    if math.isnan(v):
        return ".nan"
    if math.isinf(v):
        return ".inf" if v > 0 else "-.inf"
    s = "%.126f" % float(_f32(v))
    s = s.rstrip("0")
    return s + "0" if s.endswith(".") else s


def _f32(v: float) -> float:
    import numpy as np

    return float(np.float32(v))


def _count(v: float) -> str:
    if type(v) is int and abs(v) < 10**15:  # the counts qaic-exec-cpu writes: the fast path
        return str(v)
    v = float(v)
    return str(int(v)) if v.is_integer() and abs(v) < 1e15 else repr(v)


def _quote(name: str) -> str:
    return "'" + name.replace("'", "''") + "'"


def sort_entries(entries: Iterable[ProfileEntry]) -> list[ProfileEntry]:
    """Entries in Glow's order: by name, as bytes."""
    return sorted(entries, key=lambda e: e.name.encode())


def dump_text(entries: Iterable[ProfileEntry], *, tools_version: str, graph_hash: int | str) -> str:
    """The profile text: three documents, entries sorted by name (as Glow)."""
    h = graph_hash if isinstance(graph_hash, str) else graph_hash_text(graph_hash)
    if not re.fullmatch(r"0x[0-9A-Fa-f]{1,16}", h):
        raise ValueError(f"graph hash {h!r} is not 0x<hex>")
    if "\n" in tools_version or not tools_version.strip():
        raise ValueError(f"tools version {tools_version!r} must be one non-empty line")
    out = [f"---\nGlowToolsVersion: {tools_version}\n...\n---\nGraphPreLowerHash: {h}\n...\n---\n"]
    for e in sort_entries(entries):
        out.append(f"- NodeOutputName:  {_quote(e.name)}\n  Min:             {_glow_float(e.min)}\n"
                   f"  Max:             {_glow_float(e.max)}\n"
                   f"  Histogram:       [ {', '.join(_count(v) for v in e.histogram)} ]\n")
    out.append("...\n")
    return "".join(out)


def write_profile(path: str | Path, entries: Iterable[ProfileEntry], *, tools_version: str,
                  graph_hash: int | str) -> None:
    Path(path).write_text(dump_text(entries, tools_version=tools_version, graph_hash=graph_hash))


# -------------------------------------------------------------------------------------------- read


def _documents(text: str) -> list[str]:
    """The text split into YAML documents at ``---`` lines (``...`` lines dropped)."""
    docs: list[list[str]] = []
    current: list[str] | None = None
    for line in text.splitlines():
        if line == "---" or line.startswith("--- "):
            current = [line[4:]] if line.startswith("--- ") else []
            docs.append(current)
        elif line.rstrip() == "...":
            current = None
        elif current is None:
            if line.strip() and not line.lstrip().startswith("#"):
                current = [line]
                docs.append(current)
        else:
            current.append(line)
    return ["\n".join(d) for d in docs if any(x.strip() and not x.lstrip().startswith("#") for x in d)]


_HEADER = re.compile(r"^\s*(GlowToolsVersion|GraphPreLowerHash)\s*:\s*(.*?)\s*$", re.S)


def _header(doc: str) -> tuple[str, str] | None:
    """(key, value as text) of a one-key header document, else None."""
    lines = [x for x in doc.splitlines() if x.strip() and not x.lstrip().startswith("#")]
    if len(lines) != 1:
        return None
    m = _HEADER.match(lines[0])
    if not m:
        return None
    value = m.group(2)
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        value = yaml.safe_load(value)
    return m.group(1), str(value)


def _name(token: str) -> str:
    token = token.strip()
    if token.startswith("'"):
        if not (len(token) >= 2 and token.endswith("'")):
            raise ValueError(token)
        return token[1:-1].replace("''", "'")
    if token.startswith('"'):
        return json.loads(token)
    if not token:
        raise ValueError(token)
    return token


def _parse_list_fast(doc: str) -> list[ProfileEntry] | None:
    """Glow's layout (and ours): key lines, histograms maybe wrapped over lines; None if it differs."""
    import numpy as np

    lines = doc.splitlines()
    out: list[ProfileEntry] = []
    i, n = 0, len(lines)
    try:
        while i < n:
            a = lines[i]
            if not a.strip():
                i += 1
                continue
            if not a.startswith("- NodeOutputName:") or i + 3 >= n:
                return None
            b, c, d = lines[i + 1], lines[i + 2], lines[i + 3]
            if not (b.startswith("  Min:") and c.startswith("  Max:") and d.startswith("  Histogram:")):
                return None
            name = _name(a[len("- NodeOutputName:"):])
            lo, hi = float(b[6:]), float(c[6:])
            body = d[len("  Histogram:"):].strip()
            i += 4
            while not body.endswith("]"):
                if i >= n or not lines[i].startswith("   "):
                    return None
                body += " " + lines[i].strip()
                i += 1
            if not body.startswith("["):
                return None
            inner = body[1:-1].strip().rstrip(",")
            hist = np.array(inner.split(","), dtype=np.float64).tolist() if inner else []
            out.append(ProfileEntry(name, lo, hi, hist))
    except ValueError:
        return None
    return out


def _parse_list_yaml(doc: str, path: Path) -> list[ProfileEntry]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        data = yaml.load(doc, Loader=loader)
    except yaml.YAMLError as exc:
        raise ProfileError(f"profile {path} is not readable YAML ({exc}): regenerate it with -dump-profile") from None
    if not isinstance(data, list):
        raise ProfileError(f"profile {path}: its last document is not a list of NodeOutputName/Min/Max/Histogram "
                           "entries: regenerate it with -dump-profile")
    out = []
    for i, e in enumerate(data):
        try:
            hist = [float(v) for v in (e.get("Histogram") or [])]
            out.append(ProfileEntry(str(e["NodeOutputName"]), float(e["Min"]), float(e["Max"]), hist))
        except (KeyError, TypeError, ValueError, AttributeError):
            raise ProfileError(f"profile {path} entry {i} lacks NodeOutputName/Min/Max/Histogram: regenerate it") from None
    return out


def parse_text(text: str, path: str | Path = "<profile>") -> Profile:
    """Parse a profile's text (see module doc); raises ProfileError naming ``path``."""
    path = Path(path)
    docs = _documents(text)
    headers: dict[str, str] = {}
    while docs and (h := _header(docs[0])) is not None:
        if h[0] in headers:
            break
        headers[h[0]] = h[1]
        docs.pop(0)
    if len(docs) != 1:
        raise ProfileError(
            f"profile {path} has {len(docs)} list documents after its headers "
            f"({', '.join(headers) or 'none'}); expected the SDK's layout: GlowToolsVersion, GraphPreLowerHash, "
            "then one list of NodeOutputName/Min/Max/Histogram: regenerate it with -dump-profile")
    if "GlowToolsVersion" in headers and "GraphPreLowerHash" not in headers:
        raise ProfileError(f"profile {path} has GlowToolsVersion but no GraphPreLowerHash document: "
                           "regenerate it with -dump-profile")
    graph_hash = headers.get("GraphPreLowerHash")
    if graph_hash is not None:
        if not re.fullmatch(r"0[xX][0-9A-Fa-f]{1,16}", graph_hash):
            raise ProfileError(f"profile {path}: GraphPreLowerHash {graph_hash!r} is not 0x<hex>: regenerate it")
        graph_hash = graph_hash_text(int(graph_hash, 16))
    entries = _parse_list_fast(docs[0])
    if entries is None:
        entries = _parse_list_yaml(docs[0], path)
    if not entries:
        raise ProfileError(f"profile {path} has no entries: regenerate it with -dump-profile")
    unusable = [e.name for e in entries if not e.usable]
    entries = [e for e in entries if e.usable]
    if not entries:
        raise ProfileError(f"profile {path} has no usable entry (Min/Max of all {len(unusable)} are not finite, "
                           "e.g. -nan): regenerate it with -dump-profile")
    for e in entries:
        if not e.min <= e.max:
            raise ProfileError(f"profile {path} entry {e.name!r} has Min > Max: regenerate it")
    layout = "glow" if "GlowToolsVersion" in headers else ("glow-2doc" if graph_hash else "legacy")
    return Profile(entries, headers.get("GlowToolsVersion"), graph_hash, layout, str(path), unusable)


def read_profile(path: str | Path) -> Profile:
    """Read a profile file; ProfileError naming the file on any problem."""
    path = Path(path)
    try:
        text = files.read_text(path)
    except FileNotFoundError:
        raise ProfileError(f"profile {path} does not exist: run calibration (-dump-profile) first or fix "
                           "-load-profile") from None
    except files.NotReadable as exc:
        raise ProfileError(f"profile {path} {exc.strerror}: fix -load-profile") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(f"profile {path} is unreadable ({exc}): regenerate it with -dump-profile") from None
    return parse_text(text, path)


# ------------------------------------------------------------------------------------------ names


def split_name(name: str) -> tuple[str, int | None]:
    """``'conv:1'`` -> ``('conv', 1)``; a name without ``:<digits>`` -> ``(name, None)``."""
    base, sep, idx = name.rpartition(":")
    if sep and idx.isdigit() and base:
        return base, int(idx)
    return name, None


def output_name(tensor: str, producer_outputs: Sequence[str] | None) -> str:
    """The profile name of ``tensor``: ``<first output of its node>:<its result#>``, ``<input>:0``."""
    if not producer_outputs:
        return f"{tensor}:0"
    return f"{producer_outputs[0]}:{list(producer_outputs).index(tensor)}"


def legalize(name: str) -> str:
    """Glow's node-name legalisation (characters other than [A-Za-z0-9_] become '_')."""
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


@dataclass
class NameTable:
    """The model's names: node name -> outputs, tensor -> its node's outputs, graph inputs."""

    node_outputs: Mapping[str, Sequence[str]]
    producer_outputs: Mapping[str, Sequence[str]]
    graph_inputs: Iterable[str]
    _legal: dict[str, Sequence[str]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.graph_inputs = set(self.graph_inputs)
        for table in (self.producer_outputs, self.node_outputs):
            for k, v in table.items():
                self._legal.setdefault(legalize(k), v)
        for k in self.graph_inputs:
            self._legal.setdefault(legalize(k), [k])

    def _outputs(self, base: str) -> Sequence[str] | None:
        if base in self.node_outputs:
            return self.node_outputs[base]
        if base in self.producer_outputs:
            return self.producer_outputs[base]
        if base in self.graph_inputs:
            return [base]
        return None

    def resolve(self, name: str) -> str | None:
        """The model tensor a profile name denotes, or None."""
        base, idx = split_name(name)
        if idx is None:
            return base if (base in self.producer_outputs or base in self.graph_inputs) else None
        for cand in dict.fromkeys((base, base.rstrip("/"))):
            outs = self._outputs(cand)
            if outs is None:
                outs = self._legal.get(legalize(cand))
            if outs is not None:
                return outs[idx] if idx < len(outs) and outs[idx] else None
        return None


def match_entries(entries: Sequence[ProfileEntry], names: NameTable,
                  wanted: set[str] | None = None) -> tuple[dict[str, ProfileEntry], list[str]]:
    """(tensor -> entry for entries naming one of the model's tensors (in ``wanted`` when given),
    names of the skipped entries). A later duplicate of a tensor is skipped."""
    used: dict[str, ProfileEntry] = {}
    skipped: list[str] = []
    for e in entries:
        t = names.resolve(e.name)
        if t is None or (wanted is not None and t not in wanted) or t in used:
            skipped.append(e.name)
        else:
            used[t] = e
    return used, skipped
