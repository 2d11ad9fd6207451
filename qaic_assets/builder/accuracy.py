"""How close a compiled CPU model is to its fp32 source on held-out inputs (backs the accuracy check):
both run on ONNX Runtime with the same dims, outputs compared (agreement, cosine, accuracy with labels),
one ``score`` to threshold. Results are stored content-addressed so an unchanged binary is not
evaluated again. The metrics and the key: docs/CHECKS.md.
"""

from __future__ import annotations

import json

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx

from qaic_assets.files import SMALL_FILE_BYTES, NotReadable, read_text, require_regular
from qaic_assets.cpu_compiler import graph
from qaic_assets.builder.store import checks_dir, model_inputs, source_dir
from qaic_assets.hashing import atomic_write, hash_json, sha256_file, sha256_input
from qaic_assets.qaic.flags import parse_argv
from qaic_assets.qaic.formats import rawdata
from qaic_assets.settings import Settings

DEFAULT_THRESHOLD = 0.99


def _session(model: onnx.ModelProto | str):
    """A CPU session whose intra-op threads do not spin-wait: the check runs inside a compile step,
    beside another step of the pool (a compiler or a check), so the cores are usually all taken, and
    spinning threads then burn the time slices the other process needs (docs/BENCHMARKS.md). The
    numbers computed do not change."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def _read_labels(path: str | Path) -> np.ndarray:
    path = Path(path)
    try:
        return np.array([int(line.split()[0]) for line in read_text(path).splitlines() if line.strip()],
                        dtype=np.int64)
    except FileNotFoundError:
        raise graph.CompilerError(f"labels file {path} does not exist") from None
    except NotReadable as exc:
        raise graph.CompilerError(f"labels file {path} {exc.strerror}") from None
    except ValueError:
        raise graph.CompilerError(f"labels file {path} must hold one integer per line") from None


def compare(
    source_model: str | Path,
    compiled_model: str | Path,
    heldout_list: str | Path,
    *,
    batch: int | None,
    symbols: Mapping[str, int] | None = None,
    labels: str | Path | None = None,
) -> dict:
    require_regular(compiled_model)  # onnx opens it itself: a FIFO would block that open forever
    compiled = onnx.load(str(compiled_model), load_external_data=True)
    out_names = [o.name for o in compiled.graph.output]
    src = graph.load_model(source_model)
    src_outs = {o.name for o in src.graph.output}
    produced = {o for n in src.graph.node for o in n.output}
    for name in out_names:  # compiled model pruned to an inner node: expose it in the source
        if name not in src_outs and name in produced:
            src.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    src = graph.fix_dims(src, batch, symbols, inplace=True)
    specs = graph.input_specs(src)
    common = [n for n in out_names if n in {o.name for o in src.graph.output}]
    if not common:
        raise graph.CompilerError(f"compiled model {compiled_model} shares no output with {source_model}")
    s_src, s_cmp = _session(src), _session(str(compiled_model))
    cmp_types = {i.name: i.type for i in s_cmp.get_inputs()}

    acc: dict[str, dict] = {n: {"eq": 0, "n": 0, "cos": [], "maxabs": 0.0, "top1_eq": 0, "top1_n": 0}
                            for n in common}
    preds: dict[str, tuple[list, list]] = {}  # class-like outputs: predictions of source, compiled
    samples = 0
    lines = rawdata.read_input_list(heldout_list)
    if not lines:
        raise graph.CompilerError(f"held-out list {heldout_list} has no lines")
    for arrays, n_real in rawdata.iter_batches(lines, specs, list_name=f"held-out list {heldout_list}"):
        feeds = {sp.name: a for sp, a in zip(specs, arrays)}
        r_src = dict(zip(common, s_src.run(common, feeds)))
        cfeeds = {k: (v.astype(np.float16) if cmp_types.get(k) == "tensor(float16)" else v) for k, v in feeds.items()}
        r_cmp = dict(zip(common, s_cmp.run(common, cfeeds)))
        samples += n_real
        for name in common:
            a, b = np.asarray(r_src[name]), np.asarray(r_cmp[name])
            if a.ndim > 0 and a.shape[0] == batch:
                a, b = a[:n_real], b[:n_real]
            st = acc[name]
            if np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_:
                st["eq"] += int(np.sum(a == b))
                st["n"] += a.size
                st["kind"] = "int"
                if a.ndim >= 1 and a.size == a.shape[0]:
                    preds.setdefault(name, ([], []))
                    preds[name][0].append(a.reshape(-1))
                    preds[name][1].append(b.reshape(-1))
            else:
                st["kind"] = "float"
                a32, b32 = a.astype(np.float64), b.astype(np.float64)
                st["maxabs"] = max(st["maxabs"], float(np.max(np.abs(a32 - b32))) if a.size else 0.0)
                rows_a = a32.reshape(a32.shape[0], -1) if a32.ndim > 1 else a32.reshape(1, -1)
                rows_b = b32.reshape(rows_a.shape)
                na, nb = np.linalg.norm(rows_a, axis=1), np.linalg.norm(rows_b, axis=1)
                both0 = (na == 0) & (nb == 0)
                cos = np.where(both0, 1.0, np.sum(rows_a * rows_b, axis=1) / np.maximum(na * nb, 1e-30))
                st["cos"].extend(cos.tolist())
                if a.ndim == 2 and a.shape[1] > 1:
                    st["top1_eq"] += int(np.sum(a.argmax(1) == b.argmax(1)))
                    st["top1_n"] += a.shape[0]
                    preds.setdefault(name, ([], []))
                    preds[name][0].append(a.argmax(1))
                    preds[name][1].append(b.argmax(1))

    outputs = {}
    agreements, cosines, maxabs = [], [], []
    for name, st in acc.items():
        if st.get("kind") == "int":
            ag = st["eq"] / st["n"] if st["n"] else 1.0
            outputs[name] = {"kind": "int", "agreement": ag}
            agreements.append(ag)
        else:
            cos = np.array(st["cos"]) if st["cos"] else np.array([1.0])
            o = {"kind": "float", "cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
                 "max_abs_error": st["maxabs"]}
            if st["top1_n"]:  # informative only: near-ties in untrained stand-ins flip it
                o["top1_agreement"] = st["top1_eq"] / st["top1_n"]
            outputs[name] = o
            cosines.append(o["cosine_mean"])
            maxabs.append(st["maxabs"])

    result: dict = {
        "samples": samples,
        "batch": batch,
        "outputs": outputs,
        "top1_agreement": min(agreements) if agreements else None,
        "cosine": min(cosines) if cosines else None,
        "max_abs_error": max(maxabs) if maxabs else None,
        "accuracy_fp32": None,
        "accuracy_compiled": None,
        "accuracy_ratio": None,
    }
    if labels is not None:
        lab = _read_labels(labels)
        ints = [n for n in preds if acc[n].get("kind") == "int"]
        class_output = (ints or list(preds) or [None])[0]
        if class_output is None:
            raise graph.CompilerError("labels given but the model has no class-like output to score")
        ps, pc = np.concatenate(preds[class_output][0]), np.concatenate(preds[class_output][1])
        if lab.size < ps.size:
            raise graph.CompilerError(f"labels file {labels} has {lab.size} labels for {ps.size} held-out samples")
        lab = lab[: ps.size]
        a_src, a_cmp = float(np.mean(ps == lab)), float(np.mean(pc == lab))
        result.update(accuracy_fp32=a_src, accuracy_compiled=a_cmp,
                      accuracy_ratio=(a_cmp / a_src) if a_src > 0 else None, label_output=class_output)
    if result["accuracy_ratio"] is not None:
        result["metric"], result["score"] = "accuracy_ratio", result["accuracy_ratio"]
    elif result["top1_agreement"] is not None:
        result["metric"], result["score"] = "top1_agreement", result["top1_agreement"]
    else:
        result["metric"], result["score"] = "cosine", result["cosine"]
    return result


#: Bump when `accuracy.compare` computes something different: stored results then no longer match.
RESULT_VERSION = 1


def heldout_files(config: Settings, model: str) -> tuple[Path, Path | None] | None:
    """(held-out list, labels) from the config, or the stand-in's own held-out set."""
    cfg = config.model(model)
    if cfg.heldout:
        return cfg.heldout.list, cfg.heldout.labels
    if cfg.source.standin:
        from qaic_assets.models.standins import standin_paths

        files = standin_paths(cfg.source.standin, source_dir(config, model))
        return files.heldout_list, files.labels
    return None


def threshold(config: Settings, model: str) -> float:
    return config.model(model).accuracy_threshold or config.accuracy_threshold


def _inputs_sha256(heldout: Path, labels: Path | None) -> str:
    """sha256 over the held-out list, every raw file it names (in order) and the labels file."""
    files = [sha256_input(f) for line in rawdata.read_input_list(heldout) for f in line]
    return hash_json([sha256_input(heldout), files, sha256_input(labels) if labels is not None else None])


def result_key(binary_sha256: str, source_sha256: str, heldout: Path, labels: Path | None, batch: int,
               symbols: dict) -> str:
    return hash_json({"version": RESULT_VERSION, "binary": binary_sha256, "source": source_sha256,
                      "inputs": _inputs_sha256(heldout, labels), "batch": batch,
                      "symbols": sorted(dict(symbols).items())})


def _load_result(path: Path) -> dict | None:
    try:
        stored = json.loads(read_text(path, SMALL_FILE_BYTES))
    except (OSError, ValueError):
        return None
    return stored.get("result") if isinstance(stored, dict) else None


def _store_result(path: Path, key_inputs: dict, result: dict) -> None:
    """Atomically, best effort: a read-only or full storage root only costs the reuse."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps({"key_inputs": key_inputs, "result": result}, default=float, indent=1))
    except OSError:
        pass

def evaluate(config: Settings, model: str, argv: list[str], binary: Path, batch: int, *,
             binary_sha256: str | None = None, source_sha256: str | None = None,
             force: bool = False) -> tuple[dict, bool]:
    """(result, cached) of comparing `binary` (compiled with `argv`) with its source; the stored result
    is reused when nothing it depends on changed, unless `force` (a forced rebuild measures again and
    stores the new result). The sha256s are computed when not given."""
    heldout, labels = heldout_files(config, model)
    source = model_inputs(config, model).model
    symbols = parse_argv(argv[1:]).symbols
    key_inputs = {"binary": binary_sha256 or sha256_file(binary), "source": source_sha256 or sha256_file(source),
                  "batch": batch, "symbols": dict(symbols)}
    path = checks_dir(config, model) / (
        result_key(key_inputs["binary"], key_inputs["source"], heldout, labels, batch, symbols) + ".json")
    result = None if force else _load_result(path)
    if result is not None:
        return result, True
    result = compare(source, binary, heldout, batch=batch, symbols=symbols, labels=labels)
    _store_result(path, key_inputs, result)
    return result, False
