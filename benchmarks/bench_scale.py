"""Does the project stay fast as the matrix grows? Two parts.

`--part built` (default; issue 26): the built case at 16 / 160 / 640 / 2,560 binary partitions, with
the stand-in SDK (qaic_assets/standin_sdk: a compiler that answers in a Python start, so what is
measured is the project). Matrices: 1 model x 4 scenarios x 2 nsp x 2 batch sizes; 10 models x the
same; 10 models x 4 x 4 x 4; 40 models x 4 x 4 x 4; every model `resnet50` (calibrated) on a copy of
the shipped digits network. Per size, each a fresh process, whole-process CPU time (user + sys of the
process and every descendant it waited for: run workers, step processes, compilers):
  direct     the same builds through the build service, no Dagster (benchmarks/_direct_matrix.py,
             parallel: the demo's runs on 2 workers), into a storage root of its own
  first      `python -m qaic_assets.demo` (make demo) on a fresh DAGSTER_HOME: the first build
  no-op      `python -m qaic_assets.demo` again: nothing to do; compiler calls counted (must be 0)
  load defs  `python -c "import qaic_assets.definitions"`: a fresh interpreter loading the definitions
  upgrade    the stand-in's Apps SDK raised; the observe sensor's tick and the automation's ticks,
             timed (benchmarks/_scale_upgrade.py); what is requested must equal what was built
  home       DAGSTER_HOME after the first build, per built binary partition, split into the run
             shards (one SQLite file per run), the index shard and the rest

`--part definitions`: plan and definition-load times per matrix size. Matrices: the packaged default
(4 models x 2 scenarios x 1 nsp x 2 batch sizes), `large` (10 models x 4 scenarios x 4 nsp x 4 batch
sizes) and `xl` (40 models, same axes). Models of the generated matrices cycle through the seed
recipes (resnet50, retinanet, bert-99) with `path` sources that do not exist: planning and loading
definitions must need no model file.

Per matrix, median of --repeat runs, each a fresh process (wall time includes the interpreter start):
  plan       `qaic-assets plan --model <all> --scenario <all> --nsp <all> --batch <all> --json`
  validate   `dagster definitions validate -m qaic_assets.definitions`
  import     `python -c "import qaic_assets.definitions"`: what every Dagster step process pays to load
             the definitions before it runs its op
and in this process: `build_definitions(config)` + `resolve_asset_graph()` + resolving every job.

    python -m benchmarks.bench_scale [--part built] [--sizes 16,160,640,2560]
    python -m benchmarks.bench_scale --part definitions [--quick] [--repeat N]
    python -m benchmarks.bench_scale --part events [--repeat N]

`--part events`: the least Dagster's SQLite storage costs per event, with no metadata at all (events_part).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import common

SCENARIOS = ["offline", "server", "singlestream", "multistream"]
RECIPES = ["resnet50", "retinanet", "bert-99"]


def generated_config(path: Path, n_models: int, nsp: list[int], batch: list[int]) -> Path:
    import yaml

    models = {}
    for i in range(n_models):
        recipe = RECIPES[i % len(RECIPES)]
        m = {"recipe": recipe, "source": {"path": f"models/m{i}.onnx"}, "calibration": {"list": f"data/m{i}/cal.txt"}}
        if recipe == "retinanet":
            m["node_precision"] = f"models/m{i}-node-precision.yaml"
        models[f"{recipe}-{i}"] = m
    raw = {"storage_root": str(path.parent / "storage"), "backend": "cpu",
           "matrix": {"scenarios": SCENARIOS, "nsp": nsp, "batch": batch}, "models": models}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def timed(argv: list[str], env: dict) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, cwd=common.REPO, env={**os.environ, **env}, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-2000:] + proc.stderr[-4000:])
        raise RuntimeError(f"failed: {' '.join(argv)}")
    return dt, proc.stdout


def in_process(config_path: Path) -> dict:
    """Build the definitions and resolve graph + jobs in a fresh child; returns seconds and counts."""
    code = f"""
import json, time, warnings
warnings.filterwarnings("ignore")
import dagster as dg
from qaic_assets.settings import load_settings
from qaic_assets.orchestration import build_definitions
from qaic_assets.builder.plan import plan_target
from qaic_assets.qaic.sdk import select_backend
config = load_settings({str(config_path)!r})
t0 = time.perf_counter()
defs = build_definitions(config)
graph = defs.resolve_asset_graph()
jobs = [defs.resolve_job_def(j.name) for j in defs.jobs]
t1 = time.perf_counter()
backend = select_backend(config.backend, config.sdk_root, require=False)
n = 0
for m in config.model_names:
    mx = config.matrix_of(m)
    for s in mx.scenarios:
        for nsp in mx.nsp:
            for b in mx.batch:
                plan_target(config, backend, m, s, nsp, b); n += 1
t2 = time.perf_counter()
parts = sum(len(graph.get(k).partitions_def.get_partition_keys()) for k in graph.get_all_asset_keys()
            if graph.get(k).partitions_def is not None)
print(json.dumps({{"build_s": t1 - t0, "plan_inproc_s": t2 - t1, "targets": n, "assets": len(graph.get_all_asset_keys()),
                  "partitions": parts, "jobs": len(jobs)}}))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=common.REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def definitions_part(args) -> int:
    repeat = 1 if args.quick else args.repeat
    work = args.work / "scale"
    home = common.fresh_home(args.work, "scale")
    matrices = [("default", common.write_config(work / "default" / "config.yaml", work / "default" / "storage"))]
    matrices.append(("large", generated_config(work / "large" / "config.yaml", 10, [8, 9, 14, 16], [1, 2, 4, 8])))
    if not args.quick:
        matrices.append(("xl", generated_config(work / "xl" / "config.yaml", 40, [8, 9, 14, 16], [1, 2, 4, 8])))

    bin_dir = common.VENV / "bin"
    rows = []
    with common.LoadSampler() as load:
        for name, cfg in matrices:
            from qaic_assets.settings import load_settings

            config = load_settings(cfg)
            env = {"QAIC_ASSETS_CONFIG": str(cfg), "DAGSTER_HOME": str(home), "PYTHONWARNINGS": "ignore"}
            mx = [config.matrix_of(m) for m in config.model_names]
            plan_argv = [str(bin_dir / "qaic-assets"), "plan", "--model", ",".join(config.model_names),
                         "--scenario", ",".join(mx[0].scenarios), "--nsp", ",".join(map(str, mx[0].nsp)),
                         "--batch", ",".join(map(str, mx[0].batch)), "--json"]
            plan_t, validate_t, import_t, inproc = [], [], [], []
            targets = None
            for _ in range(repeat):
                dt, out = timed(plan_argv, env)
                plan_t.append(dt)
                targets = len(json.loads(out))
                validate_t.append(timed([str(bin_dir / "dagster"), "definitions", "validate", "-m",
                                         "qaic_assets.definitions"], env)[0])
                import_t.append(timed([str(bin_dir / "python"), "-c", "import qaic_assets.definitions"], env)[0])
                inproc.append(in_process(cfg))
            rows.append({
                "matrix": name, "models": len(config.model_names),
                "axes": f"{len(mx[0].scenarios)}x{len(mx[0].nsp)}x{len(mx[0].batch)}",
                "targets": targets, "assets": inproc[0]["assets"], "partitions": inproc[0]["partitions"],
                "plan_s": common.median(plan_t), "validate_s": common.median(validate_t),
                "import_s": common.median(import_t),
                "build_s": common.median(r["build_s"] for r in inproc),
                "plan_inproc_ms_per_target": 1000 * common.median(r["plan_inproc_s"] for r in inproc) / targets,
            })
            print(f"  {name}: done", file=sys.stderr, flush=True)
    print(f"load average during the benchmark: median {load.summary()['load_median']}, max {load.summary()['load_max']}"
          f"; median of {repeat} fresh processes per cell\n")
    base = rows[0]
    print(common.table(
        ["matrix", "models", "scen x nsp x batch", "targets", "assets", "partitions", "plan --json s",
         "definitions validate s", "import definitions s", "build defs (in process) s", "plan ms/target"],
        [[r["matrix"], r["models"], r["axes"], r["targets"], r["assets"], r["partitions"], f"{r['plan_s']:.2f}",
          f"{r['validate_s']:.2f}", f"{r['import_s']:.2f}", f"{r['build_s']:.2f}",
          f"{r['plan_inproc_ms_per_target']:.2f}"] for r in rows]))
    for r in rows[1:]:
        print(f"{r['matrix']} vs default: {r['targets'] / base['targets']:.0f}x the targets; plan "
              f"{r['plan_s'] / base['plan_s']:.2f}x, validate {r['validate_s'] / base['validate_s']:.2f}x, "
              f"import {r['import_s'] / base['import_s']:.2f}x, build {r['build_s'] / base['build_s']:.2f}x")
    return 0


# ------------------------------------------------------------------------------------ built part

#: binary partitions -> (models, nsp, batch); 4 scenarios each
SIZES = {16: (1, [8, 14], [1, 8]), 160: (10, [8, 14], [1, 8]), 640: (10, [4, 8, 14, 16], [1, 2, 4, 8]),
         2560: (40, [4, 8, 14, 16], [1, 2, 4, 8])}


def scale_case(work: Path, partitions: int) -> dict[str, Path]:
    """A fresh folder: the stand-in SDK, the models, a config and DAGSTER_HOME for the Dagster build and
    a config (own storage root) for the direct one."""
    import shutil

    import yaml

    from qaic_assets import standin_sdk

    n_models, nsp, batch = SIZES[partitions]
    if work.exists():
        shutil.rmtree(work)
    (work / "models").mkdir(parents=True)
    sdk = standin_sdk.install(work / "sdk", ("1.18.2", "0.5"), platform=("1.18.2", "0.5"))
    digits = common.REPO / "qaic_assets" / "models" / "data" / "digits"
    models = {}
    for i in range(n_models):
        source = work / "models" / f"m{i:02d}.onnx"
        shutil.copyfile(digits / "model.onnx", source)
        models[f"m{i:02d}"] = {"recipe": "resnet50", "source": {"path": str(source)},
                               "calibration": {"list": str(digits / "cal.txt")}}
    out = {"sdk": sdk, "home": common.fresh_home(work, "dagster")}
    for name, store in (("config", "store"), ("direct_config", "store_direct")):
        out[name] = work / f"{name}.yaml"
        out[name].write_text(yaml.safe_dump({
            "storage_root": str(work / store), "sdk_root": str(sdk), "backend": "qaic",
            "matrix": {"scenarios": SCENARIOS, "nsp": nsp, "batch": batch}, "models": models}, sort_keys=False))
    return out


def measured(argv: list[str], env: dict) -> tuple[float, float, str]:
    """(wall s, CPU s of the process and every descendant it waited for, stdout): this process's
    children's rusage before and after (one child at a time)."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(argv, cwd=common.REPO, env={**os.environ, **env}, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-2000:] + proc.stderr[-4000:])
        raise RuntimeError(f"failed ({proc.returncode}): {' '.join(argv)}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, proc.stdout


def home_bytes(home: Path) -> dict[str, int]:
    """DAGSTER_HOME's bytes: run shards, index shard, the rest."""
    parts = {"run_shards": 0, "index": 0, "other": 0}
    for f in home.rglob("*"):
        if not f.is_file():
            continue
        size = f.stat().st_size
        if f.parent.name == "runs" and f.suffix == ".db" and f.name != "index.db":
            parts["run_shards"] += size
        elif f.name.startswith("index.db"):
            parts["index"] += size
        else:
            parts["other"] += size
    return parts


def built_case(partitions: int, work: Path) -> dict:
    from qaic_assets import standin_sdk

    case = scale_case(work / f"built-{partitions}", partitions)
    py = str(common.VENV / "bin" / "python")
    env = {"PYTHONWARNINGS": "ignore", "QAIC_ASSETS_START_METHOD": ""}
    direct_env = {**env, "QAIC_ASSETS_CONFIG": str(case["direct_config"]), "DAGSTER_HOME": str(case["home"])}
    dagster_env = {**env, "QAIC_ASSETS_CONFIG": str(case["config"]), "DAGSTER_HOME": str(case["home"])}
    row: dict = {"partitions": partitions}
    row["direct_wall"], row["direct_cpu"], _ = measured([py, "-m", "benchmarks._direct_matrix", "--mode", "parallel",
                                                         "--no-check"], direct_env)
    direct_calls = len(standin_sdk.read_calls(case["sdk"]))
    row["first_wall"], row["first_cpu"], _ = measured([py, "-m", "qaic_assets.demo"], dagster_env)
    calls = len(standin_sdk.read_calls(case["sdk"]))
    row["compiler_calls"] = {"direct": direct_calls, "first": calls - direct_calls}
    row["home"] = home_bytes(case["home"])
    row["noop_wall"], row["noop_cpu"], _ = measured([py, "-m", "qaic_assets.demo"], dagster_env)
    row["noop_compiler_calls"] = len(standin_sdk.read_calls(case["sdk"])) - calls
    row["load_wall"], row["load_cpu"], _ = measured([py, "-c", "import qaic_assets.definitions"], dagster_env)
    _, _, out = measured([py, "-m", "benchmarks._scale_upgrade"], dagster_env)
    row["upgrade"] = json.loads(out.strip().splitlines()[-1])
    return row


def built_part(args) -> int:
    sizes = [int(s) for s in args.sizes.split(",")]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        raise SystemExit(f"--sizes: {unknown} not among {sorted(SIZES)}")
    rows = []
    with common.LoadSampler() as load:
        for partitions in sizes:
            rows.append(built_case(partitions, args.work / "scale"))
            print(f"  {partitions}: done", file=sys.stderr, flush=True)
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    summary = load.summary()
    print(f"load average during the benchmark: median {summary['load_median']}, max {summary['load_max']}\n")
    print(common.table(
        ["partitions", "first build s", "direct s", "CPU first / direct", "CPU s first, direct", "no-op s",
         "load defs s", "no-op / load", "upgrade: observe s + automation ticks s", "requested = built",
         "DAGSTER_HOME KB / partition (run shards + index + other)"],
        [[r["partitions"], f"{r['first_wall']:.1f}", f"{r['direct_wall']:.1f}", f"{r['first_cpu'] / r['direct_cpu']:.2f}",
          f"{r['first_cpu']:.1f}, {r['direct_cpu']:.1f}", f"{r['noop_wall']:.1f}", f"{r['load_wall']:.1f}",
          f"{r['noop_wall'] / r['load_wall']:.2f}",
          f"{r['upgrade']['observe_s']:.2f} + " + " + ".join(f"{t:.2f}" for t in r["upgrade"]["automation_ticks_s"]),
          f"{r['upgrade']['requested_equals_built']} ({r['upgrade']['requested']}/{r['upgrade']['built']})",
          f"{sum(r['home'].values()) / 1024 / r['partitions']:.0f} ({r['home']['run_shards'] / 1024 / r['partitions']:.0f}"
          f" + {r['home']['index'] / 1024 / r['partitions']:.0f} + {r['home']['other'] / 1024 / r['partitions']:.0f})"]
         for r in rows]))
    for r in rows:
        if r["noop_compiler_calls"] or not r["upgrade"]["requested_equals_built"]:
            print(f"{r['partitions']}: WRONG: no-op compiler calls {r['noop_compiler_calls']}, requested = built "
                  f"{r['upgrade']['requested_equals_built']}")
            return 1
    return 0


# ------------------------------------------------------------------------------------ events part
def events_part(args) -> int:
    """The floor Dagster's SQLite storage sets per partition, whatever the project records: --repeat x
    500 runless materializations with no metadata, then one check result per partition, through the
    public `report_runless_asset_event`, on a fresh DAGSTER_HOME. CPU per event (this process) and the
    bytes DAGSTER_HOME grew per event. (A run's events carry more: the step, logging tags; these are
    the least an event costs.)"""
    import tempfile

    import dagster as dg

    def size(home: str) -> int:
        return sum(f.stat().st_size for f in Path(home).rglob("*") if f.is_file())

    n, key, rows = 500, dg.AssetKey(["m", "compiled_binary"]), []
    args.work.mkdir(parents=True, exist_ok=True)
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory(dir=args.work) as home:
            Path(home, "dagster.yaml").write_text("telemetry: {enabled: false}\n")
            with dg.DagsterInstance.from_config(home) as instance:
                instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=key, partition="warm"))
                base, t0 = size(home), time.process_time()
                for i in range(n):
                    instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=key, partition=f"p{i}"))
                t1, middle = time.process_time(), size(home)
                for i in range(n):
                    instance.report_runless_asset_event(dg.AssetCheckEvaluation(
                        asset_key=key, check_name="sdk_current", passed=True, partition=f"p{i}"))
                t2 = time.process_time()
            end = size(home)
            rows.append([(t1 - t0) / n * 1000, (t2 - t1) / n * 1000, (middle - base) / n / 1024, (end - middle) / n / 1024])
    med = [sorted(col)[len(col) // 2] for col in zip(*rows)]
    print(common.table(["event (no metadata)", "CPU ms per event", "DAGSTER_HOME KB per event"],
                       [["materialization", f"{med[0]:.1f}", f"{med[2]:.2f}"],
                        ["check result", f"{med[1]:.1f}", f"{med[3]:.2f}"]]))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", choices=["built", "definitions", "events"], default="built")
    ap.add_argument("--sizes", default="16,160,640,2560", help="built part: binary partitions per case")
    ap.add_argument("--quick", action="store_true", help="definitions part: default and large only, 1 repetition")
    ap.add_argument("--repeat", type=int, default=3, help="definitions and events parts")
    ap.add_argument("--work", type=Path, default=common.DEFAULT_WORK)
    args = ap.parse_args()
    common.print_machine(common.machine_info())
    return {"built": built_part, "definitions": definitions_part, "events": events_part}[args.part](args)


if __name__ == "__main__":
    sys.exit(main())
