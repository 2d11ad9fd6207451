"""Files named by compile flags, read and checked before the compiler runs (docs/FORMATS.md "Files
named by compile flags"): the one reader of each format.

* ``-network-specialization-config``: JSON ``{"specializations": [{"batch_size": "1", "seq_len": "32",
  "ctx_len": "128"}, ...]}`` -- one set of ONNX symbol values per graph the binary holds (Cloud AI SDK
  recipes and docs), or QEfficient's named form ``{"name": "Prefill", "symbols": {...}}`` per entry.
* ``-custom-IO-list-file``: YAML, a list of ``{IOName: <input or output>, Precision: <float16 |
  bfloat16 | mxint8>}`` entries, as QEfficient and the SDK docs write it.
* ``-mdp-load-partition-config``: JSON ``{"connections": [{"devices": [0, 1], "type": "p2p"}],
  "partitions": [{"name": "Partition0", "devices": [{"deviceId": 0, "numCores": 16}, ...],
  "nodeList": [...]}]}`` (``connections`` and ``nodeList`` optional).

Every reader takes the file's path (and optionally its bytes, so a caller hashes and parses the same
bytes), returns a parsed object whose ``summary()`` is small JSON-ready data, and raises
:class:`CompileFileError` ``<file>: <field path>: <what is wrong>; <fix>`` on a malformed
file. It is strict only where every real file and Qualcomm's own writers agree; keys it does
not know are kept (the SDK's own dumps may carry more).

A specializations or MDP file may be a template: ``{name}`` placeholders (``{batch}`` and the other
values a model defines) filled by :func:`render_template`, which refuses placeholders it has no value
for and validates what it rendered.
"""

from __future__ import annotations

import difflib
import json
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from qaic_assets import files
from qaic_assets.qaic.flag_table import FLAGS

SPECIALIZATIONS = "network-specialization-config"
CUSTOM_IO = "custom-IO-list-file"
MDP = "mdp-load-partition-config"

#: The precisions a custom-IO entry may name: what Qualcomm's writers emit (QEfficient: "float16" for
#: fp16/fp32 models -- "compiler doesn't support fp32" -- "bfloat16" for bf16 ones, "mxint8" for an
#: MXINT8 KV cache; the SDK docs: "float16").
PRECISIONS = ("float16", "bfloat16", "mxint8")
#: numCores of an MDP device: the NSPs of one SoC, the range of -aic-num-cores
MAX_CORES = int(FLAGS["aic-num-cores"].high or 16)

PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_DIGITS = re.compile(r"[0-9]+")

_SPEC_SHAPE = 'write {"specializations": [{"batch_size": "1", "seq_len": "32", "ctx_len": "128"}, ...]}'
_IO_SHAPE = ("write one entry per tensor: '- IOName: <input or output name>' and below it "
             "'  Precision: <float16|bfloat16|mxint8>'")
_MDP_SHAPE = ('write {"partitions": [{"name": "Partition0", "devices": [{"deviceId": 0, "numCores": 16}, ...]}], '
              '"connections": [{"devices": [0, 1], "type": "p2p"}]}')


class CompileFileError(ValueError):
    """A malformed file named by a compile flag: ``<file>: <field>: <problem>; <fix>``."""

    def __init__(self, file: str, field: str, problem: str, fix: str):
        self.file, self.field, self.problem, self.fix = file, field, problem, fix
        super().__init__(f"{file}: {field}: {problem}; {fix}")


class TemplateError(CompileFileError):
    """A template that cannot be rendered (a placeholder without a value, a value of the wrong type)."""


# ------------------------------------------------------------------------------------------ helpers


def _text(path: str | Path, data: bytes | str | None, label: str) -> str:
    if data is None:
        try:
            data = files.read_bytes(path, files.SMALL_FILE_BYTES)
        except OSError as exc:  # files.NotReadable too: a FIFO, a directory, a file too large
            raise CompileFileError(label, "(file)", f"cannot be read ({exc.strerror or exc})",
                                   "check the path and its permissions") from None
    if isinstance(data, bytes):
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CompileFileError(label, "(file)", f"is not UTF-8 text (byte {exc.start})",
                                   "save it as UTF-8 text") from None
    return data


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not standard JSON")


def _placeholder_hint(text: str) -> str:
    names = sorted(set(PLACEHOLDER.findall(text)))
    return (f" (it holds template placeholders {', '.join('{' + n + '}' for n in names)}: render it "
            f"for the partition first)") if names else ""


def _load_json(label: str, text: str, shape: str) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except _DuplicateKey as exc:
        raise CompileFileError(label, f'"{exc.args[0]}"', "appears twice in one JSON object",
                               "keep one of them") from None
    except json.JSONDecodeError as exc:
        raise CompileFileError(label, f"line {exc.lineno} column {exc.colno}", f"not JSON: {exc.msg}"
                               + _placeholder_hint(text), f"fix the JSON syntax; {shape}") from None
    except ValueError as exc:  # NaN / Infinity
        raise CompileFileError(label, "(file)", str(exc), shape) from None


def _object(label: str, field: str, value: Any, shape: str) -> dict:
    if not isinstance(value, dict):
        raise CompileFileError(label, field, f"is {_kind(value)}, not an object", shape)
    return value


def _list(label: str, field: str, value: Any, shape: str, *, what: str) -> list:
    if not isinstance(value, list):
        raise CompileFileError(label, field, f"is {_kind(value)}, not a list", shape)
    if not value:
        raise CompileFileError(label, field, f"is empty: list at least one {what}", shape)
    return value


def _unique(label: str, field: str, name: str, named_at: dict[str, int], index: int, listed: str, what: str) -> None:
    """Record `name` at `index`; a name already given is a CompileFileError naming both places."""
    if name in named_at:
        raise CompileFileError(label, field, f"{json.dumps(name)} is already the name of {listed}[{named_at[name]}]",
                               f"give every {what} its own name")
    named_at[name] = index


def _found(key: str, close: list[str]) -> str:
    if not close:
        return ""
    return f" (found {close[0]!r}" + (": names are case-sensitive)" if close[0].lower() == key.lower() else ")")


def _required(label: str, obj: dict, key: str, field: str, shape: str) -> Any:
    if key not in obj:
        close = difflib.get_close_matches(key, [k for k in obj if isinstance(k, str)], n=1, cutoff=0.7)
        hint = _found(key, close)
        raise CompileFileError(label, field, f"is missing{hint}", shape)
    return obj[key]


def _int(label: str, field: str, value: Any, *, low: int, high: int | None = None, fix: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise CompileFileError(label, field, f"is {_kind(value)} ({json.dumps(value)}), not a whole number", fix)
    if value < low or (high is not None and value > high):
        span = f"{low}..{high}" if high is not None else f">= {low}"
        raise CompileFileError(label, field, f"is {value}, outside {span}", fix)
    return value


def _name(label: str, field: str, value: Any, fix: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise CompileFileError(label, field, f"is {_kind(value)} ({json.dumps(value)}), not a non-empty name", fix)
    return value


# ---------------------------------------------------------------------------------- specializations


@dataclass(frozen=True)
class Specializations:
    """The graphs a binary holds: one dict of ONNX symbol values per specialization (``names`` only in
    QEfficient's named form)."""

    entries: tuple[dict[str, int], ...]
    names: tuple[str, ...] | None = None

    @property
    def symbols(self) -> list[str]:
        return sorted({s for entry in self.entries for s in entry})

    def summary(self) -> dict:
        out: dict = {"count": len(self.entries), "symbols": self.symbols,
                     "entries": [dict(sorted(e.items())) for e in self.entries]}
        if self.names is not None:
            out["names"] = list(self.names)
        return out


def _symbol_value(label: str, field: str, value: Any) -> int:
    fix = 'write each value as a whole number, e.g. "1" (the SDK\'s files quote them) or 1'
    if isinstance(value, str):
        if _DIGITS.fullmatch(value):
            return int(value)
        if PLACEHOLDER.fullmatch(value):
            raise CompileFileError(label, field, f"is the template placeholder {json.dumps(value)}",
                                   "render the template for the partition first (render_template)")
        if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):  # the SDK recipes' sed templates: "BS", "PL", "CL"
            fix = ("write the value as digits; in a template write a placeholder such as {batch} and render "
                   "it for the partition (render_template)")
        raise CompileFileError(label, field, f"is {json.dumps(value)}, not a whole number", fix)
    return _int(label, field, value, low=0, fix=fix)


def _symbols(label: str, field: str, obj: dict) -> dict[str, int]:
    if not obj:
        raise CompileFileError(label, field, "sets no symbol", _SPEC_SHAPE)
    out = {}
    for key, value in obj.items():
        if not key.strip():
            raise CompileFileError(label, f"{field}.{json.dumps(key)}", "is an empty symbol name",
                                   "name the ONNX symbol (batch_size, seq_len, ...)")
        out[key] = _symbol_value(label, f"{field}.{key}", value)
    return out


def read_specializations(path: str | Path, data: bytes | str | None = None, *,
                         label: str | None = None) -> Specializations:
    """Read a -network-specialization-config file (``data``: its bytes, else read from ``path``)."""
    label = label or str(path)
    doc = _object(label, "(top level)", _load_json(label, _text(path, data, label), _SPEC_SHAPE), _SPEC_SHAPE)
    items = _list(label, "specializations", _required(label, doc, "specializations", "specializations", _SPEC_SHAPE),
                  _SPEC_SHAPE, what="specialization (one set of symbol values)")
    entries, names, named_at = [], [], {}
    for i, item in enumerate(items):
        field = f"specializations[{i}]"
        item = _object(label, field, item, _SPEC_SHAPE)
        if "symbols" in item:  # QEfficient's named form: exactly {"name", "symbols"}
            extra = sorted(set(item) - {"name", "symbols"})
            if extra:
                raise CompileFileError(label, f"{field}.{extra[0]}", "is not a key of a named specialization",
                                       'write {"name": "Prefill", "symbols": {"batch_size": "1", ...}}')
            name = _name(label, f"{field}.name", _required(label, item, "name", f"{field}.name", _SPEC_SHAPE),
                         "name the graph (Prefill, Decode, ...)")
            _unique(label, f"{field}.name", name, named_at, i, "specializations", "graph")
            names.append(name)
            symbols = _object(label, f"{field}.symbols", item["symbols"], _SPEC_SHAPE)
            entries.append(_symbols(label, f"{field}.symbols", symbols))
        else:
            entries.append(_symbols(label, field, item))
    if names and len(names) != len(entries):
        first_flat = next(i for i, item in enumerate(items) if "symbols" not in item)
        raise CompileFileError(label, f"specializations[{first_flat}]", "has no name while others are named",
                               'write every entry as {"name": ..., "symbols": {...}} or none')
    return Specializations(tuple(entries), tuple(names) if names else None)


# ----------------------------------------------------------------------------------------- custom IO


@dataclass(frozen=True)
class CustomIO:
    """The inputs and outputs whose precision the compile sets: (IOName, Precision) in file order, and
    the other keys entries carry (the SDK documents layout, scale and offset too)."""

    entries: tuple[tuple[str, str], ...]
    other_keys: tuple[str, ...] = ()

    def summary(self) -> dict:
        out: dict = {"count": len(self.entries),
                     "precisions": dict(sorted(Counter(p for _, p in self.entries).items()))}
        if self.other_keys:
            out["other_keys"] = list(self.other_keys)
        return out


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _scalar(label: str, field: str, node: yaml.Node, fix: str) -> str:
    if not isinstance(node, yaml.ScalarNode):
        kind = "a list" if isinstance(node, yaml.SequenceNode) else "a mapping"
        raise CompileFileError(label, field, f"is {kind} (line {_line(node)}), not a single value", fix)
    return node.value


def read_custom_io(path: str | Path, data: bytes | str | None = None, *, label: str | None = None) -> CustomIO:
    """Read a -custom-IO-list-file. Values are taken as written (an IOName ``1`` is the name "1")."""
    label = label or str(path)
    text = _text(path, data, label)
    try:
        docs = [d for d in yaml.compose_all(text, Loader=yaml.SafeLoader) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1} column {mark.column + 1}" if mark else "(file)"
        problem = getattr(exc, "problem", None) or str(exc)
        raise CompileFileError(label, where, f"not YAML: {problem}", f"fix the YAML syntax; {_IO_SHAPE}") from None
    if len(docs) > 1:
        raise CompileFileError(label, f"line {_line(docs[1])}", "is in a second YAML document",
                               "keep all entries in one list (no '---')")
    root = docs[0] if docs else None
    if root is None or (isinstance(root, yaml.ScalarNode) and root.tag == "tag:yaml.org,2002:null"):
        raise CompileFileError(label, "(file)", "lists no input or output", f"{_IO_SHAPE}, or drop the flag")
    if not isinstance(root, yaml.SequenceNode):
        kind = "a mapping" if isinstance(root, yaml.MappingNode) else "a single value"
        raise CompileFileError(label, "(top level)", f"is {kind} (line {_line(root)}), not a list of entries", _IO_SHAPE)
    if not root.value:
        raise CompileFileError(label, "(top level)", "is an empty list", f"{_IO_SHAPE}, or drop the flag")
    entries: list[tuple[str, str]] = []
    seen: dict[str, tuple[int, int]] = {}
    others: set[str] = set()
    for i, node in enumerate(root.value):
        field = f"[{i}]"
        if not isinstance(node, yaml.MappingNode):
            raise CompileFileError(label, field, f"(line {_line(node)}) is not an IOName/Precision mapping", _IO_SHAPE)
        keys: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            key = _scalar(label, f"{field} key", key_node, _IO_SHAPE)
            if key in keys:
                raise CompileFileError(label, f"{field}.{key}", f"appears twice in one entry (line {_line(key_node)})",
                                       "keep one of them")
            keys[key] = value_node
        for required in ("IOName", "Precision"):
            if required not in keys:
                close = difflib.get_close_matches(required, list(keys), n=1, cutoff=0.6)
                hint = _found(required, close)
                raise CompileFileError(label, f"{field}.{required}", f"is missing (entry at line {_line(node)}){hint}",
                                       _IO_SHAPE)
        io_node, precision_node = keys["IOName"], keys["Precision"]
        name = _scalar(label, f"{field}.IOName", io_node, "name one model input or output")
        if not name.strip() or (io_node.tag == "tag:yaml.org,2002:null" and not io_node.style):
            raise CompileFileError(label, f"{field}.IOName", f"is empty (line {_line(io_node)})",
                                   "name one model input or output")
        if name in seen:
            j, line = seen[name]
            raise CompileFileError(label, f"{field}.IOName", f"{name!r} (line {_line(io_node)}) is already "
                                   f"entry [{j}] (line {line})", "list every input and output once")
        seen[name] = (i, _line(io_node))
        precision = _scalar(label, f"{field}.Precision", precision_node, f"use one of {', '.join(PRECISIONS)}")
        if precision not in PRECISIONS:
            close = [p for p in PRECISIONS if p.lower() == precision.lower()]
            hint = f" (spelled {close[0]!r})" if close else ""
            raise CompileFileError(label, f"{field}.Precision", f"{precision!r} (line {_line(precision_node)}) is "
                                   f"not a custom-IO precision{hint}", f"use one of {', '.join(PRECISIONS)}")
        entries.append((name, precision))
        others.update(k for k in keys if k not in ("IOName", "Precision"))
    return CustomIO(tuple(entries), tuple(sorted(others)))


# ----------------------------------------------------------------------------------------------- MDP


@dataclass(frozen=True)
class MdpPartition:
    name: str
    devices: tuple[tuple[int, int], ...]  # (deviceId, numCores)
    nodes: int | None = None  # len(nodeList) when given


@dataclass(frozen=True)
class MdpConfig:
    """A multi-device partition config: partitions (their devices and node counts) and connections."""

    partitions: tuple[MdpPartition, ...]
    connections: tuple[tuple[str, tuple[int, ...]], ...] = ()

    @property
    def device_ids(self) -> list[int]:
        return sorted({d for p in self.partitions for d, _ in p.devices})

    def summary(self) -> dict:
        out: dict = {"partitions": len(self.partitions), "devices": len(self.device_ids),
                     "device_ids": self.device_ids,
                     "cores_per_device": sorted({c for p in self.partitions for _, c in p.devices}),
                     "connections": [{"type": t, "devices": list(d)} for t, d in self.connections]}
        if any(p.nodes is not None for p in self.partitions):
            out["nodes"] = sum(p.nodes or 0 for p in self.partitions)
        return out


def read_mdp_config(path: str | Path, data: bytes | str | None = None, *, label: str | None = None) -> MdpConfig:
    """Read a -mdp-load-partition-config file (``connections`` optional: without it the devices talk
    through the host, as the SDK docs say)."""
    label = label or str(path)
    doc = _object(label, "(top level)", _load_json(label, _text(path, data, label), _MDP_SHAPE), _MDP_SHAPE)
    items = _list(label, "partitions", _required(label, doc, "partitions", "partitions", _MDP_SHAPE), _MDP_SHAPE,
                  what="partition")
    partitions, named_at = [], {}
    dev_fix = f"each device is {{\"deviceId\": <0, 1, ...>, \"numCores\": <1..{MAX_CORES}>}}"
    for i, item in enumerate(items):
        field = f"partitions[{i}]"
        item = _object(label, field, item, _MDP_SHAPE)
        name = _name(label, f"{field}.name", _required(label, item, "name", f"{field}.name", _MDP_SHAPE),
                     'name the partition ("Partition0", ...)')
        _unique(label, f"{field}.name", name, named_at, i, "partitions", "partition")
        devices = _list(label, f"{field}.devices", _required(label, item, "devices", f"{field}.devices", _MDP_SHAPE),
                        dev_fix, what="device")
        seen: dict[int, int] = {}
        parsed = []
        for j, dev in enumerate(devices):
            dfield = f"{field}.devices[{j}]"
            dev = _object(label, dfield, dev, dev_fix)
            device_id = _int(label, f"{dfield}.deviceId",
                             _required(label, dev, "deviceId", f"{dfield}.deviceId", dev_fix), low=0, fix=dev_fix)
            cores = _int(label, f"{dfield}.numCores", _required(label, dev, "numCores", f"{dfield}.numCores", dev_fix),
                         low=1, high=MAX_CORES, fix=dev_fix)
            if device_id in seen:
                raise CompileFileError(label, f"{dfield}.deviceId", f"{device_id} is already "
                                       f"{field}.devices[{seen[device_id]}]", "list each device of a partition once")
            seen[device_id] = j
            parsed.append((device_id, cores))
        nodes = None
        if "nodeList" in item:
            node_list = item["nodeList"]
            if not isinstance(node_list, list):
                raise CompileFileError(label, f"{field}.nodeList", f"is {_kind(node_list)}, not a list of node names",
                                       "list the partition's node names, or leave nodeList out")
            for k, node in enumerate(node_list):
                if not isinstance(node, str) or not node:
                    raise CompileFileError(label, f"{field}.nodeList[{k}]", f"is {_kind(node)} "
                                           f"({json.dumps(node)}), not a node name", "list node names as strings")
            nodes = len(node_list)
        partitions.append(MdpPartition(name, tuple(parsed), nodes))
    connections = []
    if "connections" in doc:
        conn_fix = 'each connection is {"devices": [0, 1, ...], "type": "p2p"}'
        conns = doc["connections"]
        if not isinstance(conns, list):
            raise CompileFileError(label, "connections", f"is {_kind(conns)}, not a list", conn_fix)
        for k, conn in enumerate(conns):
            cfield = f"connections[{k}]"
            conn = _object(label, cfield, conn, conn_fix)
            ids = _list(label, f"{cfield}.devices", _required(label, conn, "devices", f"{cfield}.devices", conn_fix),
                        conn_fix, what="device id")
            ids = tuple(_int(label, f"{cfield}.devices[{m}]", d, low=0, fix=conn_fix) for m, d in enumerate(ids))
            kind = _name(label, f"{cfield}.type", _required(label, conn, "type", f"{cfield}.type", conn_fix), conn_fix)
            connections.append((kind, ids))
    return MdpConfig(tuple(partitions), tuple(connections))


# ------------------------------------------------------------------------------- by flag, templates

#: flag (without the dash) -> reader
READERS: dict[str, Callable[..., Specializations | CustomIO | MdpConfig]] = {
    SPECIALIZATIONS: read_specializations, CUSTOM_IO: read_custom_io, MDP: read_mdp_config}


def summarize(flag: str, path: str | Path, data: bytes | str | None = None) -> dict:
    """The summary of the file ``-<flag>`` names (one of READERS); CompileFileError when malformed."""
    return READERS[flag.lstrip("-")](path, data).summary()


def placeholders(text: str) -> list[str]:
    """The ``{name}`` placeholders of a template, in order of first use."""
    return list(dict.fromkeys(PLACEHOLDER.findall(text)))


def render_template(path: str | Path, values: Mapping[str, int | str], *, kind: str | None = None) -> str:
    """Fill the ``{name}`` placeholders of the template at ``path`` (``{batch}`` and whatever else the
    model defines) from ``values`` and return the text, after reading it with its flag's reader
    (``kind``: a READERS key; by default the specializations reader when the rendered JSON has
    ``specializations``, the MDP one when it has ``partitions``). A placeholder without a value is a
    TemplateError naming it (and its line); values are written as they print (``8`` -> ``8``), so a
    placeholder inside quotes gives a string and one outside gives a number."""
    label = str(path)
    text = _text(path, None, label)
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise TemplateError(label, "{" + name + "}", f"has the value {value!r} ({type(value).__name__})",
                                "give whole numbers or strings")
    missing = [n for n in placeholders(text) if n not in values]
    if missing:
        lines = {n: text.count("\n", 0, text.index("{" + n + "}")) + 1 for n in missing}
        where = ", ".join(f"{{{n}}} (line {lines[n]})" for n in missing)
        known = ", ".join(sorted(values)) or "none"
        raise TemplateError(label, where, "has no value (unknown placeholder)",
                            f"use only the values the model defines ({known}) or add it to them")
    rendered = PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), text)
    shown = ", ".join(f"{n}={values[n]}" for n in placeholders(text))
    rendered_label = f"{label} (rendered with {shown})" if shown else label
    if kind is None:
        try:
            doc = json.loads(rendered)
        except ValueError:
            doc = None
        kind = MDP if isinstance(doc, dict) and "partitions" in doc and "specializations" not in doc \
            else SPECIALIZATIONS
    if kind.lstrip("-") not in READERS:
        raise ValueError(f"unknown template kind {kind!r}; one of {', '.join(READERS)}")
    READERS[kind.lstrip("-")](path, rendered, label=rendered_label)
    return rendered
