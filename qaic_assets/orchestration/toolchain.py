"""`qaic_sdk`: the observable source asset for the compiler in use; its data version is the compiler
version, so an SDK upgrade is a new data version that the automation turns into recompiles.

The observation runs where the compiler is (the compile queue's op tags), and the automation reads
its latest result (`status`) to decide whether the compiler is available: the daemon's host needs no
SDK. A missing or unreadable SDK records `status: SDK not found` / `SDK unusable` and repeats the last
data version, so no new data version appears and nothing is recompiled; when the SDK returns with the
same version nothing happens either, with a new version its partitions recompile. This applies to
`backend: qaic`, and to `backend: auto` once the SDK has been seen: a temporarily unmounted SDK must
not make `auto` silently rebuild every SDK binary with the CPU reference compiler (to move such a
project to the CPU compiler for good, set `backend: cpu`). `auto` on a machine that never had the SDK
observes the CPU compiler.

A build that runs before `qaic_sdk` was ever observed records the first observation itself (the
version it built with), so the first scheduled observation of that same version is no "upgrade" and
the automation requests nothing. (Dagster reads a step's input versions before the step runs, so
that very first build's own lineage still lists `qaic_sdk` as INITIAL; every later build records the
observed version.)
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from qaic_assets.orchestration.beta import our_beta_apis
from qaic_assets.orchestration.executor import compile_op_tags
from qaic_assets.orchestration.keys import SDK_KEY
from qaic_assets.orchestration.resources import Toolchain
from qaic_assets.qaic.sdk import (
    NOT_INSTALLED,
    SdkError,
    backend_name,
    choose_compiler,
    cpu_backend,
    platform_version,
    sdk_version,
)

SDK_FOUND = "found"
SDK_NOT_FOUND = "SDK not found"
SDK_UNUSABLE = "SDK unusable"  # qaic-exec is there but versions/apps.xml cannot be read
# The tag under which Dagster stores an event's data version (what ObserveResult(data_version=...)
# writes); read and written here for the repeated and the build-recorded observations.
DATA_VERSION_TAG = "dagster/data_version"


@dataclass(frozen=True)
class CompilerStatus:
    backend: str  # "qaic" or "cpu"
    found: bool
    version: str | None  # None when not found
    executable: str
    status: str = SDK_FOUND  # or SDK_NOT_FOUND / SDK_UNUSABLE
    detail: str = ""
    platform_version: str = NOT_INSTALLED


def last_observation(instance: dg.DagsterInstance | None) -> dg.AssetObservation | None:
    if instance is None:
        return None
    records = instance.fetch_observations(dg.AssetRecordsFilter(asset_key=SDK_KEY), limit=1).records
    return records[0].asset_observation if records else None


def last_found_observation(instance: dg.DagsterInstance | None) -> dg.AssetObservation | None:
    """The newest `qaic_sdk` observation that found the compiler (of the last 20)."""
    if instance is None:
        return None
    for record in instance.fetch_observations(dg.AssetRecordsFilter(asset_key=SDK_KEY), limit=20).records:
        if getattr(record.asset_observation.metadata.get("status"), "value", None) == SDK_FOUND:
            return record.asset_observation
    return None


def latest_data_version(instance: dg.DagsterInstance | None) -> str | None:
    """The data version (compiler version) of the newest `qaic_sdk` observation that has one."""
    if instance is None:
        return None
    for record in instance.fetch_observations(dg.AssetRecordsFilter(asset_key=SDK_KEY), limit=20).records:
        version = (record.asset_observation.tags or {}).get(DATA_VERSION_TAG)
        if version is not None:
            return version
    return None


def observed_available(instance: dg.DagsterInstance) -> bool:
    """What the automation asks: did the latest observation (on a compile host) find the compiler?"""
    last = last_observation(instance)
    return last is not None and getattr(last.metadata.get("status"), "value", None) == SDK_FOUND


def sdk_seen(instance: dg.DagsterInstance | None) -> bool:
    """Did the latest `qaic_sdk` observation see the SDK backend?"""
    last = last_observation(instance)
    return last is not None and getattr(last.metadata.get("backend"), "value", None) == "qaic"


def compiler_status(toolchain: Toolchain, instance: dg.DagsterInstance | None = None) -> CompilerStatus:
    """The compiler that materializations on this host would use now; `auto`: the SDK once it was seen.
    An SDK root that exists is the SDK's, compiler or not (never a silent switch to the CPU compiler)."""
    root = Path(toolchain.sdk_root)
    if backend_name(toolchain.backend, root, sdk_seen=toolchain.backend == "auto" and sdk_seen(instance)) == "cpu":
        cpu = cpu_backend()
        return CompilerStatus("cpu", True, cpu.version, cpu.executable)
    try:
        exe = str(choose_compiler(root, toolchain.compiler))
    except SdkError as exc:
        missing = exc
    else:
        try:  # the compiler exists but a version file may be unusable
            return CompilerStatus("qaic", True, sdk_version(root), exe, platform_version=platform_version(root))
        except SdkError as exc:
            return CompilerStatus("qaic", False, None, exe, SDK_UNUSABLE, str(exc))
    exe = str(root / "exec" / ("qaic-exec" if toolchain.compiler == "auto" else toolchain.compiler))
    return CompilerStatus("qaic", False, None, exe, SDK_NOT_FOUND, str(missing))


def _compiler_words(backend: str | None, apps: str | None, platform: str | None) -> dict[str, str]:
    """What a person calls the parts of a compiler observation: {"Apps SDK": ..., "Platform SDK": ...}."""
    if backend == "cpu":
        return {"CPU reference compiler": apps or "?"}
    return {"Apps SDK": apps or "?", "Platform SDK": platform or NOT_INSTALLED}


def sdk_change(previous: dg.AssetObservation | None, status: CompilerStatus) -> str:
    """The change since the previous observation in plain words: "Apps SDK 1.18.2.0.5 -> 1.18.2.0.6;
    Platform SDK 1.18.2.0.5 (unchanged)", "no change (...)", or what was first seen."""
    now = _compiler_words(status.backend, status.version, status.platform_version)
    if not status.found:
        return f"{status.status}; nothing is recompiled until it is back"
    if previous is None:
        return "first observation: " + ", ".join(f"{k} {v}" for k, v in now.items())
    meta = {k: getattr(v, "value", v) for k, v in previous.metadata.items()}
    before = _compiler_words(meta.get("backend"), meta.get("apps_sdk_version") or meta.get("version"),
                             meta.get("platform_sdk_version"))
    if meta.get("status") != SDK_FOUND:
        before = {}  # the previous observation did not find it: say what is there now
    if before == now:
        return "no change (" + ", ".join(f"{k} {v}" for k, v in now.items()) + ")"
    if before.keys() != now.keys():
        return (", ".join(f"{k} {v}" for k, v in before.items()) or meta.get("status", "nothing")) + " -> " + \
            ", ".join(f"{k} {v}" for k, v in now.items())
    return "; ".join(f"{k} {before[k]} -> {v}" if before[k] != v else f"{k} {v} (unchanged)" for k, v in now.items())


def observe_compiler(toolchain: Toolchain, instance: dg.DagsterInstance | None) -> dg.ObserveResult:
    """The observation of `qaic_sdk`: data version = compiler version; see the module docstring."""
    status = compiler_status(toolchain, instance)
    metadata = {
        "backend": dg.MetadataValue.text(status.backend),
        "status": dg.MetadataValue.text(status.status),
        "executable": dg.MetadataValue.path(status.executable),
        "sdk_root": dg.MetadataValue.path(str(toolchain.sdk_root)),
        "sdk_change": dg.MetadataValue.text(sdk_change(last_observation(instance), status)),
    }
    if status.found:
        versions = {"version": dg.MetadataValue.text(status.version)}
        if status.backend == "qaic":  # the Apps SDK (the compiler: the data version) and the Platform SDK
            versions |= {"compiler": dg.MetadataValue.text(status.executable.rpartition("/")[2]),
                         "apps_sdk_version": dg.MetadataValue.text(status.version),
                         "platform_sdk_version": dg.MetadataValue.text(status.platform_version)}
        return dg.ObserveResult(data_version=dg.DataVersion(status.version), metadata={**metadata, **versions})
    metadata["detail"] = dg.MetadataValue.text(
        f"{status.detail}; nothing is recompiled until the SDK is back (sdk_root={toolchain.sdk_root})")
    # An observation without a data version would count as a *change* of data version (Dagster
    # compares the latest against the previous one) and trigger recompiles: repeat the last one.
    previous = latest_data_version(instance)
    if previous is None:
        return dg.ObserveResult(metadata=metadata)
    metadata["version"] = dg.MetadataValue.text(f"{previous} (last seen)")
    return dg.ObserveResult(data_version=dg.DataVersion(previous), metadata=metadata)


def observes_here(toolchain: Toolchain, instance: dg.DagsterInstance | None) -> bool:
    """Can this process (the code server, on the daemon's host) observe the compiler itself? The CPU
    compiler always; an SDK root that is on this host; `auto` while the SDK was never seen (it observes
    the CPU compiler). Otherwise the SDK is on the compile hosts only (docs/DEPLOY.md): a run there
    observes it."""
    if toolchain.backend == "cpu" or Path(toolchain.sdk_root).is_dir():
        return True
    return toolchain.backend == "auto" and not sdk_seen(instance)


def observation_changed(previous: dg.AssetObservation | None, result: dg.ObserveResult) -> bool:
    """Would `result` say anything the previous observation did not (backend, status, versions)?"""
    if previous is None:
        return True
    fields = ("backend", "status", "version", "apps_sdk_version", "platform_sdk_version", "compiler")
    before = {k: getattr(previous.metadata.get(k), "value", None) for k in fields}
    now = {k: getattr(result.metadata.get(k), "value", None) for k in fields}
    if before["status"] != SDK_FOUND and now["status"] == before["status"]:
        return False  # still missing: nothing new to say
    return before != now


def as_observation(result: dg.ObserveResult) -> dg.AssetObservation:
    """The event an observation run would record, for a sensor to report without a run."""
    version = result.data_version.value if result.data_version else None
    return dg.AssetObservation(asset_key=SDK_KEY, metadata=result.metadata,
                               tags={DATA_VERSION_TAG: version} if version else None)


def record_first_observation(context: dg.AssetExecutionContext, manifest: dict, partition: str) -> None:
    """Called by a build: if `qaic_sdk` was never observed, record the compiler this build used as its
    first observation. Otherwise the first scheduled observation (of the same version) would be a
    change from "nothing" to that version, and the automation would recompile what was just built."""
    if last_observation(context.instance) is not None:
        return
    version = manifest["sdk_version"]
    context.log_event(dg.AssetObservation(
        asset_key=SDK_KEY,
        tags={DATA_VERSION_TAG: version},
        metadata={"backend": dg.MetadataValue.text(manifest["backend"]),
                  "status": dg.MetadataValue.text(SDK_FOUND),
                  "version": dg.MetadataValue.text(version),
                  "recorded_by": dg.MetadataValue.text(
                      f"the build of {context.asset_key.to_user_string()} {partition}"
                      + f" in run {context.run.run_id} (qaic_sdk had never been observed)")},
    ))


def sdk_asset(backend: str) -> dg.SourceAsset:
    with our_beta_apis():
        return _sdk_asset(backend)


def _sdk_asset(backend: str) -> dg.SourceAsset:
    def qaic_sdk(context, toolchain: Toolchain) -> dg.ObserveResult:
        return observe_compiler(toolchain, context.instance)

    # dg.with_source_code_references skips source assets: the same link, given by hand
    code = dg.LocalFileCodeReference(file_path=__file__, line_number=inspect.getsourcelines(qaic_sdk)[1])
    return dg.observable_source_asset(
        key=SDK_KEY,
        tags={"backend": backend},
        metadata={"dagster/code_references": dg.CodeReferencesMetadataValue(code_references=[code])},
        op_tags=compile_op_tags(),  # read the SDK version where compiles run
        group_name="toolchain",
        description="The compiler in use: the Cloud AI 100 Apps SDK's qaic-compile or qaic-exec (metadata: "
        "Apps and Platform SDK versions), or the CPU reference compiler when there is no SDK root. Its data "
        "version is the compiler (Apps SDK) version.",
    )(qaic_sdk)
