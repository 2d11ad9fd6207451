"""Asset checks that ask the SDK's own tools about a compiled binary, run in the compile step:

- ``fits_target``: ``tools/qaic-qpc validate -i <dir>/programqpc.bin``; passes when the NSPs one
  activation needs ("Number of NSP required") are at most the partition's nsp. What qaic-qpc reports
  is also materialization metadata (numbers as numbers, so the UI charts them).
- ``throughput`` (only when ``throughput_check.enabled``): with a card listed by ``tools/qaic-util -q``,
  ``exec/qaic-runner -t <dir> -a <activations> -n <inferences> -d <device>``; records inferences per
  second as a number, so the UI plots throughput across SDK versions.

Without the tool or the card a check is reported as skipped (a warning naming the reason), never as a
silent pass. The measurements are builder/sdk_tools.py's (the SDK canary makes the same ones). Both
exist only on the SDK backend (the CPU compiler writes no QPC; with `backend: auto` a CPU build
reports them skipped, saying so: orchestration/compile.py).
"""

from __future__ import annotations

import re

import dagster as dg

from qaic_assets.builder import sdk_tools
from qaic_assets.qaic import tools
from qaic_assets.settings import Settings

FITS_TARGET = "fits_target"
THROUGHPUT = "throughput"


def sdk_check_specs(project: Settings, model: str, asset_key: dg.AssetKey,
                    partitions_def: dg.PartitionsDefinition | None = None) -> list[dg.AssetCheckSpec]:
    """From the configuration only (every host declares the same checks); evaluated for SDK builds,
    one result per partition."""
    if project.backend == "cpu":
        return []
    specs = [dg.AssetCheckSpec(FITS_TARGET, asset=asset_key, partitions_def=partitions_def,
                               description="qaic-qpc validate: NSPs required <= the partition's nsp")]
    if project.throughput_check.enabled:
        specs.append(dg.AssetCheckSpec(THROUGHPUT, asset=asset_key, partitions_def=partitions_def,
                                       description="qaic-runner on a card: inferences per second"))
    return specs


def skipped(name: str, reason: str) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(check_name=name, passed=False, severity=dg.AssetCheckSeverity.WARN,
                               description=f"skipped: {reason}",
                               metadata={"skipped": True})  # the reason is the description's


def _slug(key: str) -> str:
    return "qpc_" + re.sub(r"[^a-z0-9]+", "_", key.lower()).strip("_")


def _validate(project: Settings, binary, nsp: int) -> tuple[dict, dg.AssetCheckResult, tools.QpcReport | None]:
    try:
        report = sdk_tools.qpc_report(project.sdk_root, binary)
    except sdk_tools.NotMeasured as exc:
        return {}, skipped(FITS_TARGET, str(exc)), None
    except tools.ToolError as exc:
        return {}, dg.AssetCheckResult(check_name=FITS_TARGET, passed=False, description=str(exc)), None
    # each field once: numbers as numbers (the UI plots them), the NSPs required as qpc_nsp_required, the
    # rest (text) as one JSON entry
    numbers = {k: v for k, v in report.fields.items() if isinstance(v, (int, float))}
    metadata = {_slug(k): v for k, v in numbers.items() if k.lower() != tools.NSP_REQUIRED_KEY.lower()}
    metadata["qpc_nsp_required"] = report.nsp_required
    if text := {k: v for k, v in report.fields.items() if k not in numbers}:
        metadata["qpc_validate"] = dg.MetadataValue.json(text)
    fits = report.nsp_required <= nsp
    result = dg.AssetCheckResult(
        check_name=FITS_TARGET, passed=fits,
        description=(f"needs {report.nsp_required} NSPs, the partition has {nsp}" if fits else
                     f"the binary needs {report.nsp_required} NSPs but the partition has {nsp}: lower "
                     "-aic-num-cores / -sdp-cluster-sizes for this target"),
        metadata={"nsp_required": report.nsp_required, "nsp": nsp})
    return metadata, result, report


def _throughput(project: Settings, binary_dir, nsp: int, report) -> tuple[dict, dg.AssetCheckResult]:
    try:
        devices = sdk_tools.cards(project.sdk_root)
        measured = sdk_tools.throughput(project, project.sdk_root, binary_dir, nsp,
                                        report.nsp_required if report else None, devices)
    except sdk_tools.NotMeasured as exc:
        return {}, skipped(THROUGHPUT, str(exc))
    except sdk_tools.RunnerFailed as exc:
        return {}, dg.AssetCheckResult(check_name=THROUGHPUT, passed=False, description=str(exc),
                                       metadata={"command": dg.MetadataValue.text(" ".join(exc.argv))})
    stats, opts = measured.stats, project.throughput_check
    numbers = {"inferences_per_s": stats.inferences_per_s, "runner_activations": measured.activations,
               "runner_inferences": stats.inferences, "runner_duration_s": stats.duration_us / 1e6}
    command = {"command": dg.MetadataValue.text(" ".join(measured.argv))}
    result = dg.AssetCheckResult(check_name=THROUGHPUT, passed=True,
                                 description=f"{stats.inferences_per_s:g} inferences/s on QID {opts.device}",
                                 metadata=numbers | command)
    return numbers, result


def run_sdk_checks(project: Settings, specs: list[dg.AssetCheckSpec], binary, nsp: int,
                   ) -> tuple[dict, list[dg.AssetCheckResult]]:
    """(materialization metadata, one result per spec) for the binary just built (or cached)."""
    names = {s.name for s in specs}
    if not names:
        return {}, []
    metadata, fit, report = _validate(project, binary, nsp)
    results = [fit]
    if THROUGHPUT in names:
        numbers, result = _throughput(project, binary.parent, nsp, report)
        metadata |= numbers
        results.append(result)
    return metadata, results
