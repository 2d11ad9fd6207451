"""Items 1, 2, 4 (and the no-change half of 3): Dagster vs the same compiler commands run directly.

Every mode starts from an empty storage root (stand-in sources hard-linked from a cache, so nobody
regenerates them) and, for Dagster, an empty DAGSTER_HOME with the project's dagster.yaml (pool
`qaic_compile` limit 2). Modes, each in a fresh child process, timed inside it after its imports:

  dagster        `demo.materialize_matrix` exactly as `make demo` runs it (observe, sources, one run per
                 calibration batch, one run per (batch, target); multiprocess executor max_concurrent=2),
                 with the demo's step start method (forkserver, preloaded definitions)
  dagster-spawn  the same with Dagster's default start method, spawn (a fresh interpreter per step):
                 the "before" of the optimisation
  direct         the same argv lists in the same cwd layout (temp dir renamed into place), calibration
                 inputs batched by `prepare_batched_inputs`, in the same groups and order as the runs,
                 each group on 2 long-lived worker processes with a barrier between groups
  serial         the same commands one after another (the seed's CM loop)
  <mode>+before  (--before) the same with two of the optimisations undone in every process
                 (benchmarks/common.py: before_env): ONNX Runtime's default thread spinning in calibration
                 and accuracy-check sessions, and Dagster's step-key order instead of the config order
                 (step priorities). `dagster-spawn+before` is the code before the optimisations (except
                 the content-addressed check results, which it keeps); `+spin` / `+noprio` undo one

The accuracy check (fp32 vs int8 on the held-out set, `checks.accuracy_check`) is work the compile op
does on the CPU backend, so direct and serial do it too, after each compile: it is in every mode.

Compiler invocations are counted by a wrapper `qaic-exec-cpu` (see benchmarks/common.py). After the
`dagster` mode the matrix is materialized a second time with nothing changed (item 3).

    python -m benchmarks.bench_orchestration [--quick] [--before] [--modes dagster,dagster-spawn,direct,serial]
                                             [--rounds N] [--json FILE]

Run time on the 2-core benchmark machine: about 7 minutes (full matrix, 1 round), 12 with --before;
--quick (digits and bert-99 only) about 1.5 minutes.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

from benchmarks import common

ALL_MODES = ["dagster", "dagster-spawn", "direct", "serial"]
BEFORE_MODES = ["dagster-spawn+before", "direct+before", "serial+before"]
QUICK_MODELS = ["digits", "bert-99"]


def run_mode(mode: str, work: Path, shadow: Path, models, tag: str) -> dict:
    name = f"orch-{mode.replace('+', '_')}-{tag}"
    storage = common.fresh_storage(work, name, [m for m in models if m in common.STANDIN_MODELS])
    home = common.fresh_home(work, name)
    cfg = common.write_config(work / "runs" / name / "config.yaml", storage, models=models)
    env = {"QAIC_ASSETS_CONFIG": str(cfg), "DAGSTER_HOME": str(home), "PYTHONWARNINGS": "ignore"}
    base, _, variant = mode.partition("+")
    if variant:  # undo optimisations: before = spin + noprio
        features = {"before": common.BEFORE_FEATURES, "spin": ("spin",), "noprio": ("no_priority",)}[variant]
        env.update(common.before_env(work, features))
    py = str(shadow / "bin" / "python")
    if base.startswith("dagster"):
        argv = [py, "-m", "benchmarks._dagster_matrix", "--start-method",
                "spawn" if base == "dagster-spawn" else "forkserver"]
    else:
        argv = [py, "-m", "benchmarks._direct_matrix", "--mode", "parallel" if base == "direct" else "serial"]
    with common.LoadSampler() as load:
        out = common.run_json(argv, env)
    out.update(load.summary())
    out["mode"], out["storage"], out["env"] = mode, str(storage), env
    out["calls"] = calls_in(shadow, storage, out["t0"], out["t1"])
    return out


def rerun_dagster(first: dict, shadow: Path) -> dict:
    """Materialize the same matrix again in the same storage and instance: nothing changed."""
    argv = [str(shadow / "bin" / "python"), "-m", "benchmarks._dagster_matrix", "--start-method", "forkserver"]
    with common.LoadSampler() as load:
        out = common.run_json(argv, first["env"])
    out.update(load.summary())
    out["mode"] = "dagster, again, nothing changed"
    out["calls"] = calls_in(shadow, Path(first["storage"]), out["t0"], out["t1"])
    return out


def calls_in(shadow: Path, storage: Path, t0: float, t1: float) -> list:
    return [c for c in common.read_calls(shadow) if c.cwd.startswith(str(storage)) and t0 <= c.start <= t1 + 1]


def dagster_breakdown(r: dict) -> dict:
    """Slot-seconds of the Dagster steps: process start, job load in the step, step body; and the
    check results reused from the content-addressed store."""
    spawn = load = body = 0.0
    steps = 0
    run_overhead = 0.0
    for run in r["runs"]:
        run_overhead += (run["start"] - run["created"])
        for s in run["steps"]:
            if not s["worker_starting"] or not s["end"]:
                continue
            steps += 1
            spawn += s["worker_started"] - s["worker_starting"]
            load += s["start"] - s["worker_started"]
            body += s["end"] - s["start"]
    return {"steps": steps, "spawn_s": spawn, "load_s": load, "body_s": body, "run_create_s": run_overhead}


def direct_breakdown(r: dict) -> dict:
    units = r["units"]
    return {"units": len(units), "unit_s": sum(u["end"] - u["start"] for u in units),
            "check_s": sum(u.get("check_s", 0.0) for u in units),
            "checks": sum("check_s" in u for u in units),
            "checks_reused": sum(bool(u.get("check_cached")) for u in units)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"models {','.join(QUICK_MODELS)} only")
    ap.add_argument("--modes", default=",".join(ALL_MODES))
    ap.add_argument("--before", action="store_true",
                    help=f"also {', '.join(BEFORE_MODES)}: the code before the optimisations")
    ap.add_argument("--rounds", type=int, default=1, help="repeat every mode, rotating the order; medians")
    ap.add_argument("--no-rerun", action="store_true", help="skip the nothing-changed re-materialization")
    ap.add_argument("--work", type=Path, default=common.DEFAULT_WORK)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    info = common.machine_info()
    common.print_machine(info)
    shadow = common.shadow_python(args.work / "shadow").parent.parent
    from qaic_assets.settings import load_settings

    models = QUICK_MODELS if args.quick else list(load_settings(common.DEFAULT_CONFIG).model_names)
    modes = args.modes.split(",") + (BEFORE_MODES if args.before else [])
    print(f"matrix: models {', '.join(models)}; the default config's scenarios/nsp/batch sizes; "
          f"modes {', '.join(modes)}; {args.rounds} round(s)", flush=True)
    common.standin_cache(args.work, [m for m in models if m in common.STANDIN_MODELS])

    results: dict[str, list[dict]] = defaultdict(list)
    rerun = None
    for i in range(args.rounds):
        order = modes[i % len(modes):] + modes[:i % len(modes)]
        for mode in order:
            r = run_mode(mode, args.work, shadow, models, f"r{i}")
            print(f"  round {i + 1} {mode}: {r['wall_s']:.1f} s, {len(r['calls'])} compiler calls, "
                  f"load {r['load_median']}", file=sys.stderr, flush=True)
            results[mode].append(r)
            if mode == "dagster" and i == args.rounds - 1 and not args.no_rerun:
                rerun = rerun_dagster(r, shadow)
                print(f"  again, nothing changed: {rerun['wall_s']:.1f} s, {len(rerun['calls'])} compiler calls",
                      file=sys.stderr, flush=True)

    wall = {m: common.median(r["wall_s"] for r in rs) for m, rs in results.items()}
    loads = [x["load_median"] for rs in results.values() for x in rs]
    print(f"\nload average (1 min) during the runs: median {common.median(loads):.2f} "
          f"(includes the benchmark's own 2 workers); {args.rounds} round(s), median wall times\n")

    rows = []
    for m in modes:
        rs = results[m]
        calls = rs[-1]["calls"]
        row = [m, f"{wall[m]:.1f}", len(calls), sum(c.kind == "calibrate" for c in calls),
               f"{sum(c.seconds for c in calls):.1f}"]
        suffix = "+before" if m.endswith("+before") else ""  # other variants: against plain direct
        direct, serial = wall.get("direct" + suffix), wall.get("serial" + suffix)
        row.append(f"{wall[m] / direct:.3f}" if direct else "-")
        row.append(f"{serial / wall[m]:.2f}" if serial else "-")
        rows.append(row)
    if rerun:
        calls = rerun["calls"]
        rows.append([rerun["mode"], f"{rerun['wall_s']:.1f}", len(calls), sum(c.kind == "calibrate" for c in calls),
                     f"{sum(c.seconds for c in calls):.1f}", "-", "-"])
    print(common.table(["mode", "wall s", "compiler calls", "calibrations", "compiler busy s",
                        "/ direct", "serial / this"], rows))
    if "dagster" in wall and "direct" in wall:
        print(f"\nDagster / direct: {wall['dagster'] / wall['direct']:.3f} (target <= 1.15)", end="")
        if "dagster-spawn" in wall:
            print(f"; with spawn (before): {wall['dagster-spawn'] / wall['direct']:.3f}; "
                  f"forkserver vs spawn: {wall['dagster-spawn'] / wall['dagster']:.2f}x faster", end="")
        print()
    for suffix in ("", "+before"):
        if "serial" + suffix in wall:
            for m in ("dagster", "dagster-spawn", "direct"):
                if m + suffix in wall:
                    print(f"speed-up of {m + suffix} over serial{suffix}: {wall['serial' + suffix] / wall[m + suffix]:.2f}x")
    if "dagster-spawn+before" in wall and "dagster" in wall:
        print(f"before -> after (dagster-spawn+before -> dagster): {wall['dagster-spawn+before']:.1f} s -> "
              f"{wall['dagster']:.1f} s, {wall['dagster-spawn+before'] / wall['dagster']:.2f}x faster", end="")
        if "direct+before" in wall and "direct" in wall:
            print(f"; Dagster / direct {wall['dagster-spawn+before'] / wall['direct+before']:.3f} -> "
                  f"{wall['dagster'] / wall['direct']:.3f}", end="")
        print()
    for m in modes:
        base, _, variant = m.partition("+")
        if variant in ("noprio", "spin") and base in wall:
            what = {"noprio": "without step priorities", "spin": "with ONNX Runtime spinning"}[variant]
            print(f"{base} {what} / {base}: {wall[m] / wall[base]:.3f}")
    n_models = len(models)
    n_batches = len(load_settings(common.DEFAULT_CONFIG).matrix.batch)
    for m in modes:
        cal = sum(c.kind == "calibrate" for c in results[m][-1]["calls"])
        print(f"calibration runs ({m}): {cal} (models x batch sizes = {n_models} x {n_batches} = "
              f"{n_models * n_batches})")

    print("\nwhere the time goes (slot-seconds, summed over steps/units of the last round)")
    brows = []
    for m in modes:
        r = results[m][-1]
        busy = sum(c.seconds for c in r["calls"])
        if m.startswith("dagster"):  # noqa: SIM114
            b = dagster_breakdown(r)
            brows.append([m, b["steps"], f"{b['spawn_s']:.1f}", f"{b['load_s']:.1f}", f"{b['body_s']:.1f}",
                          f"{busy:.1f}", f"{b['spawn_s'] + b['load_s'] + b['body_s']:.1f}"])
        else:
            b = direct_breakdown(r)
            brows.append([m, b["units"], "0", "0", f"{b['unit_s']:.1f}", f"{busy:.1f}", f"{b['unit_s']:.1f}"])
    print(common.table(["mode", "steps/units", "process start s", "job load s", "step body s", "compiler s",
                        "total s"], brows))
    for m in modes:
        if not m.startswith("dagster"):
            b = direct_breakdown(results[m][-1])
            print(f"{m}: accuracy checks {b['checks']} ({b['checks_reused']} reused from the content-addressed "
                  f"store: identical binaries), {b['check_s']:.1f} s")
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "results": results, "rerun": rerun},
                                        default=lambda o: o.__dict__, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
