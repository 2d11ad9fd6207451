"""The compiler's flag grammar (qaic/flags.py over qaic/flag_table.py), against the SDK documentation
as written out by hand in /tmp/team/toolchain-notes.md and docs/FORMATS.md (not read from the table)."""

from __future__ import annotations

import pytest

from qaic_assets.qaic import flags
from qaic_assets.qaic.commands import number_text
from qaic_assets.qaic.flags import FlagError, parse_argv

# every flag the issue names, with documented values: (argv item, canonical name, value as parsed)
DOCUMENTED = [
    ("-m=model.onnx", "model", "model.onnx"),
    ("-aic-perf-metrics", "aic-perf-metrics", None),
    ("-aic-perf-warnings", "aic-perf-warnings", None),
    ("-stats-batchsize=8", "stats-batchsize", "8"),
    ("-time-passes", "time-passes", None),
    ("-aic-profiling-type=stats", "aic-profiling-type", "stats"),
    ("-aic-profiling-type=trace", "aic-profiling-type", "trace"),
    ("-aic-profiling-type=latency", "aic-profiling-type", "latency"),
    ("-mdp-load-partition-config=mdp.json", "mdp-load-partition-config", "mdp.json"),
    ("-mdp-dump-partition-config=mdp.json", "mdp-dump-partition-config", "mdp.json"),
    ("-custom-IO-list-file=io.yaml", "custom-IO-list-file", "io.yaml"),
    ("-aic-depth-first-mem=8", "aic-depth-first-mem", "8"),
    ("-aic-depth-first-mem=32", "aic-depth-first-mem", "32"),
    ("-convert-to-quantize", "convert-to-quantize", None),
    ("-external-quantization-file=q.yaml", "external-quantization-file", "q.yaml"),
    ("-keep-original-precision-for-nodes=Add,Div", "keep-original-precision-for-nodes", "Add,Div"),
    ("-enable-rowwise", "enable-rowwise", None),
    ("-enable-rowwise=false", "enable-rowwise", "false"),
    ("-compile-threads=4", "compile-threads", "4"),
    ("-profiling-threads=4", "profiling-threads", "4"),
    ("-quantization-schema=symmetric_with_power2_scale", "quantization-schema", "symmetric_with_power2_scale"),
    ("-quantization-schema-activations=symmetric_with_power2_scale", "quantization-schema-activations",
     "symmetric_with_power2_scale"),
    ("-quantization-schema-constants=asymmetric", "quantization-schema-constants", "asymmetric"),
    ("-percentile-calibration-value=90", "percentile-calibration-value", "90"),
    ("-percentile-calibration-value=99.99999", "percentile-calibration-value", "99.99999"),
    ("-percentile-calibration-value=100", "percentile-calibration-value", "100"),
    ("-aic-hw-version=2.0", "aic-hw-version", "2.0"),
    ("-aic-hw-version=ai100", "aic-hw-version", "ai100"),
    ("-aic-pmu-recipe=KernelUtil", "aic-pmu-recipe", "KernelUtil"),
    ("-use-producer-dma=1", "use-producer-dma", "1"),
    ("-combine-inputs=FALSE", "combine-inputs", "FALSE"),
    ("-vtcm-working-set-limit-ratio=0.75", "vtcm-working-set-limit-ratio", "0.75"),
    ("-mos=1,2", "mos", "1,2"),
] + [(f"-quantization-calibration={m}", "quantization-calibration", m)
     for m in ("None", "Percentile", "KLMinimization", "KLMinimizationV2", "MSE", "SQNR")]


@pytest.mark.parametrize("arg,name,value", DOCUMENTED)
def test_documented_flags_and_values_are_accepted_verbatim(arg, name, value):
    parsed = parse_argv([arg])
    assert parsed.values == {name: value}


@pytest.mark.parametrize("arg,name", [(arg, name) for arg, name, _ in DOCUMENTED])
def test_a_misspelled_flag_is_named_with_the_right_spelling(arg, name):
    written = arg[1:].partition("=")[0]
    typo = written[:-1] + ("x" if written[-1] != "x" else "y")  # last letter wrong
    with pytest.raises(FlagError, match=f"unknown flag -{typo}: remove it or fix its spelling"):
        parse_argv([f"-{typo}" + arg[1 + len(written):]])


@pytest.mark.parametrize("typo,right", [
    ("custom-io-list-file", "custom-IO-list-file"),  # LLVM names are case-sensitive
    ("aic-perf-metric", "aic-perf-metrics"),
    ("mdp-load-partition-confg", "mdp-load-partition-config"),
])
def test_the_hint_names_the_documented_spelling(typo, right):
    with pytest.raises(FlagError, match=f"did you mean -{right}\\?"):
        parse_argv([f"-{typo}=x"])


@pytest.mark.parametrize("arg,needle", [
    ("-percentile-calibration-value=80", "-percentile-calibration-value: must be between 90 and 100"),
    ("-percentile-calibration-value=100.5", "between 90 and 100"),
    ("-percentile-calibration-value=nan", "finite"),
    ("-aic-depth-first-mem=4", "-aic-depth-first-mem: must be between 8 and 32"),
    ("-aic-depth-first-mem=64", "between 8 and 32"),
    ("-aic-profiling-type=stat", "-aic-profiling-type: expects one of stats, trace, latency"),
    ("-quantization-calibration=KL", "expects one of None, KLMinimization"),
    ("-quantization-calibration=percentile", "did you mean Percentile"),
    ("-quantization-schema=power2", "symmetric_with_power2_scale"),
    ("-aic-perf-metrics=yes", "-aic-perf-metrics: is a switch"),
    ("-enable-rowwise=on", "true|false|1|0"),
    ("-aic-hw=1", "-aic-hw: takes no value"),
    ("-compile-threads=0", "at least 1"),
    ("-stats-batchsize", "needs a value"),
    ("-aic-hw-version=2.0;touch X", "-aic-hw-version"),
    ("-keep-original-precision-for-nodes=Add,,Div", "comma-separated names"),
    ("-mos=1;2", "integers separated by commas"),
    ("-onnx-define-symbol=seq", "name,value"),
    ("--aic-hw", "-name or -name=value"),
])
def test_values_outside_the_documented_set_name_the_flag(arg, needle):
    with pytest.raises(FlagError, match=needle.replace("|", "\\|").replace("?", "\\?")):
        parse_argv([arg])


def test_alias_means_its_flag_and_repeatable_flags_accumulate():
    p = parse_argv(["-m=a.onnx", "-model=b.onnx", "-aic-profiling-type=stats", "-aic-profiling-type=trace",
                    "-onnx-define-symbol=seq,128", "-onnx-define-symbol=batch_size,1",
                    "-onnx-define-symbol=seq,384", "-keep-original-precision-for-nodes=Add",
                    "-keep-original-precision-for-nodes=Div,Mul"])
    assert p.get("model") == "b.onnx"  # -m is -model: the last occurrence wins
    assert p.repeats["aic-profiling-type"] == ["stats", "trace"]
    assert p.symbols == {"batch_size": 1, "seq": 384}
    assert p.get_list("keep-original-precision-for-nodes") == ["Add", "Div", "Mul"]


def test_cpu_status_depends_on_the_value():
    p = parse_argv(["-quantization-calibration=MSE", "-enable-channelwise", "-aic-perf-metrics"])
    applied, na = p.split_by_cpu_status()
    assert applied == ["enable-channelwise"] and na == ["quantization-calibration", "aic-perf-metrics"]
    assert parse_argv(["-quantization-calibration=Percentile"]).split_by_cpu_status()[0] == [
        "quantization-calibration"]


def test_modes_and_conflicts():
    flags.check_mode(parse_argv(["-profiling-threads=4", "-aic-hw"]), calibrate=False)  # both modes
    with pytest.raises(FlagError, match="-dump-profile is not valid when compiling"):
        flags.check_mode(parse_argv(["-dump-profile=p.yaml"]), calibrate=False)
    with pytest.raises(FlagError, match="-aic-binary-dir is not valid when calibrating"):
        flags.check_mode(parse_argv(["-aic-binary-dir=elfs"]), calibrate=True)
    with pytest.raises(FlagError, match="-convert-to-quantize cannot be combined with -load-profile"):
        flags.check_mode(parse_argv(["-convert-to-quantize", "-load-profile=p.yaml"]), calibrate=False)


def test_an_input_list_in_a_compile_is_one_step_quantization():
    """The SDK's one-step commands (-input-list-file and quantization flags, no profile: quic/cloud-ai-sdk
    "Model Recipies" at 918b1d21) pass; with -load-profile as well the ranges would have two sources."""
    flags.check_mode(parse_argv(["-input-list-file=l.txt", "-aic-binary-dir=elfs", "-convert-to-quantize",
                                 "-quantization-schema=symmetric_with_uint8"]), calibrate=False)
    flags.check_mode(parse_argv(["-input-list-file=l.txt", "-dump-profile=p.yaml"]), calibrate=True)
    with pytest.raises(FlagError, match="-input-list-file and -load-profile together"):
        flags.check_mode(parse_argv(["-input-list-file=l.txt", "-load-profile=p.yaml"]), calibrate=False)
    with pytest.raises(FlagError, match="-num-histogram-bins is not valid when compiling"):
        flags.check_mode(parse_argv(["-input-list-file=l.txt", "-num-histogram-bins=64"]), calibrate=False)


def test_file_flags_resolve_against_the_config_and_outputs_stay_inside(tmp_path):
    argv = ["-custom-IO-list-file=io/io.yaml", "-mdp-load-partition-config=/abs/mdp.json",
            "-external-quantization-file=q.yaml", "-mdp-dump-partition-config=dump.json", "-aic-hw"]
    resolved = flags.resolve_file_flags(argv, tmp_path)
    assert resolved == [f"-custom-IO-list-file={tmp_path}/io/io.yaml", "-mdp-load-partition-config=/abs/mdp.json",
                        f"-external-quantization-file={tmp_path}/q.yaml", "-mdp-dump-partition-config=dump.json",
                        "-aic-hw"]
    assert flags.file_flags(resolved) == [("custom-IO-list-file", f"{tmp_path}/io/io.yaml"),
                                          ("mdp-load-partition-config", "/abs/mdp.json"),
                                          ("external-quantization-file", f"{tmp_path}/q.yaml")]
    flags.check_output_paths(["-mdp-dump-partition-config=sub/dump.json"])
    for bad in ("/etc/dump.json", "../dump.json"):
        with pytest.raises(FlagError, match="must stay inside the build directory"):
            flags.check_output_paths([f"-mdp-dump-partition-config={bad}"])


@pytest.mark.parametrize("value,text", [(99.99999, "99.99999"), (99.9997, "99.9997"), (100.0, "100"),
                                        (99.99, "99.99"), (90, "90"), ("99.990", "99.990")])
def test_numbers_reach_the_command_as_written(value, text):
    assert number_text(value) == text


# ------------------------------------------------------------------------------------ in the settings

CONFIG = """
storage_root: store
matrix: {{scenarios: [offline], nsp: [14], batch: [1]}}
models:
  m:
    recipe: resnet50
    source: {{path: m.onnx}}
    calibration: {{list: cal.txt}}
{extra}"""


def _load(tmp_path, extra: str):
    from qaic_assets.settings import load_settings

    path = tmp_path / "qaic.yaml"
    path.write_text(CONFIG.format(extra=extra))
    return load_settings(path)


def test_settings_accept_every_documented_compile_flag_and_resolve_files(tmp_path):
    compile_flags = [arg for arg, name, _ in DOCUMENTED if name not in ("model", "convert-to-quantize")]
    settings = _load(tmp_path, "    extra_flags: " + json_list(compile_flags) + "\n")
    got = settings.model("m").extra_flags
    assert f"-custom-IO-list-file={tmp_path}/io.yaml" in got
    assert f"-mdp-load-partition-config={tmp_path}/mdp.json" in got
    assert "-mdp-dump-partition-config=mdp.json" in got  # an output: inside the build dir, as written
    assert "-percentile-calibration-value=99.99999" in got and "-profiling-threads=4" in got


@pytest.mark.parametrize("extra,needle", [
    ("    extra_flags: [-m=other.onnx]\n", "may not set -m (alias of -model)"),
    ("    extra_flags: [-mdp-dump-partition-config=/etc/x.json]\n", "must stay inside the build directory"),
    ("    extra_flags: [-Percentile-calibration-value=99]\n", "did you mean -percentile-calibration-value"),
    ("    percentile: 50\n", "outside 90-100"),
    ("    extra_flags: [-convert-to-quantize]\n", "cannot be combined with -load-profile"),
])
def test_settings_refuse_with_the_model_the_flag_and_the_fix(tmp_path, extra, needle):
    from qaic_assets.settings import ConfigError

    with pytest.raises(ConfigError, match=needle.replace("(", "\\(").replace(")", "\\)")) as err:
        _load(tmp_path, extra)
    assert "model 'm'" in str(err.value)


def json_list(items: list[str]) -> str:
    import json

    return json.dumps(items)
