#!/usr/bin/env python3
"""INT8 (static, QDQ) quantization of models/centernet.onnx and models/movenet-multipose.onnx,
and the measurements that go with it (models/MODELS.md, section "INT8").

    python models/quantize.py build [--out DIR] [--model NAME] [variant options]
    python models/quantize.py eval  [--int8 NAME=PATH ...] [--json FILE]
    python models/quantize.py bench [--threads N] [--runs N] [--int8 NAME=PATH ...]
    python models/quantize.py sensitivity --model NAME [--exclude ...]

Run it through models/quantize.sh, which builds the pinned venv (models/requirements-quantize.txt)
and checks the sha256 of the result.

Inputs are made exactly as sideline makes them (src/infer/preprocess.rs and letterbox.rs, ported
to numpy below): I420 frames from .cache/media/vtest.y4m (scripts/setup), bilinear letterbox into
the model input, BT.601 limited-range to RGB 0..255, NHWC; float32 for centernet (512x512),
int32 rounded for movenet-multipose (512x384, board/sim.toml). Stills are first converted
RGB -> I420 the way tests/common/mod.rs does (rgb_to_frame).

Calibration set: vtest frames 0, 8, 16, ..., 392 (50 frames). Tuning set (what stays in float
was chosen on it): frames 401, 404, ..., 494. Evaluation set: vtest frames 495..794 (the last 300)
and the three stills basketball1.png, basketball2.png, messi5.jpg. Nothing is random: the frame
lists are fixed, so the same inputs give byte-identical models (quantize.sh checks the sha256).

The recipe (RECIPES below): static QDQ, per-channel symmetric int8 weights, symmetric int8
activations, Percentile calibration; Q/DQ on the inputs and weights of Conv nodes only; kept in
float: the decoding tail, depthwise convs, the heads' last convs (and, in movenet, the FPN's output
conv). `build --method/--act/--ops/--conv-out/--exclude/--percentile` make the alternatives that
MODELS.md compares.
"""

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
MEDIA = REPO / ".cache/media"
CLIP = MEDIA / "vtest.y4m"
STILLS = ["basketball1.png", "basketball2.png", "messi5.jpg"]

CALIB_FRAMES = list(range(0, 400, 8))  # 50 frames from the first 400
EVAL_FRAMES = list(range(495, 795))  # the last 300 frames
TUNE_FRAMES = list(range(401, 495, 3))  # for choosing what stays float: neither set above

DET = "centernet"
POSE = "movenet-multipose"
DET_INPUT = (512, 512)  # (w, h), board/*.toml [models.detector] input
POSE_INPUT = (512, 384)  # board/sim.toml [models.pose] input
DET_OUTPUT = "tower_0/detections"
POSE_OUTPUT = "output_0"

# board/sim.toml thresholds.
DET_CLASSES = {0: 0.45, 32: 0.7}  # person, sports ball (class_thresholds)
POSE_SCORE = 0.25
KEYPOINT_SCORE = 0.2
NMS_IOU = 0.5  # src/infer/detector.rs NMS_IOU

# COCO keypoint sigmas (OKS).
KPT_SIGMAS = np.array(
    [0.26, 0.25, 0.25, 0.35, 0.35, 0.79, 0.79, 0.72, 0.72, 0.62, 0.62, 1.07, 1.07, 0.87, 0.87, 0.89, 0.89]
) / 10.0

F32 = np.float32


# ---------------------------------------------------------------------------------------------
# Frames and preprocessing: a numpy port of src/infer/{letterbox,preprocess}.rs
# ---------------------------------------------------------------------------------------------

class I420:
    def __init__(self, w, h, y, u, v):
        self.w, self.h, self.y, self.u, self.v = w, h, y, u, v


def y4m_frames(path, wanted):
    """Frames `wanted` (indices) of a 4:2:0 Y4M clip, as I420."""
    with open(path, "rb") as f:
        header = f.readline()
        fields = header.split()
        assert fields[0] == b"YUV4MPEG2", header
        w = int(next(x[1:] for x in fields if x.startswith(b"W")))
        h = int(next(x[1:] for x in fields if x.startswith(b"H")))
        cw, ch = (w + 1) // 2, (h + 1) // 2
        size = w * h + 2 * cw * ch
        start = len(header)
        out = []
        for i in wanted:
            f.seek(start + i * (6 + size))
            assert f.read(6) == b"FRAME\n", f"frame {i}"
            d = np.frombuffer(f.read(size), dtype=np.uint8)
            out.append(I420(w, h, d[: w * h].reshape(h, w), d[w * h: w * h + cw * ch].reshape(ch, cw),
                            d[w * h + cw * ch:].reshape(ch, cw)))
    return out


def rust_round(x):
    """f32::round: half away from zero."""
    return np.sign(x) * np.floor(np.abs(x) + F32(0.5))


def rgb_to_i420(rgb):
    """tests/common/mod.rs rgb_to_frame: RGB u8 (h, w, 3), even sizes, to BT.601 limited I420."""
    h, w = rgb.shape[:2]
    assert w % 2 == 0 and h % 2 == 0
    p = rgb.astype(F32)
    r, g, b = p[..., 0], p[..., 1], p[..., 2]
    y = np.clip(rust_round(F32(16.0) + F32(0.257) * r + F32(0.504) * g + F32(0.098) * b), 0, 255).astype(np.uint8)
    # 2x2 mean, summed in the same order as the Rust loop.
    def avg(c):
        c = c / F32(4.0)
        return ((c[0::2, 0::2] + c[0::2, 1::2]) + c[1::2, 0::2]) + c[1::2, 1::2]
    ra, ga, ba = avg(r), avg(g), avg(b)
    u = np.clip(rust_round(F32(128.0) - F32(0.148) * ra - F32(0.291) * ga + F32(0.439) * ba), 0, 255).astype(np.uint8)
    v = np.clip(rust_round(F32(128.0) + F32(0.439) * ra - F32(0.368) * ga - F32(0.071) * ba), 0, 255).astype(np.uint8)
    return I420(w, h, y, u, v)


def still(name):
    import cv2

    bgr = cv2.imread(str(MEDIA / name), cv2.IMREAD_COLOR)
    assert bgr is not None, f"{MEDIA / name} missing: run scripts/setup"
    return rgb_to_i420(np.ascontiguousarray(bgr[..., ::-1]))


class Letterbox:
    def __init__(self, src_w, src_h, dst_w, dst_h):
        self.src_w, self.src_h, self.dst_w, self.dst_h = src_w, src_h, dst_w, dst_h
        scale = min(F32(dst_w) / F32(src_w), F32(dst_h) / F32(src_h))
        self.content_w = int(min(max(rust_round(F32(src_w) * scale), 1), dst_w))
        self.content_h = int(min(max(rust_round(F32(src_h) * scale), 1), dst_h))
        self.pad_x = (dst_w - self.content_w) // 2
        self.pad_y = (dst_h - self.content_h) // 2

    def to_frame(self, x, y):
        sx = F32(self.src_w) / F32(self.content_w)
        sy = F32(self.src_h) / F32(self.content_h)
        return (np.clip((x - F32(self.pad_x)) * sx, 0, self.src_w), np.clip((y - F32(self.pad_y)) * sy, 0, self.src_h))


def taps(out, src, scale):
    o = np.arange(out, dtype=F32)
    s = np.clip((o + F32(0.5)) * F32(scale) - F32(0.5), F32(0.0), F32(src - 1))
    i0 = np.floor(s).astype(np.int64)
    i1 = np.minimum(i0 + 1, src - 1)
    return i0, i1, (s - i0.astype(F32)).astype(F32)


def preprocess(frame, dst_w, dst_h, dtype):
    """Preprocessor::run: (1, dst_h, dst_w, 3) RGB 0..255 as float32 or int32, and the letterbox."""
    lb = Letterbox(frame.w, frame.h, dst_w, dst_h)
    cw, ch = lb.content_w, lb.content_h
    sx = F32(frame.w) / F32(cw)
    sy = F32(frame.h) / F32(ch)
    lx, ly = taps(cw, frame.w, sx), taps(ch, frame.h, sy)
    cx = taps(cw, (frame.w + 1) // 2, sx / F32(2.0))
    cy = taps(ch, (frame.h + 1) // 2, sy / F32(2.0))

    def sample(plane, ty, tx):
        a = plane[ty[0]].astype(F32)
        b = plane[ty[1]].astype(F32)
        rows = a + (b - a) * ty[2][:, None]
        a, b = rows[:, tx[0]], rows[:, tx[1]]
        return a + (b - a) * tx[2][None, :]

    y = sample(frame.y, ly, lx)
    u = sample(frame.u, cy, cx) - F32(128.0)
    v = sample(frame.v, cy, cx) - F32(128.0)
    c = F32(1.164) * (y - F32(16.0))
    rgb = np.stack([
        np.clip(c + F32(1.596) * v, 0, 255),
        np.clip(c - F32(0.392) * u - F32(0.813) * v, 0, 255),
        np.clip(c + F32(2.017) * u, 0, 255),
    ], axis=-1).astype(F32)
    out = np.zeros((1, dst_h, dst_w, 3), dtype=F32)
    out[0, lb.pad_y:lb.pad_y + ch, lb.pad_x:lb.pad_x + cw] = rgb
    if dtype == np.int32:
        out = rust_round(out).astype(np.int32)
    return out, lb


def model_input(model, frame):
    if model == DET:
        return preprocess(frame, *DET_INPUT, F32)
    return preprocess(frame, *POSE_INPUT, np.int32)


def input_name(model):
    return "tower_0/images:0" if model == DET else "input"


# ---------------------------------------------------------------------------------------------
# Decoding: src/infer/detector.rs and pose.rs
# ---------------------------------------------------------------------------------------------

def iou(a, b):
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(x2 - x1, 0.0) * max(y2 - y1, 0.0)
    ua = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / ua if ua > 0 else 0.0


def decode_detections(raw, lb, thresholds=DET_CLASSES):
    """[N, 6] rows -> [(class, score, box)] in frame pixels, thresholded, per-class NMS."""
    dets = []
    for x1, y1, x2, y2, score, cls in raw.reshape(-1, 6).astype(np.float64):
        if not np.all(np.isfinite([x1, y1, x2, y2, score, cls])) or cls < 0:
            continue
        c = int(round(cls))
        if c not in thresholds or score < thresholds[c]:
            continue
        ax, ay = lb.to_frame(min(x1, x2), min(y1, y2))
        bx, by = lb.to_frame(max(x1, x2), max(y1, y2))
        if (bx - ax) * (by - ay) > 0:
            dets.append((c, float(score), (float(ax), float(ay), float(bx), float(by))))
    dets.sort(key=lambda d: -d[1])
    kept = []
    for d in dets:
        if not any(k[0] == d[0] and iou(k[2], d[2]) > NMS_IOU for k in kept):
            kept.append(d)
    return kept


def decode_poses(raw, lb, threshold=POSE_SCORE):
    """[6, 56] rows -> [(score, box, keypoints (17, 3) as x, y, score)] in frame pixels."""
    out = []
    iw, ih = lb.dst_w, lb.dst_h
    for row in raw.reshape(-1, 56).astype(np.float64):
        if row[55] < threshold or not np.all(np.isfinite(row)):
            continue
        k = row[:51].reshape(17, 3)
        x, y = lb.to_frame(k[:, 1] * iw, k[:, 0] * ih)
        kps = np.stack([x, y, k[:, 2]], axis=1)
        b = row[51:55]
        ax, ay = lb.to_frame(b[1] * iw, b[0] * ih)
        bx, by = lb.to_frame(b[3] * iw, b[2] * ih)
        out.append((float(row[55]), (float(ax), float(ay), float(bx), float(by)), kps))
    return out


def match(ref, got, box_of, key=lambda r, g: True, min_iou=0.5):
    """Greedy one-to-one matching, best IoU first: [(i_ref, j_got, iou)]."""
    pairs = []
    for i, r in enumerate(ref):
        for j, g in enumerate(got):
            if key(r, g):
                v = iou(box_of(r), box_of(g))
                if v >= min_iou:
                    pairs.append((v, i, j))
    pairs.sort(key=lambda p: -p[0])
    used_i, used_j, out = set(), set(), []
    for v, i, j in pairs:
        if i not in used_i and j not in used_j:
            used_i.add(i)
            used_j.add(j)
            out.append((i, j, v))
    return out


# ---------------------------------------------------------------------------------------------
# Build
# ---------------------------------------------------------------------------------------------

def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def decode_tail(model):
    """Nodes that decode the network's maps into rows (peak picking, top-k, gathers, box
    arithmetic): every node that no Conv depends on. They stay in float: quantized scores would
    make plateaus in centernet's `heatmap == maxpool(heatmap)` peak test, and quantized offsets
    and coordinates would move boxes and keypoints."""
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    body = set()
    stack = [n for n in g.node if n.op_type == "Conv"]
    while stack:
        n = stack.pop()
        if n.name in body:
            continue
        body.add(n.name)
        stack.extend(producer[i] for i in n.input if i in producer)
    return [n.name for n in g.node if n.name not in body]


def head_convs(model):
    """The last Conv of each branch: Convs whose outputs feed no other Conv (through non-Conv
    nodes)."""
    g = model.graph
    consumers = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def reaches_conv(tensor, seen):
        for c in consumers.get(tensor, []):
            if c.name in seen:
                continue
            seen.add(c.name)
            if c.op_type == "Conv" or any(reaches_conv(o, seen) for o in c.output):
                return True
        return False

    return [n.name for n in g.node if n.op_type == "Conv" and not any(reaches_conv(o, set()) for o in n.output)]


def hard_swish_nodes(model):
    """The elementwise nodes of MobileNetV3's hard-swish x * (relu6(x + 3) / 6) and of the
    squeeze-excite gate (features * relu6(x + 3) / 6): quantizing x + 3 on its own range (tens)
    leaves a handful of int8 steps for the 0..6 gate."""
    g = model.graph
    consumers, producer = {}, {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
        for o in n.output:
            producer[o] = n
    out = set()
    for clip in g.node:
        add = producer.get(clip.input[0]) if clip.op_type == "Clip" else None
        if add is None or add.op_type != "Add":
            continue
        x = next((i for i in add.input if i in producer), None)
        out.update((add.name, clip.name))
        # Muls downstream of the gate, two deep: (gate / 6) and (* x or * features).
        stack = list(clip.output)
        for _ in range(2):
            nxt = []
            for t in stack:
                for c in consumers.get(t, []):
                    if c.op_type == "Mul":
                        out.add(c.name)
                        nxt += list(c.output)
            stack = nxt
        # x / 6, when the division is applied to x rather than to the gate.
        for c in consumers.get(x, []):
            if c.op_type == "Mul" and any(m.name in out for m in consumers.get(c.output[0], [])):
                out.add(c.name)
    return sorted(out)


def depthwise_convs(model):
    """Convs with one input channel per group (depthwise). Their input is quantized with one
    scale for all channels, but each output channel sees only its own input channel: a channel
    with a small range next to channels with large ones keeps a few int8 steps, and its weight
    (batch norm folded in) then scales that error up."""
    inits = {t.name: t for t in model.graph.initializer}
    out = []
    for n in model.graph.node:
        if n.op_type != "Conv":
            continue
        group = next((a.i for a in n.attribute if a.name == "group"), 1)
        w = inits.get(n.input[1])
        if group > 1 and w is not None and w.dims[1] == 1:
            out.append(n.name)
    return out


def first_convs(model, k=1):
    return [n.name for n in model.graph.node if n.op_type == "Conv"][:k]


class Reader:
    """onnxruntime CalibrationDataReader over fixed frames."""

    def __init__(self, model, frames):
        self.model, self.frames, self.i = model, frames, 0

    def get_next(self):
        if self.i >= len(self.frames):
            return None
        x, _ = model_input(self.model, self.frames[self.i])
        self.i += 1
        return {input_name(self.model): x}

    def rewind(self):
        self.i = 0

    def __iter__(self):
        return iter(self.get_next, None)


# The chosen recipe per model (what `build` does without options); see MODELS.md for the
# measurements behind it.
RECIPE = dict(method="percentile", percentile=99.99, act="s8", ops="Conv", conv_out=False,
              exclude="tail+depthwise+heads")
# The FPN's last 1x1 conv, which feeds all six heads: quantizing its input alone cost more than
# all other convs together (sensitivity on the tuning frames, MODELS.md).
MOVENET_FPN_OUT = "StatefulPartitionedCall/center_net_mobile_net_v2fpn_feature_extractor/model_1/re_lu_2/Relu_BiasAdd__100"
RECIPES = {
    DET: dict(RECIPE),
    POSE: dict(RECIPE, percentile=99.999, exclude=f"tail+depthwise+heads+node:{MOVENET_FPN_OUT}"),
}


def build_one(name, out_path, method, act, exclude, percentile, cache_dir, ops=None, conv_out=True,
              extra_exclude=()):
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    src = REPO / "models" / f"{name}.onnx"
    with tempfile.TemporaryDirectory(prefix="sideline-quant.") as tmp:
        pre = Path(tmp) / f"{name}.pre.onnx"
        # onnxruntime's recommended pre-processing: graph optimisation (constant folding and the
        # like, platform-independent level) and ONNX shape inference, so the quantizer sees every
        # tensor's type. Symbolic shape inference is skipped: it needs sympy and is meant for
        # transformer graphs; movenet's open H and W are handled by ONNX shape inference.
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        model = onnx.load(str(pre))
        excluded = list(extra_exclude)
        for part in exclude.split("+") if exclude else []:
            if part == "tail":
                excluded += decode_tail(model)
            elif part == "heads":
                excluded += head_convs(model)
            elif part.startswith("first"):
                excluded += first_convs(model, int(part[5:] or 1))
            elif part == "depthwise":
                excluded += depthwise_convs(model)
            elif part == "hswish":
                excluded += hard_swish_nodes(model)
            elif part.startswith("node:"):
                want = part[5:]
                hits = [n.name for n in model.graph.node if n.name == want]
                if not hits:
                    sys.exit(f"no node named {want!r}")
                excluded += hits
            elif part == "none":
                pass
            else:
                sys.exit(f"unknown exclusion {part!r}")
        # Note: quantize_static runs Entropy with onnxruntime's defaults of 128 histogram bins and
        # 128 quantized bins, which leaves one candidate threshold (the whole range), and passes
        # no option to change them: it gives the same model as MinMax, byte for byte.
        methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                   "percentile": CalibrationMethod.Percentile}
        extra = {
            # Symmetric int8 on both sides (zero point 0): what TensorRT's explicit quantization
            # takes. (onnxruntime's own CPU guidance prefers uint8 activations: MODELS.md.)
            "ActivationSymmetric": act == "s8",
            "WeightSymmetric": True,
        }
        if method == "percentile":
            extra["CalibPercentile"] = percentile
        if not conv_out:
            # Q/DQ on Conv inputs and weights only (the placement TensorRT's explicit
            # quantization documents); a Conv's output is quantized where the next Conv reads it.
            extra["OpTypesToExcludeOutputQuantization"] = ["Conv"]
        frames = y4m_frames(CLIP, CALIB_FRAMES)
        cache = None
        if cache_dir:
            os.makedirs(cache_dir, exist_ok=True)
            cache = Path(cache_dir) / f"{name}.{method}{'' if method != 'percentile' else percentile}.calib.json"
        quantize_static(
            str(pre), str(out_path), Reader(name, frames),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=False,
            activation_type=QuantType.QInt8 if act == "s8" else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded,
            op_types_to_quantize=ops.split(",") if ops else None,
            calibrate_method=methods[method],
            extra_options=extra,
            calibration_cache_path=str(cache) if cache else None,
        )
    m = onnx.load(str(out_path))
    # onnxruntime's optimizer (pre-processing) declares its own operator domains; no node uses
    # them. Keep the opsets the graph uses and those the fp32 file declares.
    used = {n.domain for n in m.graph.node} | {o.domain for o in onnx.load(str(src), load_external_data=False).opset_import}
    keep = [o for o in m.opset_import if o.domain in used]
    if len(keep) != len(m.opset_import):
        del m.opset_import[:]
        m.opset_import.extend(keep)
        onnx.checker.check_model(m)
        onnx.save(m, str(out_path))
    counts = {}
    for n in m.graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    print(f"{out_path}: {os.path.getsize(out_path)} bytes sha256 {sha256(out_path)}")
    print(f"   method={method} act={act} ops={ops or 'all'} conv_out={conv_out} exclude={exclude} ({len(excluded)} nodes kept in float); "
          f"QuantizeLinear {counts.get('QuantizeLinear', 0)}, DequantizeLinear {counts.get('DequantizeLinear', 0)}")


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------

def session(path, threads):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def eval_sets(which="eval"):
    if which == "tune":
        return [(f"vtest:{i}", f) for i, f in zip(TUNE_FRAMES, y4m_frames(CLIP, TUNE_FRAMES))]
    sets = [(f"vtest:{i}", f) for i, f in zip(EVAL_FRAMES, y4m_frames(CLIP, EVAL_FRAMES))]
    sets += [(name, still(name)) for name in STILLS]
    return sets


def noisy(sigma, seed=0):
    """fp32's own noise floor: the frame with Gaussian noise of `sigma` grey levels added to its
    Y, U and V planes (a fixed seed), as a camera's sensor noise would."""
    rng = np.random.default_rng(seed)

    def perturb(f):
        def n(p):
            return np.clip(np.rint(p.astype(np.float32) + rng.normal(0, sigma, p.shape)), 0, 255).astype(np.uint8)
        return I420(f.w, f.h, n(f.y), n(f.u), n(f.v))

    return perturb


def eval_detector(fp32_path, int8_path, threads, frames, perturb=None):
    a, b = session(fp32_path, threads), session(int8_path, threads)
    n_ref = n_got = n_match = 0
    per_class = {c: [0, 0, 0] for c in DET_CLASSES}
    score_diff = []
    # A tolerant view: reference detections clearly above the threshold (+0.05) against INT8
    # detections down to threshold - 0.05, so that only real misses count.
    loose_ref = loose_hit = 0
    low = {c: t - 0.05 for c, t in DET_CLASSES.items()}
    for _, f in frames:
        x, lb = model_input(DET, f)
        xb = model_input(DET, perturb(f))[0] if perturb else x
        ra = a.run([DET_OUTPUT], {input_name(DET): x})[0]
        rb = b.run([DET_OUTPUT], {input_name(DET): xb})[0]
        ref, got = decode_detections(ra, lb), decode_detections(rb, lb)
        pairs = match(ref, got, lambda d: d[2], key=lambda r, g: r[0] == g[0])
        n_ref += len(ref)
        n_got += len(got)
        n_match += len(pairs)
        for c in DET_CLASSES:
            per_class[c][0] += sum(d[0] == c for d in ref)
            per_class[c][1] += sum(d[0] == c for d in got)
            per_class[c][2] += sum(ref[i][0] == c for i, _, _ in pairs)
        score_diff += [got[j][1] - ref[i][1] for i, j, _ in pairs]
        strong = [d for d in ref if d[1] >= DET_CLASSES[d[0]] + 0.05]
        weak = decode_detections(rb, lb, low)
        loose_ref += len(strong)
        loose_hit += len(match(strong, weak, lambda d: d[2], key=lambda r, g: r[0] == g[0]))
    sd = np.array(score_diff) if score_diff else np.zeros(1)
    return {
        "frames": len(frames),
        "fp32_detections": n_ref,
        "int8_detections": n_got,
        "matched": n_match,
        "recall": n_match / max(n_ref, 1),
        "precision": n_match / max(n_got, 1),
        "per_class": {("person" if c == 0 else "sports ball"): {"fp32": v[0], "int8": v[1], "matched": v[2]}
                      for c, v in per_class.items()},
        "score_diff_mean": float(sd.mean()),
        "score_diff_mean_abs": float(np.abs(sd).mean()),
        "score_diff_max_abs": float(np.abs(sd).max()),
        "recall_margin_0.05": loose_hit / max(loose_ref, 1),
        "fp32_detections_margin_0.05": loose_ref,
    }


def eval_pose(fp32_path, int8_path, threads, frames, perturb=None):
    a, b = session(fp32_path, threads), session(int8_path, threads)
    n_ref = n_got = n_match = 0
    kp_total = kp_img = kp_box = kp_vis = 0
    loose_ref = loose_hit = 0
    oks = []
    dists = []
    score_diff = []
    for _, f in frames:
        x, lb = model_input(POSE, f)
        xb = model_input(POSE, perturb(f))[0] if perturb else x
        ra = a.run([POSE_OUTPUT], {input_name(POSE): x})[0]
        rb = b.run([POSE_OUTPUT], {input_name(POSE): xb})[0]
        ref, got = decode_poses(ra, lb), decode_poses(rb, lb)
        pairs = match(ref, got, lambda p: p[1])
        n_ref += len(ref)
        n_got += len(got)
        n_match += len(pairs)
        strong = [p for p in ref if p[0] >= POSE_SCORE + 0.05]
        loose_ref += len(strong)
        loose_hit += len(match(strong, decode_poses(rb, lb, POSE_SCORE - 0.05), lambda p: p[1]))
        side = max(f.w, f.h)
        for i, j, _ in pairs:
            score_diff.append(got[j][0] - ref[i][0])
            kr, kg = ref[i][2], got[j][2]
            bx = ref[i][1]
            bw, bh = bx[2] - bx[0], bx[3] - bx[1]
            vis = kr[:, 2] >= KEYPOINT_SCORE
            d = np.hypot(kr[:, 0] - kg[:, 0], kr[:, 1] - kg[:, 1])
            kp_total += int(vis.sum())
            kp_img += int((d[vis] <= 0.05 * side).sum())
            kp_box += int((d[vis] <= 0.1 * max(bw, bh)).sum())
            kp_vis += int(((kg[:, 2] >= KEYPOINT_SCORE) == vis).sum())
            dists += list(d[vis] / max(bw, bh))
            if vis.any():
                s2 = max(bw * bh, 1.0)
                e = d[vis] ** 2 / (2 * s2 * (2 * KPT_SIGMAS[vis]) ** 2)
                oks.append(float(np.exp(-e).mean()))
    return {
        "frames": len(frames),
        "fp32_poses": n_ref,
        "int8_poses": n_got,
        "matched": n_match,
        "recall": n_match / max(n_ref, 1),
        "precision": n_match / max(n_got, 1),
        "recall_margin_0.05": loose_hit / max(loose_ref, 1),
        "fp32_poses_margin_0.05": loose_ref,
        "keypoints_compared": kp_total,
        "keypoints_within_0.05_image": kp_img / max(kp_total, 1),
        "keypoints_within_0.1_person": kp_box / max(kp_total, 1),
        "keypoint_visibility_agreement": kp_vis / max(17 * n_match, 1),
        "keypoint_dist_median_person": float(np.median(dists)) if dists else 0.0,
        "oks_mean": float(np.mean(oks)) if oks else 0.0,
        "score_diff_mean": float(np.mean(score_diff)) if score_diff else 0.0,
        "score_diff_mean_abs": float(np.mean(np.abs(score_diff))) if score_diff else 0.0,
    }


def sensitivity(name, exclude, percentile, cache_dir):
    """Each Conv the recipe quantizes, quantized alone (every other Conv in float), measured on
    the tuning frames: how much of INT8's error each one brings. Uses a calibration cache."""
    import contextlib
    import io

    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    r = dict(RECIPES[name])
    if exclude:
        r["exclude"] = exclude
    if percentile:
        r["percentile"] = percentile
    with tempfile.TemporaryDirectory(prefix="sideline-sens.") as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(REPO / "models" / f"{name}.onnx"), str(pre), skip_symbolic_shape=True)
        model = onnx.load(str(pre))
        base = set(decode_tail(model))
        for part in r["exclude"].split("+"):
            base |= set({"depthwise": depthwise_convs, "heads": head_convs}.get(part, lambda m: [])(model))
            if part.startswith("node:"):
                base.add(part[5:])
        convs = [n.name for n in model.graph.node if n.op_type == "Conv" and n.name not in base]
        frames = eval_sets("tune")
        fn = eval_detector if name == DET else eval_pose
        out = Path(tmp) / "one.onnx"
        print(f"{name}: {len(convs)} convs quantized by the recipe; each alone, on {len(frames)} tuning frames")
        for conv in [None] + convs:
            extra = [c for c in convs if c != conv] if conv else []
            with contextlib.redirect_stdout(io.StringIO()):
                build_one(name, out, r["method"], r["act"], r["exclude"], r["percentile"], cache_dir, r["ops"],
                          r["conv_out"], extra)
            m = fn(REPO / "models" / f"{name}.onnx", out, 2, frames)
            print(f"mean |score diff| {m['score_diff_mean_abs']:.4f}  mean diff {m['score_diff_mean']:+.4f}  "
                  f"recall {m['recall']:.3f}  precision {m['precision']:.3f}  {conv or '(all of them)'}", flush=True)


# ---------------------------------------------------------------------------------------------
# Speed
# ---------------------------------------------------------------------------------------------

def bench(paths, threads, runs):
    """Bare inference, fp32 and INT8 interleaved per round so that drift hits both alike."""
    frames = y4m_frames(CLIP, [600])
    results = {}
    sessions = {}
    for key, (model, path) in paths.items():
        s = session(path, threads)
        x, _ = model_input(model, frames[0])
        feed = {input_name(model): x}
        out = DET_OUTPUT if model == DET else POSE_OUTPUT
        for _ in range(5):
            s.run([out], feed)
        sessions[key] = (s, feed, out)
        results[key] = []
    for _ in range(runs):
        for key, (s, feed, out) in sessions.items():
            t = time.perf_counter()
            s.run([out], feed)
            results[key].append((time.perf_counter() - t) * 1e3)
    return {k: {"median_ms": float(np.median(v)), "mean_ms": float(np.mean(v)), "p10_ms": float(np.percentile(v, 10))}
            for k, v in results.items()}


# ---------------------------------------------------------------------------------------------

def main():
    global POSE_INPUT
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="write <out>/<model>.int8.onnx")
    b.add_argument("--out", default=str(REPO / "models"))
    b.add_argument("--model", choices=[DET, POSE, "all"], default="all")
    b.add_argument("--method", choices=["minmax", "entropy", "percentile"], help="override the recipe")
    b.add_argument("--act", choices=["s8", "u8"], help="activations: symmetric int8 or asymmetric uint8")
    b.add_argument("--exclude", help="'+'-joined: tail, heads, firstN, none (override the recipe)")
    b.add_argument("--percentile", type=float, help="override the recipe")
    b.add_argument("--calib-cache", help="directory for calibration caches (experiments only)")
    b.add_argument("--suffix", default=".int8")
    b.add_argument("--ops", help="comma-separated op types to quantize (default: all the quantizer knows)")
    b.add_argument("--conv-out", choices=["yes", "no"], help="quantize Conv outputs (override the recipe)")
    e = sub.add_parser("eval", help="agreement of INT8 with fp32 on the evaluation set")
    e.add_argument("--int8", action="append", default=[], help="NAME=PATH (default models/NAME.int8.onnx)")
    e.add_argument("--model", choices=[DET, POSE, "all"], default="all")
    e.add_argument("--threads", type=int, default=2)
    e.add_argument("--json")
    e.add_argument("--frames", choices=["eval", "tune"], default="eval")
    e.add_argument("--noise", type=float, help="compare fp32 with fp32 on frames with this much noise instead")
    e.add_argument("--pose-input", help="WxH, multiples of 32 (default 512x384, what calibration used)")
    t = sub.add_parser("sensitivity", help="error of each quantized Conv alone, on the tuning frames")
    t.add_argument("--model", choices=[DET, POSE], required=True)
    t.add_argument("--exclude", help="override the recipe's exclusions")
    t.add_argument("--percentile", type=float)
    t.add_argument("--calib-cache", default=str(REPO / ".cache/quantize-work/calib"))
    s = sub.add_parser("bench", help="bare inference time, fp32 against INT8 (onnxruntime, Python)")
    s.add_argument("--int8", action="append", default=[], help="NAME=PATH")
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("--runs", type=int, default=100)
    args = ap.parse_args()

    models = [DET, POSE] if getattr(args, "model", "all") == "all" else [args.model]
    if args.cmd == "build":
        for m in models:
            r = dict(RECIPES[m])
            for k in ("method", "act", "exclude", "ops", "percentile"):
                if getattr(args, k):
                    r[k] = getattr(args, k)
            if args.ops == "all":
                r["ops"] = None
            if args.conv_out:
                r["conv_out"] = args.conv_out == "yes"
            out = Path(args.out) / f"{m}{args.suffix}.onnx"
            build_one(m, out, r["method"], r["act"], r["exclude"], r["percentile"], args.calib_cache, r["ops"],
                      r["conv_out"])
        return
    if args.cmd == "sensitivity":
        sensitivity(args.model, args.exclude, args.percentile, args.calib_cache)
        return
    int8 = {m: REPO / "models" / f"{m}.int8.onnx" for m in (DET, POSE)}
    for kv in args.int8:
        k, v = kv.split("=", 1)
        int8[k] = Path(v)
    if args.cmd == "eval":
        if args.pose_input:
            POSE_INPUT = tuple(int(v) for v in args.pose_input.split("x"))
        frames = eval_sets(args.frames)
        res = {}
        for m in models:
            fn = eval_detector if m == DET else eval_pose
            fp32 = REPO / "models" / f"{m}.onnx"
            if args.noise:
                res[m] = fn(fp32, fp32, args.threads, frames, noisy(args.noise))
                res[m]["compared"] = f"fp32 against fp32 on frames with noise sigma {args.noise}"
            else:
                res[m] = fn(fp32, int8[m], args.threads, frames)
                res[m]["int8_model"] = str(int8[m])
            if m == POSE:
                res[m]["input"] = "x".join(map(str, POSE_INPUT))
            print(json.dumps({m: res[m]}, indent=1), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
    elif args.cmd == "bench":
        paths = {}
        for m in (DET, POSE):
            paths[f"{m} fp32"] = (m, REPO / "models" / f"{m}.onnx")
            paths[f"{m} int8"] = (m, int8[m])
        res = bench(paths, args.threads, args.runs)
        import onnxruntime

        print(f"onnxruntime {onnxruntime.__version__}, {args.threads} threads, {args.runs} runs each, interleaved")
        for m in (DET, POSE):
            f, q = res[f"{m} fp32"], res[f"{m} int8"]
            print(f"{m:18} fp32 {f['median_ms']:7.2f} ms  int8 {q['median_ms']:7.2f} ms  "
                  f"int8/fp32 {q['median_ms'] / f['median_ms']:.2f}  (p10 {f['p10_ms']:.2f} / {q['p10_ms']:.2f})")


if __name__ == "__main__":
    main()
