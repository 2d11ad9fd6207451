"""Automation: recompile on SDK upgrade or recipe change, observe the SDK, nightly sweep.

* `qaic_sdk` (its data version is the compiler version, orchestration/toolchain.py) is observed
  without a run by the sensor `observe_qaic_sdk_sensor` (every minute, in the code server) where the
  code server can read the compiler (toolchain.observes_here): it records an observation only when
  something changed (backend, status, Apps or Platform version), in plain words (`sdk_change`), and
  when the observed compiler changed it requests one run of `report_sdk_current` (`sdk_current` of
  every built binary, orchestration/currency.py). Where the SDK is on
  the compile hosts only (docs/DEPLOY.md), the schedule `observe_qaic_sdk_schedule` (cron
  `sdk_observe_cron`, default every 15 minutes) launches the observation run on a compile host; where
  the sensor observes, the schedule's ticks skip, saying why. Both run by default.
* The stock automation sensors `qaic_automation_<model>` (one per model, so a recompile run holds one
  model's partitions and a model that fails under a new SDK fails only its own runs; running by
  default, evaluated in the code server because one operand is project code) evaluate one condition
  on every `calibration_profile` and `compiled_binary` partition, composed from Dagster's public
  conditions:

      due       = (any_deps_match(data_version_changed) | code_version_changed [| nightly])
                      .since_last_handled() & ~missing
      ready     = ~any_deps_missing & ~in_progress & ~any_deps_in_progress & compiler_observed
      condition = due & ready & ~any_deps_match(due & ready | execution_failed).allow(<the profiles>)

  - only partitions built before are requested (`~missing`); an input counts as changed when its data
    version changed: a new SDK version, model (sha256) or profile (sha256); `code_version_changed`:
    the recipe, flags or calibration settings changed. `since_last_handled` keeps a change pending
    until the partition is requested or rebuilt.
  - `compiler_observed`: the latest `qaic_sdk` observation found the compiler. It is read from the
    instance, not from the disk of the evaluating process, so the daemon host needs no SDK; while
    the SDK is missing the change stays pending and is requested once an observation finds it.
  - a profile before the binaries that load it: a binary waits while its batch's profile is due and
    ready (so it is requested in this very tick) and then while it is in progress; its own change
    stays pending and it is requested on the first tick after the profile is built; if the profile's
    build failed, the binary waits until a profile build succeeds. (Dagster's
    `will_be_requested` cannot express this: it only sees requests executable in the same run, and a
    profile and a binary have different partitions definitions.) A tick that requests more than one
    partition of an asset becomes one backfill (the sensor's `emit_backfills`).
* Nightly (`nightly.enabled`, off by default; cron `nightly.cron`): at the cron tick, every built
  partition with an input or code change since it was last *built* (e.g. a requested recompile that
  failed) is requested again.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import dagster as dg

from qaic_assets.keys import dagster_name
from qaic_assets.orchestration.keys import AUTOMATION_TAG, binary_key, profile_key
from qaic_assets.orchestration.percentile import choice_key
from qaic_assets.orchestration.resources import Toolchain
from qaic_assets.orchestration.toolchain import (
    SDK_FOUND,
    as_observation,
    last_found_observation,
    last_observation,
    observation_changed,
    observe_compiler,
    observed_available,
    observes_here,
)
from qaic_assets.settings import Settings

SENSOR_NAME = "qaic_automation"
OBSERVE_SCHEDULE_NAME = "observe_qaic_sdk_schedule"
OBSERVE_SENSOR_NAME = "observe_qaic_sdk_sensor"
OBSERVE_INTERVAL_S = 60
CONDITION_LABEL = "recompile_materialized"


class CompilerObserved(dg.AutomationCondition):
    """True while the latest `qaic_sdk` observation found the compiler (where the compiles run).

    The instance is reached through `context.asset_graph_view.instance`: `AutomationContext` is public
    and documented for custom conditions, but has no `instance` property of its own in Dagster 1.13
    (hence the pin `dagster>=1.13,<1.14` in pyproject.toml)."""

    @property
    def name(self) -> str:
        return "compiler_observed"

    @property
    def description(self) -> str:
        return "The latest qaic_sdk observation found the compiler"

    def evaluate(self, context: dg.AutomationContext) -> dg.AutomationResult:
        # non-public: AutomationContext has no instance accessor (tests/test_layers.py NON_PUBLIC)
        found = observed_available(context.asset_graph_view.instance)
        subset = context.candidate_subset if found else context.get_empty_subset()
        return dg.AutomationResult(context=context, true_subset=subset)


def recompile_condition(config: Settings) -> dg.AutomationCondition:
    """The condition of every `calibration_profile` and `compiled_binary` (see the module docstring)."""
    AC = dg.AutomationCondition
    changed = (AC.any_deps_match(AC.data_version_changed()).with_label("any_dep_data_version_changed")
               | AC.code_version_changed())
    if config.nightly.enabled:
        since_built = changed.since(AC.newly_updated()).with_label("changed_since_built")
        changed = changed | (AC.cron_tick_passed(config.nightly.cron) & since_built).with_label(
            f"nightly_stale({config.nightly.cron})")
    due = (changed.since_last_handled() & ~AC.missing()).with_label("recompile_due")
    ready = (~AC.any_deps_missing() & ~AC.in_progress() & ~AC.any_deps_in_progress()
             & CompilerObserved()).with_label("ready")
    profiles = dg.AssetSelection.assets(*[profile_key(m) for m in config.model_names if config.model(m).calibrates])
    # a binary waits while its profile is requested this tick, and after the profile's recompile
    # failed (as a backfill would not run it), rather than compile against the old profile
    waits_for_profile = AC.any_deps_match((due & ready) | AC.execution_failed()).allow(profiles).with_label(
        "waits_for_profile")
    return (due & ready & ~waits_for_profile).with_label(CONDITION_LABEL)


#: the run tag that says, in plain words, which SDK change a recompile run follows
SDK_CHANGE_TAG = AUTOMATION_TAG + "/sdk_change"


def tag_automation_run(context: dg.AssetExecutionContext) -> None:
    """A run the automation requested carries the SDK change it follows, in plain words (the latest
    observation's `sdk_change`: "Apps SDK 1.18.2.0.5 -> 1.18.2.0.6; Platform SDK ... (unchanged)"), so
    the runs list says why it ran. The stock sensor's run tags are fixed when it is defined, hence the
    tag is added by the run's first build step (no public API adds a tag to a running run)."""
    tags = context.run.tags
    if AUTOMATION_TAG not in tags or SDK_CHANGE_TAG in tags:
        return
    found = last_found_observation(context.instance)
    change = getattr(found.metadata.get("sdk_change"), "value", None) if found else None
    if change and " -> " in change:  # a change, not "no change" or a first observation
        # non-public: DagsterInstance.add_run_tags (tests/test_layers.py NON_PUBLIC)
        context.instance.add_run_tags(context.run.run_id, {SDK_CHANGE_TAG: change})


@dataclass(frozen=True)
class Automation:
    condition: dg.AutomationCondition
    sensors: list[dg.SensorDefinition]
    schedules: list[dg.ScheduleDefinition]


def sensor_name(model: str) -> str:
    """The automation sensor of one model (Dagster names allow no '-' or '.')."""
    return f"{SENSOR_NAME}_{dagster_name(model)}"


def model_automation_keys(config: Settings, model: str) -> list[dg.AssetKey]:
    """The assets of a model the automation recompiles: its profile (and percentile choice), its binary."""
    cfg = config.model(model)
    keys = [profile_key(model)] if cfg.calibrates else []
    keys += [choice_key(model)] if cfg.calibrates and cfg.sweeps_percentile else []
    return [*keys, binary_key(model)]


def build_automation(config: Settings, observe_job) -> Automation:
    """The condition for the assets, one automation sensor per model (so a recompile run holds one
    model's partitions: a model that fails under a new SDK fails its own runs only), the SDK
    observation sensor and schedule."""
    sensors = []
    with warnings.catch_warnings():  # `use_user_code_server` is a beta parameter in Dagster 1.13
        warnings.simplefilter("ignore", dg.BetaWarning)
        for model in config.model_names:
            sensors.append(dg.AutomationConditionSensorDefinition(
                name=sensor_name(model),
                target=dg.AssetSelection.assets(*model_automation_keys(config, model)),
                default_status=dg.DefaultSensorStatus.RUNNING,
                minimum_interval_seconds=30,
                use_user_code_server=True,
                run_tags={AUTOMATION_TAG: "recompile"},
                description=f"Recompiles {model}'s built calibration profiles and binaries whose SDK version, "
                "model, profile or recipe changed" + (
                    f"; nightly ({config.nightly.cron}) every one changed since built" if config.nightly.enabled else ""),
            ))
    return Automation(condition=recompile_condition(config),
                      sensors=[*sensors, observe_sensor(config)], schedules=[observe_schedule(config, observe_job)])


def observe_sensor(config: Settings) -> dg.SensorDefinition:
    """Observes `qaic_sdk` in the code server, recording an event only on a change, and requests the
    `sdk_current` report of every built binary (orchestration/currency.py) once per observed compiler
    (cursor and run key: the compiler last reported)."""
    from qaic_assets.orchestration.currency import currency_job, observed

    @dg.sensor(name=OBSERVE_SENSOR_NAME, job=currency_job(config), minimum_interval_seconds=OBSERVE_INTERVAL_S,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description="Observes qaic_sdk without a run when this host can read the compiler (an event "
               "only when it changed), and marks each built binary current or not (check sdk_current)")
    def observe_qaic_sdk_sensor(context: dg.SensorEvaluationContext, toolchain: Toolchain):
        instance = context.instance
        here = observes_here(toolchain, instance)
        events: list = []
        if here and observation_changed(last_observation(instance), result := observe_compiler(toolchain, instance)):
            events.append(as_observation(result))
        found = [e for e in events if getattr(e.metadata.get("status"), "value", None) == SDK_FOUND]
        now = observed(found[0] if found else last_found_observation(instance))
        cursor = "|".join(str(v) for v in now)
        report = [dg.RunRequest(run_key=f"sdk_current {cursor}")] if now[1] is not None and cursor != context.cursor else []
        if not events and not report:
            return dg.SkipReason("no change" if here else f"{toolchain.sdk_root} is not on this host: "
                                 f"{OBSERVE_SCHEDULE_NAME} observes qaic_sdk on a compile host")
        return dg.SensorResult(asset_events=events, run_requests=report, cursor=cursor)

    return observe_qaic_sdk_sensor


def observe_schedule(config: Settings, observe_job) -> dg.ScheduleDefinition:
    """The observation run on a compile host, for where the code server cannot read the SDK."""

    @dg.schedule(name=OBSERVE_SCHEDULE_NAME, job=observe_job, cron_schedule=config.sdk_observe_cron,
                 default_status=dg.DefaultScheduleStatus.RUNNING,
                 description="Observes qaic_sdk on a compile host when the code server's host has no SDK "
                 "(else the sensor observes it without a run): a new SDK version recompiles what was "
                 "compiled with the old one.")
    def observe_qaic_sdk_schedule(context: dg.ScheduleEvaluationContext, toolchain: Toolchain):
        if observes_here(toolchain, context.instance):
            return dg.SkipReason(f"{OBSERVE_SENSOR_NAME} observes qaic_sdk on this host without a run")
        return dg.RunRequest()

    return observe_qaic_sdk_schedule
