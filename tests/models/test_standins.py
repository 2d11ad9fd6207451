"""Tests for qaic_assets.models.standins (generated stand-in models) and the shipped digits model."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml

from conftest import STANDIN_CALIBRATION, STANDIN_HELDOUT
from qaic_assets.models import common, standins
from qaic_assets.models.standins import STANDINS, StandinFiles, build_standin

DIGITS_DIR = Path(standins.__file__).resolve().parent / "data" / "digits"
N_CAL, N_HELD = STANDIN_CALIBRATION, STANDIN_HELDOUT


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tree(root: Path) -> dict[str, tuple[str, int]]:
    return {p.relative_to(root).as_posix(): (_sha(p), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def _session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


_DTYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64}


def _concrete(shape, seq: int = common.BERT_SEQ) -> list[int]:
    out = []
    for d in shape:
        if isinstance(d, int):
            out.append(d)
        elif d == "batch_size":
            out.append(1)
        elif d == "seg_length":
            out.append(seq)
        else:
            raise AssertionError(f"unexpected symbolic dim {d}")
    return out


def _load_list(sess: ort.InferenceSession, list_path: Path, n: int | None = None) -> dict[str, np.ndarray]:
    """Per-sample raw files of a docs/FORMATS.md list file, concatenated along the batch dim."""
    lines = [ln for ln in list_path.read_text().splitlines() if ln.strip()][:n]
    feeds: dict[str, list[np.ndarray]] = {i.name: [] for i in sess.get_inputs()}
    for line in lines:
        parts = line.split(",")
        assert len(parts) == len(sess.get_inputs())
        for inp, rel in zip(sess.get_inputs(), parts):
            raw = list_path.parent / rel
            dtype = _DTYPES[inp.type]
            shape = _concrete(inp.shape)
            assert raw.stat().st_size == int(np.prod(shape)) * np.dtype(dtype).itemsize, raw
            feeds[inp.name].append(np.fromfile(raw, dtype=dtype).reshape(shape))
    return {k: np.concatenate(v) for k, v in feeds.items()}


@pytest.fixture(scope="module")
def built(standin) -> tuple[Path, dict[str, StandinFiles]]:
    """The session's shared stand-ins (conftest.py), all kinds in one directory."""
    files = {kind: standin(kind) for kind in STANDINS}
    return files["bert-99"].model.parent, files


@pytest.fixture(scope="module")
def sessions(built) -> dict[str, ort.InferenceSession]:
    _, files = built
    return {kind: _session(f.model) for kind, f in files.items()}


def test_api_shape(built):
    out, files = built
    assert STANDINS == ("resnet50", "retinanet", "bert-99")
    for kind, f in files.items():
        assert isinstance(f, StandinFiles)
        for p in (f.model, f.calibration_list, f.heldout_list):
            assert p.is_file() and p.parent == out
        assert "stand-in" in f.description.lower() and "random weights" in f.description
    assert files["resnet50"].labels is not None and files["resnet50"].labels.is_file()
    assert files["retinanet"].node_precision is not None and files["retinanet"].node_precision.is_file()
    assert files["bert-99"].labels is None and files["bert-99"].node_precision is None
    assert not list(out.rglob("*.tmp")), "temp files left behind"
    with pytest.raises(ValueError):
        build_standin("vgg16", out)
    for kind, f in files.items():  # the paths are known without generating anything
        assert standins.standin_paths(kind, out) == f
        elsewhere = standins.standin_paths(kind, out / "nowhere")
        assert elsewhere.model == out / "nowhere" / f.model.name
    assert not (out / "nowhere").exists()


@pytest.mark.parametrize("kind", STANDINS)
def test_checker_and_io_signature(built, kind):
    _, files = built
    model = onnx.load(str(files[kind].model))
    onnx.checker.check_model(model)
    ins = {i.name: i for i in model.graph.input}
    outs = {o.name: o for o in model.graph.output}

    def dims(vi):
        return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]

    if kind == "resnet50":
        assert list(ins) == ["input"] and dims(ins["input"]) == ["batch_size", 3, 224, 224]
        assert dims(outs["ArgMax"]) == ["batch_size"]
        assert outs["ArgMax"].type.tensor_type.elem_type == onnx.TensorProto.INT64
        assert dims(outs["softmax_tensor"]) == ["batch_size", common.RESNET_CLASSES]
        argmax = [n for n in model.graph.node if n.name == "ArgMax"]
        assert len(argmax) == 1 and argmax[0].op_type == "ArgMax" and list(argmax[0].output) == ["ArgMax"]
        n_conv = sum(n.op_type == "Conv" for n in model.graph.node)
        assert n_conv == 53  # ResNet-50: stem + 16 bottlenecks x 3 + 4 projections
    elif kind == "retinanet":
        size = common.RETINANET_IMAGE
        assert list(ins) == ["images"] and dims(ins["images"]) == ["batch_size", 3, size, size]
        assert set(outs) == {"cls_logits", "bbox_regression"}
        assert dims(outs["cls_logits"])[2] == common.RETINANET_CLASSES
        assert not any(n.op_type in ("NonMaxSuppression", "TopK") for n in model.graph.node)
    else:
        assert list(ins) == ["input_ids", "input_mask", "segment_ids"]
        for vi in ins.values():
            assert dims(vi) == ["batch_size", "seg_length"]
            assert vi.type.tensor_type.elem_type == onnx.TensorProto.INT64
        assert list(outs) == ["output_start_logits", "output_end_logits"]
        ops = {n.op_type for n in model.graph.node}
        assert {"Gather", "MatMul", "Softmax", "Erf", "Pow", "Sqrt", "ReduceMean"} <= ops


@pytest.mark.parametrize("kind", STANDINS)
@pytest.mark.parametrize("batch", [1, 3])  # the batch dimension is symbolic: 1 and any other
def test_runs_on_calibration_inputs(built, sessions, kind, batch):
    _, files = built
    sess = sessions[kind]
    feeds = _load_list(sess, files[kind].calibration_list, batch)
    assert all(v.shape[0] == batch for v in feeds.values())
    outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    for name, v in outs.items():
        assert v.shape[0] == batch
        if v.dtype != np.int64:
            assert np.isfinite(v).all(), name
    if kind == "resnet50":
        assert outs["ArgMax"].shape == (batch,)
        np.testing.assert_allclose(outs["softmax_tensor"].sum(axis=1), 1.0, rtol=1e-4)
        assert (outs["ArgMax"] == outs["softmax_tensor"].argmax(axis=1)).all()
    elif kind == "retinanet":
        cls, box = outs["cls_logits"], outs["bbox_regression"]
        assert cls.shape[1] == box.shape[1] == 19206 and box.shape[2] == 4
        assert 0.1 < cls.std() < 20 and 0.05 < box.std() < 10  # neither vanishing nor exploding
    else:
        assert outs["output_start_logits"].shape == (batch, common.BERT_SEQ)
        assert outs["output_start_logits"].std() > 1e-3


def test_bert_inputs_layout(built):
    _, files = built
    sess = _session(files["bert-99"].model)
    feeds = _load_list(sess, files["bert-99"].heldout_list)
    ids, mask, seg = feeds["input_ids"], feeds["input_mask"], feeds["segment_ids"]
    assert ids.min() >= 0 and ids.max() < common.BERT_VOCAB
    assert (ids[:, 0] == 101).all() and (ids[mask == 0] == 0).all()
    assert set(np.unique(mask)) <= {0, 1} and set(np.unique(seg)) == {0, 1}
    assert (seg <= mask).all()
    assert ((ids == 102).sum(axis=1) == 2).all()


def test_resnet50_predictions_not_degenerate(built, sessions):
    _, files = built
    sess = sessions["resnet50"]
    feeds = _load_list(sess, files["resnet50"].heldout_list)
    pred = sess.run(["ArgMax"], feeds)[0]
    assert len(set(pred.tolist())) >= 3, pred
    labels = np.loadtxt(files["resnet50"].labels, dtype=np.int64)
    assert labels.shape == pred.shape
    assert (pred == labels).mean() >= 0.9


def test_resnet50_survives_naive_int8(built, sessions, tmp_path):
    """Per-tensor MinMax int8 QDQ (onnxruntime's quantize_static) keeps the fp32 top-1."""
    quant = pytest.importorskip("onnxruntime.quantization")
    _, files = built
    f = files["resnet50"]
    cal = _load_list(sessions["resnet50"], f.calibration_list)["input"]

    class Reader(quant.CalibrationDataReader):
        def __init__(self):
            self.it = iter(cal)

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {"input": x[None]}

    q = tmp_path / "resnet50_int8.onnx"
    quant.quantize_static(str(f.model), str(q), Reader(), quant_format=quant.QuantFormat.QDQ, per_channel=False,
                          activation_type=quant.QuantType.QInt8, weight_type=quant.QuantType.QInt8,
                          calibrate_method=quant.CalibrationMethod.MinMax)
    x = _load_list(sessions["resnet50"], f.heldout_list)["input"]
    fp32 = sessions["resnet50"].run(["ArgMax"], {"input": x})[0]
    int8 = _session(q).run(["ArgMax"], {"input": x})[0]
    assert (fp32 == int8).mean() >= 0.99, (fp32, int8)


def test_retinanet_node_precision_names_are_real_tensors(built):
    _, files = built
    model = onnx.load(str(files["retinanet"].model), load_external_data=False)
    produced = {o for n in model.graph.node for o in n.output}
    spec = yaml.safe_load(files["retinanet"].node_precision.read_text())
    assert set(spec) <= {"FP16NodeInstanceNames", "FP32NodeInstanceNames"}
    names = [n for key in spec for n in spec[key]]
    assert names and all(isinstance(n, str) for n in names)
    missing = [n for n in names if n not in produced]
    assert not missing, missing
    assert {"cls_logits", "bbox_regression"} <= set(names)


def test_second_call_reuses_files(built, monkeypatch):
    out, files = built
    before = _tree(out)
    for kind in STANDINS:  # no model is generated again
        monkeypatch.setitem(standins._BUILDERS, kind, lambda: pytest.fail("the stand-in was generated again"))
        again = build_standin(kind, out, n_calibration=N_CAL, n_heldout=N_HELD)
        assert again == files[kind]
    assert _tree(out) == before  # same content, same mtimes: nothing rewritten


def test_builds_are_byte_identical(built, tmp_path):
    out, files = built
    for kind in STANDINS:
        other = build_standin(kind, tmp_path, n_calibration=N_CAL, n_heldout=N_HELD)
        assert _sha(other.model) == _sha(files[kind].model), kind
    ours = {k: v[0] for k, v in _tree(out).items()}
    theirs = {k: v[0] for k, v in _tree(tmp_path).items()}
    assert ours == theirs


def test_repairs_corruption_and_interrupted_generation(tmp_path, monkeypatch):
    kind = "bert-99"
    ref = build_standin(kind, tmp_path / "ref", n_calibration=2, n_heldout=2)
    ref_tree = {k: v[0] for k, v in _tree(tmp_path / "ref").items()}

    d = tmp_path / "work"
    # an interrupted generation (model builder dies after the inputs were written) leaves no stamp ...
    def boom():
        raise KeyboardInterrupt

    monkeypatch.setitem(standins._BUILDERS, kind, boom)
    with pytest.raises(KeyboardInterrupt):
        build_standin(kind, d, n_calibration=2, n_heldout=2)
    assert not (d / f"{kind}.stamp.json").exists() and not (d / f"{kind}.onnx").exists()
    monkeypatch.undo()
    # ... so the next call completes it
    files = build_standin(kind, d, n_calibration=2, n_heldout=2)
    assert {k: v[0] for k, v in _tree(d).items()} == ref_tree
    # a corrupted file is detected through the stamp's sha256 and regenerated
    raw = d / f"{kind}_calibration" / "0000_input_ids.raw"
    raw.write_bytes(b"\0" * raw.stat().st_size)
    build_standin(kind, d, n_calibration=2, n_heldout=2)
    assert {k: v[0] for k, v in _tree(d).items()} == ref_tree
    # other parameters: more samples, the shared ones unchanged and untouched
    mtime = files.model.stat().st_mtime_ns
    build_standin(kind, d, n_calibration=3, n_heldout=2)
    assert files.model.stat().st_mtime_ns == mtime
    assert len(files.calibration_list.read_text().split()) == 3
    assert _sha(d / f"{kind}_calibration" / "0001_segment_ids.raw") == ref_tree[f"{kind}_calibration/0001_segment_ids.raw"]
    assert ref.description == files.description


def test_cli(tmp_path, capsys):
    assert standins.main(["bert-99", str(tmp_path), "--n-calibration", "1", "--n-heldout", "1"]) == 0
    assert (tmp_path / "bert-99.onnx").is_file()
    assert "bert-99" in capsys.readouterr().out


# ------------------------------------------------------------------------------- digits (shipped)


def test_digits_files_and_model():
    model = onnx.load(str(DIGITS_DIR / "model.onnx"))
    onnx.checker.check_model(model)
    inp = model.graph.input[0]
    assert inp.name == "input"
    assert [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim] == ["batch_size", 1, 8, 8]
    argmax = [n for n in model.graph.node if n.name == "ArgMax"]
    assert len(argmax) == 1 and list(argmax[0].output) == ["ArgMax"]
    assert {o.name for o in model.graph.output} == {"ArgMax", "softmax_tensor"}
    total = sum(p.stat().st_size for p in DIGITS_DIR.rglob("*") if p.is_file())
    assert total < 2_000_000
    n_cal = len((DIGITS_DIR / "cal.txt").read_text().split())
    assert 50 <= n_cal <= 200


def test_digits_accuracy_matches_readme():
    sess = _session(DIGITS_DIR / "model.onnx")
    x = _load_list(sess, DIGITS_DIR / "heldout.txt")["input"]
    labels = np.loadtxt(DIGITS_DIR / "heldout_labels.txt", dtype=np.int64)
    assert labels.shape == (x.shape[0],) and 300 <= x.shape[0] <= 400
    pred = sess.run(["ArgMax"], {"input": x})[0]
    correct = int((pred == labels).sum())
    # batch 8 gives the same answers as the full batch
    assert (sess.run(["ArgMax"], {"input": x[:8]})[0] == pred[:8]).all()
    readme = (DIGITS_DIR / "README.md").read_text()
    m = re.search(r"fp32 accuracy: ([\d.]+)% \((\d+)/(\d+)\)", readme)
    assert m, "README must state the fp32 accuracy"
    assert (int(m.group(2)), int(m.group(3))) == (correct, len(labels))
    assert float(m.group(1)) == pytest.approx(100.0 * correct / len(labels), abs=0.005)
    assert correct / len(labels) >= 0.95
    assert "CC BY 4.0" in readme and "UCI" in readme


def test_digits_calibration_and_heldout_are_disjoint():
    def rows(list_name):
        lines = (DIGITS_DIR / list_name).read_text().split()
        return {np.fromfile(DIGITS_DIR / ln, dtype=np.float32).tobytes() for ln in lines}

    cal, held = rows("cal.txt"), rows("heldout.txt")
    # the data set has a few exact duplicate images; calibration comes from the training split
    assert len(cal & held) <= 2
    for ln in (DIGITS_DIR / "cal.txt").read_text().split():
        assert os.path.getsize(DIGITS_DIR / ln) == 64 * 4
