"""Shared plumbing of the benchmarks: machine facts, a counting compiler wrapper, cached stand-ins,
fresh storage roots and DAGSTER_HOMEs, load sampling and table printing.

Counting compiler invocations without touching production code: backend `cpu` resolves
`qaic-exec-cpu` as the file beside `sys.executable`. `shadow_python()` lays out a venv that shares
the project's site-packages (`lib` is a symlink to `.venv/lib`) but whose `bin/qaic-exec-cpu` is a
tiny shell wrapper: it runs the real `qaic-exec-cpu`, then appends one line (start, end, exit code,
cwd, argv) to `calls.log`. Processes started with that python (Dagster's step processes included,
they inherit `sys.executable`) therefore call the wrapper, with the same argv otherwise.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV = Path(os.environ.get("QAIC_BENCH_VENV", sys.prefix))  # the venv running the benchmark
DEFAULT_WORK = Path(os.environ.get("QAIC_BENCH_WORK", "/tmp/qaic_bench"))
STANDIN_MODELS = {"resnet50": "resnet50", "retinanet": "retinanet", "bert-99": "bert-99"}
DEFAULT_CONFIG = REPO / "qaic_assets" / "default_config.yaml"


# ------------------------------------------------------------------------------------------ machine


def machine_info() -> dict:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gb = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    versions = {}
    for mod in ("dagster", "onnx", "onnxruntime", "numpy"):
        try:
            from importlib import metadata

            versions[mod] = metadata.version(mod)
        except Exception:  # noqa: BLE001
            versions[mod] = "?"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "mem_gb": mem_gb,
        "kernel": platform.release(),
        "python": platform.python_version(),
        **versions,
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def print_machine(info: dict) -> None:
    print(f"machine: {info['cpu']}, {info['cores']} cores ({info['cores_usable']} usable), "
          f"{info['mem_gb']} GB RAM, Linux {info['kernel']}")
    print(f"software: Python {info['python']}, dagster {info['dagster']}, onnx {info['onnx']}, "
          f"onnxruntime {info['onnxruntime']}, numpy {info['numpy']}")
    la = info["loadavg_at_start"]
    print(f"load average at start (1/5/15 min): {la[0]} / {la[1]} / {la[2]}", flush=True)


class LoadSampler:
    """Samples the 1-minute load average every `period` s while active; `.summary()` -> median, max."""

    def __init__(self, period: float = 5.0):
        self.period = period
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "LoadSampler":
        self.samples.append(os.getloadavg()[0])
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            self.samples.append(os.getloadavg()[0])

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        self.samples.append(os.getloadavg()[0])

    def summary(self) -> dict:
        return {"load_median": round(statistics.median(self.samples), 2), "load_max": round(max(self.samples), 2)}


# ------------------------------------------------------------------------------- counting wrapper

_WRAPPER = """#!/bin/sh
# qaic_assets benchmarks: run the real qaic-exec-cpu, then log the call to {log}
t0=$(date +%s.%N)
{real} "$@"
rc=$?
t1=$(date +%s.%N)
printf '%s\\t%s\\t%s\\t%s\\t%s\\n' "$t0" "$t1" "$rc" "$PWD" "$*" >> {log}
exit $rc
"""


def shadow_python(root: Path) -> Path:
    """A python whose `qaic-exec-cpu` (beside sys.executable) is the counting wrapper; see module doc."""
    root = Path(root)
    py = root / "bin" / "python"
    if not py.exists():
        (root / "bin").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(VENV / "pyvenv.cfg", root / "pyvenv.cfg")
        os.symlink(VENV / "lib", root / "lib")
        os.symlink(os.path.realpath(VENV / "bin" / "python"), py)
        wrapper = root / "bin" / "qaic-exec-cpu"
        wrapper.write_text(_WRAPPER.format(real=VENV / "bin" / "qaic-exec-cpu", log=root / "calls.log"))
        wrapper.chmod(0o755)
    return py


@dataclass(frozen=True)
class Call:
    start: float
    end: float
    rc: int
    cwd: str
    args: str

    @property
    def kind(self) -> str:
        return "calibrate" if "-dump-profile=" in self.args else "compile"

    @property
    def seconds(self) -> float:
        return self.end - self.start

    @property
    def model(self) -> str:
        # <storage>/<model>/{calibration,compiled}/... (cwd is the temp dir beside the final one)
        parts = Path(self.cwd).parts
        for marker in ("calibration", "compiled"):
            if marker in parts:
                return parts[parts.index(marker) - 1]
        return "?"


def read_calls(root: Path, since: float = 0.0) -> list[Call]:
    path = Path(root) / "calls.log"
    if not path.exists():
        return []
    calls = []
    for line in path.read_text().splitlines():
        t0, t1, rc, cwd, args = line.split("\t", 4)
        if float(t0) >= since:
            calls.append(Call(float(t0), float(t1), int(rc), cwd, args))
    return calls


# ------------------------------------------------------------------------------- storage and homes


def standin_cache(work: Path, models=tuple(STANDIN_MODELS)) -> Path:
    """Generated stand-ins, once per work dir: `<work>/standins/<model>/source/` (the storage layout)."""
    from qaic_assets.models.standins import build_standin

    cache = Path(work) / "standins"
    for model in models:
        kind = STANDIN_MODELS[model]
        dest = cache / model / "source"
        repo_copy = REPO / "artifacts" / model / "source"
        if not dest.exists() and repo_copy.is_dir():  # seed from the demo's artifacts (validated below)
            shutil.copytree(repo_copy, dest)
        build_standin(kind, dest)  # validates the stamp (sha256 of every file); regenerates if needed
    return cache


def fresh_storage(work: Path, name: str, models=tuple(STANDIN_MODELS)) -> Path:
    """An empty storage root whose stand-in sources are hard links to the cache (no regeneration)."""
    cache = standin_cache(work, models)
    storage = Path(work) / "runs" / name / "storage"
    if storage.exists():
        shutil.rmtree(storage)
    storage.mkdir(parents=True)
    for model in models:
        (storage / model).mkdir()
        subprocess.run(["cp", "-al", str(cache / model / "source"), str(storage / model / "source")], check=True)
    return storage


def fresh_home(work: Path, name: str) -> Path:
    """A DAGSTER_HOME holding a copy of the project's dagster_home/dagster.yaml (pool limit 2)."""
    home = Path(work) / "runs" / name / "dagster_home"
    if home.exists():
        shutil.rmtree(home)
    home.mkdir(parents=True)
    shutil.copyfile(REPO / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    return home


def run_json(argv: list[str], env: dict | None = None, timeout: float = 3600) -> dict:
    """Run a benchmark child that prints one JSON object as its last stdout line."""
    proc = subprocess.run(argv, cwd=REPO, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=timeout)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise RuntimeError(f"benchmark child failed ({proc.returncode}): {' '.join(argv)}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------ output


def median(xs) -> float:
    xs = list(xs)
    return statistics.median(xs) if xs else float("nan")


def table(headers: list[str], rows: list[list], align: str | None = None) -> str:
    """A GitHub markdown table (also readable in a terminal)."""
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    align = align or "l" + "r" * (len(headers) - 1)

    def line(values):
        return "| " + " | ".join(v.ljust(w) if a == "l" else v.rjust(w)
                                 for v, w, a in zip(values, widths, align)) + " |"

    sep = "|" + "|".join(("-" * (w + 1) + ":") if a == "r" else ("-" * (w + 2)) for w, a in zip(widths, align)) + "|"
    return "\n".join([line(headers), sep, *(line(r) for r in cells)])


def now() -> float:
    return time.time()


# ------------------------------------------------------------------------------------------ config


def write_config(path: Path, storage: Path, *, models=None, backend: str = "cpu", sdk_root: Path | None = None,
                 matrix: dict | None = None, extra_models: dict | None = None) -> Path:
    """The packaged default config, restricted to `models`, with absolute paths, written to `path`."""
    import yaml

    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    base = DEFAULT_CONFIG.parent

    def absolute(section: dict) -> dict:
        out = {}
        for k, v in section.items():
            if isinstance(v, dict):
                out[k] = absolute(v)
            elif k in ("path", "list", "labels", "node_precision") and isinstance(v, str):
                out[k] = str((base / v).resolve())
            else:
                out[k] = v
        return out

    chosen = {name: absolute(m) for name, m in raw["models"].items() if models is None or name in models}
    chosen.update(extra_models or {})
    raw["models"] = chosen
    raw["storage_root"] = str(storage)
    raw["backend"] = backend
    if sdk_root is not None:
        raw["sdk_root"] = str(sdk_root)
    if matrix:
        raw["matrix"] = matrix
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


# ------------------------------------------------------------------- the code before the optimisations

_BEFORE_SITECUSTOMIZE = '''"""qaic_assets benchmarks: undo two optimisations in every Python process started with this directory on
PYTHONPATH, to measure the code before it side by side: ONNX Runtime's default intra-op thread
spinning (the request `session.intra_op.allow_spinning=0` is dropped when onnxruntime is imported).
(The step-priority optimisation is not undone here: that would patch a Dagster internal.)"""
import importlib.abc
import importlib.machinery
import sys


def _spin(module):
    cls = module.SessionOptions
    add = cls.add_session_config_entry

    def add_entry(self, key, value):
        if key == "session.intra_op.allow_spinning":
            return None
        return add(self, key, value)

    cls.add_session_config_entry = add_entry


_PATCHES = {"onnxruntime": _spin}
_PATCHES = {k: v for k, v in _PATCHES.items() if v.__name__.strip("_") in {ENABLED}}


class _AfterImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name not in _PATCHES:
            return None
        patch = _PATCHES.pop(name)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def patched_exec(module):
            exec_module(module)
            patch(module)

        spec.loader.exec_module = patched_exec
        return spec


sys.meta_path.insert(0, _AfterImport())
'''


BEFORE_FEATURES = ("spin",)


def before_env(work: Path, features=BEFORE_FEATURES) -> dict:
    """Environment under which every child Python runs the code as before the given optimisations:
    "spin" (ONNX Runtime's default thread spinning); see the
    sitecustomize above."""
    features = tuple(f for f in BEFORE_FEATURES if f in features)
    d = Path(work) / ("before" if features == BEFORE_FEATURES else "before-" + "-".join(features))
    d.mkdir(parents=True, exist_ok=True)
    (d / "sitecustomize.py").write_text(_BEFORE_SITECUSTOMIZE.replace("{ENABLED}", repr(set(features))))
    return {"PYTHONPATH": str(d) + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")}
