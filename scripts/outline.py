#!/usr/bin/env python3
"""Traces the outline of the player in basketball1.png for staged scenarios (`outline` of an
`[[actor]]`, tests/scenarios/staged-c*.toml): OpenCV's GrabCut, seeded with strokes on the
body, then the largest contour simplified to within 2 px. Prints the TOML line.

Run with the benchmark's environment (opencv-python-headless, bench/requirements.txt):
    .cache/bench-venv/bin/python scripts/outline.py .cache/media/basketball1.png
"""
import sys

import cv2
import numpy as np

img = cv2.imread(sys.argv[1])
if img is None:
    sys.exit(f"cannot read {sys.argv[1]}")
mask = np.full(img.shape[:2], cv2.GC_BGD, np.uint8)
mask[75:480, 28:178] = cv2.GC_PR_BGD  # around the player on the left
cv2.ellipse(mask, (82, 112), (16, 22), 0, 0, 360, cv2.GC_PR_FGD, -1)  # head
cv2.rectangle(mask, (42, 145), (125, 285), cv2.GC_PR_FGD, -1)  # shirt and arms
cv2.rectangle(mask, (45, 285), (135, 470), cv2.GC_PR_FGD, -1)  # legs
for (a, b, width) in [((82, 95), (82, 130), 5), ((75, 150), (80, 280), 9), ((65, 290), (60, 450), 7),
                      ((110, 290), (118, 440), 7)]:
    cv2.line(mask, a, b, cv2.GC_FGD, width)  # surely him: face, torso, each leg
bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
cv2.grabCut(img, mask, None, bgd, fgd, 10, cv2.GC_INIT_WITH_MASK)
fg = np.where((mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD), 255, 0).astype(np.uint8)
contours, _ = cv2.findContours(fg, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
poly = cv2.approxPolyDP(max(contours, key=cv2.contourArea), 2.0, True).reshape(-1, 2)
print("outline = [" + ", ".join(f"[{x}, {y}]" for x, y in poly) + "]")
