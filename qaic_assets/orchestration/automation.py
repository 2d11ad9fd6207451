"""Automation: recompile on SDK upgrade or recipe change, observe the SDK on a cron, nightly sweep.

* `qaic_sdk` is observed by the schedule `observe_qaic_sdk_schedule` (cron `sdk_observe_cron`,
  default every 15 minutes, running by default) on a compile host; its data version is the compiler
  version (orchestration/toolchain.py).
* The stock automation sensor `qaic_automation` (running by default, evaluated in the code server
  because one operand is project code) evaluates one condition on every `calibration_profile` and
  `compiled_binary` partition, composed from Dagster's public conditions:

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

from qaic_assets.orchestration.keys import AUTOMATION_TAG, profile_key
from qaic_assets.orchestration.toolchain import observed_available
from qaic_assets.settings import Settings

SENSOR_NAME = "qaic_automation"
OBSERVE_SCHEDULE_NAME = "observe_qaic_sdk_schedule"
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


@dataclass(frozen=True)
class Automation:
    condition: dg.AutomationCondition
    sensors: list[dg.SensorDefinition]
    schedules: list[dg.ScheduleDefinition]


def build_automation(config: Settings, observe_job) -> Automation:
    """The condition for the assets, the automation sensor and the SDK observation schedule."""
    with warnings.catch_warnings():  # `use_user_code_server` is a beta parameter in Dagster 1.13
        warnings.simplefilter("ignore", dg.BetaWarning)
        sensor = dg.AutomationConditionSensorDefinition(
            name=SENSOR_NAME,
            target=dg.AssetSelection.all(),
            default_status=dg.DefaultSensorStatus.RUNNING,
            minimum_interval_seconds=30,
            use_user_code_server=True,
            run_tags={AUTOMATION_TAG: "recompile"},
            description="Recompiles the built calibration profiles and binaries whose SDK version, model, "
            "profile or recipe changed" + (
                f"; nightly ({config.nightly.cron}) every one changed since built" if config.nightly.enabled else ""),
        )
    observe = dg.ScheduleDefinition(
        name=OBSERVE_SCHEDULE_NAME,
        job=observe_job,
        cron_schedule=config.sdk_observe_cron,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Observes qaic_sdk: a new SDK version recompiles what was compiled with the old one.",
    )
    return Automation(condition=recompile_condition(config), sensors=[sensor], schedules=[observe])
