"""Benchmark child: materialize the matrix exactly as `make demo` does (`demo.materialize_matrix`) in
the instance at DAGSTER_HOME, for the config at QAIC_ASSETS_CONFIG; print one JSON line with the wall
time and per-run / per-step timings read back from the instance's event log."""

from __future__ import annotations

import json
import sys
import time
from collections import defaultdict


def step_timings(instance, run_id: str) -> list[dict]:
    """Per step: when the executor started its process, when the step began (inside that process),
    when it finished."""
    marks: dict[str, dict] = defaultdict(dict)
    for entry in instance.all_logs(run_id):
        ev = entry.dagster_event
        if ev is None or not ev.step_key:
            continue
        kind = ev.event_type_value
        if kind in ("STEP_WORKER_STARTING", "STEP_WORKER_STARTED", "STEP_START", "STEP_SUCCESS", "STEP_FAILURE",
                    "ASSET_MATERIALIZATION", "ASSET_CHECK_EVALUATION"):
            marks[ev.step_key].setdefault(kind, entry.timestamp)
    out = []
    for step, m in marks.items():
        end = m.get("STEP_SUCCESS") or m.get("STEP_FAILURE")
        out.append({"step": step, "worker_starting": m.get("STEP_WORKER_STARTING"),
                    "worker_started": m.get("STEP_WORKER_STARTED"), "start": m.get("STEP_START"),
                    "materialized": m.get("ASSET_MATERIALIZATION"), "end": end,
                    "ok": "STEP_SUCCESS" in m})
    return out


def main() -> int:
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--start-method", help="of the run workers: fork | forkserver | spawn (default: the demo's)")
    args = ap.parse_args()
    import dagster as dg

    from qaic_assets.settings import load_settings
    from qaic_assets.demo import materialize_matrix, worker_start_method

    config = load_settings()
    with dg.DagsterInstance.get() as instance:
        before = {r.run_id for r in instance.get_runs()}
        method = worker_start_method(args.start_method)  # as the demo decides it: before its threads
        t0 = time.time()
        outcomes = materialize_matrix(config, instance, method=args.start_method)
        t1 = time.time()
        runs = []
        for record in sorted(instance.get_run_records(), key=lambda r: r.create_timestamp.timestamp()):
            if record.dagster_run.run_id in before:
                continue
            run = record.dagster_run
            runs.append({
                "job": run.job_name, "partition": run.tags.get("dagster/partition"),
                "created": record.create_timestamp.timestamp(), "start": record.start_time,
                "end": record.end_time, "status": run.status.value,
                "steps": step_timings(instance, run.run_id),
            })
    print(json.dumps({"start_method": method, "wall_s": t1 - t0, "t0": t0, "t1": t1, "ok": all(ok for _, _, ok in outcomes),
                      "runs": runs}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
