"""Benchmark child: the SDK-upgrade ticks on a built matrix (DAGSTER_HOME, QAIC_ASSETS_CONFIG), as the
daemon runs them (make demo-upgrade's observe_tick and evaluate): a tick of each sensor with nothing
changed, then the stand-in SDK's Apps version raised, then one tick of observe_qaic_sdk_sensor (its
sdk_current report run included) and evaluations of the automation until it requests nothing: the
profiles first; they are recalibrated here (not timed), then the binaries are requested (and not
built: the request is what is measured). Prints one JSON line: the seconds of each tick, and whether
the partitions requested equal the partitions built."""

from __future__ import annotations

import json
import sys
import time
import warnings


def main() -> int:
    warnings.simplefilter("ignore")
    import dagster as dg

    from qaic_assets import standin_sdk
    from qaic_assets.definitions import defs
    from qaic_assets.demo import dagster_output_to, demo_log
    from qaic_assets.demo_upgrade import build_requested, built_partitions, evaluate, observe_tick
    from qaic_assets.orchestration.keys import profile_key
    from qaic_assets.settings import load_settings

    config = load_settings()
    with dg.DagsterInstance.get() as instance:
        built, _ = built_partitions(config, instance)
        profile_keys = {profile_key(m) for m in config.model_names}
        t0 = time.perf_counter()
        cursor, quiet_events = observe_tick(defs, instance, config, None)
        t1 = time.perf_counter()
        baseline = evaluate(defs, instance, None)
        t2 = time.perf_counter()
        standin_sdk.set_version(config.sdk_root, "1.18.2", "0.6")
        t3 = time.perf_counter()
        _, events = observe_tick(defs, instance, config, cursor)
        t4 = time.perf_counter()
        automated = [s.key for s in defs.resolve_all_asset_specs() if s.automation_condition is not None]
        cursor, requested, ticks = baseline.cursor, set(), []
        for _ in range(3):
            t = time.perf_counter()
            result = evaluate(defs, instance, cursor)
            ticks.append(time.perf_counter() - t)
            cursor = result.cursor
            now = {k: sorted(result.get_requested_partitions(k)) for k in automated if result.get_num_requested(k)}
            requested |= {(k, p) for k, ps in now.items() for p in ps}
            if not now or all(k not in profile_keys for k in now):
                break
            with dagster_output_to(demo_log(config)):  # the profiles, so that the binaries are requested
                for _, _, run in build_requested(instance, config, {k: v for k, v in now.items() if k in profile_keys}):
                    assert run.success, run.run_id
    wanted = {(b.key, b.partition) for b in built}
    print(json.dumps({
        "quiet_observe_s": t1 - t0, "quiet_automation_s": t2 - t1, "quiet_events": len(quiet_events),
        "quiet_requested": baseline.total_requested,
        "observe_s": t4 - t3, "automation_ticks_s": ticks, "observe_events": len(events),
        "built": len(wanted), "requested": len(requested), "requested_equals_built": requested == wanted,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
