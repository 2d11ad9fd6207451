"""The CPU reference compiler (qaic-exec-cpu): real calibration, real int8 QDQ compile, accuracy compare.

Tiny models are built here with onnx.helper: a conv net classifier (Conv/Relu/MaxPool/Gemm, ArgMax +
Softmax outputs, symbolic batch) whose classifier is fitted to synthetic classes so int8 must keep its
top-1, and a transformer-ish block (LayerNormalization, MatMul attention, Softmax, symbolic batch and
sequence). The stand-in round trips at the end use the session's stand-ins (conftest.py `standin`:
full-size ResNet-50 at batch 8, RetinaNet, BERT).
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

from qaic_assets.builder import accuracy
from qaic_assets.cpu_compiler import calibrate as cpu_calibrate, graph, main as cpu_exec, ranges
from qaic_assets.qaic.formats import profiles
from qaic_assets.qaic import flags as qaic_flags
from qaic_assets.qaic.formats import rawdata

REPO = Path(__file__).resolve().parents[2]
OPSET = 17
N_CLASSES = 10


# ------------------------------------------------------------------------------------------ models


def _conv_net(rng: np.random.Generator, classifier: tuple[np.ndarray, np.ndarray] | None = None) -> onnx.ModelProto:
    def w(*shape, fan_in):
        return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    inits = [
        numpy_helper.from_array(w(8, 3, 3, 3, fan_in=27), "w1"),
        numpy_helper.from_array(np.full(8, 0.05, np.float32), "b1"),
        numpy_helper.from_array(w(16, 8, 3, 3, fan_in=72), "w2"),
        numpy_helper.from_array(np.zeros(16, np.float32), "b2"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Flatten", ["r2"], ["feat"], name="flatten", axis=1),
    ]
    outputs = [helper.make_tensor_value_info("feat", TensorProto.FLOAT, ["N", 1024])]
    if classifier is not None:
        inits += [numpy_helper.from_array(classifier[0], "fc_w"), numpy_helper.from_array(classifier[1], "fc_b")]
        nodes += [
            helper.make_node("Gemm", ["feat", "fc_w", "fc_b"], ["logits"], name="fc", transB=1),
            helper.make_node("Softmax", ["logits"], ["prob"], name="softmax", axis=1),
            helper.make_node("ArgMax", ["logits"], ["class"], name="ArgMax", axis=1, keepdims=0),
        ]
        outputs = [helper.make_tensor_value_info("class", TensorProto.INT64, ["N"]),
                   helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", N_CLASSES])]
    graph = helper.make_graph(nodes, "convnet", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
                              outputs, inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    m.ir_version = 8
    return m


def _transformer(rng: np.random.Generator) -> onnx.ModelProto:
    d = 32

    def mat(name, a, b):
        return numpy_helper.from_array((rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32), name)

    inits = [mat("wq", d, d), mat("wk", d, d), mat("wv", d, d), mat("wo", d, d), mat("w1", d, 64), mat("w2", 64, d),
             numpy_helper.from_array(np.ones(d, np.float32), "g"), numpy_helper.from_array(np.zeros(d, np.float32), "b"),
             numpy_helper.from_array(np.array(1 / np.sqrt(d), np.float32), "scale")]
    n = helper.make_node
    nodes = [
        n("LayerNormalization", ["x", "g", "b"], ["ln1"], name="ln1", axis=-1),
        n("MatMul", ["ln1", "wq"], ["q"], name="q_proj"),
        n("MatMul", ["ln1", "wk"], ["k"], name="k_proj"),
        n("MatMul", ["ln1", "wv"], ["v"], name="v_proj"),
        n("Transpose", ["k"], ["kt"], name="k_t", perm=[0, 2, 1]),
        n("MatMul", ["q", "kt"], ["scores"], name="qk"),
        n("Mul", ["scores", "scale"], ["scaled"], name="scale_mul"),
        n("Softmax", ["scaled"], ["attn"], name="softmax", axis=-1),
        n("MatMul", ["attn", "v"], ["ctx"], name="av"),
        n("MatMul", ["ctx", "wo"], ["proj"], name="o_proj"),
        n("Add", ["proj", "x"], ["res1"], name="res1_add"),
        n("LayerNormalization", ["res1", "g", "b"], ["ln2"], name="ln2", axis=-1),
        n("MatMul", ["ln2", "w1"], ["h"], name="ffn1"),
        n("Relu", ["h"], ["hr"], name="ffn_relu"),
        n("MatMul", ["hr", "w2"], ["ffn_out"], name="ffn2"),
        n("Add", ["ffn_out", "res1"], ["y"], name="res2_add"),
    ]
    graph = helper.make_graph(
        nodes, "block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch_size", "seq", d])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch_size", "seq", d])], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    m.ir_version = 8
    return m


def _write_list(path: Path, arrays: list[np.ndarray], batch: int | None = None) -> Path:
    """Raw files (batched by `batch`, else one per sample) and their list file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    stem = path.stem
    lines = []
    step = batch or 1
    for i in range(0, len(arrays), step):
        data = np.concatenate(arrays[i:i + step], axis=0)
        f = path.parent / f"{stem}_{i:04d}.raw"
        data.tofile(f)
        lines.append(f.name)
    path.write_text("\n".join(lines) + "\n\n")  # a trailing empty line is ignored
    return path


@pytest.fixture(scope="module")
def conv(tmp_path_factory):
    """Conv net with a nearest-centroid classifier over 10 synthetic classes; calibration (batched by 8)
    and held-out (per-sample) lists; labels."""
    d = tmp_path_factory.mktemp("conv")
    rng = np.random.default_rng(7)
    protos = rng.standard_normal((N_CLASSES, 3, 16, 16)).astype(np.float32)

    def sample(c):
        return (protos[c] + 0.4 * rng.standard_normal((3, 16, 16))).astype(np.float32)[None]

    base = _conv_net(np.random.default_rng(1))
    fit = [(c, sample(c)) for c in range(N_CLASSES) for _ in range(8)]
    sess = ort.InferenceSession(base.SerializeToString(), providers=["CPUExecutionProvider"])
    feats = sess.run(None, {"x": np.concatenate([x for _, x in fit])})[0]
    labels_fit = np.array([c for c, _ in fit])
    mu = np.stack([feats[labels_fit == c].mean(0) for c in range(N_CLASSES)]).astype(np.float32)
    bias = (-0.5 * (mu ** 2).sum(1)).astype(np.float32)
    model = _conv_net(np.random.default_rng(1), (mu, bias))
    onnx.save(model, d / "conv.onnx")
    cal = [sample(c % N_CLASSES) for c in range(32)]
    held_labels = [int(c) for c in rng.integers(0, N_CLASSES, 60)]
    held = [sample(c) for c in held_labels]
    (d / "labels.txt").write_text("".join(f"{c}\n" for c in held_labels))
    return {
        "dir": d, "model": d / "conv.onnx", "cal": _write_list(d / "cal" / "cal.txt", cal, batch=8),
        "cal_samples": np.concatenate(cal), "held": _write_list(d / "held" / "held.txt", held),
        "labels": d / "labels.txt",
    }


@pytest.fixture(scope="module")
def block(tmp_path_factory):
    d = tmp_path_factory.mktemp("block")
    rng = np.random.default_rng(3)
    onnx.save(_transformer(rng), d / "block.onnx")
    cal = [rng.standard_normal((1, 8, 32)).astype(np.float32) for _ in range(12)]
    held = [rng.standard_normal((1, 8, 32)).astype(np.float32) for _ in range(10)]
    return {"dir": d, "model": d / "block.onnx", "cal": _write_list(d / "cal" / "cal.txt", cal),
            "held": _write_list(d / "held" / "held.txt", held)}


def _run(argv: list[str], capsys=None) -> tuple[int, str, str]:
    rc = cpu_exec.main([str(a) for a in argv])
    if capsys is None:
        return rc, "", ""
    out = capsys.readouterr()
    return rc, out.out, out.err


def _calibrate(model, cal_list, profile, *extra) -> Path:
    rc = cpu_exec.main([f"-model={model}", f"-input-list-file={cal_list}", f"-dump-profile={profile}", *map(str, extra)])
    assert rc == 0
    return Path(profile)


def _compile(model, out_dir, *extra) -> Path:
    rc = cpu_exec.main([f"-model={model}", f"-aic-binary-dir={out_dir}", *map(str, extra)])
    assert rc == 0
    return Path(out_dir) / "programqpc.onnx"


@pytest.fixture(scope="module")
def conv_profile(conv):
    return _calibrate(conv["model"], conv["cal"], conv["dir"] / "profile.yaml", "-batchsize=8",
                      "-num-histogram-bins=64", "-profiling-threads=2")


@pytest.fixture(scope="module")
def conv_compiled(conv, conv_profile):
    return _compile(conv["model"], conv["dir"] / "int8", f"-load-profile={conv_profile}", "-batchsize=8",
                    "-quantization-schema=symmetric_with_uint8", "-quantization-precision=Int8",
                    "-aic-hw", "-aic-hw-version=2.0", "-aic-num-cores=4", "-mos=1,2", "-ols=4", "-multicast-weights",
                    "-sdp-cluster-sizes=2,2", "-use-producer-dma=1", "-compile-only", "-vvv")


def _nodes(path: Path) -> list[onnx.NodeProto]:
    return list(onnx.load(str(path)).graph.node)


def _q_params(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """tensor -> (scale, zero point) of the QuantizeLinear quantizing it."""
    m = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    return {n.input[0]: (inits[n.input[1]], inits[n.input[2]]) for n in m.graph.node if n.op_type == "QuantizeLinear"}


def _float_weight_consumers(path: Path) -> set[str]:
    """Names of nodes that read a float weight initializer directly (not through DequantizeLinear)."""
    m = onnx.load(str(path))
    inits = {i.name for i in m.graph.initializer if i.data_type == TensorProto.FLOAT and len(i.dims) >= 2}
    return {n.name for n in m.graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear")
            and any(x in inits for x in n.input)}


# ----------------------------------------------------------------------------------- calibration


def _entries(path: Path) -> list[dict]:
    """The list document of a profile (the third of the SDK's three YAML documents)."""
    docs = list(yaml.load_all(Path(path).read_text(), Loader=yaml.BaseLoader))
    assert len(docs) == 3 and set(docs[0]) == {"GlowToolsVersion"} and set(docs[1]) == {"GraphPreLowerHash"}
    return [{"NodeOutputName": e["NodeOutputName"], "Min": float(e["Min"]), "Max": float(e["Max"]),
             "Histogram": [float(v) for v in e["Histogram"]]} for e in docs[2]]


def test_profile_lists_every_float_tensor_with_ranges_and_histograms(conv, conv_profile):
    doc = _entries(conv_profile)
    fixed = graph.fix_dims(onnx.load(str(conv["model"])), 8)
    expected = graph.float_tensors(fixed)
    assert [e["NodeOutputName"] for e in doc] == sorted(f"{t}:0" for t in expected)  # the SDK's names, sorted
    assert {"x", "c1", "r1", "p1", "c2", "r2", "feat", "logits", "prob"} <= set(expected)
    for e in doc:
        assert e["Min"] <= e["Max"]
        assert len(e["Histogram"]) == 64
    by = {e["NodeOutputName"]: e for e in doc}
    x = conv["cal_samples"]
    assert by["x:0"]["Min"] == pytest.approx(float(x.min()))
    assert by["x:0"]["Max"] == pytest.approx(float(x.max()))
    assert sum(by["x:0"]["Histogram"]) == x.size  # every calibration value counted once
    assert by["r1:0"]["Min"] >= 0  # ReLU output
    assert sum(by["prob:0"]["Histogram"]) == 32 * N_CLASSES


def test_streamed_histogram_matches_numpy_and_keeps_totals():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(10_000).astype(np.float32), rng.standard_normal(10_000).astype(np.float32) * 0.5
    h = cpu_calibrate.RangeHistogram(32)
    h.update(a)
    h.update(b)  # inside the first range: counted exactly on the same bins
    assert h.lo == float(a.min()) and h.hi == float(a.max())
    ref, _ = np.histogram(np.concatenate([a, b]), bins=32, range=(h.lo, h.hi))
    assert np.abs(np.array(h.counts()) - ref).max() <= 2  # float32 binning at edges
    c = (rng.standard_normal(5_000) * 4).astype(np.float32)  # widens the range: old counts rebinned
    h.update(c)
    assert h.lo == float(min(a.min(), c.min())) and h.hi == float(max(a.max(), c.max()))
    assert sum(h.counts()) == 25_000
    ref2, _ = np.histogram(np.concatenate([a, b, c]), bins=32, range=(h.lo, h.hi))
    assert np.abs(np.array(h.counts()) - ref2).sum() <= 0.05 * 25_000


def _require_c_loop() -> None:
    """Skip when setup.py built no _bins library (it is optional); fail when one is built but not loaded."""
    built = [p for p in (Path(cpu_calibrate.__file__).with_name(f"_bins{s}") for s in EXTENSION_SUFFIXES)
             if p.is_file()]
    if not built:
        pytest.skip("the C counting loop was not built: no C compiler at install time")
    assert cpu_calibrate.C_COUNT_BINS is not None, f"{built[0]} is built but calibrate.py did not load it"


def test_the_counting_loop_is_built_at_install(monkeypatch):
    """`make install` (pip, setup.py) builds _bins.c; without it calibrations count with numpy, 2.2x slower.
    Built, it is what counts."""
    _require_c_loop()
    calls = []
    c_loop = cpu_calibrate.C_COUNT_BINS
    monkeypatch.setattr(cpu_calibrate, "C_COUNT_BINS", lambda *args: (calls.append(args), c_loop(*args))[1])
    x = np.arange(1000, dtype=np.float32)
    assert cpu_calibrate._count(x, 0.0, 999.0, 10, False).sum() == 1000 and len(calls) == 1


def _numpy_counts(monkeypatch, *args):
    with monkeypatch.context() as m:
        m.setattr(cpu_calibrate, "C_COUNT_BINS", None)
        return cpu_calibrate._count(*args)


@pytest.mark.parametrize("data", ["normal", "relu", "three", "constant", "tiny-range"])
@pytest.mark.parametrize("bins", [1, 7, 512])
def test_c_and_numpy_count_every_value_in_the_same_bin(monkeypatch, data, bins):
    rng = np.random.default_rng(1)
    x = {"normal": rng.standard_normal(100_003), "relu": np.maximum(rng.standard_normal(100_000), 0),
         "three": [1.0, 2.0, 3.0], "constant": np.full(9, 5.0), "tiny-range": [0.0, 1e-30, 1e-30, 2e-30]}[data]
    x = np.asarray(x, dtype=np.float32)
    lo, hi = float(x.min()), float(x.max())
    _require_c_loop()  # else both sides below count with numpy
    c = cpu_calibrate._count(x, lo, hi, bins, False)
    assert c.sum() == x.size and c.dtype == np.float64
    np.testing.assert_array_equal(c, _numpy_counts(monkeypatch, x, lo, hi, bins, False))


def test_a_range_below_float32_resolution_is_counted_at_both_ends():
    """512 bins over [0, 1.4e-45] (the smallest float32 step): the float32 scale would overflow, and
    converting an infinite or NaN bin position is undefined in C and garbage in numpy."""
    x = np.array([0.0, 1e-45, 1e-45, 0.0, 0.0], dtype=np.float32)
    counts = cpu_calibrate._count(x, 0.0, float(x.max()), 512, False)
    assert counts[0] == 3 and counts[-1] == 2 and counts.sum() == 5


def test_a_profile_is_the_same_counted_in_c_or_numpy(conv, tmp_path, monkeypatch):
    _require_c_loop()  # else both profiles below are counted with numpy
    with_c = _calibrate(conv["model"], conv["cal"], tmp_path / "c.yaml", "-batchsize=8", "-profiling-threads=2")
    monkeypatch.setattr(cpu_calibrate, "C_COUNT_BINS", None)
    with_numpy = _calibrate(conv["model"], conv["cal"], tmp_path / "np.yaml", "-batchsize=8", "-profiling-threads=2")
    assert with_c.read_text() == with_numpy.read_text()


def test_output_node_name_limits_profile_to_its_ancestors(conv, tmp_path):
    prof = _calibrate(conv["model"], conv["cal"], tmp_path / "p.yaml", "-batchsize=8", "-output-node-name=ArgMax")
    names = {e["NodeOutputName"] for e in _entries(prof)}
    assert "logits:0" in names and "prob:0" not in names
    assert len(_entries(prof)[0]["Histogram"]) == 512  # default bins


# -------------------------------------------------------------------------------------- compile


def test_compiled_model_is_int8_qdq_with_fixed_dims_and_agrees(conv, conv_compiled):
    ops = [n.op_type for n in _nodes(conv_compiled)]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    onnx.checker.check_model(onnx.load(str(conv_compiled)), full_check=True)  # valid ONNX, nodes sorted
    sess = ort.InferenceSession(str(conv_compiled), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape == [8, 3, 16, 16]
    params = _q_params(conv_compiled)
    assert params["r1"][1].dtype == np.uint8 and int(params["r1"][1]) == 0  # symmetric_with_uint8: ReLU -> uint8
    assert params["c1"][1].dtype == np.int8 and int(params["c1"][1]) == 0  # signed tensor -> symmetric int8
    res = accuracy.compare(conv["model"], conv_compiled, conv["held"], batch=8, labels=conv["labels"])
    assert res["samples"] == 60  # per-sample held-out files batched by 8, last batch padded
    assert res["accuracy_fp32"] >= 0.95
    assert res["top1_agreement"] >= 0.99
    assert res["accuracy_ratio"] >= 0.99 and res["score"] == res["accuracy_ratio"]
    assert res["outputs"]["prob"]["cosine_mean"] >= 0.99


def test_compile_records_applied_and_not_applicable_flags(conv_compiled):
    info = json.loads((conv_compiled.parent / "qaic-exec-cpu.json").read_text())
    na = set(info["not_applicable_on_cpu"])
    assert {"aic-num-cores", "mos", "ols", "multicast-weights", "aic-hw", "aic-hw-version", "sdp-cluster-sizes",
            "use-producer-dma", "compile-only"} <= na
    assert {"load-profile", "batchsize", "quantization-schema", "quantization-precision"} <= set(info["applied"])
    assert not na & set(info["applied"])
    assert info["effective_flags"]["mos"] == "1,2"
    assert info["inputs"] == [{"name": "x", "dtype": "float32", "shape": [8, 3, 16, 16]}]
    assert [o["name"] for o in info["outputs"]] == ["class", "prob"]
    assert info["mode"] == "int8" and info["onnxruntime"] == ort.__version__
    assert info["quantization"]["quantized_tensors"] > 0
    assert info["quantization"]["quantized_tensors"] == (info["quantization"]["quantized_activations"]
                                                         + info["quantization"]["quantized_constants"])


def test_profile_ranges_drive_the_scales(conv, conv_profile, conv_compiled, tmp_path):
    prof = profiles.read_profile(conv_profile)
    for e in prof.entries:  # 4x wider ranges
        e.min, e.max = 4 * e.min, 4 * e.max
    wide = tmp_path / "wide.yaml"
    profiles.write_profile(wide, prof.entries, tools_version=prof.tools_version, graph_hash=prof.graph_hash)
    out = _compile(conv["model"], tmp_path / "wide", f"-load-profile={wide}", "-batchsize=8",
                   "-quantization-schema=symmetric_with_uint8")
    a, b = _q_params(conv_compiled), _q_params(out)
    for t in ("c1", "r1", "c2", "r2"):
        assert float(b[t][0]) == pytest.approx(4 * float(a[t][0]), rel=1e-5)


def test_percentile_calibration_narrows_ranges(conv, conv_profile, tmp_path):
    common = [f"-load-profile={conv_profile}", "-batchsize=8", "-quantization-schema=symmetric"]
    mm = _q_params(_compile(conv["model"], tmp_path / "mm", *common, "-quantization-calibration=None"))
    pc = _q_params(_compile(conv["model"], tmp_path / "pc", *common, "-quantization-calibration=Percentile",
                            "-percentile-calibration-value=99.0"))
    assert all(float(pc[t][0]) <= float(mm[t][0]) * (1 + 1e-6) for t in mm)
    assert sum(float(pc[t][0]) < 0.95 * float(mm[t][0]) for t in mm) >= 3


def test_percentile_range_math():
    uniform = profiles.ProfileEntry("u", 0.0, 100.0, [10.0] * 100)
    assert ranges.percentile_range(uniform, 90.0, symmetric=False) == pytest.approx((5.0, 95.0))
    assert ranges.percentile_range(uniform, 90.0, symmetric=True) == pytest.approx((0.0, 90.0))
    sym = profiles.ProfileEntry("s", -10.0, 10.0, [1.0] * 20)  # uniform on [-10, 10]
    assert ranges.percentile_range(sym, 50.0, symmetric=True) == pytest.approx((-5.0, 5.0))
    assert ranges.percentile_range(sym, 100.0, symmetric=False) == pytest.approx((-10.0, 10.0))


def test_schemas_map_to_types_and_channelwise(conv, conv_profile, tmp_path):
    asym = _q_params(_compile(conv["model"], tmp_path / "asym", f"-load-profile={conv_profile}", "-batchsize=8",
                              "-quantization-schema-activations=asymmetric",
                              "-quantization-schema-constants=symmetric_with_uint8", "-enable-channelwise"))
    assert asym["x"][1].dtype == np.uint8 and int(asym["x"][1]) not in (0, 128)  # signed range -> offset
    sym = _q_params(_compile(conv["model"], tmp_path / "sym", f"-load-profile={conv_profile}", "-batchsize=8",
                             "-quantization-schema=symmetric"))
    assert all(zp.dtype == np.int8 and not zp.any() for _, zp in sym.values())
    m = onnx.load(str(tmp_path / "asym" / "programqpc.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    w_dq = [n for n in m.graph.node if n.op_type == "DequantizeLinear" and n.output[0].startswith("w1")]
    assert w_dq and inits[w_dq[0].input[1]].shape == (8,)  # one scale per output channel


def test_execute_nodes_in_fp16_keeps_those_op_types_float(block, tmp_path):
    prof = _calibrate(block["model"], block["cal"], tmp_path / "p.yaml", "-batchsize=2", "-onnx-define-symbol=seq,8")
    all_q = _compile(block["model"], tmp_path / "q", f"-load-profile={prof}", "-batchsize=2",
                     "-onnx-define-symbol=seq,8")
    assert not _float_weight_consumers(all_q)  # every MatMul weight goes through DequantizeLinear
    out = _compile(block["model"], tmp_path / "fp16", f"-load-profile={prof}", "-batchsize=2",
                   "-onnx-define-symbol=seq,8", "-execute-nodes-in-fp16=MatMul,Softmax,LayerNormalization,Add,Mul")
    kept = _float_weight_consumers(out)
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "ffn1", "ffn2"} <= kept
    info = json.loads((tmp_path / "fp16" / "qaic-exec-cpu.json").read_text())
    assert "MatMul" in info["quantization"]["op_types_kept_float"]
    sess = ort.InferenceSession(str(all_q), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape == [2, 8, 32] and sess.get_outputs()[0].shape == [2, 8, 32]
    res = accuracy.compare(block["model"], all_q, block["held"], batch=2, symbols={"seq": 8})
    assert res["metric"] == "cosine" and res["cosine"] >= 0.99
    assert res["outputs"]["y"]["max_abs_error"] > 0  # it really is quantized


def test_node_precision_keeps_named_nodes_float(block, tmp_path):
    prof = _calibrate(block["model"], block["cal"], tmp_path / "p.yaml", "-batchsize=2", "-onnx-define-symbol=seq,8")
    np_file = tmp_path / "precision.yaml"
    np_file.write_text("FP16NodeInstanceNames: [h]\nFP32NodeInstanceNames: [proj]\n")
    out = _compile(block["model"], tmp_path / "np", f"-load-profile={prof}", "-batchsize=2",
                   "-onnx-define-symbol=seq,8", f"-node-precision-info={np_file}")
    kept = _float_weight_consumers(out)
    assert kept == {"ffn1", "o_proj"}  # the producers of h and proj; the other MatMuls are int8
    info = json.loads((tmp_path / "np" / "qaic-exec-cpu.json").read_text())
    assert info["quantization"]["nodes_kept_float"] == ["ffn1", "o_proj"]


def test_output_node_name_prunes_outputs(conv, conv_profile, tmp_path):
    out = _compile(conv["model"], tmp_path / "argmax", f"-load-profile={conv_profile}", "-batchsize=8",
                   "-output-node-name=ArgMax")
    m = onnx.load(str(out))
    assert [o.name for o in m.graph.output] == ["class"]
    assert "Softmax" not in {n.op_type for n in m.graph.node}
    res = accuracy.compare(conv["model"], out, conv["held"], batch=8)
    assert list(res["outputs"]) == ["class"] and res["score"] >= 0.99


def test_convert_to_fp16_without_profile(block, tmp_path):
    out = _compile(block["model"], tmp_path / "f16", "-convert-to-fp16", "-batchsize=2",
                   "-onnx-define-symbol=seq,8", "-quantization-schema=symmetric")
    m = onnx.load(str(out))
    assert not any(n.op_type == "QuantizeLinear" for n in m.graph.node)
    assert any(i.data_type == TensorProto.FLOAT16 for i in m.graph.initializer)
    info = json.loads((tmp_path / "f16" / "qaic-exec-cpu.json").read_text())
    assert info["mode"] == "fp16" and "quantization-schema" in info["not_applied"]
    res = accuracy.compare(block["model"], out, block["held"], batch=2, symbols={"seq": 8})
    assert res["cosine"] >= 0.999


# ------------------------------------------------------------------------------------ errors, CLI


def test_cli_subprocess_round_trip_and_unknown_flag(conv, conv_profile, tmp_path):
    exe = [sys.executable, "-m", "qaic_assets.cpu_compiler.main"]
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    r = subprocess.run(exe + [f"-model={conv['model']}", f"-load-profile={conv_profile}",
                              f"-aic-binary-dir={tmp_path / 'cli'}", "-batchsize=8"],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "cli" / "programqpc.onnx").is_file() and (tmp_path / "cli" / "qaic-exec-cpu.json").is_file()
    r = subprocess.run(exe + [f"-model={conv['model']}", "-aic-binary-dir=x", "-bogus-flag=3"],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert r.returncode == 2
    assert "ERROR:" in r.stderr and "-bogus-flag" in r.stderr
    assert not (tmp_path / "x").exists()


def test_missing_inputs_fail_with_a_message_naming_them(conv, conv_profile, tmp_path, capsys):
    m = conv["model"]
    cases = [
        ([f"-model={tmp_path / 'nope.onnx'}", "-aic-binary-dir=o"], "nope.onnx"),
        ([f"-model={m}", f"-input-list-file={tmp_path / 'none.txt'}", "-dump-profile=p.yaml", "-batchsize=8"],
         "none.txt"),
        ([f"-model={m}", f"-load-profile={tmp_path / 'noprof.yaml'}", f"-aic-binary-dir={tmp_path / 'o'}"],
         "noprof.yaml"),
        ([f"-model={m}", f"-load-profile={conv_profile}", f"-aic-binary-dir={tmp_path / 'o'}",
          f"-node-precision-info={tmp_path / 'np.yaml'}"], "np.yaml"),
        ([f"-model={m}", f"-dump-profile={tmp_path / 'p.yaml'}"], "-input-list-file"),
        ([f"-model={m}"], "-aic-binary-dir"),
        ([f"-model={m}", "-aic-binary-dir=o", "-batchsize=eight"], "-batchsize"),
    ]
    for argv, needle in cases:
        rc, _, err = _run(argv, capsys)
        assert rc != 0, argv
        assert err.startswith("ERROR:") and needle in err, (argv, err)


def test_missing_and_wrong_size_raw_files(conv, tmp_path, capsys):
    good = np.zeros((8, 3, 16, 16), np.float32)
    good.tofile(tmp_path / "good.raw")
    good[:3].tofile(tmp_path / "short.raw")
    (tmp_path / "missing.txt").write_text("good.raw\nabsent.raw\n")
    (tmp_path / "short.txt").write_text("good.raw\nshort.raw\n")
    base = [f"-model={conv['model']}", "-batchsize=8", f"-dump-profile={tmp_path / 'p.yaml'}"]
    rc, _, err = _run(base + [f"-input-list-file={tmp_path / 'missing.txt'}"], capsys)
    assert rc == 1 and "absent.raw" in err and "does not exist" in err
    rc, _, err = _run(base + [f"-input-list-file={tmp_path / 'short.txt'}"], capsys)
    assert rc == 1 and "short.raw" in err and "'x'" in err
    assert f"has {3 * 3 * 16 * 16 * 4} bytes" in err and f"expected {8 * 3 * 16 * 16 * 4} bytes" in err
    assert not (tmp_path / "p.yaml").exists()


def test_symbolic_dim_without_value_is_an_error(block, tmp_path, capsys):
    rc, _, err = _run([f"-model={block['model']}", f"-input-list-file={block['cal']}", "-batchsize=2",
                       f"-dump-profile={tmp_path / 'p.yaml'}"], capsys)
    assert rc == 1 and "'seq'" in err and "-onnx-define-symbol=seq," in err


# --------------------------------------------------------------------------------- flags, rawdata


def test_flag_grammar():
    p = qaic_flags.parse_argv(["-onnx-define-symbol=batch_size,1", "-mos=1", "-aic-hw",
                               "-onnx-define-symbol=seg_length,384", "-mos=1,2", "-onnx-define-symbol=batch_size,8",
                               "-combine-inputs=false"])
    assert p.get("mos") == "1,2"  # last occurrence wins
    assert p.symbols == {"seg_length": 384, "batch_size": 8}  # accumulate, later value wins
    assert p.get_bool("aic-hw") and not p.get_bool("combine-inputs")
    applied, na = p.split_by_cpu_status()
    assert "onnx-define-symbol" in applied and {"mos", "aic-hw", "combine-inputs"} <= set(na)
    for bad, needle in [(["-nope"], "-nope"), (["model=x"], "model=x"), (["-batchsize"], "-batchsize"),
                        (["-onnx-define-symbol=seq"], "name,value"), (["-quantization-schema=wild"], "wild"),
                        (["-aic-hw=3"], "-aic-hw"), (["-vvv=1"], "-vvv")]:
        with pytest.raises(qaic_flags.FlagError, match=needle):
            qaic_flags.parse_argv(bad)


def test_every_seed_flag_is_known():
    seed = (REPO.parent / "shared" / "seed" / "compile-model-for.qaic.md")
    recipes = (REPO / "qaic_assets" / "qaic" / "recipes.yaml")
    text = "".join(p.read_text() for p in (seed, recipes) if p.is_file())
    import re

    used = set(re.findall(r"(?<![\w-])-([a-z][a-z0-9-]+)(?==|\s|`|$)", text, re.M))
    used = {u for u in used if u.startswith(("aic", "quantization", "onnx", "execute", "vvv", "compile", "multicast",
                                             "combine", "output", "use-", "enable", "node", "percentile", "mos", "ols",
                                             "sdp", "allocator", "size-split", "vtcm", "profiling", "num-histogram",
                                             "input-list", "dump-profile", "load-profile", "batchsize"))}
    assert used and used <= set(qaic_flags.FLAGS), used - set(qaic_flags.FLAGS)


def test_rawdata_lists_and_batches(tmp_path):
    (tmp_path / "sub").mkdir()
    a = np.arange(2 * 3, dtype=np.float32).reshape(2, 3)
    ids = np.arange(2 * 4, dtype=np.int64).reshape(2, 4)
    for i in range(2):
        a[i:i + 1].tofile(tmp_path / "sub" / f"a{i}.raw")
        ids[i:i + 1].tofile(tmp_path / "sub" / f"ids{i}.raw")
    (tmp_path / "l.txt").write_text("sub/a0.raw, sub/ids0.raw\n\nsub/a1.raw,sub/ids1.raw\n")
    lines = rawdata.read_input_list(tmp_path / "l.txt")
    assert lines == [[tmp_path / "sub" / "a0.raw", tmp_path / "sub" / "ids0.raw"],
                     [tmp_path / "sub" / "a1.raw", tmp_path / "sub" / "ids1.raw"]]
    specs = [rawdata.InputSpec("a", np.dtype(np.float32), (3, 3)), rawdata.InputSpec("ids", np.dtype(np.int64), (3, 4))]
    assert specs[0].sample_nbytes == 12 and specs[1].sample_nbytes == 32
    batches = list(rawdata.iter_batches(lines, specs))
    assert len(batches) == 1 and batches[0][1] == 2  # 2 real samples, padded to 3
    (arr_a, arr_ids), _ = batches[0]
    np.testing.assert_array_equal(arr_a, np.concatenate([a, a[1:]]))
    np.testing.assert_array_equal(arr_ids, np.concatenate([ids, ids[1:]]))
    with pytest.raises(rawdata.RawDataError, match=r"2 raw file\(s\).*1 input"):
        list(rawdata.iter_batches(lines, specs[:1]))
    with pytest.raises(rawdata.RawDataError, match=r"has 12 bytes, expected 24 bytes"):
        rawdata.load_raw(tmp_path / "sub" / "a0.raw", np.float32, (2, 3), input_name="a")


# ---------------------------------------------------------------------------- stand-in round trips


def _first(list_path: Path, n: int, out: Path) -> Path:
    """A list of the first n samples of list_path (absolute paths: the raw files stay where they are)."""
    lines = rawdata.read_input_list(list_path)[:n]
    out.write_text("".join(",".join(map(str, line)) + "\n" for line in lines))
    return out


def _round_trip(tmp_path, files, n_cal, n_held, batch, cal_flags, compile_flags, symbols=None):
    """Calibrate, compile and compare one of the session's stand-ins (conftest.py `standin`) on its
    first n_cal calibration and n_held held-out samples."""
    cal_list = _first(files.calibration_list, n_cal, tmp_path / "cal.txt")
    held_list = _first(files.heldout_list, n_held, tmp_path / "heldout.txt")
    labels = None
    if files.labels is not None:
        labels = tmp_path / "labels.txt"
        labels.write_text("".join(files.labels.read_text().splitlines(keepends=True)[:n_held]))
    prof = _calibrate(files.model, cal_list, tmp_path / "profile.yaml", f"-batchsize={batch}", *cal_flags)
    out = _compile(files.model, tmp_path / "elfs", f"-load-profile={prof}", f"-batchsize={batch}", *compile_flags)
    return accuracy.compare(files.model, out, held_list, batch=batch, symbols=symbols or {}, labels=labels)


def test_standin_resnet50_round_trip_batch8(tmp_path, standin):
    res = _round_trip(
        tmp_path, standin("resnet50"), 8, 16, 8, ["-output-node-name=ArgMax", "-profiling-threads=2"],
        ["-aic-hw", "-aic-hw-version=2.0", "-quantization-schema=symmetric_with_uint8", "-quantization-precision=Int8",
         "-output-node-name=ArgMax", "-vvv", "-compile-only", "-use-producer-dma=1", "-aic-num-cores=4"])
    assert res["samples"] == 16
    assert res["metric"] == "accuracy_ratio" and res["score"] >= 0.99


def test_standin_bert_round_trip(tmp_path, standin):
    res = _round_trip(
        tmp_path, standin("bert-99"), 4, 4, 1,
        ["-onnx-define-symbol=batch_size,1", "-onnx-define-symbol=seg_length,384", "-num-histogram-bins=512"],
        ["-execute-nodes-in-fp16=Mul,Sqrt,Div,Add,ReduceMean,Softmax,Sub,Gather,Erf,Pow,Concat,Tile,LayerNormalization",
         "-quantization-schema=symmetric_with_uint8", "-quantization-precision=Int8",
         "-quantization-precision-bias=Int32", "-onnx-define-symbol=batch_size,1",
         "-onnx-define-symbol=seg_length,384", "-combine-inputs=false"],
        symbols={"seg_length": 384})
    assert res["samples"] == 4
    assert res["metric"] == "cosine" and res["cosine"] >= 0.99


def test_standin_retinanet_round_trip(tmp_path, standin):
    files = standin("retinanet")
    np_flag = f"-node-precision-info={files.node_precision}"
    res = _round_trip(
        tmp_path, files, 2, 2, 1, ["-enable-channelwise", "-onnx-define-symbol=batch_size,1", np_flag],
        ["-enable-channelwise", "-onnx-define-symbol=batch_size,1", np_flag,
         "-quantization-schema-constants=symmetric_with_uint8", "-quantization-schema-activations=asymmetric",
         "-quantization-calibration=None", "-aic-enable-depth-first"])
    assert res["samples"] == 2
    # the random-weight box head is int8-sensitive: ORT's own quantize_static gives the same ~0.97
    assert res["outputs"]["cls_logits"]["cosine_mean"] >= 0.99
    assert res["outputs"]["bbox_regression"]["cosine_mean"] >= 0.9


DIGITS = REPO / "qaic_assets" / "models" / "data" / "digits"


@pytest.mark.parametrize("extra", [[], ["-quantization-calibration=Percentile", "-percentile-calibration-value=99.99"]])
def test_digits_real_data_round_trip(tmp_path, extra):
    """Real trained model + real data: int8 keeps >= 99% of the fp32 held-out accuracy."""
    prof = _calibrate(DIGITS / "model.onnx", DIGITS / "cal.txt", tmp_path / "p.yaml", "-batchsize=8",
                      "-output-node-name=ArgMax", "-profiling-threads=2")
    out = _compile(DIGITS / "model.onnx", tmp_path / "elfs", f"-load-profile={prof}", "-batchsize=8",
                   "-aic-hw", "-aic-hw-version=2.0", "-quantization-schema=symmetric_with_uint8",
                   "-quantization-precision=Int8", "-output-node-name=ArgMax", "-vvv", "-compile-only",
                   "-use-producer-dma=1", *extra)
    res = accuracy.compare(DIGITS / "model.onnx", out, DIGITS / "heldout.txt", batch=8,
                           labels=DIGITS / "heldout_labels.txt")
    assert res["samples"] == 359
    assert res["accuracy_fp32"] >= 0.95
    assert res["metric"] == "accuracy_ratio" and res["score"] >= 0.99, res
