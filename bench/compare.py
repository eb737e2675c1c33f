#!/usr/bin/env python3
"""Side-by-side table of `sideline bench` and bench/reference.py results, and the three ratios.

    python bench/compare.py SIDELINE.json REFERENCE.json [--strict]
    python bench/compare.py --rounds S1.json R1.json S2.json R2.json ... [--strict]

With --rounds, each pair was run back to back (the machine's speed drifts over seconds to
minutes on a shared host): every number in the table is the median over the rounds, and each
ratio is the median of the rounds' own ratios (each round's two tools ran side by side, so
its ratio is the paired comparison), listed round by round too.

Standard library only. Missing keys print as "n/a". Exit status 0, or with --strict 1 when a
ratio misses its target or cannot be computed. See bench/README.md.
"""

import argparse
import json
import sys


def get(d, *path):
    """d[path[0]][path[1]]..., or None where any step is missing."""
    for key in path:
        if isinstance(d, dict):
            d = d.get(key)
        elif isinstance(d, list) and isinstance(key, int) and -len(d) <= key < len(d):
            d = d[key]
        else:
            return None
    return d


def num(v):
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def fmt(v, digits=2):
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    if isinstance(v, (list, tuple)):
        return "x".join(str(x) for x in v)
    return str(v)


def ratio(a, b):
    a, b = num(a), num(b)
    if a is None or b is None or b == 0:
        return None
    return a / b


def bare_detector(sideline):
    """The bare-detector entry on onnxruntime, if the sideline run has one."""
    for entry in get(sideline, "bare") or []:
        if isinstance(entry, dict) and entry.get("model") == "detector" and entry.get("backend") == "ort":
            return entry
    return None


def dropped(run):
    """`paced.dropped`, or frames - processed where the run does not report it."""
    d = get(run, "paced", "dropped")
    if d is None and num(get(run, "paced", "frames")) is not None and num(get(run, "paced", "processed")) is not None:
        d = get(run, "paced", "frames") - get(run, "paced", "processed")
    return d


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        sys.exit(f"compare: {path}: {e}")


def table(rows, headers):
    widths = [max(len(str(r[i])) for r in rows + [headers]) for i in range(len(headers))]
    line = lambda r: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                               for i, (c, w) in enumerate(zip(r, widths)))
    print(line(headers))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(line(r))


def median(xs):
    """The median of the numbers in xs; None if it has none."""
    xs = sorted(x for x in xs if num(x) is not None)
    if not xs:
        return None
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2


def median_doc(docs):
    """One document whose every number is the median of that number across `docs`."""
    first = docs[0]
    if isinstance(first, dict):
        return {k: median_doc([d.get(k) for d in docs if isinstance(d, dict)]) for k in first}
    if isinstance(first, list):
        n = min(len(d) for d in docs if isinstance(d, list))
        return [median_doc([d[i] for d in docs]) for i in range(n)]
    nums = sorted(x for x in docs if num(x) is not None)
    if nums and num(first) is not None:
        mid = len(nums) // 2
        return nums[mid] if len(nums) % 2 else (nums[mid - 1] + nums[mid]) / 2
    return first


def round_ratios(s, r):
    bare = bare_detector(s)
    return (ratio(get(s, "pipeline", "fps"), get(bare, "fps")),
            ratio(get(s, "pipeline", "fps"), get(r, "pipeline", "fps")),
            ratio(get(s, "paced", "p99_ms"), get(r, "paced", "p99_ms")))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+", help="SIDELINE.json REFERENCE.json, or pairs with --rounds")
    ap.add_argument("--rounds", action="store_true", help="files are pairs of back-to-back runs")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a ratio misses its target")
    args = ap.parse_args()
    if len(args.files) % 2 or (not args.rounds and len(args.files) != 2):
        ap.error("give SIDELINE.json REFERENCE.json, or pairs of them with --rounds")
    pairs = [(load(a), load(b)) for a, b in zip(args.files[::2], args.files[1::2])]
    if len(pairs) > 1:
        print(f"{len(pairs)} rounds, the two tools side by side in each; numbers are medians over rounds")
        for i, (s1, r1) in enumerate(pairs, 1):
            a1, b1, c1 = round_ratios(s1, r1)
            segs = " ".join(fmt(num(get(g, "ratio")), 3) for g in get(s1, "pipeline", "segments") or [])
            print(f"  round {i}: (a) {fmt(a1, 3)}  (b) {fmt(b1, 3)}  (c) {fmt(c1, 3)}"
                  + (f"   (a) by segment: {segs}" if segs else ""))
        print()
    s = median_doc([p[0] for p in pairs])
    r = median_doc([p[1] for p in pairs])
    bare = bare_detector(s)

    print(f"sideline:  board {fmt(get(s, 'board'))}, {fmt(get(s, 'frames'))} frames, "
          f"{fmt(get(s, 'threads'))} threads")
    v = get(r, "versions") or {}
    print(f"reference: {fmt(get(r, 'frames'))} frames, {fmt(get(r, 'threads'))} threads; python "
          f"{fmt(v.get('python'))}, opencv {fmt(v.get('opencv'))}, onnxruntime "
          f"{fmt(v.get('onnxruntime'))}, numpy {fmt(v.get('numpy'))}")
    warnings = []
    for key in ("frames", "threads"):
        if get(s, key) is not None and get(r, key) is not None and get(s, key) != get(r, key):
            warnings.append(f"{key} differ: sideline {get(s, key)}, reference {get(r, key)}")
    fs, fr = (num(get(x, "paced", "fps_in")) for x in (s, r))
    fs, fr = (float(x) if x is not None else None for x in (fs, fr))
    if fs is not None and fr is not None and fs != fr:
        warnings.append(f"paced input rates differ: sideline {fs:g}, reference {fr:g} fps")
    print()

    rows = [
        ("bare detector (ort) fps", fmt(get(bare, "fps")), "-"),
        ("bare detector p50 / p99 ms",
         f"{fmt(get(bare, 'p50_ms'))} / {fmt(get(bare, 'p99_ms'))}", "-"),
        ("pipeline fps", fmt(get(s, "pipeline", "fps")), fmt(get(r, "pipeline", "fps"))),
        ("pipeline frames", fmt(get(s, "pipeline", "frames")), fmt(get(r, "pipeline", "frames"))),
    ]
    for k in ("p50_ms", "p99_ms", "max_ms"):
        rows.append((f"pipeline latency {k[:-3]} ms", fmt(get(s, "pipeline", k)),
                     fmt(get(r, "pipeline", k))))
    rows += [
        ("person detections", fmt(get(s, "pipeline", "detections")),
         fmt(get(r, "pipeline", "detections"))),
        ("alerts raised", fmt(get(s, "pipeline", "alerts")), fmt(get(r, "pipeline", "alerts"))),
        ("allocations / frame", fmt(get(s, "pipeline", "allocs_per_frame")), "n/a"),
        ("peak RSS MB", fmt(get(s, "pipeline", "peak_rss_mb"), 1), "n/a"),
        ("paced input fps", fmt(fs), fmt(fr)),
        ("paced frames / processed",
         f"{fmt(get(s, 'paced', 'frames'))} / {fmt(get(s, 'paced', 'processed'))}",
         f"{fmt(get(r, 'paced', 'frames'))} / {fmt(get(r, 'paced', 'processed'))}"),
        ("paced dropped", fmt(get(s, "paced", "dropped")), fmt(dropped(r))),
    ]
    for k in ("p50_ms", "p99_ms", "max_ms"):
        rows.append((f"paced latency {k[:-3]} ms", fmt(get(s, "paced", k)), fmt(get(r, "paced", k))))
    rows += [
        ("paced deadline misses", fmt(get(s, "paced", "deadline_misses")), "n/a"),
        ("paced ladder changes", fmt(get(s, "paced", "ladder_changes")), "n/a"),
    ]
    table(rows, ("", "sideline", "reference"))

    stages = get(s, "pipeline", "stages")
    if isinstance(stages, list) and stages:
        print()
        table([(fmt(get(st, "stage")), fmt(get(st, "p50_us"), 1), fmt(get(st, "p99_us"), 1),
                fmt(get(st, "max_us"), 1)) for st in stages],
              ("sideline stage", "p50 us", "p99 us", "max us"))

    # The three ratios, each against its target: the median of the rounds' paired ratios.
    per_round = [round_ratios(s1, r1) for s1, r1 in pairs]
    a, b, c = (median([x[k] for x in per_round]) for k in range(3))

    def verdict(value, ok, minimum=None):
        if value is None:
            return "n/a", False
        if ok(value):
            return "meets target", True
        if minimum is not None and minimum(value):
            return "MISSES TARGET (above the minimum bar)", False
        return "MISSES TARGET", False

    results = [
        ("(a) sideline pipeline fps / sideline bare detector fps", a, ">= 0.95",
         *verdict(a, lambda x: x >= 0.95)),
        ("(b) sideline pipeline fps / reference pipeline fps", b, ">= 2.0 (minimum 1.0)",
         *verdict(b, lambda x: x >= 2.0, lambda x: x >= 1.0)),
        ("(c) sideline paced p99 / reference paced p99", c, "<= 0.5",
         *verdict(c, lambda x: x <= 0.5)),
    ]
    print()
    table([(name, fmt(val, 3), target, text) for name, val, target, text, _ in results],
          ("ratio", "value", "target", ""))

    # Sanity: both ran the same detector, tracker and rule on the same frames.
    print()
    for key, label in (("detections", "person detections"), ("alerts", "alerts raised")):
        sv, rv = num(get(s, "pipeline", key)), num(get(r, "pipeline", key))
        if sv is None or rv is None:
            print(f"sanity: {label}: sideline {fmt(sv)}, reference {fmt(rv)}")
            continue
        diff = f"{100.0 * (sv - rv) / rv:+.1f}%" if rv else ("0" if sv == rv else "n/a")
        print(f"sanity: {label}: sideline {sv}, reference {rv} ({diff})")
    for w in warnings:
        print(f"warning: {w}")

    if args.strict and not all(ok for *_, ok in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
