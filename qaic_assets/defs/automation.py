"""Automation: recompile on SDK upgrade or recipe change, observe the SDK on a cron, nightly stale sweep.

What the project declares (all built from the config by `build_automation`):

* `qaic_sdk` is observed by the schedule `observe_qaic_sdk_schedule` (cron `sdk_observe_cron`,
  default every 15 minutes, running by default). Its data version is the compiler version.
* The sensor `qaic_automation` (running by default, so `dagster dev` acts without clicks) evaluates
  `recompile_condition` on every `calibration_profile` and `compiled_binary` partition:

      (any_dep_data_version_changed | code_version_changed [| nightly_stale]).since_last_handled()
      & ~missing & ~any_deps_missing & ~in_progress & ~any_deps_in_progress & compiler_available

  - only partitions that were materialized before are ever requested (`~missing`);
  - an input counts as changed when its *data version* changed: a new SDK version (the data version
    of `qaic_sdk`), a new model file (sha256), a new profile (sha256). Re-materializing an unchanged
    model, or observing the same SDK version again, requests nothing. (DESIGN.md names
    `any_deps_updated`; for materialized deps that is "any new materialization", which would
    recompile every binary whenever the model is re-verified, so the data-version form is used.)
  - `code_version_changed`: the model's recipe, flags or calibration settings changed;
  - `compiler_available`: nothing is requested while the SDK is missing; the pending change is
    remembered (it sits inside `since_last_handled`) and requested once the SDK is back.
* Profiles and binaries have different partitions definitions, so Dagster cannot run them in one
  run; when a tick requests both (an SDK upgrade requests every materialized profile and binary in
  the same tick), the sensor emits them as one backfill, which runs each profile before the binaries
  that load it. Dagster does this by itself only when some asset has more than one partition
  requested; `QaicAutomationSensor` also does it for the one-profile-one-binary case.
* Nightly (`nightly.enabled`, off by default; cron `nightly.cron`): at the cron tick, every
  materialized partition that Dagster reports as stale (the same "Stale" the UI shows: a new code
  version or a new data version of an input since it was built) is requested, through the same
  sensor and backfill ordering. It catches what the event-driven branch did not finish, e.g. a
  recompile that failed. It is a cron branch of the condition rather than a ScheduleDefinition
  because a schedule can only launch runs, not backfills, so it could not run a stale profile before
  the binaries that load it; and Dagster's `stale_assets_only` run requests judge whole assets, not
  partitions, and include missing ones.

Dagster internals used (pinned by the tests to Dagster 1.13): `RunRequest.for_asset_graph_subset` /
`AssetGraphSubset` for the merged backfill, and `CachingStaleStatusResolver` for `Stale`. The
sensor has `use_user_code_server=True` (beta), which custom conditions need.

SDK missing. The observation (`observe_compiler`) then records `status: SDK not found` and repeats
the last recorded data version, so no new data version appears and nothing is recompiled; when the
SDK returns with the same version nothing happens either, with a new version its partitions
recompile. This applies to `backend: qaic`, and to `backend: auto` once the SDK has been seen (the
last observation was of the SDK): a temporarily unmounted SDK must not make `auto` silently rebuild
every SDK binary with the CPU reference compiler. To move such a project to the CPU compiler for
good, set `backend: cpu`. `auto` on a machine that never had the SDK observes the CPU compiler.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import dagster as dg

from qaic_assets.defs.keys import SDK_KEY
from qaic_assets.settings import Settings
from qaic_assets.qaic.sdk import NOT_INSTALLED, SdkError, choose_compiler, cpu_backend, platform_version, sdk_version

SENSOR_NAME = "qaic_automation"
OBSERVE_SCHEDULE_NAME = "observe_qaic_sdk_schedule"
SDK_NOT_FOUND = "SDK not found"
SDK_UNUSABLE = "SDK unusable"  # qaic-exec is there but versions/apps.xml cannot be read
AUTOMATION_TAG = "qaic/automation"


# ---------------------------------------------------------------------------------------------
# What the compiler is right now (shared by the observation and the `compiler_available` guard)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CompilerStatus:
    backend: str  # "qaic" or "cpu"
    found: bool
    version: str | None  # None when not found
    executable: str
    status: str = "found"  # or SDK_NOT_FOUND / SDK_UNUSABLE
    detail: str = ""
    platform_version: str = NOT_INSTALLED


def _last_sdk_observation(instance: dg.DagsterInstance | None):
    if instance is None:
        return None
    records = instance.fetch_observations(dg.AssetRecordsFilter(asset_key=SDK_KEY), limit=1).records
    return records[0].asset_observation if records else None


def compiler_status(config: Settings, instance: dg.DagsterInstance | None = None) -> CompilerStatus:
    """The compiler that materializations would use now; for `auto`, the SDK once it was observed.
    An SDK root that exists is the SDK's, compiler or not (never a silent switch to the CPU)."""
    if config.backend == "cpu":
        cpu = cpu_backend()
        return CompilerStatus("cpu", True, cpu.version, cpu.executable)
    choice = getattr(config, "compiler", "auto")
    try:
        exe = str(choose_compiler(config.sdk_root, choice))
    except SdkError as exc:
        missing = exc
    else:
        try:  # the compiler exists but a version file may be unusable
            return CompilerStatus("qaic", True, sdk_version(config.sdk_root), exe,
                                  platform_version=platform_version(config.sdk_root))
        except SdkError as exc:
            return CompilerStatus("qaic", False, None, exe, SDK_UNUSABLE, str(exc))
    if config.backend == "auto" and not config.sdk_root.exists():
        last = _last_sdk_observation(instance)
        seen = last is not None and getattr(last.metadata.get("backend"), "value", None) == "qaic"
        if not seen:
            cpu = cpu_backend()
            return CompilerStatus("cpu", True, cpu.version, cpu.executable)
    exe = str(config.sdk_root / "exec" / ("qaic-exec" if choice == "auto" else choice))
    return CompilerStatus("qaic", False, None, exe, SDK_NOT_FOUND, str(missing))


def observe_compiler(config: Settings, instance: dg.DagsterInstance | None) -> dg.ObserveResult:
    """The observation of `qaic_sdk`: data version = compiler version; see the module docstring."""
    status = compiler_status(config, instance)
    metadata = {
        "backend": dg.MetadataValue.text(status.backend),
        "status": dg.MetadataValue.text(status.status),
        "executable": dg.MetadataValue.path(status.executable),
        "sdk_root": dg.MetadataValue.path(str(config.sdk_root)),
    }
    if status.found:
        versions = {"version": dg.MetadataValue.text(status.version)}
        if status.backend == "qaic":  # the Apps SDK (the compiler: the data version) and the Platform SDK
            versions |= {"compiler": dg.MetadataValue.text(status.executable.rpartition("/")[2]),
                         "apps_sdk_version": dg.MetadataValue.text(status.version),
                         "platform_sdk_version": dg.MetadataValue.text(status.platform_version)}
        return dg.ObserveResult(data_version=dg.DataVersion(status.version), metadata={**metadata, **versions})
    metadata["detail"] = dg.MetadataValue.text(
        f"{status.detail}; nothing is recompiled until the SDK is back (QAIC_SDK_ROOT={config.sdk_root})")
    # An observation without a data version would count as a *change* of data version (Dagster
    # compares the latest against the previous one) and trigger recompiles: repeat the last one.
    last = instance.get_latest_data_version_record(SDK_KEY, is_source=True) if instance else None
    tags = last.event_log_entry.tags if last and last.event_log_entry.tags else {}
    previous = tags.get("dagster/data_version")
    if previous is None:
        return dg.ObserveResult(metadata=metadata)
    metadata["version"] = dg.MetadataValue.text(f"{previous} (last seen)")
    return dg.ObserveResult(data_version=dg.DataVersion(previous), metadata=metadata)


# ---------------------------------------------------------------------------------------------
# Conditions
# ---------------------------------------------------------------------------------------------


class CompilerAvailable(dg.AutomationCondition):
    """True while the configured compiler is installed (for the SDK: `<sdk_root>/exec/qaic-compile` or
    `qaic-exec`)."""

    def __init__(self, config: Settings):
        self._config = config

    @property
    def name(self) -> str:
        return "compiler_available"

    @property
    def description(self) -> str:
        return f"The compiler is installed ({self._config.sdk_root}/exec/qaic-compile or qaic-exec for the SDK)"

    def evaluate(self, context: dg.AutomationContext) -> dg.AutomationResult:
        found = compiler_status(self._config, context.asset_graph_view.instance).found
        subset = context.candidate_subset if found else context.get_empty_subset()
        return dg.AutomationResult(context=context, true_subset=subset)


class Stale(dg.AutomationCondition):
    """True for materialized partitions Dagster reports as stale (new code version or input data)."""

    @property
    def name(self) -> str:
        return "stale"

    @property
    def description(self) -> str:
        return "Materialized, and its code version or an input's data version changed since"

    def evaluate(self, context: dg.AutomationContext) -> dg.AutomationResult:
        from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus

        candidates = context.candidate_subset
        if candidates.is_empty:
            return dg.AutomationResult(context=context, true_subset=candidates)
        view = context.asset_graph_view
        resolver = CachingStaleStatusResolver(view.instance, context.asset_graph, loading_context=view)
        if candidates.is_partitioned:
            stale = {pk for pk in candidates.expensively_compute_partition_keys()
                     if resolver.get_status(context.key, pk) == StaleStatus.STALE}
            subset = candidates.compute_intersection_with_partition_keys(stale)
        else:
            is_stale = resolver.get_status(context.key) == StaleStatus.STALE
            subset = candidates if is_stale else context.get_empty_subset()
        return dg.AutomationResult(context=context, true_subset=subset)


def recompile_condition(config: Settings) -> dg.AutomationCondition:
    """The condition of every `calibration_profile` and `compiled_binary` (see module docstring)."""
    AC = dg.AutomationCondition
    inputs_changed = AC.any_deps_match(AC.data_version_changed()).with_label("any_dep_data_version_changed")
    trigger = inputs_changed | AC.code_version_changed()
    if config.nightly.enabled:
        nightly = (AC.cron_tick_passed(config.nightly.cron) & Stale()).with_label(
            f"nightly_stale({config.nightly.cron})")
        trigger = trigger | nightly
    return (
        trigger.since_last_handled()
        & ~AC.missing()
        & ~AC.any_deps_missing()
        & ~AC.in_progress()
        & ~AC.any_deps_in_progress()
        & CompilerAvailable(config)
    ).with_label("recompile_materialized")


# ---------------------------------------------------------------------------------------------
# The sensor: Dagster's automation sensor, emitting one backfill whenever a tick requests more
# than one run, so calibration runs before the compiles that load its profile
# ---------------------------------------------------------------------------------------------


def as_one_backfill(run_requests: Sequence[dg.RunRequest], asset_graph) -> list[dg.RunRequest]:
    """Merge the asset run requests of one tick into a single backfill (ordered by the backfill
    daemon along the asset graph); one request, or requests that are not asset runs, stay as they are."""
    from dagster._core.definitions.assets.graph.asset_graph_subset import AssetGraphSubset
    from dagster._core.definitions.events import AssetKeyPartitionKey

    # asset runs (evaluate_tick has already given them the implicit asset job's name)
    mergeable = [rr for rr in run_requests if rr.asset_graph_subset is not None or rr.asset_selection]
    if len(mergeable) < 2:
        return list(run_requests)
    subset = AssetGraphSubset.create_empty_subset()
    partitions = set()
    tags: dict[str, str] = {}
    for rr in mergeable:
        tags.update({k: v for k, v in rr.tags.items() if not k.startswith("dagster/")})
        if rr.asset_graph_subset is not None:
            subset = subset | rr.asset_graph_subset
        else:
            partitions |= {AssetKeyPartitionKey(key, rr.partition_key) for key in rr.asset_selection}
    if partitions:
        subset = subset | AssetGraphSubset.from_asset_partition_set(partitions, asset_graph)
    rest = [rr for rr in run_requests if rr not in mergeable]
    return [dg.RunRequest.for_asset_graph_subset(subset, tags=tags), *rest]


class QaicAutomationSensor(dg.AutomationConditionSensorDefinition):
    """`AutomationConditionSensorDefinition` (evaluated in the code server, so the project's own
    conditions run) whose multi-run ticks become one dependency-ordered backfill."""

    def evaluate_tick(self, context: dg.SensorEvaluationContext):
        data = super().evaluate_tick(context)
        if not data.run_requests or len(data.run_requests) < 2:
            return data
        from dagster_shared.record import replace

        merged = as_one_backfill(data.run_requests, context.repository_def.asset_graph)
        return replace(data, run_requests=merged)

    def with_attributes(self, *, jobs=None, metadata=None) -> QaicAutomationSensor:
        return _quiet(QaicAutomationSensor,
            name=self.name, target=self._sensor_target, tags=self._tags, run_tags=self._run_tags,
            default_status=self.default_status, minimum_interval_seconds=self.minimum_interval_seconds,
            description=self.description, metadata=metadata if metadata is not None else self._metadata,
            emit_backfills=self._emit_backfills, use_user_code_server=self._use_user_code_server,
        )


def _quiet(cls, **kwargs):
    """`use_user_code_server` is a beta parameter of Dagster 1.13: construct without the warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)
        return cls(**kwargs)


@dataclass(frozen=True)
class Automation:
    condition: dg.AutomationCondition
    sensors: list[dg.SensorDefinition]
    schedules: list[dg.ScheduleDefinition]


def build_automation(config: Settings, observe_job) -> Automation:
    """The condition for the factories, the automation sensor and the SDK observation schedule."""
    sensor = _quiet(
        QaicAutomationSensor,
        name=SENSOR_NAME,
        target=dg.AssetSelection.all(),
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=30,
        use_user_code_server=True,
        run_tags={AUTOMATION_TAG: "recompile"},
        description="Recompiles the materialized calibration profiles and binaries whose SDK version, "
        "model, profile or recipe changed" + (
            f"; nightly ({config.nightly.cron}) every stale one" if config.nightly.enabled else ""),
    )
    observe = dg.ScheduleDefinition(
        name=OBSERVE_SCHEDULE_NAME,
        job=observe_job,
        cron_schedule=config.sdk_observe_cron,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Observes qaic_sdk: a new SDK version recompiles what was compiled with the old one.",
    )
    return Automation(condition=recompile_condition(config), sensors=[sensor], schedules=[observe])
