"""Item 5: the CPU reference compiler (`qaic-exec-cpu`) per default model and batch size.

For each model of the default config and each batch size, with the exact argv the assets run
(`plan.calibrate_command` / `plan.compile_command`, target offline-nsp14):

* calibrate and compile as subprocesses through the project's runner: wall time (process start and
  imports included, as in a materialization) and peak RSS;
* fp32 (the source model, dims fixed like the compile) vs int8 (`programqpc.onnx`) latency on ONNX
  Runtime (default session options, median over repeated runs of one batch), and agreement/accuracy
  on the held-out set (`accuracy.compare`, the asset check's numbers);
* calibration + quantization in process (`cpu_exec.run` with the same argv: calibrate, then compile)
  vs ONNX Runtime's own `quantize_static` on the same model (pruned and dims fixed the same way) and
  the same calibration batches, with equivalent settings (QDQ, per-channel and node exclusions as the
  flags say): with MinMax calibration (ranges only: less work than our profile, which also holds a
  512-bin histogram per tensor) and with Percentile calibration (histograms, ORT's 2048 bins: the
  like-for-like work). All timed in the same process, rotating which goes first.

    python -m benchmarks.bench_cpu_compiler [--quick] [--models a,b] [--batch 1,8] [--repeat N]

Run time on the 2-core benchmark machine: about 5 minutes (8 minutes with --repeat 2), RetinaNet
being most of it; --quick (digits and resnet50) about 1.5 minutes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import common


def _settings_for_ort(argv: list[str], model, node_precision):
    """quantize_static keyword arguments equivalent to the compile flags (see cpu_exec/cpu_compile)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    from qaic_assets.cpu_compiler import compile as cpu_compile
    from qaic_assets.qaic.flags import parse_argv

    p = parse_argv(argv[1:])
    act = p.get("quantization-schema-activations") or p.get("quantization-schema") or cpu_compile.DEFAULT_SCHEMA
    const = p.get("quantization-schema-constants") or p.get("quantization-schema") or cpu_compile.DEFAULT_SCHEMA
    fp16 = set(p.get_list("execute-nodes-in-fp16"))
    ops = sorted((set(QLinearOpsRegistry) | set(QDQRegistry)) - fp16)
    exclude = []
    if node_precision:
        tensors = set(cpu_compile.read_node_precision(node_precision))
        exclude = sorted({n.name for n in model.graph.node if tensors & set(n.output)})
    return dict(
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=ops,
        per_channel=p.get_bool("enable-channelwise"),
        activation_type=QuantType.QUInt8 if act == "asymmetric" else QuantType.QInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=exclude,
        calibrate_method=CalibrationMethod.MinMax,
        extra_options={"ActivationSymmetric": act != "asymmetric", "WeightSymmetric": const != "asymmetric"},
    )


def ort_quantize_static(model_path, batched_list: Path, argv: list[str], out: Path, batch: int,
                        method: str = "MinMax") -> float:
    """ONNX Runtime's own path: prepare the model like the compiler does, quantize_static, save.
    `method` MinMax (ranges only) or Percentile (histograms: ORT's fixed 2048 bins, 99.999)."""
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    from qaic_assets.cpu_compiler import graph as cal
    from qaic_assets.qaic.formats import rawdata
    from qaic_assets.qaic.flags import parse_argv

    p = parse_argv(argv[1:])
    t0 = time.perf_counter()
    model = cal.prepare_model(model_path, batch=batch, symbols=dict(p.symbols),
                              output_node_name=p.get("output-node-name"))
    specs = cal.input_specs(model)
    lines = rawdata.read_input_list(batched_list)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = rawdata.iter_batches(lines, specs)

        def get_next(self):
            nxt = next(self.it, None)
            return None if nxt is None else {s.name: a for s, a in zip(specs, nxt[0])}

    cal.name_nodes(model)
    np_file = p.get("node-precision-info")
    kwargs = _settings_for_ort(argv, model, np_file)
    if method == "Percentile":
        from onnxruntime.quantization import CalibrationMethod

        kwargs["calibrate_method"] = CalibrationMethod.Percentile
        kwargs["extra_options"] = {**kwargs["extra_options"], "CalibPercentile": 99.999}
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrator prints its progress
        quantize_static(model, str(out), Reader(), **kwargs)
    return time.perf_counter() - t0


def ours_in_process(calib_argv: list[str], compile_argv: list[str], calib_dir: Path, out_dir: Path) -> tuple:
    """`qaic-exec-cpu` calibrate then compile, in this process (no interpreter start)."""
    from qaic_assets.cpu_compiler import main as cpu_exec

    profile = out_dir / "profile.yaml"
    argv_c = [a if not a.startswith("-dump-profile=") else f"-dump-profile={profile}" for a in calib_argv[1:]]
    argv_c = [a if not a.startswith("-input-list-file=") else f"-input-list-file={calib_dir / 'batched_input_files'}"
              for a in argv_c]
    argv_q = [a if not a.startswith("-load-profile=") else f"-load-profile={profile}" for a in compile_argv[1:]]
    argv_q = [a if not a.startswith("-aic-binary-dir=") else f"-aic-binary-dir={out_dir / 'elfs'}" for a in argv_q]
    import contextlib
    import io

    from qaic_assets.cpu_compiler import calibrate as cpu_calibrate

    seen = {}
    calibrate = cpu_calibrate.calibrate

    def spy(*a, **k):  # keep the result's own split: session runs vs statistics
        seen["result"] = calibrate(*a, **k)
        return seen["result"]

    cpu_calibrate.calibrate = spy
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            t0 = time.perf_counter()
            assert cpu_exec.run(argv_c) == 0
            t1 = time.perf_counter()
            assert cpu_exec.run(argv_q) == 0
            t2 = time.perf_counter()
    finally:
        cpu_calibrate.calibrate = calibrate
    res = seen["result"]
    return t1 - t0, t2 - t1, res.seconds_run, res.seconds_stats


def latency_ms(session_input, feeds: dict, budget_s: float = 2.0, min_runs: int = 5, max_runs: int = 50) -> float:
    import onnxruntime as ort

    data = session_input.SerializeToString() if hasattr(session_input, "SerializeToString") else str(session_input)
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    types = {i.name: i.type for i in sess.get_inputs()}
    import numpy as np

    feeds = {k: (v.astype(np.float16) if types.get(k) == "tensor(float16)" else v) for k, v in feeds.items() if k in names}
    for _ in range(2):
        sess.run(None, feeds)
    times = []
    start = time.perf_counter()
    while len(times) < max_runs and (len(times) < min_runs or time.perf_counter() - start < budget_s):
        t = time.perf_counter()
        sess.run(None, feeds)
        times.append((time.perf_counter() - t) * 1000)
    return common.median(times)


def bench_one(config, model: str, batch: int, work: Path, repeat: int, percentile: bool = True) -> dict:
    from qaic_assets.cpu_compiler import graph as cal
    from qaic_assets.qaic.formats import rawdata
    from qaic_assets.builder.accuracy import compare
    from qaic_assets.builder.service import sample_sizes
    from qaic_assets.qaic.formats.batching import prepare_batched_inputs
    from qaic_assets.builder.accuracy import heldout_files
    from qaic_assets.qaic.commands import BATCHED_LIST_FILE
    from qaic_assets.builder.plan import calibrate_command, compile_command
    from qaic_assets.keys import BinaryPartition
    from qaic_assets.builder.store import model_inputs
    from qaic_assets.qaic.flags import parse_argv
    from qaic_assets.builder.process import run_compiler
    from qaic_assets.qaic.sdk import select_backend
    from qaic_assets.builder.sources import ensure_source

    backend = select_backend(config.backend, config.sdk_root)
    source = ensure_source(config, model)
    inputs = model_inputs(config, model)
    calib_cmd = calibrate_command(config, backend, model, batch)
    comp_cmd = compile_command(config, backend, model, BinaryPartition(batch, "offline", 14))
    base = work / model / f"bs{batch}"
    if base.exists():
        shutil.rmtree(base)
    calib_dir = base / "calibration"
    calib = config.model(model).calibration
    batched = prepare_batched_inputs(inputs.calibration_list, batch, calib_dir,
                                     input_sizes=sample_sizes(source.description, calib_cmd.argv),
                                     first=calib.first if calib else None,
                                     filter_size=calib.filter_size if calib else None)
    # 1. subprocesses through the runner (as the ops run them): wall + peak RSS
    r_cal = run_compiler(calib_cmd.argv, cwd=calib_dir, timeout_s=3600)
    comp_argv = [a if not a.startswith("-load-profile=") else f"-load-profile={calib_dir / 'profile.yaml'}"
                 for a in comp_cmd.argv]
    comp_dir = base / "compiled"
    comp_dir.mkdir()
    r_comp = run_compiler(comp_argv, cwd=comp_dir, timeout_s=3600)
    binary = comp_dir / comp_cmd.output
    binary_mb = binary.stat().st_size / 1e6
    info = json.loads((binary.parent / "qaic-exec-cpu.json").read_text())

    # 2. latency fp32 vs int8 on one held-out batch; agreement/accuracy on the whole held-out set
    p = parse_argv(comp_argv[1:])
    fp32 = cal.prepare_model(source.path, batch=batch, symbols=dict(p.symbols),
                             output_node_name=p.get("output-node-name"))
    specs = cal.input_specs(fp32)
    heldout, labels = heldout_files(config, model)
    arrays, _ = next(rawdata.iter_batches(rawdata.read_input_list(heldout), specs))
    feeds = {s.name: a for s, a in zip(specs, arrays)}
    lat_fp32 = latency_ms(fp32, feeds)
    lat_int8 = latency_ms(binary, feeds)
    acc = compare(source.path, binary, heldout, batch=batch, symbols=dict(p.symbols), labels=labels)

    # 3. calibration + quantization in process vs ORT quantize_static, alternating order
    ours, ort_s, ort_pct = [], [], []
    for i in range(repeat):
        order = ["ours", "ort", "ort-pct"]
        order = order[i % 3:] + order[:i % 3]
        for who in order:
            scratch = Path(tempfile.mkdtemp(dir=base))
            if who == "ours":
                ours.append(ours_in_process(calib_cmd.argv, comp_argv, calib_dir, scratch))
            elif who == "ort":
                ort_s.append(ort_quantize_static(source.path, calib_dir / BATCHED_LIST_FILE, comp_argv,
                                                 scratch / "ort.onnx", batch))
            elif percentile:
                ort_pct.append(ort_quantize_static(source.path, calib_dir / BATCHED_LIST_FILE, comp_argv,
                                                   scratch / "ort.onnx", batch, method="Percentile"))
            shutil.rmtree(scratch)
    ours_cal = common.median(o[0] for o in ours)
    ours_q = common.median(o[1] for o in ours)
    ours_tot = common.median(o[0] + o[1] for o in ours)
    ours_run = common.median(o[2] for o in ours)
    ours_stats = common.median(o[3] for o in ours)
    ort_tot = common.median(ort_s)
    shutil.rmtree(base)
    return {
        "model": model, "batch": batch, "samples": batched.n_samples, "model_mb": round(source.size / 1e6, 1),
        "calibrate_s": r_cal.duration_s, "calibrate_rss_mb": r_cal.peak_rss_bytes / 2**20,
        "compile_s": r_comp.duration_s, "compile_rss_mb": r_comp.peak_rss_bytes / 2**20,
        "binary_mb": binary_mb,
        "quantized_tensors": (info.get("quantization") or {}).get("quantized_tensors"),
        "fp32_ms": lat_fp32, "int8_ms": lat_int8, "speedup": lat_fp32 / lat_int8,
        "metric": acc["metric"], "score": acc["score"], "cosine": acc["cosine"],
        "top1_agreement": acc["top1_agreement"], "accuracy_fp32": acc["accuracy_fp32"],
        "accuracy_int8": acc["accuracy_compiled"], "heldout": acc["samples"],
        "ours_calibrate_s": ours_cal, "ours_quantize_s": ours_q, "ours_total_s": ours_tot,
        "ours_session_run_s": ours_run, "ours_stats_s": ours_stats,
        "ort_quantize_static_s": ort_tot, "ratio_ours_ort": ours_tot / ort_tot,
        "ort_percentile_s": common.median(ort_pct) if ort_pct else None,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="digits and resnet50 only, batch 1 and 8")
    ap.add_argument("--models", help="comma-separated (default: every model of the default config)")
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--repeat", type=int, default=1, help="in-process ours vs ORT repetitions (median)")
    ap.add_argument("--work", type=Path, default=common.DEFAULT_WORK)
    ap.add_argument("--json", type=Path, help="also write the rows as JSON here")
    ap.add_argument("--no-percentile", action="store_true",
                    help="skip ORT quantize_static with Percentile (histogram) calibration")
    args = ap.parse_args()

    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger().setLevel(logging.ERROR)  # quantize_static's "consider pre-processing" advice
    info = common.machine_info()
    common.print_machine(info)
    from qaic_assets.settings import load_settings

    all_models = list(load_settings(common.DEFAULT_CONFIG).model_names)
    models = args.models.split(",") if args.models else (["digits", "resnet50"] if args.quick else all_models)
    batches = [int(b) for b in args.batch.split(",")]
    storage = args.work / "cpu_compiler" / "storage"
    storage.mkdir(parents=True, exist_ok=True)
    for m in models:  # stand-in sources: hard links to the cache
        if m in common.STANDIN_MODELS and not (storage / m / "source").exists():
            cache = common.standin_cache(args.work, [m])
            (storage / m).mkdir(exist_ok=True)
            subprocess.run(["cp", "-al", str(cache / m / "source"), str(storage / m / "source")], check=True)
    cfg_path = common.write_config(args.work / "cpu_compiler" / "config.yaml", storage, models=models)
    config = load_settings(cfg_path)
    rows = []
    with common.LoadSampler() as load:
        for m in models:
            for b in batches:
                t = time.time()
                rows.append(bench_one(config, m, b, args.work / "cpu_compiler" / "scratch", args.repeat,
                                      percentile=not args.no_percentile))
                print(f"  {m} bs{b} done in {time.time() - t:.0f}s", file=sys.stderr, flush=True)
    print(f"load average during the benchmark: median {load.summary()['load_median']}, "
          f"max {load.summary()['load_max']}\n")

    print("CPU reference compiler: subprocess wall time (process start included) and peak RSS, target offline-nsp14")
    print(common.table(
        ["model", "batch", "model MB", "calib samples", "calibrate s", "calibrate RSS MB", "compile s",
         "compile RSS MB", "int8 MB"],
        [[r["model"], r["batch"], f"{r['model_mb']:.1f}", r["samples"], f"{r['calibrate_s']:.2f}",
          f"{r['calibrate_rss_mb']:.0f}", f"{r['compile_s']:.2f}", f"{r['compile_rss_mb']:.0f}",
          f"{r['binary_mb']:.1f}"] for r in rows]))
    print("\nint8 vs fp32 on ONNX Runtime (CPU, default session options; latency = median per batch)")

    def fmt(x, spec=".4f"):
        return "-" if x is None else format(x, spec)

    print(common.table(
        ["model", "batch", "fp32 ms", "int8 ms", "fp32/int8", "check metric", "score", "cosine", "top-1 agree",
         "acc fp32", "acc int8", "held-out"],
        [[r["model"], r["batch"], f"{r['fp32_ms']:.3g}", f"{r['int8_ms']:.3g}", f"{r['speedup']:.2f}",
          r["metric"], fmt(r["score"]), fmt(r["cosine"]), fmt(r["top1_agreement"], ".3f"),
          fmt(r["accuracy_fp32"], ".3f"), fmt(r["accuracy_int8"], ".3f"), r["heldout"]] for r in rows]))
    print(f"\ncalibration + quantization in process: qaic-exec-cpu (calibrate, then compile) vs ONNX Runtime "
          f"quantize_static (MinMax, QDQ; same model, batches and exclusions); median of {args.repeat}")
    print(common.table(
        ["model", "batch", "ours calibrate s", "(model runs s", "histograms s)", "ours quantize s", "ours total s",
         "ORT MinMax s", "ours / ORT MinMax", "ORT Percentile s", "ours / ORT Percentile"],
        [[r["model"], r["batch"], f"{r['ours_calibrate_s']:.2f}", f"{r['ours_session_run_s']:.2f}",
          f"{r['ours_stats_s']:.2f}", f"{r['ours_quantize_s']:.2f}",
          f"{r['ours_total_s']:.2f}", f"{r['ort_quantize_static_s']:.2f}", f"{r['ratio_ours_ort']:.2f}",
          f"{r['ort_percentile_s']:.2f}" if r["ort_percentile_s"] else "-",
          f"{r['ours_total_s'] / r['ort_percentile_s']:.2f}" if r["ort_percentile_s"] else "-"]
         for r in rows]))
    ratios = sorted(r["ratio_ours_ort"] for r in rows)
    met = common.median(ratios) <= 1.10
    print(f"\ntarget: CPU compiler <= 1.10x quantize_static for the same calibration method (MinMax ranges), "
          f"median over models and batch sizes: {common.median(ratios):.2f} [{ratios[0]:.2f}-{ratios[-1]:.2f}] "
          f"({'met' if met else 'NOT met'})")
    pct = sorted(r["ours_total_s"] / r["ort_percentile_s"] for r in rows if r["ort_percentile_s"])
    if pct:
        print(f"ours (profile with histograms) / ORT Percentile (histogram calibration): median "
              f"{common.median(pct):.2f} [{pct[0]:.2f}-{pct[-1]:.2f}]")
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "load": load.summary(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
