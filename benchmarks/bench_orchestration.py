"""Items 1, 2, 4 (and the no-change half of 3): Dagster vs the same compiler commands run directly.

Every mode starts from an empty storage root (stand-in sources hard-linked from a cache, so nobody
regenerates them) and, for Dagster, an empty DAGSTER_HOME with the project's dagster.yaml (pool
`qaic_compile` limit 2). Modes, each in a fresh child process, timed inside it after its imports:

  dagster        `demo.materialize_matrix` exactly as `make demo` runs it (observe, sources, one run per
                 calibration batch, one run per (batch, target); 2 run workers forked from the demo
                 process, each executing a run's steps in-process, a run starting once the runs it
                 depends on have finished)
  dagster-spawn  the same with run workers started by spawn (a fresh interpreter each)
  direct         the same builds through the same build service the assets call (builder/service.py: same
                 argv, hashing, manifest, cache, locks, shared identical CPU builds), in the same groups
                 and schedule as the runs (`demo.plan_runs`: 2 worker processes, a group's units one
                 after another, a group starting once the groups it depends on have finished): the
                 difference is Dagster and the demo's bookkeeping only
  serial         the same builds one after another (the seed's CM loop)
  <mode>+before  (--before) the same with ONNX Runtime's default thread spinning restored in the
                 calibration and accuracy-check sessions of every process (benchmarks/common.py:
                 before_env); the step-priority optimisation is not undone (that would patch a Dagster
                 internal)

The accuracy check (fp32 vs int8 on the held-out set, `builder/accuracy.evaluate`) is work the compile op
does on the CPU backend, so direct and serial do it too, after each compile: it is in every mode.

Compiler invocations are counted by a wrapper `qaic-exec-cpu` (see benchmarks/common.py). After every
`dagster` round the matrix is materialized again with nothing changed (item 3), the way `make demo`
runs it (up to date is decided before launching a run). The rounds are interleaved (the mode order
rotates) and the summary gives median [min-max]; a ratio pairs the two modes of one round. The
targets are printed with the measured values.

    python -m benchmarks.bench_orchestration [--quick] [--before] [--modes dagster,direct,dagster-spawn,serial]
                                             [--rounds N (default 5)] [--json FILE]

Run time on the shared 2-core machine: about 3 minutes per round of the full matrix (dagster + direct +
re-run); --quick (digits and bert-99 only) about 1 minute per round.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

from benchmarks import common

ALL_MODES = ["dagster", "dagster-spawn", "direct", "serial"]
DEFAULT_MODES = ["dagster", "direct"]
BEFORE_MODES = ["dagster-spawn+before", "direct+before", "serial+before"]
QUICK_MODELS = ["digits", "bert-99"]


def run_mode(mode: str, work: Path, shadow: Path, models, tag: str) -> dict:
    name = f"orch-{mode.replace('+', '_')}-{tag}"
    storage = common.fresh_storage(work, name, [m for m in models if m in common.STANDIN_MODELS])
    home = common.fresh_home(work, name)
    cfg = common.write_config(work / "runs" / name / "config.yaml", storage, models=models)
    env = {"QAIC_ASSETS_CONFIG": str(cfg), "DAGSTER_HOME": str(home), "PYTHONWARNINGS": "ignore"}
    base, _, variant = mode.partition("+")
    if variant:  # undo an optimisation: before = spin (ONNX Runtime threads spin-wait again)
        features = {"before": common.BEFORE_FEATURES, "spin": ("spin",)}[variant]
        env.update(common.before_env(work, features))
    py = str(shadow / "bin" / "python")
    if base.startswith("dagster"):
        argv = [py, "-m", "benchmarks._dagster_matrix", *(["--start-method", "spawn"] if base == "dagster-spawn" else [])]
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
    argv = [str(shadow / "bin" / "python"), "-m", "benchmarks._dagster_matrix"]
    with common.LoadSampler() as load:
        out = common.run_json(argv, first["env"])
    out.update(load.summary())
    out["mode"] = "dagster, again, nothing changed"
    out["calls"] = calls_in(shadow, Path(first["storage"]), out["t0"], out["t1"])
    return out


def calls_in(shadow: Path, storage: Path, t0: float, t1: float) -> list:
    return [c for c in common.read_calls(shadow) if c.cwd.startswith(str(storage)) and t0 <= c.start <= t1 + 1]


def dagster_breakdown(r: dict) -> dict:
    """Seconds of the Dagster runs: in step bodies (the build, the check, the metadata) and the rest
    of each run (creating it, starting and ending it and its steps), summed over the runs."""
    body = sum(s["end"] - s["start"] for run in r["runs"] for s in run["steps"] if s["start"] and s["end"])
    total = sum(run["end"] - run["created"] for run in r["runs"] if run["end"])
    return {"runs": len(r["runs"]), "steps": sum(len(run["steps"]) for run in r["runs"]),
            "body_s": body, "outside_steps_s": total - body}


def direct_breakdown(r: dict) -> dict:
    units = r["units"]
    return {"units": len(units), "unit_s": sum(u["end"] - u["start"] for u in units),
            "check_s": sum(u.get("check_s", 0.0) for u in units),
            "checks": sum("check_s" in u for u in units),
            "checks_reused": sum(bool(u.get("check_cached")) for u in units),
            "shared": sum(bool(u.get("same_build_as")) for u in units)}


def spread(xs) -> str:
    """median [min-max] of a list of numbers."""
    xs = sorted(xs)
    return f"{common.median(xs):.2f} [{xs[0]:.2f}-{xs[-1]:.2f}]" if xs else "-"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"models {','.join(QUICK_MODELS)} only")
    ap.add_argument("--modes", default=",".join(DEFAULT_MODES), help=f"of {','.join(ALL_MODES)} (+before variants)")
    ap.add_argument("--before", action="store_true",
                    help=f"also {', '.join(BEFORE_MODES)}: the code before the first optimisations")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (the order rotates); medians")
    ap.add_argument("--no-rerun", action="store_true", help="skip the nothing-changed re-materializations")
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
          f"modes {', '.join(modes)}; {args.rounds} interleaved round(s)", flush=True)
    common.standin_cache(args.work, [m for m in models if m in common.STANDIN_MODELS])

    results: dict[str, list[dict]] = defaultdict(list)
    reruns: list[dict] = []
    for i in range(args.rounds):
        order = modes[i % len(modes):] + modes[:i % len(modes)]
        for mode in order:
            r = run_mode(mode, args.work, shadow, models, f"r{i}")
            print(f"  round {i + 1} {mode}: {r['wall_s']:.1f} s, {len(r['calls'])} compiler calls, "
                  f"load {r['load_median']}", file=sys.stderr, flush=True)
            results[mode].append(r)
            if mode == "dagster" and not args.no_rerun:
                again = rerun_dagster(r, shadow)
                reruns.append(again)
                print(f"  round {i + 1} again, nothing changed: {again['wall_s']:.2f} s, "
                      f"{len(again['calls'])} compiler calls", file=sys.stderr, flush=True)

    loads = [x["load_median"] for rs in results.values() for x in rs]
    print(f"\nload average (1 min) during the runs: median {common.median(loads):.2f}, max "
          f"{max(x['load_max'] for rs in results.values() for x in rs):.2f} (includes the benchmark's own 2 "
          f"workers; the machine is shared with other jobs); {args.rounds} interleaved round(s)\n")

    rows = []
    for m in modes:
        rs = results[m]
        calls = rs[-1]["calls"]
        compiles = [c for c in calls if c.kind == "compile"]
        suffix = "+before" if m.endswith("+before") else ""
        direct = results.get("direct" + suffix)
        ratio = spread([a["wall_s"] / b["wall_s"] for a, b in zip(rs, direct)]) if direct else "-"
        rows.append([m, spread(r["wall_s"] for r in rs), len(calls), sum(c.kind == "calibrate" for c in calls),
                     len(compiles), f"{sum(c.seconds for c in calls):.1f}", ratio])
    if reruns:
        rows.append(["dagster, again, nothing changed", spread(r["wall_s"] for r in reruns),
                     max(len(r["calls"]) for r in reruns), 0, 0, "0.0", "-"])
    print("wall s and ratios: median [min-max] over the rounds; a ratio pairs the runs of one round")
    print(common.table(["mode", "wall s", "compiler calls", "calibrations", "compiles", "compiler busy s",
                        "/ direct (same round)"], rows))

    settings = load_settings(common.DEFAULT_CONFIG)
    n_binaries = sum(len(settings.matrix_of(m).batch_keys) * len(settings.matrix_of(m).targets) for m in models)
    print("\ntargets (measured side by side in this run):")
    if "dagster" in results and "direct" in results:
        ratios = [a["wall_s"] / b["wall_s"] for a, b in zip(results["dagster"], results["direct"])]
        met = common.median(ratios) <= 1.10
        print(f"  Dagster / direct on the matrix: {spread(ratios)}  (target <= 1.10: {'met' if met else 'NOT met'})")
    if reruns:
        walls = [r["wall_s"] for r in reruns]
        calls = max(len(r["calls"]) for r in reruns)
        met = common.median(walls) <= 3.0 and calls == 0
        print(f"  re-run with nothing changed: {spread(walls)} s, {calls} compiler calls  "
              f"(target <= 3 s and 0 calls: {'met' if met else 'NOT met'})")
    if "dagster" in results:
        compiles = [sum(c.kind == "compile" for c in r["calls"]) for r in results["dagster"]]
        print(f"  CPU compiler calls for the {n_binaries} binaries: {max(compiles)} "
              f"(target {n_binaries // 2}: partitions with an identical applied command built once: "
              f"{'met' if max(compiles) <= n_binaries // 2 else 'NOT met'})")
    for m in modes:
        if m.startswith("dagster"):
            b = dagster_breakdown(results[m][-1])
            print(f"{m}: {b['runs']} runs, {b['steps']} steps; in step bodies {b['body_s']:.1f} s, in the runs "
                  f"outside them {b['outside_steps_s']:.1f} s (summed over runs; last round)")
        if m.startswith("direct"):
            b = direct_breakdown(results[m][-1])
            print(f"{m}: accuracy checks {b['checks']} ({b['checks_reused']} reused from the content-addressed "
                  f"store), {b['check_s']:.1f} s; shared builds {b['shared']}")
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "results": results, "reruns": reruns},
                                        default=lambda o: o.__dict__, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
