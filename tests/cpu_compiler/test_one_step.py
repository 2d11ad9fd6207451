"""One-step quantization in qaic-exec-cpu: a compile with -input-list-file and no profile calibrates the
list inline (the -dump-profile code) and quantizes, giving the same int8 model as -dump-profile then
-load-profile with the same flags; what it cannot honour is refused by name.

The commands are real SDK one-step commands from quic/cloud-ai-sdk, adapted to small models (the
shipped digits model and data; test_cpu_compiler's transformer block) and to a CPU: model, list and
output paths replaced, symbols renamed to the model's, batch sizes kept small.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from numpy.testing import assert_array_equal
from onnx import numpy_helper

from qaic_assets.cpu_compiler import main as cpu_exec
from qaic_assets.qaic.flags import FLAGS, split_arg
from test_cpu_compiler import block  # noqa: F401  (the transformer block fixture, shared)

REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "qaic_assets" / "models" / "data" / "digits"

# (model, list, argv without model, list and output): "{model}", "{list}" and "{out}" are filled in
ONE_STEP = {
    # quic/cloud-ai-sdk "Model Recipies/Image_Classification/ResNet101/resnet101_run.sh" line 106, commit
    # 918b1d21c98c948d32678c37bbedaca4cbc46a49 (ResNet101 -> digits; list.txt -> digits/cal.txt)
    "resnet101": ("digits", [
        "-aic-hw", "-aic-hw-version=2.0", "-vvv", "-compile-only", "-m={model}", "-aic-binary-dir={out}",
        "-convert-to-quantize", "-quantization-schema=symmetric_with_uint8", "-quantization-precision=Int8",
        "-onnx-define-symbol=batch_size,16", "-stats-batchsize=16", "-mos=1", "-ols=4", "-aic-num-cores=4",
        "-input-list-file={list}", "-multicast-weights"]),
    # same repository and commit, "Model Recipies/Object_Detection/YOLOv7/YOLOv7_QDETECT/yolov7_run.sh"
    # line 74: -convert-to-quantize and the list, no quantization flags (YOLOv7 -> digits)
    "yolov7": ("digits", [
        "-aic-hw", "-aic-hw-version=2.0", "-vvv", "-input-list-file={list}", "-compile-only", "-m={model}",
        "-aic-binary-dir={out}", "-mos=1", "-ols=1", "-convert-to-quantize", "-aic-num-cores=14",
        "-onnx-define-symbol=batch_size,1", "-multicast-weights"]),
    # same repository and commit, "Model Recipies/NLP/BERT_base/bert_base_cased/bert_run.sh" line 97:
    # percentile calibration and an fp16 op list, no -convert-to-quantize (BERT -> the transformer block;
    # -onnx-define-symbol=sequence,128 -> seq,8; batch_size 8 -> 4)
    "bert-base": ("block", [
        "-aic-hw", "-aic-hw-version=2.0", "-vvv", "-compile-only", "-m={model}", "-onnx-define-symbol=seq,8",
        "-input-list-file={list}", "-aic-binary-dir={out}", "-mos=1", "-ols=4", "-aic-num-cores=2",
        "-quantization-precision=Int8", "-quantization-precision-bias=Int32",
        "-quantization-schema=symmetric_with_uint8", "-quantization-calibration=Percentile",
        "-percentile-calibration-value=99.999",
        "-execute-nodes-in-fp16=Mul,Sqrt,Div,Add,ReduceMean,Split,Softmax,Sub,Gather,Erf,Pow,Concat,Tile,"
        "LayerNormalization",
        "-stats-batchsize=4", "-onnx-define-symbol=batch_size,4", "-aic-perf-metrics", "-multicast-weights"]),
}


@pytest.fixture(scope="module")
def models(block):
    return {"digits": (DIGITS / "model.onnx", DIGITS / "cal.txt"), "block": (block["model"], block["cal"])}


def _fill(argv: list[str], model: Path, cal_list: Path, out: Path) -> list[str]:
    return [a.format(model=model, list=cal_list, out=out) for a in argv]


def _two_step(argv: list[str], profile: Path) -> tuple[list[str], list[str]]:
    """The same command as -dump-profile (the calibration's flags) then -load-profile (the rest)."""
    names = [split_arg(a)[0] for a in argv]
    calibrate = [a for a, n in zip(argv, names) if FLAGS[n].mode != "compile"] + [f"-dump-profile={profile}"]
    compile_ = [a for a, n in zip(argv, names) if n not in ("input-list-file", "convert-to-quantize")]
    return calibrate, compile_ + [f"-load-profile={profile}"]


def _initializers(path: Path) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


@pytest.mark.parametrize("command", list(ONE_STEP))
def test_one_step_gives_the_int8_model_of_dump_then_load_profile(command, models, tmp_path):
    model, cal_list = models[ONE_STEP[command][0]]
    argv = _fill(ONE_STEP[command][1], model, cal_list, tmp_path / "one")
    assert cpu_exec.main(argv) == 0
    calibrate, compile_ = _two_step(_fill(ONE_STEP[command][1], model, cal_list, tmp_path / "two"),
                                    tmp_path / "profile.yaml")
    assert cpu_exec.main(calibrate) == 0 and cpu_exec.main(compile_) == 0

    one, two = tmp_path / "one" / "programqpc.onnx", tmp_path / "two" / "programqpc.onnx"
    a, b = _initializers(one), _initializers(two)
    assert a.keys() == b.keys() and any(n.endswith("_scale") for n in a)  # quantized: scales, int8 weights
    for name in a:
        assert_array_equal(a[name], b[name], err_msg=name)
    assert one.read_bytes() == two.read_bytes()

    info = json.loads((tmp_path / "one" / "qaic-exec-cpu.json").read_text())
    samples = len([line for line in cal_list.read_text().splitlines() if line.strip()])
    assert info["mode"] == "int8" and info["profile"] is None
    assert info["inline_calibration"]["samples"] == samples
    assert info["inline_calibration"]["input_list_file"] == str(cal_list)
    assert info["profile_info"]["entries_used"] == info["inline_calibration"]["tensors"]
    if "-convert-to-quantize" in argv:  # honoured here, not "not applicable on CPU"
        assert "convert-to-quantize" in info["applied"] and "convert-to-quantize" not in info["not_applicable_on_cpu"]
    two_info = json.loads((tmp_path / "two" / "qaic-exec-cpu.json").read_text())
    assert two_info["inline_calibration"] is None and two_info["quantization"] == info["quantization"]


@pytest.mark.parametrize("extra, drop, needle", [
    (["-load-profile={profile}"], None, "-input-list-file and -load-profile together"),
    (["-convert-to-quantize"], "-input-list-file", "-convert-to-quantize without -input-list-file"),
    (["-use-random-input-data=gaussian"], None, "-use-random-input-data is not available in a one-step compile"),
    (["-external-quantization-file={profile}"], None, "-external-quantization-file is not available"),
    (["-num-histogram-bins=64"], None, "-num-histogram-bins is not valid when compiling"),
    (["-dump-profile={profile}"], None, "-aic-binary-dir is not valid when calibrating"),
])
def test_what_one_step_cannot_honour_is_refused_by_name(extra, drop, needle, tmp_path, capsys):
    profile = tmp_path / "p.yaml"
    profile.write_text("not read\n")
    argv = [f"-m={DIGITS / 'model.onnx'}", f"-input-list-file={DIGITS / 'cal.txt'}",
            f"-aic-binary-dir={tmp_path / 'out'}", "-onnx-define-symbol=batch_size,8"]
    argv = [a for a in argv if not drop or not a.startswith(drop)] + [e.format(profile=profile) for e in extra]
    assert cpu_exec.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("ERROR: ") and needle in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
