"""The SDK's own tools around a compiled binary, and what they print.

- ``tools/qaic-qpc validate -i <dir>/programqpc.bin``: checks a QPC and reports, among ``key: value``
  lines, ``Number of NSP required`` (the cores one activation of the program needs).
- ``tools/qaic-util -q``: one block per device, ``QID <n>`` then indented ``Key:Value`` lines
  (``Status:Ready``, ``Nsp Total:16``, ``Nsp Free:16``, ...).
- ``exec/qaic-runner -t <dir> -a <activations> -n <inferences> -d <device>``: runs the QPC on a card and
  ends with ``InferenceCnt N TotalDuration Dus BatchSize B Inf/Sec F``.

Parsers take the text and never raise on unexpected lines (the SDK's wording changes between
releases); what they need and cannot find is an error naming the line they looked for. This module
builds the argv lists and reads the output; the tools run through the compiler's supervised runner
(``builder/process.run_tool``: timeout, process group, bounded output), which raises ToolError too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

NSP_REQUIRED_KEY = "Number of NSP required"
_KEY_VALUE = re.compile(r"^\s*([A-Za-z][A-Za-z0-9 _()/.#-]*?)\s*:\s*(.*?)\s*$")
_NUMBER = re.compile(r"[-+]?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?")
_QID = re.compile(r"^\s*QID\s+([0-9]+)\s*$")
_STATS = re.compile(r"InferenceCnt\s+([0-9]+)\s+TotalDuration\s+([0-9]+)us\s+BatchSize\s+([0-9]+)\s+"
                    r"Inf/Sec\s+([0-9.]+)")


class ToolError(RuntimeError):
    """A tool that failed or printed nothing usable; the message names the tool, the line and the fix."""


def _value(text: str) -> int | float | str:
    """"14" -> 14, "16308 MB" -> "16308 MB", "0.75" -> 0.75: numbers as numbers (the UI plots them)."""
    if _NUMBER.fullmatch(text):
        return float(text) if any(c in text for c in ".eE") else int(text)
    return text


def key_values(text: str) -> dict[str, int | float | str]:
    """Every ``key: value`` line (first occurrence of a key wins)."""
    out: dict = {}
    for line in text.splitlines():
        m = _KEY_VALUE.match(line)
        if m and m.group(2) and m.group(1) not in out:
            out[m.group(1)] = _value(m.group(2))
    return out


@dataclass(frozen=True)
class QpcReport:
    nsp_required: int
    fields: dict  # every key: value the tool printed


def parse_qpc_validate(text: str) -> QpcReport:
    fields = key_values(text)
    lowered = {k.lower(): v for k, v in fields.items()}
    nsp = lowered.get(NSP_REQUIRED_KEY.lower())
    if not isinstance(nsp, int):
        raise ToolError(f"qaic-qpc validate printed no '{NSP_REQUIRED_KEY}: <n>' line; check the SDK's "
                        f"qaic-qpc (its output began: {text.strip()[:200]!r})")
    return QpcReport(nsp, fields)


@dataclass(frozen=True)
class Device:
    qid: int
    fields: dict = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return str(self.fields.get("Status", "")).strip().lower() == "ready"

    @property
    def nsp_free(self) -> int | None:
        v = self.fields.get("Nsp Free")
        return v if isinstance(v, int) else None


def parse_qaic_util(text: str) -> list[Device]:
    """The devices of ``qaic-util -q``, in QID order of appearance."""
    devices: list[Device] = []
    for line in text.splitlines():
        m = _QID.match(line)
        if m:
            devices.append(Device(int(m.group(1))))
            continue
        kv = _KEY_VALUE.match(line)
        if devices and kv and kv.group(1) not in devices[-1].fields:
            devices[-1].fields[kv.group(1)] = _value(kv.group(2))
    return devices


@dataclass(frozen=True)
class RunnerStats:
    inferences: int
    duration_us: int
    batch_size: int
    inferences_per_s: float


def parse_runner(text: str) -> RunnerStats:
    """The last ``InferenceCnt ... Inf/Sec F`` line of a qaic-runner log."""
    found = _STATS.findall(text)
    if not found:
        raise ToolError("qaic-runner printed no 'InferenceCnt N TotalDuration Dus BatchSize B Inf/Sec F' line; "
                        f"its output ended: {text.strip()[-300:]!r}")
    cnt, dur, bs, rate = found[-1]
    return RunnerStats(int(cnt), int(dur), int(bs), float(rate))


def validate_argv(qpc_tool: Path, binary: Path) -> list[str]:
    return [str(qpc_tool), "validate", "-i", str(binary)]


def runner_argv(runner: Path, binary_dir: Path, activations: int, inferences: int, device: int) -> list[str]:
    return [str(runner), "-t", str(binary_dir), "-a", str(activations), "-n", str(inferences), "-d", str(device)]

