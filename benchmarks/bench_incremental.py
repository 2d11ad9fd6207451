"""Item 3: incremental work. How many compiler invocations (and how long) when little or nothing changed.

Part A, CPU backend (the real compiler and the accuracy check), the matrix materialized the way
`make demo` does (`demo.materialize_matrix`, fresh child process each time, counting wrapper):
  1. build from empty;
  2. again, nothing changed: the build cache (input sha256s + argv + compiler version) answers
     every partition, and the accuracy check's stored result is reused;
  3. one model changed (the digits model file gets a new doc string: new bytes, new sha256), the
     whole matrix materialized again: only that model's partitions run the compiler.

Part B, Cloud AI 100 backend on the strict fake SDK (tests/fake_sdk.py; no SDK machine here), through
the project's automation condition (`dg.evaluate_automation_conditions` on the definitions, i.e. what
the `qaic_automation` sensor evaluates), executing what it requests with the demo's runs:
  1. build part of the matrix (batch 1, target offline-nsp14, every model) and observe the SDK;
  2. nothing changed: what is requested;
  3. one model changed (digits) and its source re-materialized: what is requested and compiled;
  4. SDK upgraded (apps.xml build id bumped) and observed: what is requested and compiled, compared
     with what had been built before; then the whole matrix materialized (make demo) for contrast.

    python -m benchmarks.bench_incremental [--quick] [--part A|B] [--work DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

from benchmarks import common

QUICK_MODELS = ["digits", "bert-99"]


def touch_model(path: Path, tag: str) -> None:
    """A new version of the model file: same graph and weights, another doc string (new sha256)."""
    import onnx

    model = onnx.load(str(path))
    model.doc_string = f"benchmark edit {tag}"
    tmp = path.with_suffix(".tmp")
    onnx.save(model, str(tmp))
    os.replace(tmp, path)


def by_model(calls) -> str:
    """`model calibrations+compiles, ...`"""
    counts = Counter((c.model, c.kind) for c in calls)
    models = sorted({m for m, _ in counts})
    return ", ".join(f"{m} {counts[(m, 'calibrate')]}+{counts[(m, 'compile')]}" for m in models) or "-"


# ------------------------------------------------------------------------------------------ part A


def part_a(work: Path, models: list[str]) -> list[list]:
    shadow = common.shadow_python(work / "shadow").parent.parent
    name = "incremental-cpu"
    storage = common.fresh_storage(work, name, [m for m in models if m in common.STANDIN_MODELS])
    home = common.fresh_home(work, name)
    digits = work / "runs" / name / "digits_model.onnx"
    shutil.copyfile(common.REPO / "qaic_assets" / "models" / "data" / "digits" / "model.onnx", digits)
    cfg = common.write_config(work / "runs" / name / "config.yaml", storage, models=models)
    text = cfg.read_text().replace(str(common.REPO / "qaic_assets" / "models" / "data" / "digits" / "model.onnx"), str(digits))
    cfg.write_text(text)
    env = {"QAIC_ASSETS_CONFIG": str(cfg), "DAGSTER_HOME": str(home), "PYTHONWARNINGS": "ignore"}
    argv = [str(shadow / "bin" / "python"), "-m", "benchmarks._dagster_matrix"]

    rows = []

    def materialize(label: str):
        with common.LoadSampler() as load:
            out = common.run_json(argv, env)
        calls = [c for c in common.read_calls(shadow) if c.cwd.startswith(str(storage))
                 and out["t0"] <= c.start <= out["t1"] + 1]
        checks = reused = 0
        import dagster as dg

        os.environ["DAGSTER_HOME"] = str(home)
        with dg.DagsterInstance.get() as instance:
            run_ids = {r.dagster_run.run_id for r in instance.get_run_records()
                       if r.create_timestamp.timestamp() >= out["t0"] - 1}
            for run_id in run_ids:
                for e in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION):
                    checks += 1
                    meta = e.dagster_event.event_specific_data.metadata
                    reused += bool(meta.get("cached") and meta["cached"].value)
        rows.append([label, f"{out['wall_s']:.1f}", len(calls), sum(c.kind == "calibrate" for c in calls),
                     f"{checks} ({reused} reused)", by_model(calls), load.summary()["load_median"]])
        print(f"  {label}: {out['wall_s']:.1f} s, {len(calls)} compiler calls", file=sys.stderr, flush=True)

    materialize("build from empty")
    materialize("again, nothing changed")
    if "digits" in models:
        touch_model(digits, "1")
        materialize("digits model changed")
    return rows


# ------------------------------------------------------------------------------------------ part B


def part_b(work: Path, models: list[str]) -> list[list]:
    sys.path.insert(0, str(common.REPO / "tests"))
    from fake_sdk import make_fake_sdk, read_calls, set_fake_sdk_version

    name = "incremental-sdk"
    storage = common.fresh_storage(work, name, [m for m in models if m in common.STANDIN_MODELS])
    home = common.fresh_home(work, name)
    sdk = work / "runs" / name / "sdk"
    if sdk.exists():
        shutil.rmtree(sdk)
    make_fake_sdk(sdk, ("1.18.2", "0.5"))
    digits = work / "runs" / name / "digits_model.onnx"
    shutil.copyfile(common.REPO / "qaic_assets" / "models" / "data" / "digits" / "model.onnx", digits)
    cfg = common.write_config(work / "runs" / name / "config.yaml", storage, models=models, backend="qaic",
                              sdk_root=sdk)
    cfg.write_text(cfg.read_text().replace(str(common.REPO / "qaic_assets" / "models" / "data" / "digits" / "model.onnx"),
                                           str(digits)))
    os.environ.update({"QAIC_ASSETS_CONFIG": str(cfg), "DAGSTER_HOME": str(home)})
    os.environ.pop("QAIC_SDK_ROOT", None)

    import warnings

    warnings.filterwarnings("ignore")
    import dagster as dg

    from qaic_assets.orchestration.keys import binary_key, profile_key
    from qaic_assets.settings import load_settings
    from qaic_assets.orchestration.jobs import OBSERVE_JOB, SOURCES_JOB, matrix_jobs
    from qaic_assets.definitions import defs
    from qaic_assets.demo import materialize_matrix, run_job

    config = load_settings()
    calib_job, compile_job = next(iter(matrix_jobs(config).values()))
    keys = [k for m in config.model_names for k in (profile_key(m), binary_key(m))]
    rows = []
    state = {"cursor": None, "n_calls": 0}

    def calls_since():
        calls = read_calls(sdk)
        new = calls[state["n_calls"]:]
        state["n_calls"] = len(calls)
        return new

    def evaluate(instance):
        result = dg.evaluate_automation_conditions(defs, instance, cursor=state["cursor"])
        state["cursor"] = result.cursor
        return {k: sorted(result.get_requested_partitions(k)) for k in keys if result.get_num_requested(k)}

    def execute(instance, requested) -> tuple[float, dict]:
        """Run what was requested, then tick again as the sensor keeps ticking: the binaries come on
        the tick after their profiles are built; nothing may be requested twice. Returns the wall
        time and everything the ticks requested."""
        done: set = set()
        wall = 0.0
        while requested:
            again = {(k, p) for k, ps in requested.items() for p in ps} & done
            if again:
                rows.append(["  (a later tick requests again)", describe(requested), "-", 0, "-"])
                break
            done |= {(k, p) for k, ps in requested.items() for p in ps}
            wall += execute_once(instance, requested)
            requested = evaluate(instance)
        union: dict = {}
        for k, partition in done:
            union.setdefault(k, []).append(partition)
        return wall, union

    def execute_once(instance, requested) -> float:
        """Run what one tick requested as the backfill would: profiles of a batch, then the binaries."""
        t0 = time.time()
        profiles = sorted({p for k, ps in requested.items() if k.path[-1] == "calibration_profile" for p in ps})
        binaries = sorted({p for k, ps in requested.items() if k.path[-1] == "compiled_binary" for p in ps})
        selection = [k for k in requested]
        for p in profiles:
            _run_selected(instance, calib_job, p, [k for k in selection if k.path[-1] == "calibration_profile"
                                                   and p in requested[k]])
        for p in binaries:
            _run_selected(instance, compile_job, p, [k for k in selection if k.path[-1] == "compiled_binary"
                                                     and p in requested[k]])
        return time.time() - t0

    def describe(requested) -> str:
        if not requested:
            return "nothing"
        parts = Counter()
        for k, ps in requested.items():
            parts[k.path[-1]] += len(ps)
        models_hit = sorted({k.path[0] for k in requested})
        return (f"{parts['calibration_profile']} profiles + {parts['compiled_binary']} binaries "
                f"({', '.join(models_hit)})")

    def kinds(calls) -> str:
        c = Counter("calibrate" if any(a.startswith("-dump-profile") for a in x["argv"]) else "compile" for x in calls)
        return ", ".join(f"{k}: {v}" for k, v in sorted(c.items())) or "-"

    with dg.DagsterInstance.get() as instance:
        t0 = time.time()
        run_job(instance, OBSERVE_JOB)
        run_job(instance, SOURCES_JOB)
        run_job(instance, calib_job, "bs1")
        run_job(instance, compile_job, "bs1|offline-nsp14")
        built = calls_since()
        rows.append(["build bs1 profiles + bs1|offline-nsp14 binaries", "-", f"{time.time() - t0:.1f}", len(built),
                     kinds(built)])
        evaluate(instance)  # the sensor's first tick: the baseline

        req = evaluate(instance)
        rows.append(["nothing changed: automation tick", describe(req), f"{execute(instance, req)[0]:.1f}",
                     len(calls_since()), "-"])

        if "digits" in config.model_names:
            touch_model(digits, "1")
            run_job(instance, SOURCES_JOB)  # the new file is verified and described: new data version
            calls_since()
            wall, req = execute(instance, evaluate(instance))
            new = calls_since()
            rows.append(["digits model changed: automation ticks", describe(req), f"{wall:.1f}", len(new), kinds(new)])

        set_fake_sdk_version(sdk, "1.18.2", "0.6")
        run_job(instance, OBSERVE_JOB)
        calls_since()
        wall, req = execute(instance, evaluate(instance))
        new = calls_since()
        rows.append([f"SDK 1.18.2.0.5 -> 1.18.2.0.6: automation ticks", describe(req), f"{wall:.1f}", len(new),
                     kinds(new)])
        req = evaluate(instance)
        rows.append(["after that: automation tick", describe(req), "-", len(calls_since()), "-"])

        t0 = time.time()
        materialize_matrix(config, instance)
        new = calls_since()
        rows.append(["then the whole matrix (make demo), for contrast", "all", f"{time.time() - t0:.1f}", len(new),
                     kinds(new)])
    return rows


def _run_selected(instance, job_name: str, partition: str, keys) -> None:
    """One run of `job_name` for `partition`, restricted to `keys` (the demo's executor settings)."""
    import dagster as dg

    from qaic_assets.orchestration.jobs import partition_run_tags
    from qaic_assets.demo import run_config

    tags = partition_run_tags(partition)
    job = dg.build_reconstructable_job("qaic_assets.demo", "job_for", reconstructable_args=(job_name,))
    job = job.get_subset(asset_selection=set(keys))
    with dg.execute_job(job, instance=instance, run_config=run_config(2), tags=tags) as result:
        assert result.success, f"{job_name} {partition} failed"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"models {','.join(QUICK_MODELS)} only")
    ap.add_argument("--part", choices=["A", "B"], help="only this part (B runs in this process)")
    ap.add_argument("--work", type=Path, default=common.DEFAULT_WORK)
    args = ap.parse_args()
    if not os.environ.get("QAIC_BENCH_NO_HEADER"):
        common.print_machine(common.machine_info())
    from qaic_assets.settings import load_settings

    models = QUICK_MODELS if args.quick else list(load_settings(common.DEFAULT_CONFIG).model_names)
    common.standin_cache(args.work, [m for m in models if m in common.STANDIN_MODELS])
    if args.part in (None, "A"):
        rows = part_a(args.work, models)
        print(f"\nA. CPU backend, models {', '.join(models)}, the default matrix, materialized as `make demo` does")
        print(common.table(["materialization", "wall s", "compiler calls", "calibrations", "accuracy checks",
                            "calls by model (calibrate+compile)", "load"], rows, align="lrrrrlr"))
    if args.part is None:  # part B in a fresh process: its environment and definitions are its own
        import subprocess

        argv = [sys.executable, "-m", "benchmarks.bench_incremental", "--part", "B", "--work", str(args.work)]
        subprocess.run(argv + (["--quick"] if args.quick else []), cwd=common.REPO, check=True,
                       env={**os.environ, "PYTHONWARNINGS": "ignore", "QAIC_BENCH_NO_HEADER": "1"})
    if args.part == "B":
        rows = part_b(args.work, models)
        print(f"\nB. Cloud AI 100 backend (strict fake SDK), models {', '.join(models)}; automation condition "
              "evaluated as the sensor does, requests executed as demo runs")
        print(common.table(["event", "requested", "wall s", "compiler calls", "calls"], rows, align="llrrl"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
