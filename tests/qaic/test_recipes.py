"""Compile and calibrate commands against the seed's table, written out by hand from the README of
MLCommons CM's compile-model-for.qaic and calibrate-model-for.qaic scripts (mlcommons/ck,
cm-mlops/script/; not read from recipes.yaml)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from qaic_assets.qaic import recipes
from qaic_assets.cli import main
from qaic_assets.settings import load_settings
from qaic_assets.builder.plan import plan_target
from qaic_assets.qaic.sdk import cpu_backend, qaic_backend

THREADS = 6
SCENARIOS = ["offline", "server", "singlestream", "multistream"]
NSPS = [8, 9, 14, 16]
BATCHES = [1, 8]

BASE = {
    "resnet50": {
        "-aic-hw": None, "-aic-hw-version": "2.0", "-quantization-schema": "symmetric_with_uint8",
        "-quantization-precision": "Int8", "-output-node-name": "ArgMax", "-vvv": None,
        "-compile-only": None, "-use-producer-dma": "1",
    },
    "retinanet": {
        "-aic-hw": None, "-aic-hw-version": "2.0", "-compile-only": None, "-enable-channelwise": None,
        "-onnx-define-symbol:batch_size": "1", "-node-precision-info": "NODE_PRECISION",
        "-quantization-schema-constants": "symmetric_with_uint8",
        "-quantization-schema-activations": "asymmetric", "-quantization-calibration": "None",
    },
    "bert-99": {
        "-aic-hw": None, "-aic-hw-version": "2.0",
        "-execute-nodes-in-fp16": "Mul,Sqrt,Div,Add,ReduceMean,Softmax,Sub,Gather,Erf,Pow,Concat,Tile,LayerNormalization",
        "-quantization-schema": "symmetric_with_uint8", "-quantization-precision": "Int8",
        "-quantization-precision-bias": "Int32", "-vvv": None, "-compile-only": None,
        "-onnx-define-symbol:batch_size": "1", "-onnx-define-symbol:seg_length": "384",
        "-multicast-weights": None, "-combine-inputs": "false", "-combine-outputs": "false",
    },
}

BERT_ARGS = {"-allocator-dealloc-delay": "2", "-size-split-granularity": "1536",
             "-vtcm-working-set-limit-ratio": "1"}


def expected_scenario_flags(model: str, scenario: str, nsp: int) -> dict:
    """args + args_sut of the seed for one target, by hand."""
    if model == "resnet50":
        if scenario == "offline":
            return {"-sdp-cluster-sizes": "2,2", "-multicast-weights": None,
                    "-aic-num-cores": "4", "-mos": "1,2", "-ols": "4"}
        if scenario == "server":
            if nsp == 14:
                return {"-sdp-cluster-sizes": "2,2", "-mos": "1,2", "-multicast-weights": None,
                        "-aic-num-cores": "4", "-ols": "4"}
            if nsp == 16:
                return {"-sdp-cluster-sizes": "4,4", "-mos": "1,4", "-aic-num-cores": "4", "-ols": "4"}
            return {}  # seed defect: CM raises KeyError here; we use no args
        if scenario == "singlestream":
            return {"-aic-num-of-instances": "1", "-aic-num-cores": "8", "-mos": "1", "-ols": "1"}
        flags = {"-sdp-cluster-sizes": "4,4", "-mos": "1,4"}
        if nsp == 14:
            flags["-aic-num-cores"] = "4"
        return flags
    if model == "retinanet":
        flags = {} if scenario == "singlestream" else {"-aic-enable-depth-first": None}
        if scenario == "offline":
            flags |= {"-aic-num-cores": "1", "-mos": "1", "-ols": "1"}
        if scenario == "singlestream":
            flags |= {"-aic-num-cores": "8", "-mos": "1", "-ols": "1"}
        return flags
    if scenario in ("offline", "server"):
        return BERT_ARGS | {"-aic-num-cores": "1", "-mos": "1", "-ols": "3"}
    if scenario == "singlestream":
        return {"-aic-num-cores": "8", "-mos": "8", "-ols": "1"}
    return {}


def effective(argv: list[str]) -> dict:
    """flag -> value, last occurrence wins; symbols keyed per symbol name."""
    flags = {}
    for arg in argv[1:]:
        name, eq, value = arg.partition("=")
        if name == "-onnx-define-symbol":
            sym, _, val = value.partition(",")
            flags[f"{name}:{sym}"] = val
        else:
            flags[name] = value if eq else None
    return flags


@pytest.fixture
def config(tmp_path, monkeypatch):
    cfg = tmp_path / "qaic.yaml"
    cfg.write_text(f"""
storage_root: store
profiling_threads: {THREADS}
backend: auto
matrix: {{scenarios: [offline], nsp: [14], batch: [1]}}
models:
  resnet50: {{source: {{path: models/resnet50.onnx}}, calibration: {{list: data/r50.txt}}}}
  retinanet:
    source: {{path: models/retinanet.onnx}}
    calibration: {{list: data/ret.txt}}
    node_precision: models/np.yaml
  bert-99: {{source: {{path: models/bert.onnx}}, calibration: {{list: data/bert.txt}}}}
""")
    monkeypatch.setenv("QAIC_ASSETS_CONFIG", str(cfg))
    monkeypatch.setenv("QAIC_SDK_ROOT", str(tmp_path / "no-sdk"))
    return load_settings()


def paths(config, model, batch):
    store = config.storage_root
    model_file = {"resnet50": "resnet50.onnx", "retinanet": "retinanet.onnx", "bert-99": "bert.onnx"}[model]
    return {
        "model": str(config.source_file.parent / "models" / model_file),
        "profile": str(store / model / "calibration" / f"bs{batch}" / "profile.yaml"),
        "node_precision": str(config.source_file.parent / "models" / "np.yaml"),
    }


@pytest.mark.parametrize("model", ["resnet50", "retinanet", "bert-99"])
@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("nsp", NSPS)
@pytest.mark.parametrize("batch", BATCHES)
def test_compile_and_calibrate_flags_match_the_seed(config, model, scenario, nsp, batch):
    backend = qaic_backend(config.sdk_root, require=False)
    plan = plan_target(config, backend, model, scenario, nsp, batch)
    p = paths(config, model, batch)
    base = {k: (p["node_precision"] if v == "NODE_PRECISION" else v) for k, v in BASE[model].items()}
    want = {"-model": p["model"], "-load-profile": p["profile"], "-aic-binary-dir": "elfs"}
    want |= base | expected_scenario_flags(model, scenario, nsp) | {"-batchsize": str(batch)}
    assert effective(plan.compile.argv) == want
    assert plan.compile.argv[0] == str(config.sdk_root / "exec" / "qaic-exec")
    assert plan.compile.cwd == config.storage_root / model / "compiled" / f"bs{batch}" / f"{scenario}-nsp{nsp}"
    assert plan.compile.output == "elfs/programqpc.bin"

    calib = {"-input-list-file": "batched_input_files", "-batchsize": str(batch),
             "-dump-profile": "profile.yaml", "-model": p["model"], "-profiling-threads": str(THREADS)}
    if model == "resnet50":
        calib |= {"-output-node-name": "ArgMax"}
    elif model == "retinanet":
        calib |= {"-enable-channelwise": None, "-onnx-define-symbol:batch_size": str(batch),
                  "-node-precision-info": p["node_precision"]}
    else:
        calib |= {"-onnx-define-symbol:batch_size": "1", "-onnx-define-symbol:seg_length": "384",
                  "-num-histogram-bins": "512"}
    assert effective(plan.calibrate.argv) == calib
    assert [a.partition("=")[0] for a in plan.calibrate.argv].count("-input-list-file") == 1  # bert-99: once
    assert plan.calibrate.cwd == config.storage_root / model / "calibration" / f"bs{batch}"


def test_command_order_is_the_seeds(config):
    backend = qaic_backend(config.sdk_root, require=False)
    plan = plan_target(config, backend, "resnet50", "offline", 14, 8)
    p = paths(config, "resnet50", 8)
    exe = str(config.sdk_root / "exec" / "qaic-exec")
    assert plan.compile.argv == [
        exe, f"-model={p['model']}", f"-load-profile={p['profile']}", "-aic-binary-dir=elfs",
        "-aic-hw", "-aic-hw-version=2.0", "-quantization-schema=symmetric_with_uint8",
        "-quantization-precision=Int8", "-output-node-name=ArgMax", "-vvv", "-compile-only",
        "-use-producer-dma=1", "-sdp-cluster-sizes=2,2", "-multicast-weights",
        "-aic-num-cores=4", "-mos=1,2", "-ols=4", "-batchsize=8",
    ]
    assert plan.calibrate.argv == [
        exe, "-input-list-file=batched_input_files", "-batchsize=8", "-output-node-name=ArgMax",
        f"-profiling-threads={THREADS}", "-dump-profile=profile.yaml", f"-model={p['model']}",
    ]


def test_resnet50_server_without_nsp_entry_has_no_args(config):
    """Seed defect 1: CM raises KeyError on CM_QAIC_MODEL_COMPILER_ARGS; we resolve to none."""
    resolved = recipes.resolve_compile("resnet50", "server", 8)
    assert (resolved.args, resolved.args_sut) == ("", "")
    assert resolved.applied == ("resnet50", "resnet50,server")


def test_quantized_retinanet_loads_its_profile(config):
    """Seed defect 2: CM's retinanet profile dependency never fires (on != yes)."""
    backend = qaic_backend(config.sdk_root, require=False)
    plan = plan_target(config, backend, "retinanet", "offline", 14, 1)
    assert effective(plan.compile.argv)["-load-profile"] == paths(config, "retinanet", 1)["profile"]
    assert plan.calibrate is not None


def test_no_quantize_drops_profile_and_calibration(config):
    backend = qaic_backend(config.sdk_root, require=False)
    plan = plan_target(config, backend, "bert-99", "offline", 14, 1, quantize=False)
    flags = effective(plan.compile.argv)
    assert "-load-profile" not in flags
    assert "-convert-to-fp16" in flags
    assert plan.calibrate is None


@pytest.mark.parametrize("model,base_calibration", [("resnet50", None), ("retinanet", "None")])
def test_percentile_flags_come_last_and_win(config, model, base_calibration):
    backend = qaic_backend(config.sdk_root, require=False)
    plain = plan_target(config, backend, model, "offline", 14, 8)
    assert effective(plain.compile.argv).get("-quantization-calibration") == base_calibration
    plan = plan_target(config, backend, model, "offline", 14, 8, percentile=99.99)
    assert plan.compile.argv[-3:] == ["-batchsize=8", "-quantization-calibration=Percentile",
                                      "-percentile-calibration-value=99.99"]
    assert effective(plan.compile.argv)["-quantization-calibration"] == "Percentile"


def test_most_specific_variation_wins():
    """retinanet sets args, retinanet,singlestream clears them; resnet50,server,nsp.16 beats nsp.14's."""
    assert recipes.resolve_compile("retinanet", "offline", 14).args == "-aic-enable-depth-first"
    assert recipes.resolve_compile("retinanet", "singlestream", 14).args == ""
    assert recipes.resolve_compile("resnet50", "server", 16).args == "-sdp-cluster-sizes=4,4 -mos=1,4"


def test_profiling_threads_are_physical_cores_per_socket(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    blocks = []
    for socket in (0, 1):
        for core in range(4):
            for _thread in range(2):  # hyperthreads share a core id
                blocks.append(f"processor\t: x\nphysical id\t: {socket}\ncore id\t\t: {core}\n")
    cpuinfo.write_text("\n".join(blocks))
    assert recipes.physical_cores_per_socket(cpuinfo) == 4


def test_recipe_code_version_changes_with_flags(monkeypatch):
    before = recipes.recipe_code_version("resnet50", SCENARIOS, NSPS)
    assert before == recipes.recipe_code_version("resnet50", SCENARIOS, NSPS)
    changed = dict(recipes.table())
    changed["calibrate"] = dict(changed["calibrate"], resnet50="-output-node-name=ArgMax")
    monkeypatch.setattr(recipes, "table", lambda: changed)
    assert recipes.recipe_code_version("resnet50", SCENARIOS, NSPS) != before


def test_plan_json_cross_product_and_missing_inputs(config, capsys):
    assert main(["plan", "--model", "resnet50,bert-99", "--scenario", "offline,server",
                 "--nsp", "14", "--batch", "1,8", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out) == 8
    assert {(o["model"], o["scenario"], o["nsp"], o["batch"]) for o in out} == {
        (m, s, 14, b) for m in ("resnet50", "bert-99") for s in ("offline", "server") for b in (1, 8)}
    first = out[0]
    assert first["backend"] == "cpu"  # no SDK at QAIC_SDK_ROOT: auto picks the CPU reference compiler
    assert first["compile"]["argv"][0].endswith("qaic-exec-cpu")
    assert first["calibrate"]["argv"][-1].startswith("-model=")
    assert any("resnet50.onnx" in m for m in first["missing_inputs"])


def test_plan_no_quantize_json_has_null_calibrate(config, capsys):
    assert main(["plan", "--model", "resnet50", "--scenario", "offline", "--nsp", "14",
                 "--batch", "1", "--no-quantize", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["calibrate"] is None


@pytest.mark.parametrize("flag,value,listed", [
    ("--model", "resnet51", "bert-99"),
    ("--scenario", "batch", "multistream"),
    ("--nsp", "12", "16"),
    ("--batch", "0", "positive"),
])
def test_plan_rejects_unknown_values_with_exit_2(config, capsys, flag, value, listed):
    args = {"--model": "resnet50", "--scenario": "offline", "--nsp": "14", "--batch": "1"}
    args[flag] = value
    assert main(["plan", *[x for kv in args.items() for x in kv]]) == 2
    err = capsys.readouterr().err
    assert value in err and listed in err


def test_plan_console_script_runs_without_sdk_or_models(config):
    exe = Path(sys.executable).with_name("qaic-assets")
    done = subprocess.run([str(exe), "plan", "--model", "retinanet", "--scenario", "singlestream",
                           "--nsp", "14", "--batch", "1"], capture_output=True, text=True, check=True)
    assert "-node-precision-info=" in done.stdout
    assert "missing input: model" in done.stdout


def test_cpu_backend_used_when_sdk_absent(config):
    assert cpu_backend().binary_file == "programqpc.onnx"
