"""qaic-exec-cpu with profiles in the SDK's layout: an SDK-dumped profile loads and its ranges are the
ones applied; our own dump has the SDK's layout; a profile of another model is refused; `-nan` entries
are reported unusable; a tensor the profile has no usable range for is an error naming it and the fix."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

from qaic_assets.cpu_compiler import graph, main as cpu_exec
from qaic_assets.qaic.formats import profiles

REPO = Path(__file__).resolve().parents[2]
SDK_PROFILE = REPO / "tests" / "data" / "sdk_profile.yaml"
DIGITS = REPO / "qaic_assets" / "models" / "data" / "digits"


def _mlp(path: Path, seed: int = 0) -> Path:
    """x[1,8] -> MatMul (node fc1, tensor h) -> Relu (node act, tensor r) -> MatMul (node fc2, tensor logits): the names
    of tests/data/sdk_profile.yaml."""
    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "w2")
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["r"], name="act"),
             helper.make_node("MatMul", ["r", "w2"], ["logits"], name="fc2")]
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])], [w1, w2])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _cal_list(d: Path, n: int = 4) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for i in range(n):
        rng.standard_normal((1, 8)).astype(np.float32).tofile(d / f"{i}.raw")
    (d / "cal.txt").write_text("".join(f"{i}.raw\n" for i in range(n)))
    return d / "cal.txt"


def _compile(model: Path, profile: Path, out: Path, capsys) -> tuple[int, str]:
    rc = cpu_exec.main([f"-model={model}", f"-load-profile={profile}", f"-aic-binary-dir={out}",
                        "-quantization-schema=symmetric", "-batchsize=1"])
    return rc, capsys.readouterr().err


def _scales(binary: Path) -> dict[str, float]:
    m = onnx.load(str(binary))
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    return {n.input[0]: float(inits[n.input[1]]) for n in m.graph.node if n.op_type == "QuantizeLinear"}


def test_an_sdk_profile_loads_and_its_ranges_are_applied(tmp_path, capsys):
    model = _mlp(tmp_path / "mlp.onnx")
    rc, err = _compile(model, SDK_PROFILE, tmp_path / "elfs", capsys)
    assert rc == 0, err
    scales = _scales(tmp_path / "elfs" / "programqpc.onnx")
    # symmetric int8: scale = max(|Min|, |Max|) / 127, from the SDK profile's entries
    assert scales["x"] == pytest.approx(1.0 / 127, rel=1e-6)      # 'x:0'
    assert scales["r"] == pytest.approx(1.75 / 127, rel=1e-6)     # 'act:0': output 0 of node act
    info = json.loads((tmp_path / "elfs" / "qaic-exec-cpu.json").read_text())["profile_info"]
    assert (info["layout"], info["tools_version"], info["graph_hash"]) == ("glow", "2021-06-30", "0x693AC39E8BB9E42C")
    assert info["graph_hash_checked"] is False  # Glow's hash cannot be recomputed: recorded only
    assert (info["entries"], info["entries_used"], info["entries_skipped"]) == (6, 4, 2)
    assert set(info["skipped_examples"]) == {"conv_bias__1:0", "zero__7:0"}  # compiler-internal, constant


def test_our_dump_has_the_sdk_layout(tmp_path):
    model = _mlp(tmp_path / "mlp.onnx")
    prof = tmp_path / "profile.yaml"
    assert cpu_exec.main([f"-model={model}", f"-input-list-file={_cal_list(tmp_path / 'cal')}", "-batchsize=1",
                          f"-dump-profile={prof}", "-num-histogram-bins=16"]) == 0
    text = prof.read_text()
    docs = list(yaml.load_all(text, Loader=yaml.BaseLoader))
    assert len(docs) == 3 and text.endswith("...\n") and text.count("\n...\n") == 3
    assert docs[0]["GlowToolsVersion"].startswith("qaic-exec-cpu ")
    expected_hash = profiles.graph_hash_text(graph.graph_hash(onnx.load(str(model))))
    assert docs[1]["GraphPreLowerHash"] == expected_hash
    assert [e["NodeOutputName"] for e in docs[2]] == ["h:0", "logits:0", "r:0", "x:0"]
    assert all(len(e["Histogram"]) == 16 for e in docs[2])


def test_a_profile_of_another_model_is_refused(tmp_path, capsys):
    model = _mlp(tmp_path / "mlp.onnx")
    other = _mlp(tmp_path / "other.onnx", seed=7)  # same names, other weights: another graph hash
    prof = tmp_path / "other.yaml"
    assert cpu_exec.main([f"-model={other}", f"-input-list-file={_cal_list(tmp_path / 'cal')}", "-batchsize=1",
                          f"-dump-profile={prof}"]) == 0
    capsys.readouterr()
    rc, err = _compile(model, prof, tmp_path / "a", capsys)
    assert rc == 1 and "another model" in err and str(prof) in err and str(model) in err
    assert not (tmp_path / "a" / "programqpc.onnx").exists()
    # the SDK's profile of some other network: none of its names is a tensor of this model
    foreign = tmp_path / "foreign.yaml"
    foreign.write_text(SDK_PROFILE.read_text().replace("'fc1:0'", "'fcX:0'").replace("'x:0'", "'in:0'")
                       .replace("'act:0'", "'q:0'").replace("'fc2:0'", "'out:0'"))
    rc, err = _compile(model, foreign, tmp_path / "b", capsys)
    assert rc == 1 and "no entry for any tensor" in err and str(foreign) in err and str(model) in err


def _with_nan(text: str, name: str) -> str:
    """The profile text with entry `name` given Min/Max -nan, as SDK profiles of 2021 have them (or added)."""
    nan = (f"- NodeOutputName:  '{name}'\n  Min:             -nan\n  Max:             -nan\n"
           "  Histogram:       [ 0, 8 ]\n")
    start = text.find(f"- NodeOutputName:  '{name}'")
    if start < 0:
        return text.removesuffix("...\n") + nan + "...\n"
    end = text.find("- NodeOutputName:", start + 1)
    return text[:start] + nan + text[end if end > 0 else text.rfind("...\n"):]


def test_nan_entries_are_unusable_and_reported(tmp_path, capsys):
    model = _mlp(tmp_path / "mlp.onnx")
    prof = tmp_path / "nan.yaml"
    prof.write_text(_with_nan(SDK_PROFILE.read_text(), "w1_read:0"))  # a constant, as in the SDK's
    rc, err = _compile(model, prof, tmp_path / "elfs", capsys)
    assert rc == 0, err
    info = json.loads((tmp_path / "elfs" / "qaic-exec-cpu.json").read_text())["profile_info"]
    assert (info["entries"], info["entries_used"], info["entries_skipped"], info["entries_unusable"]) == (7, 4, 2, 1)
    assert info["unusable_names"] == ["w1_read:0"]
    # a tensor the model quantizes whose only entry is -nan: no usable range, named with the fix
    prof.write_text(_with_nan(SDK_PROFILE.read_text(), "act:0"))
    rc, err = _compile(model, prof, tmp_path / "bad", capsys)
    assert rc == 1 and f"profile {prof} has no usable range for tensor 'r'" in err and "Traceback" not in err


def test_a_tensor_missing_from_the_profile_is_an_error_naming_it_and_the_fix(tmp_path):
    """The digits model's Softmax output without its entry (ONNX Runtime failed with a traceback): exit 1,
    one ERROR line naming the tensor, recalibration and the two ways to keep its nodes in float; each
    of those then compiles."""
    full = tmp_path / "profile.yaml"
    assert cpu_exec.main([f"-model={DIGITS / 'model.onnx'}", f"-input-list-file={DIGITS / 'cal.txt'}",
                          "-batchsize=8", f"-dump-profile={full}"]) == 0
    p = profiles.read_profile(full)
    lacking = tmp_path / "lacking.yaml"
    profiles.write_profile(lacking, [e for e in p.entries if e.name != "softmax_tensor:0"],
                           tools_version=p.tools_version, graph_hash=p.graph_hash)
    argv = [f"-model={DIGITS / 'model.onnx'}", f"-load-profile={lacking}", "-batchsize=8",
            "-quantization-schema=symmetric_with_uint8"]
    r = subprocess.run([sys.executable, "-m", "qaic_assets.cpu_compiler.main", *argv, "-aic-binary-dir=elfs"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=120,
                       env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr == (
        f"ERROR: profile {lacking} has no usable range for tensor 'softmax_tensor' (written or read by Softmax "
        "node 'softmax_tensor'): recalibrate this model (-dump-profile with the same -batchsize, "
        "-onnx-define-symbol and -output-node-name), or keep those nodes in float: -node-precision-info with "
        "FP32NodeInstanceNames: [softmax_tensor], or -execute-nodes-in-fp16=Softmax\n")
    assert not (tmp_path / "elfs").exists()
    precision = tmp_path / "precision.yaml"
    precision.write_text("FP32NodeInstanceNames: [softmax_tensor]\n")
    for fix in ("-execute-nodes-in-fp16=Softmax", f"-node-precision-info={precision}"):
        assert cpu_exec.main([*argv, f"-aic-binary-dir={tmp_path / fix[1:8]}", fix]) == 0, fix
