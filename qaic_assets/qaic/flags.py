"""qaic-exec's flag grammar and the table of flags the project uses (docs/FORMATS.md, the seed's variations).

Grammar: every argument is ``-name`` or ``-name=value``. ``-onnx-define-symbol=name,value`` may repeat
and accumulates (a later value for the same symbol wins); for every other flag the last occurrence wins.
An unknown flag is an error naming it.

``FLAGS`` is data: for each flag, what its value looks like and, for the CPU reference compiler
(``qaic-exec-cpu``), what it does on ONNX Runtime ("applied") or that it only steers the AI 100 hardware
("not applicable on CPU").

    parsed = parse_argv(["-model=m.onnx", "-batchsize=8", "-onnx-define-symbol=seq,384"])
    parsed.get("batchsize")  -> "8";   parsed.symbols -> {"seq": 384}
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field

APPLIED = "applied"
NOT_APPLICABLE = "not applicable on CPU"

# value kinds: "none" (bare switch), "bool" (bare or =true/false/1/0), "int", "float", "str",
# "path", "list" (comma-separated), "symbol" (name,int; repeats)


@dataclass(frozen=True)
class Flag:
    name: str
    kind: str
    cpu: str  # APPLIED or NOT_APPLICABLE
    meaning: str  # what the CPU backend does with it (or what it means on the card)
    choices: tuple[str, ...] = ()


def _f(name, kind, cpu, meaning, choices=()):
    return Flag(name, kind, cpu, meaning, tuple(choices))


SCHEMAS = ("symmetric", "asymmetric", "symmetric_with_uint8")
CALIBRATIONS = ("None", "Percentile")

FLAGS: dict[str, Flag] = {f.name: f for f in [
    # --- shared by calibrate and compile ---
    _f("model", "path", APPLIED, "source ONNX model"),
    _f("batchsize", "int", APPLIED, "first dim of every graph input (and a batch_size symbol)"),
    _f("onnx-define-symbol", "symbol", APPLIED, "fixes a symbolic dim to a value"),
    _f("output-node-name", "str", APPLIED, "graph pruned to that node's outputs (node or tensor name)"),
    _f("enable-channelwise", "bool", APPLIED, "compile: per-channel weight scales (ORT per_channel); "
       "calibrate: accepted, profiles are per tensor"),
    _f("node-precision-info", "path", APPLIED, "YAML FP16/FP32NodeInstanceNames: producers of those tensors "
       "stay float (ORT nodes_to_exclude)"),
    _f("vvv", "none", APPLIED, "verbose progress lines"),
    # --- calibrate ---
    _f("input-list-file", "path", APPLIED, "calibration inputs (list file of raw files)"),
    _f("dump-profile", "path", APPLIED, "calibrate mode: write the Glow-style profile YAML here"),
    _f("profiling-threads", "int", APPLIED, "ONNX Runtime intra-op threads while profiling"),
    _f("num-histogram-bins", "int", APPLIED, "histogram bins per tensor in the profile (default 512)"),
    # --- compile ---
    _f("load-profile", "path", APPLIED, "activation ranges for int8 quantization (no re-calibration)"),
    _f("aic-binary-dir", "path", APPLIED, "output dir: programqpc.onnx + qaic-exec-cpu.json"),
    _f("quantization-schema", "str", APPLIED, "activations and constants schema", SCHEMAS),
    _f("quantization-schema-activations", "str", APPLIED, "activation schema (overrides -quantization-schema)",
       SCHEMAS),
    _f("quantization-schema-constants", "str", APPLIED, "weight schema (overrides -quantization-schema)", SCHEMAS),
    _f("quantization-precision", "str", APPLIED, "Int8 (8-bit Q/DQ) or Int16 (16-bit Q/DQ)", ("Int8", "Int16")),
    _f("quantization-precision-bias", "str", APPLIED, "Int32: bias quantized to int32 (ORT QuantizeBias); "
       "Int8 is not available in ORT QDQ and is recorded as not applied", ("Int8", "Int32")),
    _f("quantization-calibration", "str", APPLIED, "None: profile Min/Max; Percentile: range from the "
       "profile histogram", CALIBRATIONS),
    _f("percentile-calibration-value", "float", APPLIED, "percentile for -quantization-calibration=Percentile"),
    _f("execute-nodes-in-fp16", "list", APPLIED, "those op types are not quantized (they run in float)"),
    _f("convert-to-fp16", "bool", APPLIED, "without -load-profile: fp16 model (onnxruntime.transformers.float16)"),
    _f("compile-only", "none", NOT_APPLICABLE, "compile without running on a card"),
    _f("aic-hw", "none", NOT_APPLICABLE, "target real AI 100 hardware"),
    _f("aic-hw-version", "str", NOT_APPLICABLE, "AI 100 hardware version"),
    _f("aic-num-cores", "int", NOT_APPLICABLE, "NSP cores per instance"),
    _f("aic-num-of-instances", "int", NOT_APPLICABLE, "number of program instances"),
    _f("aic-enable-depth-first", "bool", NOT_APPLICABLE, "depth-first scheduling on the NSPs"),
    _f("mos", "list", NOT_APPLICABLE, "maximum output channel split"),
    _f("ols", "list", NOT_APPLICABLE, "overlap split factor"),
    _f("multicast-weights", "bool", NOT_APPLICABLE, "multicast weights across cores"),
    _f("combine-inputs", "bool", NOT_APPLICABLE, "combine input buffers"),
    _f("combine-outputs", "bool", NOT_APPLICABLE, "combine output buffers"),
    _f("use-producer-dma", "bool", NOT_APPLICABLE, "producer DMA"),
    _f("allocator-dealloc-delay", "int", NOT_APPLICABLE, "on-chip allocator deallocation delay"),
    _f("size-split-granularity", "int", NOT_APPLICABLE, "tensor split granularity"),
    _f("vtcm-working-set-limit-ratio", "float", NOT_APPLICABLE, "VTCM working set limit"),
    _f("sdp-cluster-sizes", "list", NOT_APPLICABLE, "SDP cluster sizes"),
]}


class FlagError(ValueError):
    """A malformed or unknown flag; the message names it and the fix."""


@dataclass
class ParsedFlags:
    """Flags in first-appearance order; the value of a repeated flag is its last occurrence."""

    values: dict[str, str | None] = field(default_factory=dict)  # name -> raw value (None for bare flags)
    symbols: dict[str, int] = field(default_factory=dict)  # -onnx-define-symbol, in order

    def __contains__(self, name: str) -> bool:
        return name in self.values

    def get(self, name: str, default: str | None = None) -> str | None:
        v = self.values.get(name, default)
        return default if v is None else v

    def get_int(self, name: str, default: int | None = None) -> int | None:
        return int(self.values[name]) if self.values.get(name) is not None else default

    def get_float(self, name: str, default: float | None = None) -> float | None:
        return float(self.values[name]) if self.values.get(name) is not None else default

    def get_bool(self, name: str, default: bool = False) -> bool:
        if name not in self.values:
            return default
        v = self.values[name]
        return True if v is None else v.strip().lower() in ("1", "true", "yes", "on")

    def get_list(self, name: str) -> list[str]:
        v = self.values.get(name)
        return [x.strip() for x in v.split(",") if x.strip()] if v else []

    def argv(self) -> list[str]:
        """Normalized argv (each flag once, symbols expanded)."""
        out = []
        for name, v in self.values.items():
            if name == "onnx-define-symbol":
                out += [f"-onnx-define-symbol={k},{n}" for k, n in self.symbols.items()]
            else:
                out.append(f"-{name}" if v is None else f"-{name}={v}")
        return out

    def split_by_cpu_status(self) -> tuple[list[str], list[str]]:
        """(applied flag names, not-applicable-on-CPU flag names) among those given."""
        applied = [n for n in self.values if FLAGS[n].cpu == APPLIED]
        na = [n for n in self.values if FLAGS[n].cpu == NOT_APPLICABLE]
        return applied, na


def parse_argv(argv: Sequence[str]) -> ParsedFlags:
    """Parse qaic-exec arguments; raises FlagError naming the first bad one."""
    parsed = ParsedFlags()
    for arg in argv:
        if not arg.startswith("-") or arg.startswith("--") or len(arg) < 2:
            raise FlagError(f"unexpected argument {arg!r}: qaic-exec takes only -name or -name=value flags")
        name, sep, value = arg[1:].partition("=")
        flag = FLAGS.get(name)
        if flag is None:
            close = difflib.get_close_matches(name, FLAGS, n=1)
            hint = f" (did you mean -{close[0]}?)" if close else " (the known flags are qaic_flags.FLAGS)"
            raise FlagError(f"unknown flag -{name}: remove it or fix its spelling{hint}")
        val: str | None = value if sep else None
        _check_value(flag, val)
        if flag.kind == "symbol":
            sym, _, num = val.partition(",")
            parsed.symbols.pop(sym.strip(), None)  # keep order of the latest definition
            parsed.symbols[sym.strip()] = int(num)
        parsed.values.pop(name, None)  # last occurrence wins (and moves to the end)
        parsed.values[name] = val
    return parsed


def _check_value(flag: Flag, val: str | None) -> None:
    def bad(what: str) -> FlagError:
        return FlagError(f"flag -{flag.name}: {what}")

    if flag.kind == "none":
        if val is not None:
            raise bad(f"takes no value, got {val!r}: write -{flag.name}")
        return
    if flag.kind == "bool":
        if val is not None and val.strip().lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
            raise bad(f"expects true/false or 1/0, got {val!r}")
        return
    if val is None or val == "":
        raise bad(f"needs a value: write -{flag.name}=<value>")
    if flag.kind == "int":
        try:
            int(val)
        except ValueError:
            raise bad(f"expects an integer, got {val!r}") from None
    elif flag.kind == "float":
        try:
            float(val)
        except ValueError:
            raise bad(f"expects a number, got {val!r}") from None
    elif flag.kind == "symbol":
        sym, sep, num = val.partition(",")
        try:
            ok = bool(sep) and bool(sym.strip()) and int(num) > 0
        except ValueError:
            ok = False
        if not ok:
            raise bad(f"expects name,value with a positive integer value, got {val!r}")
    if flag.choices and val not in flag.choices:
        raise bad(f"expects one of {', '.join(flag.choices)}, got {val!r}")
