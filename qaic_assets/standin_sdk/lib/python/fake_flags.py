"""The stand-in compiler's own flag grammar (demos and tests; stdlib only; see ../../README.md). Deliberately
NOT shared with the rest of qaic_assets (qaic/flag_table.py), so it catches the project's mistakes rather
than sharing them; nothing in qaic_assets imports it (the stand-in compiler loads it from <sdk_root>/lib/python).

Written from the SDK documentation (Python-API/qaic/qaic.md keyword table, Compile-the-Model.md) and
Glow/LLVM conventions: `-name` or `-name=value`; booleans bare or =true|false|1|0 (TRUE/True/FALSE/False
too); `-m` is `-model`; -onnx-define-symbol, -aic-profiling-type and -keep-original-precision-for-nodes
repeat; flag names are case-sensitive.
"""

import re

ALIASES = {"m": "model"}
BOOL_VALUES = {"true": True, "TRUE": True, "True": True, "1": True,
               "false": False, "FALSE": False, "False": False, "0": False}

# mode: C = compile only, P = profiling (calibrate) only, B = both
BOOLS = {
    "B": "vvv v enable-channelwise enable-rowwise",
    "C": "aic-hw compile-only multicast-weights aic-enable-depth-first convert-to-fp16 use-producer-dma "
         "combine-inputs combine-outputs convert-to-quantize host-preproc aic-preproc "
         "always-expand-onnx-functions retained-state mxfp6-matmul allow-mxint8-mdp-io io-crc aic-perf-warnings "
         "aic-perf-metrics time-passes enable-debug ddr-stats "
         # newer SDKs (QEfficient's compiles, quic/efficient-transformers QEfficient/base/modeling_qeff.py @
         # ebf55e8159c8b87bff6d8028541b824244b16c81): not in the project's table, passed through to the SDK
         "sub-functions",
}
VALUES = {
    # input-list-file in a compile: one-step quantization (quic/cloud-ai-sdk "Model Recipies/Image_Classification/
    # EfficientNetB0/efficientnet_run.sh":59 @ 918b1d21c98c948d32678c37bbedaca4cbc46a49)
    "B": "model batchsize onnx-define-symbol output-node-name node-precision-info profiling-threads input-list-file",
    "P": "dump-profile num-histogram-bins",
    "C": "load-profile external-quantization-file quantization-schema quantization-schema-activations "
         "quantization-schema-constants quantization-precision quantization-precision-bias "
         "quantization-calibration percentile-calibration-value execute-nodes-in-fp16 "
         "keep-original-precision-for-nodes aic-binary-dir mdp-load-partition-config mdp-dump-partition-config "
         "custom-IO-list-file dump-custom-IO-config-template network-specialization-config load-embedding-tables "
         "dump-embedding-tables aic-hw-version aic-num-cores aic-num-of-instances stats-batchsize mos ols "
         "sdp-cluster-sizes aic-depth-first-mem allocator-dealloc-delay size-split-granularity "
         "vtcm-working-set-limit-ratio dynamic-shape-input io-crc-stride compile-threads use-random-input-data "
         "stats-level aic-profiling-type aic-pmu-recipe aic-pmu-events "
         "mdts-mos",  # as sub-functions above (QEfficient/diffusers/pipelines/configs/flux_config.json)
}


def _names(table, modes):
    return {n for m in modes for n in table.get(m, "").split()}


BOOL_FLAGS = _names(BOOLS, "BCP")
COMPILE_FLAGS = _names(BOOLS, "BC") | _names(VALUES, "BC")
CALIBRATE_FLAGS = _names(BOOLS, "BP") | _names(VALUES, "BP")
ALL_FLAGS = COMPILE_FLAGS | CALIBRATE_FLAGS
REPEATABLE = {"onnx-define-symbol", "aic-profiling-type", "keep-original-precision-for-nodes"}
INPUT_FILES = {"model", "load-profile", "node-precision-info", "input-list-file", "external-quantization-file",
               "mdp-load-partition-config", "custom-IO-list-file", "network-specialization-config",
               "load-embedding-tables"}
OUTPUT_FILES = {"dump-profile", "mdp-dump-partition-config", "dump-custom-IO-config-template",
                "dump-embedding-tables"}

SCHEMAS = {"asymmetric", "symmetric", "symmetric_with_uint8", "symmetric_with_power2_scale"}
ENUMS = {
    "quantization-schema": SCHEMAS,
    "quantization-schema-constants": SCHEMAS,
    "quantization-schema-activations": SCHEMAS,
    "quantization-precision": {"Int8", "Int16"},
    "quantization-precision-bias": {"Int8", "Int32"},
    "quantization-calibration": {"None", "KLMinimization", "KLMinimizationV2", "Percentile", "MSE", "SQNR"},
    "aic-profiling-type": {"stats", "trace", "latency"},
    "aic-pmu-recipe": {"AxiRd", "AxiWr", "AxiRdWr", "KernelUtil", "HmxMacs"},
}
# name -> (low, high) inclusive; None = unbounded
INT_RANGES = {
    "batchsize": (1, None), "aic-num-cores": (1, 16), "aic-num-of-instances": (1, None),
    "profiling-threads": (1, None), "num-histogram-bins": (1, None), "stats-batchsize": (1, None),
    "size-split-granularity": (1, None), "allocator-dealloc-delay": (0, None), "aic-depth-first-mem": (8, 32),
    "io-crc-stride": (1, None), "compile-threads": (1, None), "stats-level": (0, None),
}
FLOAT_RANGES = {"percentile-calibration-value": (90.0, 100.0), "vtcm-working-set-limit-ratio": (0.0, 1.0)}
INT_LISTS = {"mos", "ols", "sdp-cluster-sizes"}
NAME_LISTS = {"execute-nodes-in-fp16", "keep-original-precision-for-nodes", "dynamic-shape-input",
              "aic-pmu-events"}


def value_error(name, value):
    """None when `value` is valid for `-name`, else the reason."""
    if value == "":
        return "empty"
    if name in ENUMS and value not in ENUMS[name]:
        return "expected one of %s" % ", ".join(sorted(ENUMS[name]))
    if name in INT_RANGES:
        if not re.fullmatch(r"-?[0-9]+", value):
            return "expected an integer"
        lo, hi = INT_RANGES[name]
        if (lo is not None and int(value) < lo) or (hi is not None and int(value) > hi):
            return "expected an integer in [%s, %s]" % (lo, "inf" if hi is None else hi)
    if name in FLOAT_RANGES:
        try:
            f = float(value)
        except ValueError:
            return "expected a number"
        lo, hi = FLOAT_RANGES[name]
        if not lo <= f <= hi:
            return "expected a number in [%g, %g]" % (lo, hi)
    if name in INT_LISTS and not re.fullmatch(r"[0-9]+(,[0-9]+)*", value):
        return "expected integers separated by commas"
    if name in NAME_LISTS and not re.fullmatch(r"[^,\s]+(,[^,\s]+)*", value):
        return "expected names separated by commas"
    if name == "aic-hw-version" and not re.fullmatch(r"[0-9]+\.[0-9]+|ai[0-9]+", value):
        return "expected like 2.0 or ai100"
    if name == "onnx-define-symbol" and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.:/-]*,[0-9]*[1-9][0-9]*", value):
        return "expected name,integer"
    return None
