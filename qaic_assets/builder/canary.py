"""The SDK canary: what a candidate SDK would do to the binaries built today, before anyone upgrades.

`run_canary` builds every built partition (the calibration profiles, then the binaries, which load
the candidate's profiles) with the SDK at `candidate_root`, and compares each with the build served
now: built or failed (the message), output size, compile time, peak RSS, fits_target (`qaic-qpc
validate`, when that SDK has tools/qaic-qpc) and throughput (`qaic-runner`, when that SDK has it and
`qaic-util -q` lists a ready card), for the current and the candidate build side by side. Accuracy is
not compared: a QPC runs only on a card, and the accuracy check runs on CPU builds.

The candidate builds go into the content-addressed cache (builder/cache.py), never into the partition
directories: what the UI and deployments serve stays the current build. They are keyed exactly as a
build with `sdk_root` set to `candidate_root` keys them -- the same argv, whose argv[0] is the
candidate's compiler under `candidate_root` as given (made absolute, symlinks kept) -- so promoting
the candidate (that same path as `sdk_root`) makes every recompile the automation requests a cache
hit: 0 compiler calls, metadata `cached: true`, `built_by_run` the canary's run. (Promoting by
switching a symlink that `sdk_root` names instead changes argv[0]: those builds compile again.)

The canary needs the SDK backend: the CPU reference compiler has one version, this package's own, so
there is no candidate to compare; it is refused naming `backend: qaic`. Dagster-free: the CLI
(`qaic-assets canary`) and the `canary` job (orchestration/canary.py) both call `run_canary`, then
`write_report` (JSON under `<storage_root>/.canary/`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path

from qaic_assets.builder import cache, sdk_tools, service
from qaic_assets.builder.cache import CanaryBuild
from qaic_assets.builder.manifest import read_manifest
from qaic_assets.builder.service import BuildError
from qaic_assets.builder.store import calibration_dir, compile_dir
from qaic_assets.hashing import atomic_write
from qaic_assets.keys import BinaryPartition, batch_key, parse_batch_key
from qaic_assets.qaic import tools
from qaic_assets.qaic.sdk import SdkError, backend_name, sdk_version
from qaic_assets.settings import Settings

_LOG = logging.getLogger("qaic_assets.builder.canary")
PROFILE, BINARY = "calibration_profile", "compiled_binary"
REPORT_DIR = ".canary"
ACCURACY_NOT_APPLICABLE = ("not applicable: an SDK build (a QPC) runs only on a Cloud AI 100 card; the accuracy "
                           "check runs on CPU builds (backend: cpu), and the canary compares SDKs")


@dataclass(frozen=True, order=True)
class Target:
    """One built partition: `kind` PROFILE (`partition` bs8) or BINARY (bs8|offline-nsp14)."""

    kind: str
    model: str
    partition: str


def refuse_cpu(config: Settings) -> None:
    """The canary compares two SDKs: a project built by the CPU reference compiler has nothing to compare."""
    if backend_name(config.backend, Path(config.sdk_root)) == "cpu":
        how = "`backend: cpu`" if config.backend == "cpu" else f"`backend: auto` and no SDK at {config.sdk_root}"
        raise BuildError(
            f"the SDK canary compares builds of two Cloud AI 100 SDKs, but this project builds with the CPU "
            f"reference compiler ({how} in {config.source_file}), which has one version, this package's own: "
            "set `backend: qaic` (and `sdk_root` to the SDK in use) to canary a candidate SDK")


def built_partitions(config: Settings, models: list[str] | None = None) -> list[Target]:
    """Every partition whose served directory holds a manifest today (what the CLI canaries; the
    Dagster job passes the partitions that have a materialization)."""
    found = []
    for model in models or config.model_names:
        matrix = config.matrix_of(model)
        if config.model(model).calibrates:
            found += [Target(PROFILE, model, batch_key(b)) for b in matrix.batch
                      if read_manifest(calibration_dir(config, model, b))]
        found += [Target(BINARY, model, p.key) for p in matrix.binary_partitions
                  if read_manifest(compile_dir(config, model, p))]
    return found


def _ordered(config: Settings, targets) -> list[Target]:
    """Profiles first (a binary's key holds its profile's sha256), then binaries; a binary's profile is
    added when missing (its compile needs the candidate's profile); each once, in config order."""
    wanted = set(targets)
    for t in list(wanted):
        if t.kind == BINARY and config.model(t.model).calibrates:
            wanted.add(Target(PROFILE, t.model, BinaryPartition.parse(t.partition).batch_key))
    order = {m: i for i, m in enumerate(config.model_names)}
    return sorted(wanted, key=lambda t: (t.kind != PROFILE, order[t.model], t.partition))


def _pct(before, after) -> float | None:
    return round(100.0 * (after - before) / before, 2) if before and after is not None else None


def _mb(n) -> float | None:
    return round(n / 2**20, 1) if n is not None else None


def _sides(current: dict | None, candidate: dict | None) -> dict:
    """The numbers of both builds, and the candidate's change in percent of the current one."""
    row = {}
    for side, m in (("current", current or {}), ("candidate", candidate or {})):
        out = m.get("output") or {}
        row |= {f"{side}_sdk_version": m.get("sdk_version"), f"{side}_size_bytes": out.get("size_bytes"),
                f"{side}_compile_s": m.get("duration_s"), f"{side}_peak_rss_mb": _mb(m.get("peak_rss_bytes")),
                f"{side}_sha256": out.get("sha256")}
    row |= {"size_change_pct": _pct(row["current_size_bytes"], row["candidate_size_bytes"]),
            "compile_time_change_pct": _pct(row["current_compile_s"], row["candidate_compile_s"]),
            "peak_rss_change_pct": _pct(row["current_peak_rss_mb"], row["candidate_peak_rss_mb"]),
            "same_output": bool(current and candidate) and row["current_sha256"] == row["candidate_sha256"]}
    return row


def fits_target(sdk_root: Path, binary: Path, nsp: int, log: logging.Logger) -> dict:
    """The `fits_target` measurement (builder/sdk_tools.py) as a row's numbers: NSPs one activation
    needs <= the partition's nsp; None with the reason when it cannot be made."""
    try:
        report = sdk_tools.qpc_report(sdk_root, binary, log)
    except sdk_tools.NotMeasured as exc:
        return {"fits_target": None, "nsp_required": None, "note": str(exc)}
    except tools.ToolError as exc:
        return {"fits_target": False, "nsp_required": None, "note": str(exc)}
    return {"fits_target": report.nsp_required <= nsp, "nsp_required": report.nsp_required, "note": None}


def cards(sdk_root: Path, log: logging.Logger) -> list[tools.Device] | str:
    """The cards `qaic-util -q` of `sdk_root` lists, or why there are none to run on."""
    try:
        return sdk_tools.cards(sdk_root, log)
    except sdk_tools.NotMeasured as exc:
        return str(exc)


def throughput(config: Settings, sdk_root: Path, binary: Path, nsp: int, nsp_required: int | None,
               devices: list[tools.Device] | str, log: logging.Logger) -> dict:
    """The `throughput` measurement (builder/sdk_tools.py) on `devices` (`cards`) as a row's number;
    None with the reason when the runner, qaic-util or a ready card is missing."""
    if isinstance(devices, str):
        return {"inferences_per_s": None, "note": devices}
    try:
        measured = sdk_tools.throughput(config, sdk_root, binary.parent, nsp, nsp_required, devices, log)
    except (sdk_tools.NotMeasured, tools.ToolError) as exc:
        return {"inferences_per_s": None, "note": str(exc)}
    return {"inferences_per_s": measured.stats.inferences_per_s, "note": None}


def _measure(config: Settings, candidate: Path, target: Target, current: dict | None, built: dict | None,
             devices: dict, log: logging.Logger) -> dict:
    """fits_target and throughput of the current build (its SDK's tools) and the candidate's (the
    candidate's tools), each where the tools are there; `devices`: each root's `cards`, asked once."""
    nsp = BinaryPartition.parse(target.partition).nsp
    row, notes = {}, []
    for side, root, manifest in (("current", Path(config.sdk_root), current), ("candidate", candidate, built)):
        binary = Path(manifest["output"]["path"]) if manifest else None
        if binary is None or not binary.is_file():
            row |= {f"{side}_fits_target": None, f"{side}_nsp_required": None, f"{side}_inferences_per_s": None}
            continue
        fit = fits_target(root, binary, nsp, log)
        if root not in devices:
            devices[root] = cards(root, log)
        speed = throughput(config, root, binary, nsp, fit["nsp_required"], devices[root], log)
        row |= {f"{side}_fits_target": fit["fits_target"], f"{side}_nsp_required": fit["nsp_required"],
                f"{side}_inferences_per_s": speed["inferences_per_s"]}
        notes += [f"{side}: {n}" for n in (fit["note"], speed["note"]) if n]
    row["throughput_change_pct"] = _pct(row["current_inferences_per_s"], row["candidate_inferences_per_s"])
    row["tool_notes"] = "; ".join(notes) or None
    return row


def reason(exc: BuildError) -> str:
    """A failure in one line: the message's first line and the compiler's last output line (its error)."""
    tail = [line.strip() for line in exc.details.get("log_tail", []) if line.strip()]
    return str(exc).splitlines()[0] + (f" -- {tail[-1]}" if tail else "")


def _status(built: service.Built) -> tuple[str, str | None]:
    """What the candidate build was: compiled now, an entry of an earlier canary run, or the served one."""
    if not built.cached:
        return "built", None
    canary = built.manifest.get("canary")
    if canary:
        return "reused", f"cache entry of canary run {canary['run_id']} (its compile time and peak RSS)"
    return "same", "the candidate builds what is served now (same cache key)"


def run_canary(config: Settings, candidate_root: str | Path, partitions=None, *, run_id: str,
               log: logging.Logger = _LOG, force: bool = False) -> list[dict]:
    """Build `partitions` (Targets; default: every built one, `built_partitions`) with the SDK at
    `candidate_root` into the cache, and return one comparison row per partition (profiles first). A
    partition whose candidate build fails has `succeeded: False` and the message; the others go on.
    Refused (BuildError) on the CPU backend and for a candidate root without a compiler."""
    refuse_cpu(config)
    candidate = Path(os.path.abspath(candidate_root))  # as given: promotion sets sdk_root to this path
    candidate_config = config.model_copy(update={"sdk_root": candidate})
    service.backend(candidate_config)  # a root without a compiler or version: one clear error up front
    service.backend(candidate_config, calibrate=True)
    targets = _ordered(config, built_partitions(config) if partitions is None else partitions)
    base = CanaryBuild(run_id=run_id, candidate_root=str(candidate))
    profiles: dict[str, dict[int, Path]] = {}
    devices: dict[Path, list | str] = {}
    rows = []
    for target in targets:
        canary = replace(base, profiles=profiles.setdefault(target.model, {}))
        log.info(f"canary: {target.model}/{target.kind} {target.partition} with {candidate}")
        if target.kind == PROFILE:
            batch = parse_batch_key(target.partition)
            current = read_manifest(calibration_dir(config, target.model, batch))
        else:
            partition = BinaryPartition.parse(target.partition)
            current = read_manifest(compile_dir(config, target.model, partition))
        row = {"model": target.model, "kind": target.kind, "partition": target.partition}
        try:
            if target.kind == PROFILE:
                built = service.calibrate_profile(candidate_config, target.model, batch, run_id=run_id, log=log,
                                                  force=force, canary=canary)
                profiles[target.model][batch] = Path(built.manifest["output"]["path"]).parent
            else:
                built = service.compile_binary(candidate_config, target.model, partition, run_id=run_id, log=log,
                                               force=force, canary=canary)
        except BuildError as exc:
            rows.append(row | {"status": "failed", "succeeded": False, "message": str(exc), "reason": reason(exc),
                               "note": None, "cache_entry": None} | _sides(current, None) | (
                _measure(config, candidate, target, current, None, devices, log) if target.kind == BINARY else {}))
            log.warning(f"canary: {target.model}/{target.kind} {target.partition} failed with the candidate: {exc}")
            continue
        status, note = _status(built)
        if target.kind == BINARY and config.model(target.model).sweeps_percentile:
            note = "; ".join(filter(None, [note, "percentile: sweep: compiled with the current percentile choice; "
                                                 "the sweep chooses again on the candidate's profile after "
                                                 "promotion, and a new choice compiles again"]))
        entry = Path(built.manifest["output"]["path"]).parent if status != "same" else None
        if entry is not None and target.kind == BINARY:  # <entry>/elfs/programqpc.bin
            entry = entry.parent
        row |= {"status": status, "succeeded": True, "message": None, "reason": None, "note": note,
                "cache_entry": str(entry) if entry else None} | _sides(current, built.manifest)
        if target.kind == BINARY:
            row |= _measure(config, candidate, target, current, built.manifest, devices, log)
        rows.append(row)
    for row in rows:
        row["accuracy"] = ACCURACY_NOT_APPLICABLE
    return rows


def summary(rows: list[dict]) -> dict:
    """Counts and the candidate's changes over the compiled binaries, as numbers (the UI plots them)."""
    ok = [r for r in rows if r["succeeded"]]
    binaries = [r for r in ok if r["kind"] == BINARY]

    def stats(name: str) -> dict:
        values = [r[name] for r in binaries if r.get(name) is not None]
        return {f"{name}_mean": round(sum(values) / len(values), 2) if values else None,
                f"{name}_max": max(values) if values else None}

    return {"partitions": len(rows), "succeeded": len(ok), "failed": len(rows) - len(ok),
            "binaries": sum(r["kind"] == BINARY for r in rows),
            "binaries_changed": sum(not r["same_output"] for r in binaries),
            "fits_target_lost": sum(r.get("current_fits_target") is True and r.get("candidate_fits_target") is False
                                    for r in binaries),
            **stats("size_change_pct"), **stats("compile_time_change_pct"), **stats("peak_rss_change_pct"),
            **stats("throughput_change_pct")}


def report_path(config: Settings, run_id: str) -> Path:
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", run_id) + ".json"
    return Path(os.path.normpath(config.storage_root)) / REPORT_DIR / name


def write_report(config: Settings, candidate_root: str | Path, rows: list[dict], *, run_id: str) -> Path:
    """The comparison as JSON, `<storage_root>/.canary/<run id>.json` (atomically): both SDKs, how to
    promote and how to remove the cache entries, the summary and one record per partition."""
    candidate = Path(os.path.abspath(candidate_root))
    versions = {}
    for side, root in (("current", Path(config.sdk_root)), ("candidate", candidate)):
        try:
            versions[side] = sdk_version(root)
        except SdkError as exc:
            versions[side] = f"unreadable: {exc}"
    entries, size = cache.usage(config)
    report = {
        "run_id": run_id, "created_at": time.time(),
        "current": {"sdk_root": str(config.sdk_root), "apps_sdk_version": versions["current"]},
        "candidate": {"sdk_root": str(candidate), "apps_sdk_version": versions["candidate"]},
        "promote": f"set sdk_root to {candidate} (exactly this path) in {config.source_file} or QAIC_SDK_ROOT, then "
                   "observe qaic_sdk: the automation's recompiles copy these builds from the cache",
        "cache": {"root": str(cache.cache_root(config)), "entries": entries, "bytes": size,
                  "remove": f"qaic-assets canary --clean (or rm -rf {cache.cache_root(config)})"},
        "accuracy": ACCURACY_NOT_APPLICABLE,
        "summary": summary(rows),
        "partitions": rows,
    }
    path = report_path(config, run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, json.dumps(report, indent=2, sort_keys=True, default=str) + "\n")
