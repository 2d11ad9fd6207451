"""The optimisation behind the parallel speed-up: ONNX Runtime threads that do not spin-wait.

The `qaic_compile` pool runs 2 steps at once on this 2-core machine, and every calibration session
(`qaic-exec-cpu -dump-profile`, -profiling-threads=2) and accuracy-check session uses 2 intra-op
threads. With ONNX Runtime's default, idle threads spin-wait for the next op, burning the core the
other process needs. The project now sets `session.intra_op.allow_spinning=0` (cpu_calibrate.py,
accuracy.py). This script measures both settings side by side, each task alone and as two identical
processes at once (what the pool does), in fresh processes; "spin" restores ONNX Runtime's default in
the child (benchmarks/common.py: before_env).

    python -m benchmarks.bench_contention [--quick] [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import common

CHECK_CODE = """
import sys, json, time
from qaic_assets.builder.accuracy import compare
t = time.perf_counter()
compare(sys.argv[1], sys.argv[2], sys.argv[3], batch=int(sys.argv[4]), symbols=json.loads(sys.argv[5]))
print(time.perf_counter() - t)
"""


def prepare(config, model: str, work: Path) -> dict:
    """Batched calibration inputs, a profile and a compiled binary for batch 1 (offline-nsp14)."""
    from qaic_assets.builder.service import sample_sizes
    from qaic_assets.qaic.formats.batching import prepare_batched_inputs
    from qaic_assets.builder.accuracy import heldout_files
    from qaic_assets.builder.plan import calibrate_command, compile_command
    from qaic_assets.keys import BinaryPartition
    from qaic_assets.builder.store import model_inputs
    from qaic_assets.qaic.flags import parse_argv
    from qaic_assets.qaic.sdk import select_backend
    from qaic_assets.builder.sources import ensure_source

    backend = select_backend(config.backend, config.sdk_root)
    source = ensure_source(config, model)
    cal = calibrate_command(config, backend, model, 1)
    comp = compile_command(config, backend, model, BinaryPartition(1, "offline", 14))
    base = work / model
    if base.exists():
        shutil.rmtree(base)
    cal_dir = base / "cal"
    prepare_batched_inputs(model_inputs(config, model).calibration_list, 1, cal_dir,
                           input_sizes=sample_sizes(source.description, cal.argv))
    subprocess.run(cal.argv, cwd=cal_dir, check=True, stdout=subprocess.DEVNULL)
    comp_argv = [a if not a.startswith("-load-profile=") else f"-load-profile={cal_dir / 'profile.yaml'}"
                 for a in comp.argv]
    comp_dir = base / "comp"
    comp_dir.mkdir()
    subprocess.run(comp_argv, cwd=comp_dir, check=True, stdout=subprocess.DEVNULL)
    heldout, _ = heldout_files(config, model)
    symbols = dict(parse_argv(comp_argv[1:]).symbols)
    real_exe = str(common.VENV / "bin" / "qaic-exec-cpu")
    return {
        "calibrate": {"argv": [real_exe, *cal.argv[1:]], "cwd": cal_dir},
        "check": {"argv": [str(common.VENV / "bin" / "python"), "-c", CHECK_CODE, str(source.path),
                           str(comp_dir / comp.output), str(heldout), "1", json.dumps(symbols)], "cwd": base},
    }


def timed_processes(task: dict, n: int, env: dict) -> list[float]:
    """Start n identical processes at once; the wall time of each."""
    starts, procs = [], []
    for _ in range(n):
        starts.append(time.perf_counter())
        procs.append(subprocess.Popen(task["argv"], cwd=task["cwd"], env={**os.environ, **env},
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    ends = [None] * n
    while any(e is None for e in ends):
        for i, p in enumerate(procs):
            if ends[i] is None and p.poll() is not None:
                if p.returncode != 0:
                    raise RuntimeError(f"failed: {task['argv'][:3]}")
                ends[i] = time.perf_counter()
        time.sleep(0.02)
    return [e - s for s, e in zip(starts, ends)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="resnet50 only, 1 repetition")
    ap.add_argument("--models", default="resnet50,retinanet")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--work", type=Path, default=common.DEFAULT_WORK)
    args = ap.parse_args()
    models = ["resnet50"] if args.quick else args.models.split(",")
    repeat = 1 if args.quick else args.repeat
    info = common.machine_info()
    common.print_machine(info)
    from qaic_assets.settings import load_settings

    storage = common.fresh_storage(args.work, "contention", [m for m in models if m in common.STANDIN_MODELS])
    cfg = common.write_config(args.work / "runs" / "contention" / "config.yaml", storage, models=models)
    config = load_settings(cfg)
    spin = common.before_env(args.work)
    rows = []
    with common.LoadSampler() as load:
        for model in models:
            tasks = prepare(config, model, args.work / "runs" / "contention" / "scratch")
            for name, task in tasks.items():
                res = {}
                for i in range(repeat):
                    variants = [("spin", spin), ("no spin", {})]
                    if i % 2:
                        variants.reverse()
                    for label, env in variants:
                        for n in (1, 2):
                            res.setdefault((label, n), []).extend(timed_processes(task, n, env))
                med = {k: common.median(v) for k, v in res.items()}
                rows.append([f"{model} {name}", f"{med[('spin', 1)]:.1f}", f"{med[('no spin', 1)]:.1f}",
                             f"{med[('spin', 1)] / med[('no spin', 1)]:.2f}", f"{med[('spin', 2)]:.1f}",
                             f"{med[('no spin', 2)]:.1f}", f"{med[('spin', 2)] / med[('no spin', 2)]:.2f}"])
                print(f"  {model} {name} done", file=sys.stderr, flush=True)
    s = load.summary()
    print(f"load average during the benchmark: median {s['load_median']}, max {s['load_max']}; "
          f"median of {repeat} repetition(s); seconds per process, batch 1, fresh processes\n")
    print(common.table(["task", "alone, spin s", "alone, no spin s", "spin / no spin", "2 at once, spin s",
                        "2 at once, no spin s", "spin / no spin"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
