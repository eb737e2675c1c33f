#!/usr/bin/env python3
"""Reference peer for `sideline bench`: the same detection loop as a competent user would write
it in Python with OpenCV and onnxruntime.

Per frame: read (cv2.VideoCapture) -> letterbox 512x512 -> RGB float32 NHWC -> CenterNet on
onnxruntime -> threshold + class filter -> back to frame pixels -> per-class NMS -> greedy IoU
tracker per class -> zone rule on the person's foot point.

    python bench/reference.py [--mode both|throughput|paced] [--frames 795] [--fps 30]
                              [--threads N] [--json PATH]

See bench/README.md for what is compared and why.
"""

import argparse
import json
import os
import platform
import queue
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

REPO = Path(__file__).resolve().parent.parent
CLIP = REPO / ".cache/media/vtest.y4m"
MODEL = REPO / "models/centernet.onnx"

INPUT_SIZE = 512
SCORE_THRESHOLD = 0.45
PERSON, SPORTS_BALL = 0, 32
CLASSES = (PERSON, SPORTS_BALL)
NMS_IOU = 0.5
TRACK_MIN_IOU = 0.2
TRACK_MAX_MISSES = 5
ZONE = np.array(
    [[540, 175], [700, 105], [768, 100], [768, 175], [700, 190], [690, 250], [560, 250]],
    dtype=np.float32,
)
ZONE_MIN_FRAMES = 3


# ---------------------------------------------------------------------------------------------
# Pre- and post-processing
# ---------------------------------------------------------------------------------------------

def letterbox(frame, size=INPUT_SIZE):
    """Aspect-preserving resize into a size x size canvas, centred, zero padding."""
    h, w = frame.shape[:2]
    scale = min(size / w, size / h)
    nw, nh = round(w * scale), round(h * scale)
    dx, dy = (size - nw) // 2, (size - nh) // 2
    canvas = np.zeros((size, size, 3), dtype=np.uint8)
    canvas[dy:dy + nh, dx:dx + nw] = cv2.resize(frame, (nw, nh), interpolation=cv2.INTER_LINEAR)
    return canvas, scale, dx, dy


def iou_matrix(a, b):
    """IoU of every box in a (N,4) against every box in b (M,4), boxes as x1,y1,x2,y2."""
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)


def nms(boxes, scores, iou_threshold=NMS_IOU):
    """Greedy NMS; returns the indexes kept, best score first."""
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        if order.size == 1:
            break
        ious = iou_matrix(boxes[i:i + 1], boxes[order[1:]])[0]
        order = order[1:][ious <= iou_threshold]
    return keep


def decode(rows, scale, dx, dy, frame_w, frame_h):
    """[100,6] detections (input pixels) -> {class: (boxes (N,4) in frame pixels, scores)}."""
    scores = rows[:, 4]
    classes = np.rint(rows[:, 5]).astype(np.int64)
    mask = (scores >= SCORE_THRESHOLD) & np.isin(classes, CLASSES)
    boxes = rows[mask, :4].copy()
    scores, classes = scores[mask], classes[mask]
    boxes[:, [0, 2]] = np.clip((boxes[:, [0, 2]] - dx) / scale, 0, frame_w)
    boxes[:, [1, 3]] = np.clip((boxes[:, [1, 3]] - dy) / scale, 0, frame_h)
    out = {}
    for c in CLASSES:
        sel = classes == c
        b, s = boxes[sel], scores[sel]
        keep = nms(b, s)
        out[c] = (b[keep], s[keep])
    return out


# ---------------------------------------------------------------------------------------------
# Tracking and the zone rule
# ---------------------------------------------------------------------------------------------

class Track:
    def __init__(self, track_id, box):
        self.id = track_id
        self.box = box
        self.vx = 0.0
        self.vy = 0.0
        self.misses = 0
        # Zone rule state.
        self.inside_frames = 0
        self.alerted = False

    def predicted(self):
        return self.box + np.array([self.vx, self.vy, self.vx, self.vy], dtype=self.box.dtype)


class Tracker:
    """Greedy IoU association against constant-velocity predictions; one tracker per class."""

    next_id = 1  # shared by all trackers, so track ids are unique

    def __init__(self):
        self.tracks = []

    def update(self, boxes):
        """Returns the track matched to each box, in box order."""
        matched = [None] * len(boxes)
        used = set()
        if self.tracks and len(boxes):
            pred = np.stack([t.predicted() for t in self.tracks])
            ious = iou_matrix(pred, boxes)
            ti, di = np.nonzero(ious >= TRACK_MIN_IOU)
            for k in np.argsort(-ious[ti, di], kind="stable"):
                t, d = ti[k], di[k]
                if t in used or matched[d] is not None:
                    continue
                used.add(t)
                track = self.tracks[t]
                old_c = (track.box[:2] + track.box[2:]) / 2
                new_c = (boxes[d, :2] + boxes[d, 2:]) / 2
                track.vx = 0.5 * track.vx + 0.5 * float(new_c[0] - old_c[0])
                track.vy = 0.5 * track.vy + 0.5 * float(new_c[1] - old_c[1])
                track.box = boxes[d]
                track.misses = 0
                matched[d] = track
        for t, track in enumerate(self.tracks):
            if t not in used:
                track.misses += 1
                track.box = track.predicted()
        self.tracks = [t for t in self.tracks if t.misses <= TRACK_MAX_MISSES]
        for d in range(len(boxes)):
            if matched[d] is None:
                track = Track(Tracker.next_id, boxes[d])
                Tracker.next_id += 1
                self.tracks.append(track)
                matched[d] = track
        return matched


def zone_rule(person_tracks):
    """Foot point inside the zone for ZONE_MIN_FRAMES consecutive frames raises one alert per
    track; leaving clears it. Returns the number of alerts raised on this frame."""
    raised = 0
    for track in person_tracks:
        x1, _, x2, y2 = track.box
        foot = (float(x1 + x2) / 2, float(y2))
        if cv2.pointPolygonTest(ZONE, foot, False) >= 0:
            track.inside_frames += 1
            if track.inside_frames >= ZONE_MIN_FRAMES and not track.alerted:
                track.alerted = True
                raised += 1
        else:
            track.inside_frames = 0
            track.alerted = False
    return raised


# ---------------------------------------------------------------------------------------------
# The pipeline
# ---------------------------------------------------------------------------------------------

class Pipeline:
    def __init__(self, threads):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(
            str(MODEL), sess_options=opts, providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = ["tower_0/detections"]
        self.trackers = {c: Tracker() for c in CLASSES}
        self.persons = 0
        self.balls = 0
        self.alerts = 0

    def warm_up(self):
        blob = np.zeros((1, INPUT_SIZE, INPUT_SIZE, 3), dtype=np.float32)
        self.session.run(self.output_names, {self.input_name: blob})

    def process(self, frame):
        h, w = frame.shape[:2]
        img, scale, dx, dy = letterbox(frame)
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        blob = img.astype(np.float32)[np.newaxis]
        (rows,) = self.session.run(self.output_names, {self.input_name: blob})
        dets = decode(rows[0], scale, dx, dy, w, h)
        persons = self.trackers[PERSON].update(dets[PERSON][0])
        self.trackers[SPORTS_BALL].update(dets[SPORTS_BALL][0])
        self.persons += len(persons)
        self.balls += len(dets[SPORTS_BALL][0])
        self.alerts += zone_rule(persons)


def open_clip():
    cap = cv2.VideoCapture(str(CLIP))
    if not cap.isOpened():
        sys.exit(f"reference: cannot open {CLIP} (run scripts/setup)")
    return cap


def stats_ms(latencies_s):
    lat = np.asarray(latencies_s) * 1000.0
    if lat.size == 0:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    p50, p99 = np.percentile(lat, [50, 99])
    return {"p50_ms": round(float(p50), 3), "p99_ms": round(float(p99), 3),
            "max_ms": round(float(lat.max()), 3)}


def run_throughput(frames, threads):
    pipe = Pipeline(threads)
    pipe.warm_up()
    cap = open_clip()
    latencies = []
    start = time.perf_counter()
    for _ in range(frames):
        ok, frame = cap.read()
        if not ok:
            break
        t_read = time.perf_counter()
        pipe.process(frame)
        latencies.append(time.perf_counter() - t_read)
    wall = time.perf_counter() - start
    cap.release()
    n = len(latencies)
    return {"fps": round(n / wall, 3), "frames": n, **stats_ms(latencies),
            "detections": pipe.persons, "alerts": pipe.alerts}, pipe


def camera(frames, fps, out):
    """Reads frames and releases frame i at t0 + i/fps, stamped with its release time."""
    cap = open_clip()
    t0 = time.perf_counter()
    for i in range(frames):
        ok, frame = cap.read()
        if not ok:
            break
        delay = t0 + i / fps - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        out.put((frame, time.perf_counter()))
    cap.release()
    out.put(None)


def run_paced(frames, fps, threads):
    pipe = Pipeline(threads)
    pipe.warm_up()
    frames_q = queue.Queue()
    cam = threading.Thread(target=camera, args=(frames, fps, frames_q), daemon=True)
    cam.start()
    latencies = []
    while (item := frames_q.get()) is not None:
        frame, released = item
        pipe.process(frame)
        latencies.append(time.perf_counter() - released)
    cam.join()
    n = len(latencies)
    return {"fps_in": fps, "frames": frames, "processed": n, **stats_ms(latencies)}, pipe


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=("both", "throughput", "paced"), default="both")
    ap.add_argument("--frames", type=int, default=795)
    ap.add_argument("--fps", type=float, default=30.0, help="input rate of the paced mode")
    ap.add_argument("--threads", type=int, default=os.cpu_count(),
                    help="onnxruntime intra-op threads (default: all CPUs)")
    ap.add_argument("--json", metavar="PATH", help="write the results here")
    args = ap.parse_args()
    if args.frames < 1 or args.fps <= 0 or args.threads < 1:
        ap.error("--frames, --fps and --threads must be positive")

    result = {
        "tool": "reference",
        "frames": args.frames,
        "threads": args.threads,
        "versions": {"python": platform.python_version(), "opencv": cv2.__version__,
                     "onnxruntime": ort.__version__, "numpy": np.__version__},
    }
    print(f"reference: python {platform.python_version()}, opencv {cv2.__version__}, "
          f"onnxruntime {ort.__version__}, numpy {np.__version__}; "
          f"{args.threads} threads, {args.frames} frames")
    if args.mode in ("both", "throughput"):
        r, pipe = run_throughput(args.frames, args.threads)
        result["pipeline"] = r
        print(f"  throughput: {r['fps']:.2f} fps over {r['frames']} frames; latency p50 "
              f"{r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, max {r['max_ms']:.1f} ms; "
              f"{r['detections']} person detections, {pipe.balls} ball, {r['alerts']} alerts")
    if args.mode in ("both", "paced"):
        r, _ = run_paced(args.frames, args.fps, args.threads)
        result["paced"] = r
        print(f"  paced {r['fps_in']:g} fps: processed {r['processed']}/{r['frames']}; "
              f"latency p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, "
              f"max {r['max_ms']:.1f} ms")
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"  wrote {path}")


if __name__ == "__main__":
    main()
