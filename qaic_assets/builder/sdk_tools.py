"""The SDK's own tools asked about a compiled binary, as measurements: `qaic-qpc validate` (the NSPs
one activation needs) and `qaic-runner` on a card listed by `qaic-util -q` (inferences per second).
One place for both users: the asset checks of a build (orchestration/sdk_checks.py) and the SDK
canary's comparison (builder/canary.py). Every call runs supervised (process.run_tool).

A tool that is not installed, or no ready card, is `NotMeasured` with the reason (a check says
"skipped: <reason>"); a tool that ran and failed is qaic/tools.ToolError (the runner's: RunnerFailed,
with its command).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from qaic_assets.builder.process import run_tool
from qaic_assets.qaic import tools
from qaic_assets.qaic.sdk import tool_path
from qaic_assets.settings import Settings


class NotMeasured(Exception):
    """The measurement cannot be made here; the message says why."""


class RunnerFailed(tools.ToolError):
    """qaic-runner ran and failed; `argv` is the command (a check shows it)."""

    def __init__(self, message: str, argv: list[str]):
        super().__init__(message)
        self.argv = argv


@dataclass(frozen=True)
class Throughput:
    stats: tools.RunnerStats
    activations: int
    argv: list[str]


def qpc_report(sdk_root: Path, binary: Path, log: logging.Logger | None = None) -> tools.QpcReport:
    """`qaic-qpc validate -i <binary>` of `sdk_root`, parsed."""
    tool = tool_path(sdk_root, "qaic-qpc")
    if tool is None:
        raise NotMeasured(f"{sdk_root}/tools/qaic-qpc is not installed (Platform SDK)")
    return tools.parse_qpc_validate(run_tool(tools.validate_argv(tool, binary), log=log))


def cards(sdk_root: Path, log: logging.Logger | None = None) -> list[tools.Device]:
    """The cards `qaic-util -q` of `sdk_root` lists (the runner must be there too, to use them)."""
    util, runner = tool_path(sdk_root, "qaic-util"), tool_path(sdk_root, "qaic-runner")
    if util is None or runner is None:
        missing = "tools/qaic-util" if util is None else "exec/qaic-runner"
        raise NotMeasured(f"{sdk_root}/{missing} is not installed (Platform SDK)")
    try:
        return tools.parse_qaic_util(run_tool([str(util), "-q"], log=log))
    except tools.ToolError as exc:
        raise NotMeasured(f"no card: {exc}") from None


def throughput(config: Settings, sdk_root: Path, binary_dir: Path, nsp: int, nsp_required: int | None,
               devices: list[tools.Device], log: logging.Logger | None = None) -> Throughput:
    """`qaic-runner` of `sdk_root` on the card `throughput_check.device` (one of `devices`), with that
    section's inferences and activations (default: as many as fit the partition's NSPs)."""
    opts = config.throughput_check
    device = next((d for d in devices if d.qid == opts.device), None)
    if device is None or not device.ready:
        raise NotMeasured(f"no ready card with QID {opts.device} (qaic-util -q lists "
                          f"{[d.qid for d in devices if d.ready] or 'none'})")
    activations = opts.activations or max(1, nsp // nsp_required if nsp_required else 1)
    argv = tools.runner_argv(tool_path(sdk_root, "qaic-runner"), binary_dir, activations, opts.inferences, opts.device)
    try:
        stats = tools.parse_runner(run_tool(argv, timeout_s=opts.timeout_s, log=log))
    except tools.ToolError as exc:
        raise RunnerFailed(str(exc), argv) from None
    return Throughput(stats, activations, argv)
