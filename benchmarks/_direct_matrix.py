"""Benchmark child: the matrix built directly, without Dagster, through the same build service the
assets call (`build/service.py`: same planning, hashing, manifest, cache, locks, temporary dir
renamed into place, identical CPU builds shared), and the same accuracy evaluation after each CPU
compile (`build/accuracy.evaluate`, as the compile op does) unless --no-check. The difference to the
Dagster mode is then only Dagster: runs, step processes, event log, and the demo's own bookkeeping.

Modes:
  parallel  the runs `make demo` makes, in the same order (sources; one group per calibration batch;
            one group per (batch, target)), each group on 2 long-lived worker processes, a barrier
            between groups, as Dagster runs them one after another with max_concurrent=2;
  free      one pool of 2 workers, no barriers: a compile starts as soon as its profile exists;
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
    """Import what the units need in a worker (outside the timed region) and hold it a moment, so
    both workers of the pool are started."""
    from qaic_assets.build import accuracy, service  # noqa: F401

    _config()
    time.sleep(0.5)
    return os.getpid()


def source_unit(model: str) -> dict:
    """What the source op does: make the source present, verify and describe it."""
    from qaic_assets.build import service

    t0 = time.time()
    source = service.source(_config(), model)
    return {"unit": f"source {model}", "start": t0, "end": time.time(), "sha256": source.sha256}


def calibrate_unit(model: str, batch: int) -> dict:
    from qaic_assets.build import service

    t0 = time.time()
    built = service.calibrate(_config(), model, batch)
    return {"unit": f"calibrate {model} bs{batch}", "start": t0, "end": time.time(), "cached": built.cached,
            "compiler_s": 0.0 if built.cached else built.manifest["duration_s"]}


def compile_unit(model: str, batch: int, scenario: str, nsp: int, check: bool) -> dict:
    from qaic_assets.build import service

    config = _config()
    t0 = time.time()
    built = service.compile(config, model, batch, scenario, nsp)
    result = {"unit": f"compile {model} bs{batch}|{scenario}-nsp{nsp}", "start": t0, "cached": built.cached,
              "same_build_as": built.same_build_as,
              "compiler_s": 0.0 if built.cached else built.manifest["duration_s"]}
    cfg = config.model(model)
    if check and built.manifest["backend"] == "cpu" and (cfg.heldout or cfg.source.standin):
        from qaic_assets.build.accuracy import evaluate

        c0 = time.time()
        _, cached = evaluate(config, model, built.command.argv, built.output, batch,
                             binary_sha256=built.manifest["output"]["sha256"], source_sha256=built.source.sha256)
        result["check_cached"] = cached
        result["check_s"] = time.time() - c0
    result["end"] = time.time()
    return result


def groups(config) -> list[tuple[str, list[tuple]]]:
    """The units of `demo.materialize_matrix`'s runs, in its order (observe needs no compiler)."""
    from qaic_assets.settings import parse_batch_key, parse_target_key
    from qaic_assets.defs.jobs import matrix_jobs

    out = [("sources", [("source", m) for m in config.model_names])]
    by_jobs: dict[tuple[str, str], list[str]] = {}
    for model, jobs in matrix_jobs(config).items():
        by_jobs.setdefault(jobs, []).append(model)
    for models in by_jobs.values():
        matrix = config.matrix_of(models[0])
        quantized = [m for m in models if config.model(m).quantize]
        for b in matrix.batch_keys:
            if quantized:
                out.append((f"calibrate {b}", [("calibrate", m, parse_batch_key(b)) for m in quantized]))
        for b in matrix.batch_keys:
            for t in matrix.targets:
                scenario, nsp = parse_target_key(t)
                out.append((f"compile {b}|{t}", [("compile", m, parse_batch_key(b), scenario, nsp) for m in models]))
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["parallel", "free", "serial"], required=True)
    ap.add_argument("--no-check", action="store_true")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    check = not args.no_check



    from qaic_assets.build import accuracy, service  # noqa: F401  (imports outside the timed region)

    config = _config()
    plan = groups(config)
    units: list[dict] = []
    phases: list[dict] = []

    def run_unit(pool, u):
        kind = u[0]
        if kind == "source":
            fn, a = source_unit, (u[1],)
        elif kind == "calibrate":
            fn, a = calibrate_unit, (u[1], u[2])
        else:
            fn, a = compile_unit, (*u[1:], check)
        return pool.submit(fn, *a) if pool else fn(*a)

    def record(r):
        units.append(r)

    pool = None
    if args.mode in ("parallel", "free"):
        pool = ProcessPoolExecutor(max_workers=args.workers)
        list(pool.map(_warm, range(args.workers)))
    t0 = time.time()
    if args.mode == "free":
        # sources first (every unit needs them), then one pool, no barriers
        p0 = time.time()
        for f in [run_unit(pool, u) for u in plan[0][1]]:
            record(f.result())
        phases.append({"phase": "sources", "wall_s": time.time() - p0})
        calib = [u for name, us in plan[1:] if name.startswith("calibrate") for u in us]
        comps = [u for name, us in plan[1:] if name.startswith("compile") for u in us]
        p0 = time.time()
        pending = {run_unit(pool, u): u for u in calib}
        done_profiles = set()
        waiting = list(comps)
        quantized = {m for m in config.model_names if config.model(m).quantize}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for f in done:
                u = pending.pop(f)
                record(f.result())
                if u[0] == "calibrate":
                    done_profiles.add((u[1], u[2]))
            ready = [u for u in waiting if u[1] not in quantized or (u[1], u[2]) in done_profiles]
            for u in ready:
                waiting.remove(u)
                pending[run_unit(pool, u)] = u
        phases.append({"phase": "calibrate+compile", "wall_s": time.time() - p0})
    else:
        for name, us in plan:
            p0 = time.time()
            if pool:
                for f in [run_unit(pool, u) for u in us]:
                    record(f.result())
            else:
                for u in us:
                    record(run_unit(None, u))
            phases.append({"phase": name, "wall_s": time.time() - p0})
    t1 = time.time()
    if pool:
        pool.shutdown()
    print(json.dumps({"wall_s": t1 - t0, "t0": t0, "t1": t1, "mode": args.mode, "check": check,
                      "phases": phases, "units": units}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
