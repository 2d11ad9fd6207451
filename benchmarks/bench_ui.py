"""Does the UI stay usable at thousands of partitions? The webserver's GraphQL, timed, on a built case
of bench_scale (its DAGSTER_HOME and config, after its first build and SDK upgrade ticks).

`dagster-webserver` starts on the case; each query is sent --repeat times in a row (the first one
cold), one after another, and the seconds each answer takes are printed (first, median of the rest):
  lineage graph     what the asset graph page asks: every asset node, its dependencies
  graph status      the latest materialization and runs in progress of every asset (the graph's colours)
  partitions page   one compiled_binary's partition keys by dimension and the status of every partition
  checks            one compiled_binary's checks and their latest results

    python -m benchmarks.bench_scale --sizes 2560        # makes <work>/scale/built-2560
    python -m benchmarks.bench_ui [--case <work>/scale/built-2560] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from benchmarks import common

QUERIES = {
    "lineage graph": "query { assetNodes { id assetKey { path } dependencyKeys { path } isPartitioned } }",
    "graph status": """query($keys: [AssetKeyInput!]!) { assetsLatestInfo(assetKeys: $keys) {
        assetKey { path } latestMaterialization { timestamp runId } inProgressRunIds unstartedRunIds } }""",
    "partitions page": """query($key: AssetKeyInput!) { assetNodeOrError(assetKey: $key) { ... on AssetNode {
        partitionKeysByDimension { name partitionKeys }
        assetPartitionStatuses { __typename ... on MultiPartitionStatuses { primaryDimensionName
          ranges { primaryDimStartKey primaryDimEndKey secondaryDim { __typename
            ... on DefaultPartitionStatuses { materializedPartitions failedPartitions materializingPartitions } } } } } } } }""",
    "checks": """query($key: AssetKeyInput!) { assetNodeOrError(assetKey: $key) { ... on AssetNode {
        assetChecksOrError { ... on AssetChecks { checks { name executionForLatestMaterialization {
          status timestamp } } } } } } }""",
}


def start(case: Path, log: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "DAGSTER_HOME": str(case / "runs" / "dagster" / "dagster_home"),
           "QAIC_ASSETS_CONFIG": str(case / "config.yaml"), "PYTHONWARNINGS": "ignore"}
    with log.open("wb") as out:
        proc = subprocess.Popen([str(common.VENV / "bin" / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(port),
                                 "-m", "qaic_assets.definitions"], cwd=common.REPO, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"dagster-webserver exited ({proc.returncode}): see {log}")
        try:
            with urllib.request.urlopen(base + "/server_info", timeout=2):
                return proc, base
        except OSError:
            time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGTERM)
    raise RuntimeError(f"dagster-webserver did not answer within 120 s: see {log}")


def ask(base: str, query: str, variables: dict) -> tuple[float, dict]:
    request = urllib.request.Request(base + "/graphql", data=json.dumps({"query": query, "variables": variables}).encode(),
                                     headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    with urllib.request.urlopen(request, timeout=600) as response:
        answer = json.loads(response.read())
    dt = time.perf_counter() - t0
    if answer.get("errors"):
        raise RuntimeError(f"GraphQL errors: {answer['errors']}")
    return dt, answer["data"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--case", type=Path, default=common.DEFAULT_WORK / "scale" / "built-2560")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    if not (args.case / "config.yaml").is_file():
        raise SystemExit(f"{args.case} is not a built case of bench_scale: run "
                         "python -m benchmarks.bench_scale --sizes 2560 first")
    common.print_machine(common.machine_info())
    proc, base = start(args.case, args.case / "webserver.log")
    rows = []
    try:
        with common.LoadSampler() as load:
            cold, graph = ask(base, QUERIES["lineage graph"], {})  # the first query of all: its first time
            keys = [n["assetKey"] for n in graph["assetNodes"]]
            binary = next(k for k in keys if k["path"][-1] == "compiled_binary")
            variables = {"lineage graph": {}, "graph status": {"keys": keys}, "partitions page": {"key": binary},
                         "checks": {"key": binary}}
            for name, query in QUERIES.items():
                times, data = ([cold], graph) if name == "lineage graph" else ([], None)
                while len(times) < args.repeat:
                    dt, data = ask(base, query, variables[name])
                    times.append(dt)
                size = ""
                if name == "partitions page":
                    dims = data["assetNodeOrError"]["partitionKeysByDimension"]
                    size = " x ".join(str(len(d["partitionKeys"])) for d in dims) + " partitions"
                elif name == "lineage graph":
                    size = f"{len(data['assetNodes'])} assets"
                rows.append([name, size, f"{times[0]:.3f}", f"{common.median(times[1:]):.3f}"])
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    summary = load.summary()
    print(f"case: {args.case}; load average: median {summary['load_median']}, max {summary['load_max']}\n")
    print(common.table(["query", "size", "first s", f"median of the next {args.repeat - 1} s"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
