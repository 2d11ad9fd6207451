"""Rebuild the shipped ``digits`` model and its data: ``qaic_assets/models/data/digits/``.

A small CNN trained (numpy only: softmax cross-entropy, Adam, fixed seeds) on the UCI ML "Optical
Recognition of Handwritten Digits" data set (8x8 images, 1797 samples, CC BY 4.0) as bundled in
scikit-learn (``sklearn.datasets.load_digits``, read from the package, no download). scikit-learn is
NOT a project dependency; run this script from a throwaway venv:

    python3 -m venv /tmp/trainenv
    /tmp/trainenv/bin/pip install scikit-learn onnx numpy onnxruntime
    /tmp/trainenv/bin/python scripts/build_digits_model.py            # writes qaic_assets/models/data/digits/
    /tmp/trainenv/bin/python scripts/build_digits_model.py --out DIR  # elsewhere

It is deterministic (same files on the same machine and library versions). It writes:

* ``model.onnx``: input ``input`` float32 [batch_size, 1, 8, 8] (pixel value / 16, so 0..1), outputs
  ``ArgMax`` (int64 [batch_size], node and tensor named ``ArgMax``) and ``softmax_tensor`` (float32
  [batch_size, 10]): Conv3x3(1->16)+ReLU, Conv3x3 stride 2 (16->32)+ReLU, Flatten, MatMul+Add (512->10).
  It compiles with the resnet50 recipe (``-output-node-name=ArgMax``).
* ``cal/NNNN.raw`` + ``cal.txt``: 100 calibration samples (10 per class) taken from the training split.
* ``heldout/NNNN.raw`` + ``heldout.txt`` + ``heldout_labels.txt``: the test split (20 % per class,
  stratified, never used in training), one label per line.
* ``README.md``: provenance, licence, fp32 held-out accuracy, and the naive int8 QDQ accuracy
  (onnxruntime ``quantize_static``, per-tensor MinMax, data reader over ``cal.txt``).

Raw files follow docs/FORMATS.md: the tensor's bytes, C order, float32, batch dim 1, no header.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SEED = 20240611
TEST_FRACTION = 0.2
N_CAL_PER_CLASS = 10
EPOCHS = 40
BATCH = 32
LR = 3e-3
WEIGHT_DECAY = 1e-4
OPSET = 13
IR_VERSION = 8
C1, C2 = 16, 32

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "qaic_assets" / "models" / "data" / "digits"


# ------------------------------------------------------------------------------------ numpy CNN


def im2col(x: np.ndarray, k: int, stride: int, pad: int) -> tuple[np.ndarray, int, int]:
    n, c, h, w = x.shape
    ho = (h + 2 * pad - k) // stride + 1
    wo = (w + 2 * pad - k) // stride + 1
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    cols = np.empty((n, c, k, k, ho, wo), x.dtype)
    for a in range(k):
        for b in range(k):
            cols[:, :, a, b] = xp[:, :, a : a + stride * ho : stride, b : b + stride * wo : stride]
    # (n, ho, wo, c*k*k)
    return cols.transpose(0, 4, 5, 1, 2, 3).reshape(n * ho * wo, c * k * k), ho, wo


def col2im(dcols: np.ndarray, xshape, k: int, stride: int, pad: int, ho: int, wo: int) -> np.ndarray:
    n, c, h, w = xshape
    d = dcols.reshape(n, ho, wo, c, k, k).transpose(0, 3, 4, 5, 1, 2)
    dxp = np.zeros((n, c, h + 2 * pad, w + 2 * pad), dcols.dtype)
    for a in range(k):
        for b in range(k):
            dxp[:, :, a : a + stride * ho : stride, b : b + stride * wo : stride] += d[:, :, a, b]
    return dxp[:, :, pad : pad + h, pad : pad + w]


class CNN:
    def __init__(self, rng: np.random.Generator) -> None:
        def he(shape, fan_in):
            return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float64)

        self.p = {
            "w1": he((C1, 1, 3, 3), 9), "b1": np.zeros(C1),
            "w2": he((C2, C1, 3, 3), C1 * 9), "b2": np.zeros(C2),
            "w3": he((C2 * 16, 10), C2 * 16) / np.sqrt(2.0), "b3": np.zeros(10),
        }

    def forward(self, x: np.ndarray, keep: bool = False):
        p = self.p
        n = x.shape[0]
        c1, h1, w1 = im2col(x, 3, 1, 1)
        z1 = c1 @ p["w1"].reshape(C1, -1).T + p["b1"]
        a1 = np.maximum(z1, 0).reshape(n, h1, w1, C1).transpose(0, 3, 1, 2)
        c2, h2, w2 = im2col(a1, 3, 2, 1)
        z2 = c2 @ p["w2"].reshape(C2, -1).T + p["b2"]
        a2 = np.maximum(z2, 0).reshape(n, h2, w2, C2).transpose(0, 3, 1, 2)
        f = a2.reshape(n, -1)  # NCHW flatten, as ONNX Flatten
        logits = f @ p["w3"] + p["b3"]
        if keep:
            self.cache = (x, c1, z1, a1, c2, z2, f, (h1, w1, h2, w2))
        return logits

    def backward(self, dlogits: np.ndarray) -> dict[str, np.ndarray]:
        p = self.p
        x, c1, z1, a1, c2, z2, f, (h1, w1, h2, w2) = self.cache
        n = x.shape[0]
        g = {"w3": f.T @ dlogits, "b3": dlogits.sum(0)}
        df = dlogits @ p["w3"].T
        da2 = df.reshape(n, C2, h2, w2).transpose(0, 2, 3, 1).reshape(-1, C2)
        dz2 = da2 * (z2 > 0)
        g["w2"] = (dz2.T @ c2).reshape(p["w2"].shape)
        g["b2"] = dz2.sum(0)
        dc2 = dz2 @ p["w2"].reshape(C2, -1)
        da1 = col2im(dc2, a1.shape, 3, 2, 1, h2, w2)
        dz1 = da1.transpose(0, 2, 3, 1).reshape(-1, C1) * (z1 > 0)
        g["w1"] = (dz1.T @ c1).reshape(p["w1"].shape)
        g["b1"] = dz1.sum(0)
        return g


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def train(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> CNN:
    net = CNN(rng)
    m = {k: np.zeros_like(v) for k, v in net.p.items()}
    v = {k: np.zeros_like(v) for k, v in net.p.items()}
    b1, b2, eps = 0.9, 0.999, 1e-8
    step = 0
    n = x.shape[0]
    for epoch in range(EPOCHS):
        lr = LR * 0.5 * (1 + np.cos(np.pi * epoch / EPOCHS))  # cosine schedule
        order = rng.permutation(n)
        for i in range(0, n, BATCH):
            idx = order[i : i + BATCH]
            logits = net.forward(x[idx], keep=True)
            prob = softmax(logits)
            dlogits = prob.copy()
            dlogits[np.arange(len(idx)), y[idx]] -= 1.0
            dlogits /= len(idx)
            grads = net.backward(dlogits)
            step += 1
            for k in net.p:
                gk = grads[k] + (WEIGHT_DECAY * net.p[k] if k.startswith("w") else 0.0)
                m[k] = b1 * m[k] + (1 - b1) * gk
                v[k] = b2 * v[k] + (1 - b2) * gk * gk
                mh = m[k] / (1 - b1**step)
                vh = v[k] / (1 - b2**step)
                net.p[k] -= lr * mh / (np.sqrt(vh) + eps)
        acc = float((net.forward(x).argmax(1) == y).mean())
        if epoch % 10 == 9 or epoch == EPOCHS - 1:
            print(f"epoch {epoch + 1}: train accuracy {acc:.4f}")
    return net


# ------------------------------------------------------------------------------------ ONNX


def to_onnx(net: CNN) -> onnx.ModelProto:
    p = {k: v.astype(np.float32) for k, v in net.p.items()}
    inits = [numpy_helper.from_array(p[k], name) for k, name in (
        ("w1", "conv1.weight"), ("b1", "conv1.bias"), ("w2", "conv2.weight"), ("b2", "conv2.bias"),
        ("w3", "fc.weight"), ("b3", "fc.bias"))]
    nodes = [
        helper.make_node("Conv", ["input", "conv1.weight", "conv1.bias"], ["conv1"], name="conv1",
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1]),
        helper.make_node("Relu", ["conv1"], ["conv1.relu"], name="conv1.relu"),
        helper.make_node("Conv", ["conv1.relu", "conv2.weight", "conv2.bias"], ["conv2"], name="conv2",
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["conv2"], ["conv2.relu"], name="conv2.relu"),
        helper.make_node("Flatten", ["conv2.relu"], ["flatten"], name="flatten", axis=1),
        helper.make_node("MatMul", ["flatten", "fc.weight"], ["fc.matmul"], name="fc.matmul"),
        helper.make_node("Add", ["fc.matmul", "fc.bias"], ["logits"], name="logits"),
        helper.make_node("Softmax", ["logits"], ["softmax_tensor"], name="softmax_tensor", axis=1),
        helper.make_node("ArgMax", ["logits"], ["ArgMax"], name="ArgMax", axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "digits_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch_size", 1, 8, 8])],
        [helper.make_tensor_value_info("ArgMax", TensorProto.INT64, ["batch_size"]),
         helper.make_tensor_value_info("softmax_tensor", TensorProto.FLOAT, ["batch_size", 10])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION,
                              producer_name="qaic_assets scripts/build_digits_model.py",
                              doc_string="Small CNN trained on the UCI optical handwritten digits (sklearn copy); "
                                         "input = pixel value / 16.")
    onnx.checker.check_model(model, full_check=True)
    return model


# ------------------------------------------------------------------------------------ files


def write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file() and path.read_bytes() == data:
        return
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def write_split(out: Path, sub: str, list_name: str, x: np.ndarray) -> None:
    d = out / sub
    names = []
    for i, sample in enumerate(x):
        name = f"{i:04d}.raw"
        write(d / name, np.ascontiguousarray(sample[None], dtype=np.float32).tobytes())
        names.append(f"{sub}/{name}")
    for stale in d.glob("*.raw"):
        if f"{sub}/{stale.name}" not in names:
            stale.unlink()
    write(out / list_name, ("\n".join(names) + "\n").encode())


def load_list(out: Path, list_name: str) -> np.ndarray:
    lines = [ln for ln in (out / list_name).read_text().splitlines() if ln.strip()]
    return np.concatenate([np.fromfile(out / ln, dtype=np.float32).reshape(1, 1, 8, 8) for ln in lines])


def int8_accuracy(out: Path, labels: np.ndarray) -> tuple[float, int]:
    import onnxruntime as ort
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    cal = load_list(out, "cal.txt")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(cal)

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {"input": x[None]}

    with tempfile.TemporaryDirectory() as tmp:
        q = Path(tmp) / "digits_int8.onnx"
        quantize_static(str(out / "model.onnx"), str(q), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=False, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
        sess = ort.InferenceSession(str(q), providers=["CPUExecutionProvider"])
        pred = sess.run(["ArgMax"], {"input": load_list(out, "heldout.txt")})[0]
    return float((pred == labels).mean()), int((pred == labels).sum())


README = """# digits: a small real model shipped with its data

A small CNN trained on real data, so the pipeline has a default model whose accuracy means something.

* **Data**: the UCI Machine Learning Repository "Optical Recognition of Handwritten Digits" data set
  (E. Alpaydin, C. Kaynak, 1998; https://archive.ics.uci.edu/ml/datasets/Optical+Recognition+of+Handwritten+Digits),
  licensed under **CC BY 4.0**, via the copy bundled in scikit-learn (`sklearn.datasets.load_digits`,
  which is the UCI test set: 1797 8x8 images, pixel values 0..16, 10 classes, 13 writers). The raw files
  here are derived from it (pixel value / 16, float32). The split below is per sample, not per writer.
* **Split**: stratified and seeded (seed {seed}): {n_test} held-out samples ({test_pct}% of each class,
  never used in training) and {n_train} training samples; the {n_cal} calibration samples
  ({n_cal_per_class} per class) are taken from the training split.
* **Model** (`model.onnx`, opset {opset}): input `input` float32 [batch_size, 1, 8, 8] (pixel / 16),
  Conv3x3(1->{c1})+ReLU, Conv3x3/2({c1}->{c2})+ReLU, Flatten, MatMul+Add (-> 10 logits); outputs `ArgMax`
  (int64 [batch_size], node and tensor named `ArgMax`) and `softmax_tensor` (float32 [batch_size, 10]).
  Trained with numpy only (softmax cross-entropy, Adam, cosine schedule, {epochs} epochs, batch {batch}).
  Compiles with the resnet50 recipe (`-output-node-name=ArgMax`).
* **Files**: `cal.txt` + `cal/*.raw`, `heldout.txt` + `heldout/*.raw`, `heldout_labels.txt` (one label per
  line, same order as `heldout.txt`). Raw files: docs/FORMATS.md format (float32, C order, batch dim 1).

## Accuracy on the held-out set

fp32 accuracy: {fp32_pct:.2f}% ({fp32_correct}/{n_test})
naive int8 QDQ accuracy: {int8_pct:.2f}% ({int8_correct}/{n_test}) (onnxruntime `quantize_static`, QDQ, per-tensor
MinMax, int8 weights and activations, data reader over `cal.txt`)

Rebuild everything deterministically with `scripts/build_digits_model.py` (see its docstring).
model.onnx sha256: {sha}
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    from sklearn.datasets import load_digits  # only needed here, from the throwaway venv

    digits = load_digits()
    x_all = (digits.images.astype(np.float64) / 16.0).reshape(-1, 1, 8, 8)
    y_all = digits.target.astype(np.int64)

    rng = np.random.default_rng(SEED)
    test_idx, train_idx, cal_idx = [], [], []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(y_all == c))
        n_test = int(round(TEST_FRACTION * len(idx)))
        test_idx.extend(idx[:n_test])
        train_c = idx[n_test:]
        train_idx.extend(train_c)
        cal_idx.extend(train_c[:N_CAL_PER_CLASS])
    test_idx = np.sort(np.asarray(test_idx))
    train_idx = np.asarray(train_idx)
    cal_idx = np.sort(np.asarray(cal_idx))
    assert not set(test_idx) & set(train_idx)

    net = train(x_all[train_idx], y_all[train_idx], np.random.default_rng(SEED + 1))
    model = to_onnx(net)
    model_bytes = model.SerializeToString(deterministic=True)
    write(out / "model.onnx", model_bytes)
    write_split(out, "cal", "cal.txt", x_all[cal_idx])
    write_split(out, "heldout", "heldout.txt", x_all[test_idx])
    labels = y_all[test_idx]
    write(out / "heldout_labels.txt", "".join(f"{int(v)}\n" for v in labels).encode())

    import onnxruntime as ort

    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    pred = sess.run(["ArgMax"], {"input": load_list(out, "heldout.txt")})[0]
    fp32_correct = int((pred == labels).sum())
    int8_acc, int8_correct = int8_accuracy(out, labels)
    n_test = len(test_idx)
    print(f"fp32 held-out accuracy {fp32_correct / n_test:.4f} ({fp32_correct}/{n_test})")
    print(f"int8 held-out accuracy {int8_acc:.4f} ({int8_correct}/{n_test}); "
          f"ratio to fp32 {int8_correct / max(fp32_correct, 1):.4f}")
    write(out / "README.md", README.format(
        seed=SEED, n_test=n_test, test_pct=int(TEST_FRACTION * 100), n_train=len(train_idx), n_cal=len(cal_idx),
        n_cal_per_class=N_CAL_PER_CLASS, opset=OPSET, c1=C1, c2=C2, epochs=EPOCHS, batch=BATCH,
        fp32_pct=100.0 * fp32_correct / n_test, fp32_correct=fp32_correct,
        int8_pct=100.0 * int8_correct / n_test, int8_correct=int8_correct,
        sha=hashlib.sha256(model_bytes).hexdigest(),
    ).encode())


if __name__ == "__main__":
    main()
