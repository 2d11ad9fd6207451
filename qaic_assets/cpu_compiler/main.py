"""``qaic-exec-cpu``: the CPU reference compiler with qaic-exec's calibrate/compile contract.

    qaic-exec-cpu -model=M -input-list-file=L -batchsize=B -dump-profile=profile.yaml [...]   # calibrate
    qaic-exec-cpu -model=M -load-profile=profile.yaml -aic-binary-dir=D -batchsize=B [...]    # compile
    qaic-exec-cpu -model=M -input-list-file=L -aic-binary-dir=D -batchsize=B [...]            # one-step

Calibrate mode when ``-dump-profile`` is given, else compile (needs ``-aic-binary-dir``); a compile
with ``-input-list-file`` is one-step quantization, as the SDK's: the same calibration as
``-dump-profile`` runs over the list and its profile, kept in memory, quantizes the model (the result
is the model ``-dump-profile`` then ``-load-profile`` give). A flag of the other mode is refused
(qaic/flags.check_mode), and so is what a one-step compile cannot do on CPU (random calibration data).
Outputs: the profile YAML; or ``D/programqpc.onnx`` + ``D/qaic-exec-cpu.json``. Exit codes: 0 success,
2 bad command line (unknown flag, bad value, missing required flag, flag of the other mode), 1 any
other failure (missing or bad model / list / raw file / profile / node-precision file, size mismatch,
a tensor the profile has no range for, ONNX Runtime failure). Progress goes to stdout; errors go to
stderr prefixed ``ERROR:``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

from qaic_assets.qaic import flags as qaic_flags
from qaic_assets.qaic.flags import FLAGS, FlagError, ParsedFlags

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _log(msg: str) -> None:
    print(msg, flush=True)


class _Progress:
    """Every line with -vvv; without it, per-batch lines at most every PERIOD seconds."""

    PERIOD = 10.0

    def __init__(self, verbose: bool):
        self.verbose = verbose
        self.last = time.monotonic()

    def __call__(self, msg: str) -> None:
        now = time.monotonic()
        if self.verbose or not msg.startswith("calibrate: batch") or now - self.last >= self.PERIOD:
            self.last = now
            _log(msg)


def _error(msg: str) -> None:
    print(f"ERROR: {msg}", file=sys.stderr, flush=True)


#: flags a one-step compile cannot honour on CPU: refused by name
ONE_STEP_REFUSED = {
    "use-random-input-data": "qaic-exec-cpu calibrates on the -input-list-file inputs only: remove it",
    "external-quantization-file": "a one-step compile takes its ranges from its own calibration: remove it, "
                                  "or compile without -input-list-file",
}
#: what -convert-to-quantize does in a one-step compile (the table lists it for the card's random-data mode)
CONVERT_TO_QUANTIZE = "one-step quantization: calibrated inline from -input-list-file, then quantized"


def _record(p: ParsedFlags, argv: Sequence[str], one_step: bool) -> dict:
    applied, na = p.split_by_cpu_status()
    if one_step and "convert-to-quantize" in na:
        na.remove("convert-to-quantize")
        applied.append("convert-to-quantize")
    return {
        "argv": list(argv),
        "effective_flags": {n: (True if v is None else v) for n, v in p.values.items()
                            if n != "onnx-define-symbol"} | ({"onnx-define-symbol": dict(p.symbols)}
                                                               if p.symbols else {}),
        "applied": {n: CONVERT_TO_QUANTIZE if n == "convert-to-quantize" else FLAGS[n].meaning for n in applied},
        "not_applicable_on_cpu": {n: FLAGS[n].meaning for n in na},
        "inline_calibration": None,
    }


def _require(p: ParsedFlags, name: str, why: str) -> str:
    v = p.get(name)
    if not v:
        raise FlagError(f"missing -{name}=<...>: {why}")
    return v


def _check_one_step(p: ParsedFlags) -> bool:
    """True for a one-step compile (-input-list-file, no -load-profile: check_mode refuses both); raises
    FlagError for what qaic-exec-cpu cannot honour in it, or a quantization it would skip."""
    if "input-list-file" not in p:
        if p.get_bool("convert-to-quantize"):
            raise FlagError("flag -convert-to-quantize without -input-list-file: the SDK would profile random "
                            "inputs, qaic-exec-cpu calibrates on real ones only: add -input-list-file=<list of "
                            "raw inputs>, or remove -convert-to-quantize")
        return False
    for name, why in ONE_STEP_REFUSED.items():
        if name in p:
            raise FlagError(f"flag -{name} is not available in a one-step compile on CPU: {why}")
    return True


def _calibration(p: ParsedFlags, model: str, profile_path: str | None, log):
    """The calibration of -dump-profile (``profile_path``) and of a one-step compile (None: in memory)."""
    from qaic_assets.cpu_compiler import calibrate as cpu_calibrate, compile as cpu_compile

    if p.get("node-precision-info"):  # validated; the profile covers every float tensor anyway
        cpu_compile.read_node_precision(p.get("node-precision-info"))
    return cpu_calibrate.calibrate(
        model, p.get("input-list-file"), profile_path,
        batch=p.get_int("batchsize"), symbols=dict(p.symbols), output_node_name=p.get("output-node-name"),
        bins=p.get_int("num-histogram-bins", cpu_calibrate.DEFAULT_BINS),
        threads=p.get_int("profiling-threads"),
        log=log,
    )


def run(argv: Sequence[str]) -> int:
    from qaic_assets.cpu_compiler import compile as cpu_compile, graph
    from qaic_assets.qaic.formats import profiles, rawdata

    try:
        p = qaic_flags.parse_argv(argv)
        model = _require(p, "model", "the ONNX model to calibrate or compile")
        calibrate = "dump-profile" in p
        qaic_flags.check_mode(p, calibrate)
        if calibrate:
            _require(p, "input-list-file", "calibration needs the list of raw input files")
        else:
            _require(p, "aic-binary-dir", "compile needs an output directory (or -dump-profile to calibrate)")
        one_step = not calibrate and _check_one_step(p)
    except FlagError as exc:
        _error(str(exc))
        return EXIT_USAGE

    verbose = "vvv" in p
    batch = p.get_int("batchsize")
    symbols = dict(p.symbols)
    out_node = p.get("output-node-name")
    rec = _record(p, argv, one_step)
    if rec["not_applicable_on_cpu"]:
        _log("qaic-exec-cpu: not applicable on CPU (ignored): "
             + " ".join(f"-{n}" for n in rec["not_applicable_on_cpu"]))
    t0 = time.perf_counter()
    try:
        if calibrate:
            res = _calibration(p, model, p.get("dump-profile"), _Progress(verbose))
            _log(f"qaic-exec-cpu: profile {p.get('dump-profile')}: {len(res.entries)} tensors over "
                 f"{res.samples} samples in {res.batches} batches ({time.perf_counter() - t0:.2f}s)")
        else:
            profile = None
            if one_step:
                res = _calibration(p, model, None, _Progress(verbose))
                profile = res.profile()
                rec["inline_calibration"] = {"input_list_file": p.get("input-list-file"), "samples": res.samples,
                                             "batches": res.batches, "tensors": len(res.entries)}
                _log(f"qaic-exec-cpu: one-step quantization: calibrated {len(res.entries)} tensors over "
                     f"{res.samples} samples in {res.batches} batches ({time.perf_counter() - t0:.2f}s)")
            act = p.get("quantization-schema-activations") or p.get("quantization-schema") or cpu_compile.DEFAULT_SCHEMA
            const = p.get("quantization-schema-constants") or p.get("quantization-schema") or cpu_compile.DEFAULT_SCHEMA
            settings = cpu_compile.QuantSettings(
                schema_activations=act,
                schema_constants=const,
                precision=p.get("quantization-precision", "Int8"),
                bias_precision=p.get("quantization-precision-bias", "Int32"),
                per_channel=p.get_bool("enable-channelwise"),
                calibration=p.get("quantization-calibration", "None"),
                percentile=p.get_float("percentile-calibration-value"),
                fp16_op_types=p.get_list("execute-nodes-in-fp16"),
            )
            info = cpu_compile.compile_model(
                model, p.get("aic-binary-dir"),
                profile_path=p.get("load-profile"), profile=profile, batch=batch, symbols=symbols,
                output_node_name=out_node,
                settings=settings, node_precision_path=p.get("node-precision-info"),
                convert_to_fp16=p.get_bool("convert-to-fp16"), record=rec,
                log=_Progress(verbose),
            )
            _log(f"qaic-exec-cpu: compiled {info['mode']} {p.get('aic-binary-dir')}/{cpu_compile.BINARY_FILE} "
                 f"({time.perf_counter() - t0:.2f}s)")
    except (graph.CompilerError, profiles.ProfileError, rawdata.RawDataError) as exc:
        _error(str(exc))
        return EXIT_FAILED
    except MemoryError:
        _error("out of memory: lower -batchsize or free memory")
        return EXIT_FAILED
    except Exception as exc:  # noqa: BLE001 - report, with the traceback for the log tail
        import traceback

        traceback.print_exc(file=sys.stderr)
        _error(f"internal error ({type(exc).__name__}: {exc})")
        return EXIT_FAILED
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    return run(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
