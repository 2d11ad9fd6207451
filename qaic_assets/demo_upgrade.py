"""`make demo-upgrade`: an SDK upgrade told end to end, on the stand-in SDK (qaic_assets/standin_sdk).

An SDK upgrade is what the automation is for, and no demo machine has the Cloud AI 100 SDK. So, in a
folder of its own (default `./artifacts/demo-upgrade`: its own config, storage root, SDK copy and
DAGSTER_HOME, so `make demo`'s instance is untouched; each run starts that folder over), it:

1. installs a copy of the stand-in SDK as Apps SDK 1.18.2.0.5 and writes a config on it
   (`backend: qaic`): `digits` (int8, calibrated) and `digits-fp16` (the same network in fp16) x
   batch 1, 8 x offline-nsp14, singlestream-nsp14;
2. builds the offline target with `make demo`'s own machinery (demo.materialize_matrix); the other
   target is never built, to show that the automation rebuilds what was built and nothing else;
3. upgrades the stand-in to 1.18.2.0.6 and lists `digits-fp16` in the stand-in's fault switch
   (`<sdk>/fail-models.txt`), so that model's recompiles fail on purpose;
4. does what the daemon does: ticks `observe_qaic_sdk_sensor` (its events recorded with
   report_runless_asset_event, as the daemon records them) and evaluates the automation as the
   `qaic_automation_<model>` sensors do (dg.evaluate_automation_conditions on the definitions), building what
   each tick requests, one run per (job, partition) tagged as that sensor tags its runs, until a tick
   requests nothing;
5. prints which partitions were recompiled and why (the observation's `sdk_change`, each partition's
   inputs that changed, its sha256 before -> after, the stand-in's calls for it), which were not,
   each binary's `sdk_current` verdict, and where the UI shows it (`make ui-upgrade`).

Exit 0 when the story went as designed, the intended failure included (it is part of the story); 1,
saying what differed, when it did not. Dagster's own console output goes to a log file, as in `make demo`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from qaic_assets import standin_sdk
from qaic_assets.builder.store import calibration_dir, compile_dir
from qaic_assets.demo import dagster_output_to, demo_log, materialize_matrix, plan_runs, run_job
from qaic_assets.keys import BinaryPartition, dagster_name, parse_batch_key
from qaic_assets.orchestration.automation import OBSERVE_SENSOR_NAME, SENSOR_NAME
from qaic_assets.orchestration.currency import CURRENCY_JOB, latest_currency
from qaic_assets.orchestration.instance import open_instance
from qaic_assets.orchestration.jobs import matrix_jobs
from qaic_assets.orchestration.keys import AUTOMATION_TAG, SDK_KEY, binary_key, profile_key
from qaic_assets.orchestration.lineage import latest_by_partition
from qaic_assets.orchestration.progress import PlainProgress
from qaic_assets.orchestration.resources import TOOLCHAIN, default_resources
from qaic_assets.orchestration.toolchain import DATA_VERSION_TAG, last_observation
from qaic_assets.settings import Settings, load_settings

DEFAULT_DIR = Path("artifacts") / "demo-upgrade"
MARKER = ".demo-upgrade"  # a folder holding it is the demo's own, and is started over
OLD, NEW = ("1.18.2", "0.5"), ("1.18.2", "0.6")
PLATFORM = ("1.18.2", "0.5")  # the Platform SDK stays: only the Apps SDK (the compiler) is upgraded
GOOD, FAILING = "digits", "digits-fp16"  # FAILING: the model the stand-in's fault switch names
BUILT_SCENARIO = "offline"  # built first; the other scenario never is
MAX_TICKS = 10  # a story that has not settled by then did not go as designed
INPUT_TAG = "dagster/input_data_version/"  # Dagster's lineage: an input's data version at the build
UI = "http://127.0.0.1:3000"

CONFIG = """\
# make demo-upgrade's config (qaic_assets/demo_upgrade.py), written anew on every run.
# sdk_root is a copy of the STAND-IN SDK (qaic_assets/standin_sdk/README.md), not Qualcomm's SDK.
storage_root: store
sdk_root: {sdk}
backend: qaic
profiling_threads: 2
compile_timeout_s: 120
matrix: {{scenarios: [offline, singlestream], nsp: [14], batch: [1, 8]}}
models:
  {good}:                       # int8: calibrated on the shipped digits set, then compiled
    recipe: resnet50
    source: {{path: {model}}}
    calibration: {{list: {calibration}}}
  {failing}:                  # the same network in fp16, from a copy of its file named after the
    recipe: resnet50            # model: the stand-in's fault switch (sdk/fail-models.txt) names files
    quantize: false
    source: {{path: models/{failing}.onnx}}
"""

DAGSTER_YAML = """\
# make demo-upgrade's DAGSTER_HOME (qaic_assets/demo_upgrade.py): SQLite storage here, no telemetry,
# at most 2 compilers at once (the qaic_compile pool), as in the project's dagster_home/dagster.yaml.
telemetry:
  enabled: false
nux:
  enabled: false
concurrency:
  pools:
    default_limit: 2
    granularity: op
"""


class NotAsDesigned(Exception):
    """The story did not go as designed; the message says what differed."""


@dataclass
class Partition:
    """One built asset partition, and what the upgrade did to it."""

    key: dg.AssetKey
    model: str
    partition: str
    before: dg.EventLogRecord  # its materialization before the upgrade
    after: dg.EventLogRecord | None = None  # its new one; None: not rebuilt (its recompile failed)
    requested_at: int | None = None  # the automation tick that requested it
    calls: int = 0  # the stand-in compiler's calls for it during the upgrade
    verdict: dg.AssetCheckEvaluation | None = None  # its latest sdk_current (binaries)
    why: str = ""  # its inputs whose data version changed since it was built

    @property
    def label(self) -> str:
        return f"{self.key.to_user_string()} {self.partition}"

    @property
    def is_binary(self) -> bool:
        return self.key == binary_key(self.model)


@dataclass
class Story:
    sdk: Path
    config: Settings
    built: list[Partition] = field(default_factory=list)
    never_built: list[str] = field(default_factory=list)
    sdk_change: str = ""
    upgrade_calls: list[dict] = field(default_factory=list)


def prepare(folder: Path) -> Path:
    """Start the demo's folder over (a folder that is not the demo's own is never removed), install the
    stand-in SDK at the old version in it and write the config on it; returns the config's path."""
    if folder.exists() and not (folder / MARKER).exists() and any(folder.iterdir()):
        raise NotAsDesigned(f"{folder} exists and is not make demo-upgrade's folder (no {MARKER} in it): "
                            "choose another with --dir, or remove it")
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "dagster_home").mkdir(parents=True)
    (folder / MARKER).write_text("make demo-upgrade's folder: removed and made anew by each run\n")
    (folder / "dagster_home" / "dagster.yaml").write_text(DAGSTER_YAML)
    sdk = standin_sdk.install(folder / "sdk", OLD, platform=PLATFORM, tools=True)
    digits = Path(__file__).resolve().parent / "models" / "data" / "digits"
    (folder / "models").mkdir()
    shutil.copyfile(digits / "model.onnx", folder / "models" / f"{FAILING}.onnx")
    config = folder / "qaic.yaml"
    quoted = {k: json.dumps(str(v)) for k, v in  # a JSON string is a YAML scalar, whatever the path holds
              {"sdk": sdk, "model": digits / "model.onnx", "calibration": digits / "cal.txt"}.items()}
    config.write_text(CONFIG.format(good=GOOD, failing=FAILING, **quoted))
    return config


def use_folder(folder: Path, config: Path) -> None:
    """Point this process (and the run workers it forks) at the demo's config and instance. Variables
    that would send a build elsewhere (QAIC_SDK_ROOT, the storage root, the stand-in's FAKE_QAIC_*
    test switches, its call log among them) are dropped: the story reads what it made."""
    os.environ["QAIC_ASSETS_CONFIG"] = str(config)
    os.environ["DAGSTER_HOME"] = str(folder / "dagster_home")
    for name in [n for n in os.environ if n.startswith("FAKE_QAIC_")] + ["QAIC_SDK_ROOT", "QAIC_ASSETS_STORAGE_ROOT"]:
        os.environ.pop(name, None)


def first_build_config(config: Settings) -> Settings:
    """The config with one scenario: what demo.materialize_matrix plans and builds. The definitions
    keep the whole matrix, so the other scenario's partitions exist and are never built."""
    return config.model_copy(update={"matrix": config.matrix.model_copy(update={"scenarios": [BUILT_SCENARIO]})})


def built_partitions(config: Settings, instance: dg.DagsterInstance) -> tuple[list[Partition], list[str]]:
    """(every built profile and binary partition, the binary partitions never built)."""
    built, never = [], []
    for model in config.model_names:
        matrix = config.matrix_of(model)
        keys = {binary_key(model): [p.key for p in matrix.binary_partitions]}
        if config.model(model).calibrates:
            keys = {profile_key(model): matrix.batch_keys, **keys}
        for key, partitions in keys.items():
            records = latest_by_partition(instance, key, partitions)
            built += [Partition(key, model, p, records[p]) for p in partitions if p in records]
            never += [f"{key.to_user_string()} {p}" for p in partitions if p not in records]
    return built, never


def observe_tick(defs: dg.Definitions, instance: dg.DagsterInstance, config: Settings, cursor: str | None):
    """One tick of observe_qaic_sdk_sensor, as the daemon runs it: its events recorded, the
    `report_sdk_current` run it requests run here. Returns (cursor, its events and that run's check
    results)."""
    sensor = defs.resolve_sensor_def(OBSERVE_SENSOR_NAME)
    context = dg.build_sensor_context(instance=instance, cursor=cursor,
                                      resources={TOOLCHAIN: default_resources(config)[TOOLCHAIN]})
    result = sensor(context)
    if isinstance(result, dg.SkipReason):
        return cursor, []
    for event in result.asset_events:
        instance.report_runless_asset_event(event)
    events = list(result.asset_events)
    for request in result.run_requests:  # the sdk_current report: one run per observed compiler
        run = defs.resolve_job_def(CURRENCY_JOB).execute_in_process(instance=instance, tags=request.tags)
        events += run.get_asset_check_evaluations()
    return result.cursor, events


def evaluate(defs: dg.Definitions, instance: dg.DagsterInstance, cursor):
    """One evaluation of the automation, as the `qaic_automation_<model>` sensors evaluate it. (Dagster's own code
    inside warns of a beta parameter it passes itself: not the reader's concern.)"""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)
        return dg.evaluate_automation_conditions(defs, instance, cursor=cursor)


def build_requested(instance: dg.DagsterInstance, config: Settings, requested: dict[dg.AssetKey, list[str]]):
    """What a tick requested, as runs of the project's jobs (profiles first), tagged as the automation
    sensor tags its runs, in this process. Yields (job, partition, result)."""
    jobs = matrix_jobs(config)
    groups: dict[tuple[int, str, str], list[dg.AssetKey]] = {}
    for key, partitions in requested.items():
        model = next(m for m in config.model_names if key in (profile_key(m), binary_key(m)))
        order, job = (0, jobs[model][0]) if key == profile_key(model) else (1, jobs[model][1])
        for partition in partitions:
            groups.setdefault((order, job, partition), []).append(key)
    for (_, job, partition), keys in sorted(groups.items()):
        yield job, partition, run_job(instance, job, partition, tags={AUTOMATION_TAG: "recompile"},
                                      asset_selection=keys, in_process=True)


def failure_reason(run) -> str:
    """The compiler's own error line of a failed run's step (the Failure's description ends with its log)."""
    for event in run.get_step_failure_events():
        data = event.step_failure_data
        text = (data.user_failure_data.description if data.user_failure_data else None) or data.error.message or ""
        errors = [line.strip() for line in text.splitlines() if line.strip().startswith("ERROR")]
        return errors[-1] if errors else text.strip().split("\n")[0]
    return "the run failed"


def compiler_calls(sdk: Path, since: int = 0) -> list[dict]:
    """The stand-in compiler's recorded calls after the first `since` records (its tools' left out)."""
    return [c for c in standin_sdk.read_calls(sdk)[since:] if "tool" not in c]


def call_for(call: dict, part: Partition, config: Settings) -> bool:
    """Was this stand-in call for that partition? A build runs its compiler in a private directory beside
    the partition's final one, `<parent>/.<name>.tmp-<pid>-<token>/<name>` (builder/outputs.py)."""
    final = compile_dir(config, part.model, BinaryPartition.parse(part.partition)) if part.is_binary else \
        calibration_dir(config, part.model, parse_batch_key(part.partition))
    cwd = Path(call["cwd"])
    return cwd.name == final.name and cwd.parent.parent == final.parent and \
        cwd.parent.name.startswith(f".{final.name}.tmp-")


def changed_inputs(part: Partition, sdk_now: str | None) -> str:
    """Why it was rebuilt: each input whose data version differs from the one its build recorded
    (Dagster's lineage tags), "qaic_sdk 1.18.2.0.5 -> 1.18.2.0.6, digits/calibration_profile 3f2a.. -> 91bc..".
    Without a new build (its recompile failed): the SDK's change, which requested it."""
    def inputs(record) -> dict[str, str]:
        tags = record.asset_materialization.tags or {}
        return {k[len(INPUT_TAG):]: v for k, v in tags.items() if k.startswith(INPUT_TAG)}

    old = inputs(part.before)
    new = inputs(part.after) if part.after is not None else {SDK_KEY.to_user_string(): sdk_now}
    short = lambda v: v if len(v) < 20 else v[:12]  # noqa: E731 (a version, or a sha256)
    return ", ".join(f"{k} {short(old[k])} -> {short(v)}"
                     for k, v in sorted(new.items()) if v and old.get(k) and old[k] != v) or "-"


def tell(story: Story, defs: dg.Definitions, instance: dg.DagsterInstance, log: Path, observe_cursor: str) -> None:
    """Steps 2-4 of the module docstring, after the observe sensor's first tick (`observe_cursor`) and
    the first build; fills `story` for report()."""
    sdk, config = story.sdk, story.config
    observe_cursor, events = observe_tick(defs, instance, config, observe_cursor)  # the daemon's ticks before
    automation = evaluate(defs, instance, None)                                      # the upgrade: nothing to do
    if events or automation.total_requested:
        raise NotAsDesigned(f"before the upgrade the observe sensor reported {len(events)} events and the "
                            f"automation requested {automation.total_requested} partitions")
    since = len(standin_sdk.read_calls(sdk))

    switch = standin_sdk.set_failing_models(sdk, [FAILING])
    standin_sdk.set_version(sdk, *NEW)
    print(f"\n2. Upgrade the stand-in SDK to Apps SDK {'.'.join(NEW)} ({sdk / 'versions' / 'apps.xml'}), and list "
          f"{FAILING} in its fault switch ({switch}): that model's recompiles will fail ON PURPOSE.")

    print("\n3. What the Dagster daemon does, tick by tick:", flush=True)
    observe_cursor, events = observe_tick(defs, instance, config, observe_cursor)
    observation = next((e for e in events if isinstance(e, dg.AssetObservation)), None)
    if observation is None:
        raise NotAsDesigned("the observe sensor recorded no new qaic_sdk observation after the upgrade")
    story.sdk_change = observation.metadata["sdk_change"].value
    checks = [e for e in events if isinstance(e, dg.AssetCheckEvaluation)]
    print(f"   {OBSERVE_SENSOR_NAME}: qaic_sdk observed without a run, sdk_change \"{story.sdk_change}\"; "
          f"its {CURRENCY_JOB} run: sdk_current of the {len(checks)} built binaries: {sum(not c.passed for c in checks)} not current "
          "(recompile pending)")

    by_key = {(p.key, p.partition): p for p in story.built}
    automated = [spec.key for spec in defs.resolve_all_asset_specs() if spec.automation_condition is not None]
    cursor = automation.cursor
    for tick in range(1, MAX_TICKS + 1):
        result = evaluate(defs, instance, cursor)
        cursor = result.cursor
        requested = {k: sorted(result.get_requested_partitions(k)) for k in automated if result.get_num_requested(k)}
        if not requested:
            print(f"   {SENSOR_NAME}_* tick {tick}: requests nothing: the upgrade is handled")
            break
        print(f"   {SENSOR_NAME}_* tick {tick}: requests "
              + "; ".join(f"{k.to_user_string()} {', '.join(v)}" for k, v in requested.items()), flush=True)
        for key, partitions in requested.items():
            for partition in partitions:
                if (key, partition) not in by_key:
                    raise NotAsDesigned(f"the automation requested {key.to_user_string()} {partition}, never built")
                by_key[(key, partition)].requested_at = tick
        with dagster_output_to(log):
            runs = list(build_requested(instance, config, requested))
        for job, partition, run in runs:
            intended = all(e.step_key.startswith(dagster_name(FAILING) + "__") for e in run.get_step_failure_events())
            outcome = "ok" if run.success else f"FAILED{', as intended' if intended else ''}: {failure_reason(run)}"
            print(f"      run {job} {partition} ({run.run_id[:8]}): {outcome}", flush=True)
    else:
        raise NotAsDesigned(f"the automation still requested partitions after {MAX_TICKS} ticks")

    _, events = observe_tick(defs, instance, config, observe_cursor)
    print(f"   {OBSERVE_SENSOR_NAME}: " + (f"{len(events)} events, none expected" if events else
                                          "no change, nothing recorded: the verdicts stay"))
    if events:
        raise NotAsDesigned(f"the observe sensor reported {len(events)} events after the recompiles")
    sdk_now = (last_observation(instance).tags or {}).get(DATA_VERSION_TAG)
    story.upgrade_calls = compiler_calls(sdk, since)
    for part in story.built:
        after = latest_by_partition(instance, part.key, [part.partition]).get(part.partition)
        part.after = after if after.storage_id != part.before.storage_id else None
        part.calls = sum(call_for(c, part, config) for c in story.upgrade_calls)
        part.verdict = latest_currency(instance, part.key).get(part.partition) if part.is_binary else None
        part.why = changed_inputs(part, sdk_now)


def sha(record: dg.EventLogRecord) -> str:
    return record.asset_materialization.metadata["sha256"].value[:12]


def report(story: Story) -> list[str]:
    """Print steps 4 and 5; returns what differed from the design (nothing: as designed)."""
    wrong = []
    print(f"\n4. What was recompiled, and why. qaic_sdk's data version changed: \"{story.sdk_change}\"")
    print(f"   {'asset partition':<46} {'sha256 before -> after':<32} {'calls':>5}  because (inputs changed since built)")
    for part in story.built:
        after = sha(part.after) if part.after is not None else "(failed)"
        print(f"   {part.label:<46} {sha(part.before) + ' -> ' + after:<32} {part.calls:>5}  {part.why}")
        if part.requested_at is None:
            wrong.append(f"{part.label} was built, and not requested")
        elif (part.after is None) != (part.model == FAILING):
            wrong.append(f"{part.label} was {'rebuilt' if part.after else 'not rebuilt'}")
        if part.calls != 1:
            wrong.append(f"{part.label}: {part.calls} stand-in calls during the upgrade, 1 expected")
    print("   not recompiled, never built (the automation rebuilds what was built, and builds nothing new): "
          + (", ".join(story.never_built) or "none"))
    profiles = sum(any(a.startswith("-dump-profile=") for a in c["args"]) for c in story.upgrade_calls)
    print(f"   the stand-in compiler was called {len(story.upgrade_calls)} times during the upgrade: {profiles} "
          f"calibrations, {len(story.upgrade_calls) - profiles} compiles, {sum(p.after is None for p in story.built)} "
          f"of them failing on purpose (calls recorded in {story.sdk / standin_sdk.CALLS_FILE})")
    if len(story.upgrade_calls) != len(story.built):
        wrong.append(f"{len(story.upgrade_calls)} stand-in calls for {len(story.built)} built partitions")

    print("\n5. Is each binary built with the SDK observed now? (the asset check sdk_current, per partition)")
    for part in (p for p in story.built if p.is_binary):
        check, intended = part.verdict, part.model == FAILING
        if check is None:
            wrong.append(f"{part.label}: no sdk_current verdict")
            continue
        state = "passed" if check.passed else "RECOMPILE FAILED (intended)" if intended else "NOT CURRENT"
        print(f"   {part.label:<46} {state}: {check.description}")
        if check.passed == intended or (intended and "failed in run" not in (check.description or "")):
            wrong.append(f"{part.label}: sdk_current {state}")
    return wrong


def where_in_the_ui(folder: Path) -> None:
    failing, good = binary_key(FAILING).to_user_string(), binary_key(GOOD).to_user_string()
    make = "`make ui-upgrade`" if folder == DEFAULT_DIR.absolute() else "the command below"
    print(f"""
Where to see it in the UI: {make}, then {UI} (`make ui` shows make demo's instance instead).
It serves this demo's instance without the daemon, so what you see is what happened here and no sensor
ticks on. The command:
  DAGSTER_HOME={folder / 'dagster_home'} QAIC_ASSETS_CONFIG={folder / 'qaic.yaml'} \\
    dagster-webserver -m qaic_assets.definitions
  - {UI}/assets/qaic_sdk?view=events : the qaic_sdk observations; the newest one's metadata holds sdk_change
  - {UI}/assets/{failing}?view=checks : the Checks tab, sdk_current per partition: recompile failed, with its run
  - {UI}/assets/{good}?view=checks : the same tab, current again after the recompile
  - {UI}/assets/{good}?view=partitions : the matrix: the offline target built, singlestream never
  - {UI}/runs : the recompile runs, tagged {AUTOMATION_TAG}=recompile as the automation sensor tags its runs""")


def run_story(folder: Path) -> int:
    started = time.monotonic()
    config_path = prepare(folder)
    use_folder(folder, config_path)
    config = load_settings(config_path)
    story = Story(Path(config.sdk_root), config)
    log = demo_log(config)
    print(f"make demo-upgrade: an SDK upgrade, end to end, in {folder} (its own Dagster instance: make demo's is "
          f"untouched)\n   stand-in SDK: {story.sdk}, Apps SDK {'.'.join(OLD)}: NOT Qualcomm's SDK, a stand-in that "
          "follows its layout and contract (qaic_assets/standin_sdk/README.md)\n"
          f"   models: {GOOD} (int8, calibrated) and {FAILING} (fp16) x batch 1, 8 x offline-nsp14, singlestream-nsp14"
          f"\n   Dagster's own log: {log}")
    from qaic_assets.definitions import defs  # after use_folder: it loads $QAIC_ASSETS_CONFIG

    with open_instance() as instance:
        # The daemon's sensors run from the start: the observe sensor's first tick records the first
        # qaic_sdk observation (so the build finds qaic_sdk up to date), and later ticks request the
        # sdk_current report once per observed change.
        observe_cursor, _ = observe_tick(defs, instance, config, None)
        first = first_build_config(config)
        runs = plan_runs(first)
        print(f"\n1. Build the {BUILT_SCENARIO} target with make demo's machinery (the same runs, run workers and "
              "up-to-date decision):", flush=True)
        with dagster_output_to(log):
            outcomes = materialize_matrix(first, instance, progress=PlainProgress(len(runs), sum(len(r.steps) for r in runs)))
        if not all(ok for _, _, ok in outcomes):
            failed = [f"{job} {partition or ''}".strip() for job, partition, ok in outcomes if not ok]
            raise NotAsDesigned(f"the first build failed: {', '.join(failed)}")
        story.built, story.never_built = built_partitions(config, instance)
        print(f"   built {len(story.built)} partitions with Apps SDK {'.'.join(OLD)} ({len(compiler_calls(story.sdk))} "
              f"stand-in compiler calls); never built: {len(story.never_built)} binaries (singlestream-nsp14)")
        tell(story, defs, instance, log, observe_cursor)
        wrong = report(story)
    where_in_the_ui(folder)
    if wrong:
        raise NotAsDesigned("\n  - " + "\n  - ".join(wrong))
    print(f"\nThe story ran as designed in {time.monotonic() - started:.0f}s: every built partition was requested "
          f"once; those of {GOOD} were recompiled with Apps SDK {'.'.join(NEW)}; those of {FAILING} failed as "
          "intended, which its sdk_current says, and the binaries built before are still served.")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qaic_assets.demo_upgrade", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR,
                        help=f"the demo's own folder, started over on each run (default: {DEFAULT_DIR})")
    folder = parser.parse_args(argv).dir.absolute()
    try:
        return run_story(folder)
    except NotAsDesigned as exc:
        log = folder / "store" / "logs" / "demo.log"  # demo_log() of the config prepare() writes
        print(f"\nmake demo-upgrade: NOT as designed: {exc}" + (f"\n(Dagster's own log: {log})" if log.exists() else ""),
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nmake demo-upgrade: interrupted; run it again to start the story over", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
