"""Item 6: does the graph stay fast as the matrix grows? Plan and definition-load times per matrix size.

Matrices: the packaged default (4 models x 2 scenarios x 1 nsp x 2 batch sizes), `large` (10 models x
4 scenarios x 4 nsp x 4 batch sizes, the issue's example) and `xl` (40 models, same axes). Models of
the generated matrices cycle through the seed recipes (resnet50, retinanet, bert-99) with `path`
sources that do not exist: planning and loading definitions must need no model file.

Per matrix, median of --repeat runs, each a fresh process (wall time includes the interpreter start):
  plan       `qaic-assets plan --model <all> --scenario <all> --nsp <all> --batch <all> --json`
  validate   `dagster definitions validate -m qaic_assets.definitions`
  import     `python -c "import qaic_assets.definitions"`: what every Dagster step process pays to load
             the definitions before it runs its op
and in this process: `build_definitions(config)` + `resolve_asset_graph()` + resolving every job.

    python -m benchmarks.bench_scale [--quick] [--repeat N]
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="default and large only, 1 repetition")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--work", type=Path, default=common.DEFAULT_WORK)
    args = ap.parse_args()
    repeat = 1 if args.quick else args.repeat

    info = common.machine_info()
    common.print_machine(info)
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


if __name__ == "__main__":
    sys.exit(main())
