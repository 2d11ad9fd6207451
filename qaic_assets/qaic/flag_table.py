"""The SDK compiler's documented flags as data: qaic-exec and qaic-compile take the same set.

Sources (docs/FORMATS.md "Compiler flags" cites them per flag): the Cloud AI SDK pages
(Python-API/qaic/qaic.md, whose keyword arguments are the compiler flags with ``_`` -> ``-``, and
Compile-the-Model.md), Glow's loader (the compiler's ancestor: ``-m`` alias, schemas, LLVM booleans),
the seed's recipes, and Qualcomm's own callers of ``qaic-compile`` (cloud-ai-sdk 1.21 examples,
efficient-transformers).

Kinds: ``bool`` (bare, or ``=true|false|1|0`` as LLVM spells them), ``switch`` (bare only), ``int``, ``float``, ``str``
(a token: no blanks, no shell metacharacters), ``choice``, ``ints`` / ``names`` (comma-separated),
``symbol`` (``name,int``), ``infile`` (a file the compiler reads: resolved against the config file,
must exist, its sha256 is part of the cache key), ``outfile`` / ``outdir`` (written by the compiler
inside the build directory). ``repeat`` flags may be given several times and accumulate; for every
other flag the last occurrence wins. ``mode``: ``compile``, ``calibrate`` or ``both``.
"""

from __future__ import annotations

from dataclasses import dataclass

APPLIED = "applied"
NOT_APPLICABLE = "not applicable on CPU"

SCHEMAS = ("asymmetric", "symmetric", "symmetric_with_uint8", "symmetric_with_power2_scale")
CALIBRATIONS = ("None", "KLMinimization", "KLMinimizationV2", "Percentile", "MSE", "SQNR")
PMU_RECIPES = ("AxiRd", "AxiWr", "AxiRdWr", "KernelUtil", "HmxMacs")
PROFILING_TYPES = ("stats", "trace", "latency")


@dataclass(frozen=True)
class Flag:
    name: str
    kind: str
    cpu: str  # APPLIED or NOT_APPLICABLE (see cpu_values)
    meaning: str  # what the CPU backend does with it, or what it does on the card
    choices: tuple[str, ...] = ()
    low: float | None = None  # inclusive range of an int/float value
    high: float | None = None
    repeat: bool = False
    mode: str = "compile"
    aliases: tuple[str, ...] = ()
    pattern: str | None = None  # a regex the value must match in full (str kind)
    cpu_values: tuple[str, ...] = ()  # when set: only these values are applied on CPU

    def cpu_status(self, value: str | None) -> str:
        if self.cpu == APPLIED and self.cpu_values and value not in self.cpu_values:
            return NOT_APPLICABLE
        return self.cpu


def _f(name, kind, cpu, meaning, **kw) -> Flag:
    for key in ("choices", "aliases", "cpu_values"):
        if key in kw:
            kw[key] = tuple(kw[key])
    return Flag(name, kind, cpu, meaning, **kw)


A, NA = APPLIED, NOT_APPLICABLE

_TABLE = [
    # --- inputs, outputs and shapes (calibrate and compile) ---
    _f("model", "infile", A, "source ONNX model", mode="both", aliases=["m"]),
    _f("batchsize", "int", A, "first dim of every graph input (and a batch_size symbol)", low=1, mode="both"),
    _f("onnx-define-symbol", "symbol", A, "fixes a symbolic dim to a value", repeat=True, mode="both"),
    _f("output-node-name", "str", A, "graph pruned to that node's outputs (node or tensor name)", mode="both"),
    _f("node-precision-info", "infile", A, "YAML FP16/FP32NodeInstanceNames: producers of those tensors stay "
       "float (ORT nodes_to_exclude)", mode="both"),
    _f("enable-channelwise", "bool", A, "compile: per-channel weight scales (ORT per_channel); calibrate: "
       "accepted, profiles are per tensor", mode="both"),
    _f("enable-rowwise", "bool", NA, "rowwise-quantized FullyConnected / SparseLengthsSum", mode="both"),
    _f("profiling-threads", "int", A, "ONNX Runtime intra-op threads while profiling (compile: unused)",
       low=1, mode="both"),
    _f("vvv", "switch", A, "verbose progress lines", mode="both"),
    _f("v", "switch", NA, "verbose compiler log (the CPU compiler has only -vvv)", mode="both"),
    # --- calibrate ---
    _f("input-list-file", "infile", A, "calibration inputs (list file of raw files); also a compile's, without "
       "-load-profile: one-step quantization (calibrated inline, then quantized; flags.check_mode)",
       mode="calibrate"),
    _f("dump-profile", "outfile", A, "calibrate mode: write the Glow-style profile YAML here", mode="calibrate"),
    _f("num-histogram-bins", "int", A, "histogram bins per tensor in the profile (default 512)", low=1,
       mode="calibrate"),
    # --- quantization (compile) ---
    _f("load-profile", "infile", A, "activation ranges for int8 quantization (no re-calibration)"),
    _f("external-quantization-file", "infile", NA, "an externally generated quantization profile"),
    _f("convert-to-quantize", "bool", NA, "profile the inputs and quantize in one step (not with "
       "-load-profile or -dump-profile)"),
    _f("quantization-schema", "choice", A, "activations and constants schema", choices=SCHEMAS,
       cpu_values=SCHEMAS[:3]),
    _f("quantization-schema-activations", "choice", A, "activation schema (overrides -quantization-schema)",
       choices=SCHEMAS, cpu_values=SCHEMAS[:3]),
    _f("quantization-schema-constants", "choice", A, "weight schema (overrides -quantization-schema)",
       choices=SCHEMAS, cpu_values=SCHEMAS[:3]),
    _f("quantization-precision", "choice", A, "Int8 (8-bit Q/DQ) or Int16 (16-bit Q/DQ)",
       choices=["Int8", "Int16"]),
    _f("quantization-precision-bias", "choice", A, "Int32: bias quantized to int32 (ORT QuantizeBias); Int8 "
       "is not available in ORT QDQ and is recorded as not applied", choices=["Int8", "Int32"]),
    _f("quantization-calibration", "choice", A, "None: profile Min/Max; Percentile: range from the profile "
       "histogram; the others only on the card", choices=CALIBRATIONS, cpu_values=["None", "Percentile"]),
    _f("percentile-calibration-value", "float", A, "percentile for -quantization-calibration=Percentile "
       "(90-100 as the SDK documents)", low=90.0, high=100.0),
    _f("execute-nodes-in-fp16", "names", A, "those op types are not quantized (they run in float)"),
    _f("keep-original-precision-for-nodes", "names", NA, "those op types keep the model's precision",
       repeat=True),
    _f("convert-to-fp16", "bool", A, "without -load-profile: fp16 model (onnxruntime.transformers.float16)"),
    # --- output ---
    _f("aic-binary-dir", "outdir", A, "output dir: programqpc.onnx + qaic-exec-cpu.json"),
    _f("compile-only", "switch", NA, "compile without running on a card"),
    _f("mdp-load-partition-config", "infile", NA, "multi-device partition config (JSON)"),
    _f("mdp-dump-partition-config", "outfile", NA, "write the multi-device partition config"),
    _f("custom-IO-list-file", "infile", NA, "custom I/O layout, precision, scale and offset (YAML)"),
    _f("dump-custom-IO-config-template", "outfile", NA, "write a custom I/O config template (YAML)"),
    _f("network-specialization-config", "infile", NA, "specializations (JSON) of a multi-shape network"),
    _f("load-embedding-tables", "infile", NA, "embedding tables zip (DLRM, RecSys)"),
    _f("dump-embedding-tables", "outfile", NA, "write the embedding tables zip"),
    # --- target and parallelism ---
    _f("aic-hw", "switch", NA, "target real AI 100 hardware"),
    _f("aic-hw-version", "str", NA, "AI 100 hardware version (2.0, ai100, ai200)",
       pattern=r"[0-9]+\.[0-9]+|ai[0-9]+"),
    _f("aic-num-cores", "int", NA, "NSP cores per instance", low=1, high=16),
    _f("aic-num-of-instances", "int", NA, "number of program instances", low=1),
    _f("stats-batchsize", "int", NA, "performance statistics per inference of this batch", low=1),
    _f("mos", "ints", NA, "effort to reduce on-chip memory"),
    _f("ols", "ints", NA, "overlap split factor (finer-grained parallelism)"),
    _f("sdp-cluster-sizes", "ints", NA, "single-device partitioning cluster sizes"),
    _f("multicast-weights", "bool", NA, "multicast weights across cores"),
    _f("combine-inputs", "bool", NA, "combine input buffers"),
    _f("combine-outputs", "bool", NA, "combine output buffers"),
    _f("use-producer-dma", "bool", NA, "NSP DMAs from the producing thread"),
    _f("aic-enable-depth-first", "bool", NA, "depth-first scheduling on the NSPs"),
    _f("aic-depth-first-mem", "int", NA, "depth-first memory size (8-32)", low=8, high=32),
    _f("allocator-dealloc-delay", "int", NA, "on-chip allocator deallocation delay", low=0),
    _f("size-split-granularity", "int", NA, "tile size target in KiB", low=1),
    _f("vtcm-working-set-limit-ratio", "float", NA, "VTCM working set limit (0-1)", low=0.0, high=1.0),
    _f("dynamic-shape-input", "names", NA, "inputs with a dynamic shape"),
    _f("host-preproc", "bool", NA, "pre/post-processing on the host"),
    _f("aic-preproc", "bool", NA, "pre/post-processing on the card"),
    _f("always-expand-onnx-functions", "bool", NA, "expand ONNX functions"),
    _f("retained-state", "bool", NA, "keep state (KV cache) on the card between runs"),
    _f("mxfp6-matmul", "bool", NA, "MXFP6 MatMul weights"),
    _f("allow-mxint8-mdp-io", "bool", NA, "MXINT8 compression of multi-device I/O"),
    _f("io-crc", "bool", NA, "CRC of inputs and outputs"),
    _f("io-crc-stride", "int", NA, "CRC stride", low=1),
    _f("compile-threads", "int", NA, "parallel compile threads", low=1),
    _f("use-random-input-data", "str", NA, "random input data for -convert-to-quantize (e.g. gaussian)"),
    # --- diagnostics ---
    _f("aic-perf-warnings", "bool", NA, "print performance warnings"),
    _f("aic-perf-metrics", "bool", NA, "print compiler performance metrics"),
    _f("time-passes", "bool", NA, "print compile-time statistics per pass"),
    _f("enable-debug", "bool", NA, "debug mode during compilation"),
    _f("ddr-stats", "bool", NA, "DDR traffic per core"),
    _f("stats-level", "int", NA, "detail of the compile statistics", low=0),
    _f("aic-profiling-type", "choice", NA, "device profiling (stats, trace, latency); repeat for several",
       choices=PROFILING_TYPES, repeat=True),
    _f("aic-pmu-recipe", "choice", NA, "PMU events from a built-in recipe", choices=PMU_RECIPES),
    _f("aic-pmu-events", "names", NA, "NSP PMU events to track (up to 8)"),
]

FLAGS: dict[str, Flag] = {f.name: f for f in _TABLE}
ALIASES: dict[str, str] = {alias: f.name for f in _TABLE for alias in f.aliases}
