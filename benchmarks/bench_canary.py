"""Item 6: the SDK canary's overhead over building the same partitions plainly, side by side in one run.

On the stand-in SDK (qaic_assets/standin_sdk via tests/fake_sdk.py; no SDK machine here), per variant a
fresh storage root whose matrix (default: digits, batch 1,2,4,8 x offline,singlestream x nsp 14: 4
profiles, 8 binaries) is built with the current SDK 1.18.2.0.5 (not timed). Then, timed, in the build
layer (no Dagster: what the `canary` job's step and `qaic-assets canary` run):

- plain: the same partitions built with `sdk_root` set to the candidate 1.19.0.7 (an upgrade without
  a canary: every profile and binary compiles, into the served directories);
- canary: `builder/canary.run_canary` with that candidate (the same compiles into the cache, plus
  reading the served manifests and, when the candidate has tools/qaic-qpc, one `qaic-qpc validate`
  per binary), then `write_report`; with and without the candidate's tools;
- promotion after the canary: the same builds as "plain" (sdk_root = the candidate): cache hits.

The ratios are of wall times measured in this one process, variants alternating per repetition.
`--compile-s S` makes every stand-in compiler call take S seconds more (FAKE_QAIC_SLEEP), as a real
compile takes minutes.

    python -m benchmarks.bench_canary [--repeat N] [--compile-s S] [--models digits] [--work DIR]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
from pathlib import Path

from benchmarks import common

MATRIX = {"scenarios": ["offline", "singlestream"], "nsp": [14], "batch": [1, 2, 4, 8]}


def project(work: Path, name: str, models: list[str], tools: bool):
    """A storage root built with the current SDK, and a candidate SDK root: (config, candidate)."""
    from fake_sdk import make_fake_sdk

    from qaic_assets.settings import load_settings

    base = work / "runs" / name
    for sdk in ("sdk", "candidate"):
        if (base / sdk).exists():
            shutil.rmtree(base / sdk)
    current = make_fake_sdk(base / "sdk", ("1.18.2", "0.5"))
    candidate = make_fake_sdk(base / "candidate", ("1.19.0", "7"), tools=tools)
    storage = common.fresh_storage(work, name, [m for m in models if m in common.STANDIN_MODELS])
    config = load_settings(common.write_config(base / "config.yaml", storage, models=models, backend="qaic",
                                               sdk_root=current, matrix=MATRIX))
    build_all(config)
    return config, candidate


def build_all(config) -> int:
    """Every partition of the matrix, profiles first; returns how many were built."""
    from qaic_assets.builder import service

    n = 0
    for model in config.model_names:
        matrix = config.matrix_of(model)
        if config.model(model).calibrates:
            for batch in matrix.batch:
                service.calibrate_profile(config, model, batch)
                n += 1
        for partition in matrix.binary_partitions:
            service.compile_binary(config, model, partition)
            n += 1
    return n


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def one_repetition(work: Path, models: list[str], i: int, order: list[str]) -> dict[str, float]:
    from qaic_assets.builder.canary import run_canary, write_report

    quiet = logging.getLogger("bench_canary")
    quiet.setLevel(logging.WARNING)
    out = {}
    for variant in order:
        tools = variant == "canary, candidate with tools"
        config, candidate = project(work, f"canary-{i}-{variant.split(',')[0]}{'-tools' if tools else ''}",
                                    models, tools)
        if variant == "plain":
            out["plain"] = timed(lambda: build_all(config.model_copy(update={"sdk_root": candidate})))
            continue

        def canary():
            rows = run_canary(config, candidate, run_id=f"bench-{i}", log=quiet)
            assert all(r["succeeded"] for r in rows), [r["reason"] for r in rows if not r["succeeded"]]
            write_report(config, candidate, rows, run_id=f"bench-{i}")

        out[variant] = timed(canary)
        if not tools:
            out["promotion after the canary"] = timed(
                lambda: build_all(config.model_copy(update={"sdk_root": candidate})))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="digits", help="models of the packaged config, comma-separated")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--compile-s", type=float, default=0.0, help="seconds added to every stand-in compiler call")
    ap.add_argument("--work", type=Path, default=common.DEFAULT_WORK)
    args = ap.parse_args()
    sys.path.insert(0, str(common.REPO / "tests"))  # fake_sdk: the stand-in SDK's test-facing names
    logging.getLogger("qaic_assets").setLevel(logging.WARNING)
    for name in ("FAKE_QAIC_EXIT", "FAKE_QAIC_LOG", "QAIC_SDK_ROOT", "QAIC_ASSETS_STORAGE_ROOT"):
        os.environ.pop(name, None)
    if args.compile_s:
        os.environ["FAKE_QAIC_SLEEP"] = str(args.compile_s)
    models = args.models.split(",")
    common.print_machine(common.machine_info())
    variants = ["plain", "canary, candidate without tools", "canary, candidate with tools"]
    results: dict[str, list[float]] = {}
    with common.LoadSampler() as load:
        for i in range(args.repeat):
            order = variants if i % 2 == 0 else variants[::-1]
            for name, seconds in one_repetition(args.work, models, i, order).items():
                results.setdefault(name, []).append(seconds)
            print(f"  repetition {i + 1} done", file=sys.stderr, flush=True)
    plain = common.median(results["plain"])
    n = len(MATRIX["batch"]) * (1 + len(MATRIX["scenarios"]) * len(MATRIX["nsp"])) * len(models)
    s = load.summary()
    print(f"load average during the benchmark: median {s['load_median']}, max {s['load_max']}; median of "
          f"{args.repeat} repetition(s); {n} partitions ({', '.join(models)}); +{args.compile_s:g} s per compiler "
          "call\n")
    rows = [[name, f"{common.median(v):.2f}", f"{common.median(v) / plain:.2f}"] for name, v in results.items()]
    both = (common.median(results["canary, candidate without tools"])
            + common.median(results["promotion after the canary"]))
    rows.append(["canary + promotion", f"{both:.2f}", f"{both / plain:.2f}"])
    print(common.table(["build with the candidate SDK", "wall s", "/ plain"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
