"""Benchmark child: run the matrix's compiler commands directly, without Dagster.

The same argv lists (`plan.calibrate_command` / `plan.compile_command`, i.e. what `plan_target` gives)
in the same cwd layout (a temp dir beside the final dir, renamed into place), with the calibration
inputs batched as the op does (`calibration_inputs.prepare_batched_inputs`), and the same accuracy
check after each CPU compile (`checks.accuracy_check`, as the compile op does) unless --no-check.

Modes:
  parallel  the runs `make demo` makes, in the same order (sources; one group per calibration batch;
            one group per (batch, target)), each group on 2 long-lived worker processes, a barrier
            between groups, as Dagster runs them one after another with max_concurrent=2;
  free      one pool of 2 workers, no barriers: a compile starts as soon as its profile exists;
  serial    one command after another in this process (the seed's CM loop).

Prints one JSON line: wall time, per-phase wall times, per-unit timings.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
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


    _config()
    time.sleep(0.5)
    return os.getpid()


def _swap_into_place(tmp, final) -> None:
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)


def _fresh_tmp(final):
    tmp = final.parent / f".{final.name}.direct"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def source_unit(model: str) -> dict:
    """What the op's `ensure_source` does once per model: make the source present and describe it."""
    from qaic_assets.build.sources import ensure_source

    t0 = time.time()
    source = ensure_source(_config(), model)
    return {"unit": f"source {model}", "start": t0, "end": time.time(), "description": source.description,
            "sha256": source.sha256}


def calibrate_unit(model: str, batch: int, description: dict) -> dict:
    from qaic_assets.build.service import sample_sizes
    from qaic_assets.qaic.formats.batching import prepare_batched_inputs
    from qaic_assets.qaic.commands import BATCHED_LIST_FILE
    from qaic_assets.build.plan import calibrate_command
    from qaic_assets.build.store import model_inputs
    from qaic_assets.qaic.sdk import select_backend

    config = _config()
    t0 = time.time()
    backend = select_backend(config.backend, config.sdk_root)
    cmd = calibrate_command(config, backend, model, batch)
    calib = config.model(model).calibration
    tmp = _fresh_tmp(cmd.cwd)
    prepare_batched_inputs(model_inputs(config, model).calibration_list, batch, tmp,
                           input_sizes=sample_sizes(description, cmd.argv),
                           first=calib.first if calib else None, filter_size=calib.filter_size if calib else None)
    t1 = time.time()
    subprocess.run(cmd.argv, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=True)
    t2 = time.time()
    shutil.rmtree(tmp / "raw", ignore_errors=True)
    (tmp / BATCHED_LIST_FILE).unlink(missing_ok=True)
    _swap_into_place(tmp, cmd.cwd)
    return {"unit": f"calibrate {model} bs{batch}", "start": t0, "end": time.time(),
            "prepare_s": t1 - t0, "compiler_s": t2 - t1}


def compile_unit(model: str, batch: int, scenario: str, nsp: int, check: bool, source_sha256: str) -> dict:
    from qaic_assets.build.plan import compile_command
    from qaic_assets.qaic.sdk import select_backend

    config = _config()
    t0 = time.time()
    backend = select_backend(config.backend, config.sdk_root)
    cmd = compile_command(config, backend, model, batch, scenario, nsp)
    tmp = _fresh_tmp(cmd.cwd)
    subprocess.run(cmd.argv, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=True)
    t1 = time.time()
    _swap_into_place(tmp, cmd.cwd)
    result = {"unit": f"compile {model} bs{batch}|{scenario}-nsp{nsp}", "start": t0, "compiler_s": t1 - t0}
    cfg = config.model(model)
    if check and backend.name == "cpu" and (cfg.heldout or cfg.source.standin):
        from qaic_assets.defs.checks import accuracy_check

        c0 = time.time()
        # as the op: the binary's sha256 (the op has it from its manifest) keys the stored result
        from qaic_assets.hashing import sha256_file

        binary = cmd.cwd / cmd.output
        outcome = accuracy_check(config, model, cmd.argv, binary, batch, binary_sha256=sha256_file(binary),
                                 source_sha256=source_sha256)
        result["check_cached"] = outcome.metadata["cached"].value
        result["check_s"] = time.time() - c0
        result["check_passed"] = outcome.passed
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



    config = _config()
    plan = groups(config)
    descriptions: dict[str, dict] = {}
    shas: dict[str, str] = {}
    units: list[dict] = []
    phases: list[dict] = []

    def run_unit(pool, u):
        kind = u[0]
        if kind == "source":
            fn, a = source_unit, (u[1],)
        elif kind == "calibrate":
            fn, a = calibrate_unit, (u[1], u[2], descriptions[u[1]])
        else:
            fn, a = compile_unit, (*u[1:], check, shas[u[1]])
        return pool.submit(fn, *a) if pool else fn(*a)

    def record(r):
        if "description" in r:
            descriptions[r["unit"].split(" ", 1)[1]] = r.pop("description")
            shas[r["unit"].split(" ", 1)[1]] = r.pop("sha256")
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
