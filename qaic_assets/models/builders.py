"""The three stand-in architectures (ResNet-50 v1.5, RetinaNet no-nms, BERT encoder) as ONNX graphs
with seeded weights; see qaic_assets/models/standins.py for what each one is faithful to."""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto

from qaic_assets.models.common import (
    BERT_HEADS,
    BERT_HIDDEN,
    BERT_INIT_STD,
    BERT_INTERMEDIATE,
    BERT_LAYERS,
    BERT_MAX_POS,
    BERT_TYPE_VOCAB,
    BERT_VOCAB,
    RESNET_CLASSES,
    RESNET_FAMILIES,
    RESNET_FIT_PER_FAMILY,
    RESNET_IMAGE,
    RESNET_RESIDUAL_GAIN,
    RETINANET_ANCHORS,
    RETINANET_CLASSES,
    RETINANET_FIT_IMAGES,
    RETINANET_FPN,
    RETINANET_IMAGE,
    RETINANET_MEAN,
    RETINANET_RESIDUAL_GAIN,
    RETINANET_STD,
    _ConvNet,
    _F32,
    _Graph,
    _detection_like_image,
    _imagenet_like_image,
    _rng,
    _vi,
)


# ---------------------------------------------------------------------------------------------
# model builders


def _build_resnet50() -> tuple[onnx.ModelProto, dict]:
    kind = "resnet50"
    rng = _rng(kind, "weights")
    fams = [f for f in range(RESNET_FAMILIES) for _ in range(RESNET_FIT_PER_FAMILY)]
    fit = np.stack([_imagenet_like_image(_rng(kind, "fit", i), f, RESNET_IMAGE) for i, f in enumerate(fams)])
    g = _Graph()
    net = _ConvNet(g, rng)
    x = ("input", fit)
    x = net.stem(x)
    feats = net.stages(x, residual_gain=RESNET_RESIDUAL_GAIN)
    last_name, last = feats[-1]
    pooled = g.op("GlobalAveragePool", [last_name], "avgpool")
    flat = g.op("Flatten", [pooled], "flatten", axis=1)
    f = last.mean(axis=(2, 3), dtype=np.float64)  # (n, 2048)

    # Classifier: nearest-centroid over the image families in the random feature space, embedded in
    # 1001 classes (family k -> class family_classes[k]). logit_k = s * (c_k . f' - |c_k|^2 / 2) with
    # f' = f - mu, so the top-1 is the nearest family centroid; the other classes get random weights of
    # the same magnitude and a negative offset, so they never win. The feature clusters are far apart
    # compared to the int8 quantization noise, hence large, stable margins.
    mu = f.mean(axis=0)
    fc = f - mu
    fams_a = np.asarray(fams)
    cent = np.stack([fc[fams_a == k].mean(axis=0) for k in range(RESNET_FAMILIES)])  # (K, 2048)
    fam_logits = fc @ cent.T - 0.5 * np.sum(cent**2, axis=1)
    srt = np.sort(fam_logits, axis=1)
    s_scale = 12.0 / float(np.median(srt[:, -1] - srt[:, -2]))  # median top-1 margin -> 12
    w_fam = cent.T * s_scale
    b_fam = s_scale * (-(mu @ cent.T) - 0.5 * np.sum(cent**2, axis=1))
    head_rng = _rng(kind, "weights", 1)
    family_classes = np.sort(head_rng.choice(np.arange(1, RESNET_CLASSES), RESNET_FAMILIES, replace=False))
    w = head_rng.standard_normal((f.shape[1], RESNET_CLASSES)) * float(np.std(w_fam))
    b = -(mu @ w)
    top_fam = (f @ w_fam + b_fam).max(axis=1)
    others = (f @ w + b).max(axis=1)
    b = b - (float(np.max(others - top_fam)) + 12.0)
    w[:, family_classes] = w_fam
    b[family_classes] = b_fam
    wn = g.const("fc.weight", w.astype(_F32))
    bn = g.const("fc.bias", b.astype(_F32))
    mm = g.op("MatMul", [flat, wn], "fc.matmul")
    logits = g.op("Add", [mm, bn], "logits")
    g.op("Softmax", [logits], "softmax_tensor", axis=1)
    g.op("ArgMax", [logits], "ArgMax", axis=1, keepdims=0)
    model = g.model(
        "resnet50_v1.5_standin",
        [_vi("input", TensorProto.FLOAT, ["batch_size", 3, RESNET_IMAGE, RESNET_IMAGE])],
        [_vi("ArgMax", TensorProto.INT64, ["batch_size"]),
         _vi("softmax_tensor", TensorProto.FLOAT, ["batch_size", RESNET_CLASSES])],
        "ResNet-50 v1.5 STAND-IN with seeded random weights (qaic_assets.models.standins); not a trained model.",
    )
    return model, {"family_classes": [int(c) for c in family_classes]}


def _build_retinanet() -> tuple[onnx.ModelProto, dict]:
    kind = "retinanet"
    rng = _rng(kind, "weights")
    sample = np.stack([_detection_like_image(_rng(kind, "fit", i), RETINANET_IMAGE) for i in range(RETINANET_FIT_IMAGES)])
    g = _Graph()
    mean = np.asarray(RETINANET_MEAN, _F32).reshape(1, 3, 1, 1)
    std = np.asarray(RETINANET_STD, _F32).reshape(1, 3, 1, 1)
    sub = g.op("Sub", ["images", g.const("transform.mean", mean)], "transform.sub")
    norm = g.op("Div", [sub, g.const("transform.std", std)], "transform.normalized")
    xv = ((sample - mean) / std).astype(_F32)
    net = _ConvNet(g, rng)
    x = net.stem((norm, xv))
    c2, c3, c4, c5 = net.stages(x, groups=32, width_per_group=4, residual_gain=RETINANET_RESIDUAL_GAIN)

    # FPN (torchvision FeaturePyramidNetwork + LastLevelP6P7 on P5)
    lat = {lvl: net.conv(f"fpn.inner.{lvl}", c, RETINANET_FPN, 1, relu=False)
           for lvl, c in (("c3", c3), ("c4", c4), ("c5", c5))}
    scales = g.const("fpn.upsample.scales", np.asarray([1, 1, 2, 2], _F32))
    top = lat["c5"]
    inners = {"c5": top}
    for lvl in ("c4", "c3"):
        up_n = g.op("Resize", [top[0], "", scales], f"fpn.upsample.{lvl}", mode="nearest",
                    coordinate_transformation_mode="asymmetric", nearest_mode="floor")
        up_v = top[1].repeat(2, axis=2).repeat(2, axis=3)
        s = g.op("Add", [lat[lvl][0], up_n], f"fpn.topdown.{lvl}")
        top = (s, lat[lvl][1] + up_v)
        inners[lvl] = top
    p3 = net.conv("fpn.layer.p3", inners["c3"], RETINANET_FPN, 3, relu=False)
    p4 = net.conv("fpn.layer.p4", inners["c4"], RETINANET_FPN, 3, relu=False)
    p5 = net.conv("fpn.layer.p5", inners["c5"], RETINANET_FPN, 3, relu=False)
    p6 = net.conv("fpn.p6", p5, RETINANET_FPN, 3, 2, relu=False)
    p6r = (g.op("Relu", [p6[0]], "fpn.p6.relu"), np.maximum(p6[1], 0))
    p7 = net.conv("fpn.p7", p6r, RETINANET_FPN, 3, 2, relu=False)
    levels = ["p3", "p4", "p5", "p6", "p7"]
    feats = [p3, p4, p5, p6, p7]

    def head(prefix: str, per_anchor: int, out_name: str, gain: float, bias0: float):
        h = feats
        for i in range(4):
            h = net.conv_shared(f"head.{prefix}.conv{i}", h, RETINANET_FPN, 3, level_names=levels)
        preds = net.conv_shared(f"head.{prefix}.pred", h, RETINANET_ANCHORS * per_anchor, 3, relu=False,
                                gain=gain, bias0=bias0, level_names=levels)
        shape3 = g.const(f"head.{prefix}.shape3", np.asarray([0, -1, per_anchor], np.int64))
        flat = []
        for (pn, pv), lvl in zip(preds, levels):
            # torchvision: view(N, A, K, H, W).permute(0, 3, 4, 1, 2).reshape(N, -1, K)
            shape5 = g.const(f"head.{prefix}.{lvl}.shape5", np.asarray(
                [0, RETINANET_ANCHORS, per_anchor, pv.shape[2], pv.shape[3]], np.int64))
            r5 = g.op("Reshape", [pn, shape5], f"head.{prefix}.{lvl}.view")
            t = g.op("Transpose", [r5], f"head.{prefix}.{lvl}.permute", perm=[0, 3, 4, 1, 2])
            flat.append(g.op("Reshape", [t, shape3], f"head.{prefix}.{lvl}.flat"))
        g.op("Concat", flat, out_name, axis=1)
        names = [pn for pn, _ in preds]
        names += [f"head.{prefix}.{lvl}.{s}" for lvl in levels for s in ("view", "permute", "flat")]
        return names

    prior = -math.log((1 - 0.01) / 0.01)
    cls_names = head("cls", RETINANET_CLASSES, "cls_logits", 1.0, prior)
    box_names = head("bbox", 4, "bbox_regression", 0.5, 0.0)
    n_anchor = RETINANET_ANCHORS * sum(y.shape[2] * y.shape[3] for _, y in feats)
    model = g.model(
        "retinanet_resnext50_32x4d_fpn_nonms_standin",
        [_vi("images", TensorProto.FLOAT, ["batch_size", 3, RETINANET_IMAGE, RETINANET_IMAGE])],
        [_vi("cls_logits", TensorProto.FLOAT, ["batch_size", n_anchor, RETINANET_CLASSES]),
         _vi("bbox_regression", TensorProto.FLOAT, ["batch_size", n_anchor, 4])],
        "RetinaNet (ResNeXt-50 32x4d FPN, no NMS) STAND-IN with seeded random weights "
        "(qaic_assets.models.standins); not a trained model.",
    )
    node_precision = {
        "FP16NodeInstanceNames": cls_names + box_names,
        "FP32NodeInstanceNames": ["cls_logits", "bbox_regression"],
    }
    return model, {"node_precision": node_precision, "anchors": n_anchor}


def _build_bert() -> tuple[onnx.ModelProto, dict]:
    kind = "bert-99"
    rng = _rng(kind, "weights")
    g = _Graph()
    H, NH = BERT_HIDDEN, BERT_HEADS
    DH = H // NH

    def rnd(name: str, shape) -> str:
        return g.const(name, rng.standard_normal(shape, dtype=_F32) * _F32(BERT_INIT_STD))

    def zeros(name: str, shape) -> str:
        return g.const(name, np.zeros(shape, _F32))

    c_eps = g.const("const.ln_eps", np.asarray(1e-12, _F32))
    c_two = g.const("const.two", np.asarray(2.0, _F32))
    c_one = g.const("const.one", np.asarray(1.0, _F32))
    c_half = g.const("const.half", np.asarray(0.5, _F32))
    c_sqrt2 = g.const("const.sqrt2", np.asarray(math.sqrt(2.0), _F32))
    c_neg = g.const("const.mask_neg", np.asarray(-10000.0, _F32))
    c_sqrt_dh = g.const("const.sqrt_head_dim", np.asarray(math.sqrt(DH), _F32))

    def layer_norm(prefix: str, x: str) -> str:
        # decomposed LayerNorm, as in the MLPerf ONNX export
        mean = g.op("ReduceMean", [x], f"{prefix}.mean", axes=[-1])
        d = g.op("Sub", [x, mean], f"{prefix}.sub")
        sq = g.op("Pow", [d, c_two], f"{prefix}.pow")
        var = g.op("ReduceMean", [sq], f"{prefix}.var", axes=[-1])
        ve = g.op("Add", [var, c_eps], f"{prefix}.var_eps")
        sd = g.op("Sqrt", [ve], f"{prefix}.std")
        n = g.op("Div", [d, sd], f"{prefix}.norm")
        m = g.op("Mul", [n, g.const(f"{prefix}.gamma", np.ones(H, _F32))], f"{prefix}.scaled")
        return g.op("Add", [m, zeros(f"{prefix}.beta", [H])], f"{prefix}.out")

    def dense(prefix: str, x: str, din: int, dout: int) -> str:
        mm = g.op("MatMul", [x, rnd(f"{prefix}.weight", (din, dout))], f"{prefix}.matmul")
        return g.op("Add", [mm, zeros(f"{prefix}.bias", [dout])], f"{prefix}.out")

    # embeddings
    word = g.op("Gather", [rnd("embeddings.word", (BERT_VOCAB, H)), "input_ids"], "embeddings.word_lookup", axis=0)
    typ = g.op("Gather", [rnd("embeddings.token_type", (BERT_TYPE_VOCAB, H)), "segment_ids"],
               "embeddings.token_type_lookup", axis=0)
    shp = g.op("Shape", ["input_ids"], "embeddings.input_shape")
    seq = g.op("Slice", [shp, g.const("const.i1", np.asarray([1], np.int64)),
                         g.const("const.i2", np.asarray([2], np.int64))], "embeddings.seq_len")
    pos = g.op("Slice", [rnd("embeddings.position", (BERT_MAX_POS, H)), g.const("const.i0", np.asarray([0], np.int64)),
                         seq, g.const("const.axis0", np.asarray([0], np.int64))], "embeddings.position_lookup")
    e = g.op("Add", [word, typ], "embeddings.add_type")
    e = g.op("Add", [e, pos], "embeddings.add_position")
    h = layer_norm("embeddings.ln", e)

    # extended attention mask: (1 - mask) * -10000, shape [B, 1, 1, S]
    m = g.op("Unsqueeze", ["input_mask", g.const("const.axes12", np.asarray([1, 2], np.int64))], "mask.unsqueeze")
    m = g.op("Cast", [m], "mask.float", to=TensorProto.FLOAT)
    m = g.op("Sub", [c_one, m], "mask.inverted")
    mask_add = g.op("Mul", [m, c_neg], "mask.additive")

    split_heads = g.const("const.split_heads", np.asarray([0, 0, NH, DH], np.int64))
    merge_heads = g.const("const.merge_heads", np.asarray([0, 0, H], np.int64))
    for li in range(BERT_LAYERS):
        p = f"encoder.layer{li}"
        q = dense(f"{p}.attention.query", h, H, H)
        k = dense(f"{p}.attention.key", h, H, H)
        v = dense(f"{p}.attention.value", h, H, H)
        q = g.op("Transpose", [g.op("Reshape", [q, split_heads], f"{p}.attention.q_split")],
                 f"{p}.attention.q_heads", perm=[0, 2, 1, 3])
        k = g.op("Transpose", [g.op("Reshape", [k, split_heads], f"{p}.attention.k_split")],
                 f"{p}.attention.k_heads_t", perm=[0, 2, 3, 1])
        v = g.op("Transpose", [g.op("Reshape", [v, split_heads], f"{p}.attention.v_split")],
                 f"{p}.attention.v_heads", perm=[0, 2, 1, 3])
        s = g.op("MatMul", [q, k], f"{p}.attention.scores")
        s = g.op("Div", [s, c_sqrt_dh], f"{p}.attention.scaled")
        s = g.op("Add", [s, mask_add], f"{p}.attention.masked")
        a = g.op("Softmax", [s], f"{p}.attention.probs", axis=-1)
        ctx = g.op("MatMul", [a, v], f"{p}.attention.context_heads")
        ctx = g.op("Transpose", [ctx], f"{p}.attention.context_t", perm=[0, 2, 1, 3])
        ctx = g.op("Reshape", [ctx, merge_heads], f"{p}.attention.context")
        o = dense(f"{p}.attention.output", ctx, H, H)
        h = layer_norm(f"{p}.attention.ln", g.op("Add", [o, h], f"{p}.attention.residual"))
        i = dense(f"{p}.intermediate", h, H, BERT_INTERMEDIATE)
        # Erf GELU: x * 0.5 * (1 + erf(x / sqrt(2)))
        ge = g.op("Div", [i, c_sqrt2], f"{p}.gelu.div")
        ge = g.op("Erf", [ge], f"{p}.gelu.erf")
        ge = g.op("Add", [ge, c_one], f"{p}.gelu.add")
        ge = g.op("Mul", [i, ge], f"{p}.gelu.mul")
        ge = g.op("Mul", [ge, c_half], f"{p}.gelu.out")
        o = dense(f"{p}.output", ge, BERT_INTERMEDIATE, H)
        h = layer_norm(f"{p}.output.ln", g.op("Add", [o, h], f"{p}.output.residual"))

    logits = dense("qa_outputs", h, H, 2)  # [B, S, 2]
    st, en = g.op_multi("Split", [logits, g.const("const.split11", np.asarray([1, 1], np.int64))],
                        ["qa_outputs.start", "qa_outputs.end"], "qa_outputs.split", axis=2)
    ax2 = g.const("const.axis2", np.asarray([2], np.int64))
    g.op("Squeeze", [st, ax2], "output_start_logits")
    g.op("Squeeze", [en, ax2], "output_end_logits")
    dims = ["batch_size", "seg_length"]
    model = g.model(
        "bert_squad_standin",
        [_vi(n, TensorProto.INT64, dims) for n in ("input_ids", "input_mask", "segment_ids")],
        [_vi("output_start_logits", TensorProto.FLOAT, dims), _vi("output_end_logits", TensorProto.FLOAT, dims)],
        f"BERT ({BERT_LAYERS} layers, hidden {BERT_HIDDEN}) SQuAD STAND-IN with seeded random weights "
        "(qaic_assets.models.standins); not a trained model.",
    )
    return model, {}


