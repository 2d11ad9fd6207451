"""The accuracy check on `compiled_binary` (CPU backend): the compiled int8 model against its fp32
source on held-out inputs. Passes when the score (accuracy ratio with labels, else top-1 agreement,
else cosine similarity) reaches the threshold: 0.99 of fp32 by default, the seed's bert-99 criterion.

The comparison's numbers are kept, content-addressed, in `<storage_root>/<model>/checks/<key>.json`;
the key hashes everything they depend on: the compiled binary's and the source model's sha256, the
held-out inputs and labels (their bytes), the batch size and the -onnx-define-symbol values. A compile
op that hits the build cache (nothing changed) therefore reports the stored numbers (metadata
`cached: true`) instead of running both models over the held-out set again, which on the CPU backend
costs more than the compile itself (docs/BENCHMARKS.md). The threshold is applied on every evaluation,
so changing it takes effect without recomputing."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import dagster as dg

from qaic_assets import rawdata
from qaic_assets.accuracy import compare
from qaic_assets.config import Config
from qaic_assets.plan import model_dir, model_inputs, source_dir
from qaic_assets.qaic_flags import parse_argv
from qaic_assets.runner import sha256_file

#: Bump when `accuracy.compare` computes something different: stored results then no longer match.
RESULT_VERSION = 1
CHECKS_DIR = "checks"


def heldout_files(config: Config, model: str) -> tuple[Path, Path | None] | None:
    """(held-out list, labels) from the config, or the stand-in's own held-out set."""
    cfg = config.model(model)
    if cfg.heldout:
        return cfg.heldout.list, cfg.heldout.labels
    if cfg.source.standin:
        from qaic_assets.standins import standin_paths

        files = standin_paths(cfg.source.standin, source_dir(config, model))
        return files.heldout_list, files.labels
    return None


def threshold(config: Config, model: str) -> float:
    return config.model(model).accuracy_threshold or config.accuracy_threshold


def _inputs_sha256(heldout: Path, labels: Path | None) -> str:
    """sha256 over the held-out list, every raw file it names (in order) and the labels file."""
    h = hashlib.sha256(Path(heldout).read_bytes())
    for line in rawdata.read_input_list(heldout):
        for f in line:
            h.update(sha256_file(f).encode())
    h.update(sha256_file(labels).encode() if labels is not None else b"-")
    return h.hexdigest()


def result_key(binary_sha256: str, source_sha256: str, heldout: Path, labels: Path | None, batch: int,
               symbols: dict) -> str:
    blob = json.dumps({"version": RESULT_VERSION, "binary": binary_sha256, "source": source_sha256,
                       "inputs": _inputs_sha256(heldout, labels), "batch": batch,
                       "symbols": sorted(dict(symbols).items())}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _load_result(path: Path) -> dict | None:
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return stored.get("result") if isinstance(stored, dict) else None


def _store_result(path: Path, key_inputs: dict, result: dict) -> None:
    """Atomically, best effort: a read-only or full storage root only costs the reuse."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump({"key_inputs": key_inputs, "result": result}, f, default=float, indent=1)
        os.replace(tmp, path)
    except OSError:
        pass


def accuracy_check(config: Config, model: str, argv: list[str], binary: Path, batch: int, *,
                   binary_sha256: str | None = None, source_sha256: str | None = None) -> dg.AssetCheckResult:
    """The check's result for `binary` (compiled with `argv`); the sha256s are computed when not given."""
    heldout, labels = heldout_files(config, model)
    source = model_inputs(config, model).model
    symbols = parse_argv(argv[1:]).symbols
    key_inputs = {"binary": binary_sha256 or sha256_file(binary), "source": source_sha256 or sha256_file(source),
                  "batch": batch, "symbols": dict(symbols)}
    path = model_dir(config, model) / CHECKS_DIR / (
        result_key(key_inputs["binary"], key_inputs["source"], heldout, labels, batch, symbols) + ".json")
    result = _load_result(path)
    cached = result is not None
    if result is None:
        result = compare(source, binary, heldout, batch=batch, symbols=symbols, labels=labels)
        _store_result(path, key_inputs, result)
    limit = threshold(config, model)
    numbers = {k: result[k] for k in ("score", "top1_agreement", "cosine", "max_abs_error",
                                      "accuracy_fp32", "accuracy_compiled", "accuracy_ratio", "samples")
               if result.get(k) is not None}
    return dg.AssetCheckResult(
        passed=bool(result["score"] is not None and result["score"] >= limit),
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={**numbers, "metric": result["metric"], "threshold": limit,
                  "outputs": dg.MetadataValue.json(result["outputs"]), "cached": cached},
    )
