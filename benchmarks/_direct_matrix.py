"""Benchmark child: the matrix built directly, without Dagster, through the same build service the
assets call (`builder/service.py`: same planning, hashing, manifest, cache, locks, temporary dir
renamed into place, identical CPU builds shared), and the same accuracy evaluation after each CPU
compile (`builder/accuracy.evaluate`, as the compile op does) unless --no-check. The difference to the
Dagster mode is then only Dagster: runs, step processes, event log, and the demo's own bookkeeping.

Modes:
  parallel  the runs `make demo` makes (`demo.plan_runs`: sources; one group per calibration batch;
            one group per (batch, target)), scheduled as the demo schedules them: 2 long-lived
            worker processes, each executing a group's units one after another, a group starting
            once the groups it depends on (`PlannedRun.after`) have finished;
  serial    one unit after another in this process (the seed's CM loop).

Prints one JSON line: wall time, per-phase wall times, per-unit timings.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

_CONFIG = None


def _config():
    global _CONFIG
    if _CONFIG is None:
        from qaic_assets.settings import load_settings

        _CONFIG = load_settings()
    return _CONFIG


def _warm(_: int) -> int:
    """Start a worker (the timed region includes it, as the demo's includes starting its run workers)
    with what the units need imported; held a moment, so that every worker of the pool is started."""
    from qaic_assets.builder import accuracy, service  # noqa: F401

    _config()
    time.sleep(0.1)
    return os.getpid()


def source_unit(model: str) -> dict:
    """What the source op does: make the source present, verify and describe it."""
    from qaic_assets.builder import service

    t0 = time.time()
    source = service.source(_config(), model)
    return {"unit": f"source {model}", "start": t0, "end": time.time(), "sha256": source.sha256}


def calibrate_unit(model: str, batch: int) -> dict:
    from qaic_assets.builder import service

    t0 = time.time()
    built = service.calibrate_profile(_config(), model, batch)
    return {"unit": f"calibrate {model} bs{batch}", "start": t0, "end": time.time(), "cached": built.cached,
            "compiler_s": 0.0 if built.cached else built.manifest["duration_s"]}


def compile_unit(model: str, partition, check: bool) -> dict:
    from qaic_assets.builder import service

    config = _config()
    t0 = time.time()
    built = service.compile_binary(config, model, partition)
    batch = partition.batch
    result = {"unit": f"compile {model} {partition.key}", "start": t0, "cached": built.cached,
              "same_build_as": built.same_build_as,
              "compiler_s": 0.0 if built.cached else built.manifest["duration_s"]}
    cfg = config.model(model)
    if check and built.manifest["backend"] == "cpu" and (cfg.heldout or cfg.source.standin):
        from qaic_assets.builder.accuracy import evaluate

        c0 = time.time()
        _, cached = evaluate(config, model, built.command.argv, built.output, batch,
                             binary_sha256=built.manifest["output"]["sha256"], source_sha256=built.source.sha256)
        result["check_cached"] = cached
        result["check_s"] = time.time() - c0
    result["end"] = time.time()
    return result


def planned_groups(config) -> list[tuple[str, list[tuple], tuple[int, ...]]]:
    """The units of `demo.materialize_matrix`'s runs, in its order, with the groups each waits for
    (observing the SDK needs no compiler: that run's group is empty)."""
    from qaic_assets.demo import plan_runs
    from qaic_assets.orchestration.keys import binary_key, profile_key, source_key
    from qaic_assets.keys import BinaryPartition, parse_batch_key

    out = []
    for run in plan_runs(config):
        units = []
        for step in run.steps:
            if step.model is None:
                continue
            if step.key == source_key(step.model):
                units.append(("source", step.model))
            elif step.key == profile_key(step.model):
                units.append(("calibrate", step.model, parse_batch_key(step.partition)))
            elif step.key == binary_key(step.model):
                units.append(("compile", step.model, BinaryPartition.parse(step.partition)))
        out.append((run.label, units, run.after))
    return out


def call_unit(u: tuple, check: bool) -> dict:
    if u[0] == "source":
        return source_unit(u[1])
    if u[0] == "calibrate":
        return calibrate_unit(u[1], u[2])
    return compile_unit(*u[1:], check)


def run_group(us: list[tuple], check: bool) -> list[dict]:
    """A group's units one after another in one worker, as a demo run executes its steps."""
    return [call_unit(u, check) for u in us]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["parallel", "serial"], required=True)
    ap.add_argument("--no-check", action="store_true")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    check = not args.no_check

    from qaic_assets.builder import accuracy, service  # noqa: F401  (imports outside the timed region)

    config = _config()
    planned = planned_groups(config)
    units: list[dict] = []
    phases: list[dict] = []

    t0 = time.time()
    pool = ProcessPoolExecutor(max_workers=args.workers) if args.mode == "parallel" else None
    if pool:
        list(pool.map(_warm, range(args.workers)))
    if args.mode == "parallel":
        done: set[int] = set()
        going: dict = {}
        starts: dict[int, float] = {}
        while len(done) < len(planned):
            for i, (name, us, after) in enumerate(planned):
                if i not in done and i not in going.values() and all(j in done for j in after):
                    if not us:
                        done.add(i)
                        continue
                    starts[i] = time.time()
                    going[pool.submit(run_group, us, check)] = i
            if not going:
                continue
            finished, _ = wait(going, return_when=FIRST_COMPLETED)
            for f in finished:
                i = going.pop(f)
                units.extend(f.result())
                done.add(i)
                phases.append({"phase": planned[i][0], "start": starts[i], "wall_s": time.time() - starts[i]})
    else:
        for name, us, _ in planned:
            p0 = time.time()
            units.extend(run_group(us, check))
            phases.append({"phase": name, "wall_s": time.time() - p0})
    t1 = time.time()
    if pool:
        pool.shutdown()
    print(json.dumps({"wall_s": t1 - t0, "t0": t0, "t1": t1, "mode": args.mode, "check": check,
                      "phases": phases, "units": units}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
