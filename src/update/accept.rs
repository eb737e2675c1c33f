//! The acceptance check a model update passes on the device before it is switched to.
//!
//! A model that loads is not yet a model that works: a quantized export can be fast and blind,
//! or right and too slow for this board. The bundle carries a golden clip and the detections a
//! trusted build made on it ([`golden`] writes both on the developer machine); the device runs
//! the slot's detector with the library's own inference code and its own `[models.detector]`
//! and `[inference]` settings over the clip, and accepts the update only if the p99 latency
//! is within the budget and the detections agree with the expected ones (same class,
//! IoU >= 0.5) for at least `min_agree` of them, in both directions (none missed, none
//! invented).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::manifest::Acceptance;
use super::UpdateError;
use crate::capture::y4m::Y4mCamera;
use crate::capture::{Frame, FrameSource};
use crate::config::{Board, DetectorModel, Inference};
use crate::geometry::BBox;
use crate::infer::coco;
use crate::infer::detector::{Detection, Detector};

pub const GOLDEN_FORMAT: &str = "sideline-golden/1";
/// Same class and at least this overlap: the same detection.
pub const MATCH_IOU: f32 = 0.5;

/// The expected detections, one list per clip frame.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Golden {
    pub format: String,
    pub frames: Vec<Vec<GoldenDetection>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoldenDetection {
    pub class: String,
    pub score: f32,
    /// `[x1, y1, x2, y2]` in frame pixels.
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
}

#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub frames: usize,
    pub p99_ms: f64,
    pub expected: usize,
    pub found: usize,
    pub matched: usize,
}

impl Report {
    /// Share of expected detections found.
    pub fn recall(&self) -> f64 {
        share(self.matched, self.expected)
    }
    /// Share of found detections that were expected.
    pub fn precision(&self) -> f64 {
        share(self.matched, self.found)
    }
}

fn share(n: usize, of: usize) -> f64 {
    if of == 0 {
        1.0
    } else {
        n as f64 / of as f64
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} frames, p99 {:.1} ms, {} of {} expected detections found, {} of {} found expected",
            self.frames, self.p99_ms, self.matched, self.expected, self.matched, self.found
        )
    }
}

/// Runs the detector `cfg` over every frame of `clip`; returns the detections and the time of
/// each frame (preprocess + inference). The first frame runs once more before timing starts
/// (first runs allocate and tune).
pub fn detect_clip(
    cfg: &DetectorModel,
    inference: &Inference,
    clip: &Path,
) -> Result<(Vec<Vec<Detection>>, Vec<Duration>), String> {
    let mut cam = Y4mCamera::open(clip, false, None).map_err(|e| e.to_string())?;
    let info = cam.info();
    let mut frames = Vec::new();
    let mut f = Frame::new(info.width, info.height, info.format);
    while cam.next_frame(&mut f).map_err(|e| e.to_string())? {
        frames.push(f.clone());
    }
    if frames.is_empty() {
        return Err(format!("{}: no frames", clip.display()));
    }
    let mut det = Detector::new(cfg, info.width, info.height, inference).map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(128);
    det.prepare(&frames[0]);
    det.infer(&mut out).map_err(|e| e.to_string())?;
    let mut all = Vec::with_capacity(frames.len());
    let mut times = Vec::with_capacity(frames.len());
    for frame in &frames {
        out.clear();
        let t = Instant::now();
        det.prepare(frame);
        det.infer(&mut out).map_err(|e| e.to_string())?;
        times.push(t.elapsed());
        all.push(out.clone());
    }
    Ok((all, times))
}

/// Nearest-rank 99th percentile.
pub fn p99(times: &[Duration]) -> Duration {
    let mut t = times.to_vec();
    t.sort_unstable();
    let rank = ((t.len() as f64 * 0.99).ceil() as usize).clamp(1, t.len().max(1));
    t.get(rank - 1).copied().unwrap_or_default()
}

/// Detections of `got` that match one of `expected`, one to one, best expected first.
pub fn matched(expected: &[GoldenDetection], got: &[Detection]) -> usize {
    let mut order: Vec<&GoldenDetection> = expected.iter().collect();
    order.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut used = vec![false; got.len()];
    let mut n = 0;
    for e in order {
        let eb = BBox { x1: e.bbox[0], y1: e.bbox[1], x2: e.bbox[2], y2: e.bbox[3] };
        let best = got
            .iter()
            .enumerate()
            .filter(|(i, g)| !used[*i] && coco::class_name(g.class) == e.class)
            .map(|(i, g)| (i, g.bbox.iou(&eb)))
            .filter(|&(_, iou)| iou >= MATCH_IOU)
            .max_by(|a, b| a.1.total_cmp(&b.1));
        if let Some((i, _)) = best {
            used[i] = true;
            n += 1;
        }
    }
    n
}

/// Runs the acceptance check against the freshly written slot at `slot_dir`.
pub fn check(slot_dir: &Path, acc: &Acceptance, board: &Board) -> Result<Report, UpdateError> {
    let fail = |m: String| UpdateError::Acceptance(m);
    let expected_path = slot_dir.join(&acc.expected);
    let text = std::fs::read(&expected_path).map_err(UpdateError::io("reading", &expected_path))?;
    let golden: Golden = serde_json::from_slice(&text)
        .map_err(|e| fail(format!("{}: not expected detections: {e}", acc.expected)))?;
    if golden.format != GOLDEN_FORMAT {
        return Err(fail(format!("{}: format `{}` is not `{GOLDEN_FORMAT}`", acc.expected, golden.format)));
    }
    let mut cfg = board.models.detector.clone();
    cfg.path = slot_dir.join(&acc.model);
    let (got, times) = detect_clip(&cfg, &board.inference, &slot_dir.join(&acc.clip))
        .map_err(|e| fail(format!("model {}: {e}", acc.model)))?;
    if got.len() != golden.frames.len() {
        return Err(fail(format!(
            "{} has {} frames but {} lists {}",
            acc.clip,
            got.len(),
            acc.expected,
            golden.frames.len()
        )));
    }
    let report = Report {
        frames: got.len(),
        p99_ms: p99(&times).as_secs_f64() * 1000.0,
        expected: golden.frames.iter().map(Vec::len).sum(),
        found: got.iter().map(Vec::len).sum(),
        matched: golden.frames.iter().zip(&got).map(|(e, g)| matched(e, g)).sum(),
    };
    if report.p99_ms > acc.max_p99_ms {
        return Err(fail(format!(
            "model {}: p99 latency {:.1} ms is over the budget of {} ms ({report})",
            acc.model, report.p99_ms, acc.max_p99_ms
        )));
    }
    let agree = report.recall().min(report.precision());
    if agree < acc.min_agree {
        return Err(fail(format!(
            "model {}: detections agree {:.0}% with {}, below the required {:.0}% ({report})",
            acc.model,
            agree * 100.0,
            acc.expected,
            acc.min_agree * 100.0
        )));
    }
    Ok(report)
}

/// What [`golden`] wrote.
pub struct GoldenFiles {
    pub clip: PathBuf,
    pub expected: PathBuf,
    pub frames: usize,
    pub detections: usize,
}

/// On the developer machine: cuts `frames` frames from `source` (after skipping `start`) into
/// `<out>/golden.y4m` and writes what the profile's detector finds on them to
/// `<out>/expected.json`.
pub fn golden(
    board: &Board,
    model: Option<&Path>,
    source: &Path,
    start: u64,
    frames: u64,
    out: &Path,
) -> Result<GoldenFiles, UpdateError> {
    let fail = |m: String| UpdateError::Acceptance(m);
    std::fs::create_dir_all(out).map_err(UpdateError::io("creating", out))?;
    let clip = out.join("golden.y4m");
    let mut cam = Y4mCamera::open(source, false, None).map_err(|e| fail(e.to_string()))?;
    let info = cam.info();
    let mut w =
        std::io::BufWriter::new(std::fs::File::create(&clip).map_err(UpdateError::io("creating", &clip))?);
    let header = format!(
        "YUV4MPEG2 W{} H{} F{}:1000 Ip A1:1 C420jpeg\n",
        info.width,
        info.height,
        (info.fps * 1000.0).round() as u64
    );
    let io = UpdateError::io("writing", &clip);
    w.write_all(header.as_bytes()).map_err(io)?;
    let mut f = Frame::new(info.width, info.height, info.format);
    let mut written = 0u64;
    while written < frames && cam.next_frame(&mut f).map_err(|e| fail(e.to_string()))? {
        if f.seq >= start {
            w.write_all(b"FRAME\n")
                .and_then(|_| w.write_all(&f.data))
                .map_err(UpdateError::io("writing", &clip))?;
            written += 1;
        }
    }
    w.flush().map_err(UpdateError::io("writing", &clip))?;
    if written < frames {
        return Err(fail(format!("{}: only {written} frames after frame {start}", source.display())));
    }
    let mut cfg = board.models.detector.clone();
    if let Some(m) = model {
        cfg.path = m.to_path_buf();
    }
    let (found, _) = detect_clip(&cfg, &board.inference, &clip).map_err(fail)?;
    let golden = Golden {
        format: GOLDEN_FORMAT.into(),
        frames: found
            .iter()
            .map(|dets| {
                dets.iter()
                    .map(|d| GoldenDetection {
                        class: coco::class_name(d.class).to_string(),
                        score: d.score,
                        bbox: [d.bbox.x1, d.bbox.y1, d.bbox.x2, d.bbox.y2],
                    })
                    .collect()
            })
            .collect(),
    };
    let expected = out.join("expected.json");
    let text = serde_json::to_vec_pretty(&golden).expect("golden detections serialize");
    std::fs::write(&expected, text).map_err(UpdateError::io("writing", &expected))?;
    Ok(GoldenFiles { clip, expected, frames: found.len(), detections: found.iter().map(Vec::len).sum() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(class: &str, b: [f32; 4]) -> GoldenDetection {
        GoldenDetection { class: class.into(), score: 0.8, bbox: b }
    }

    fn d(class: u16, b: [f32; 4]) -> Detection {
        Detection { class, score: 0.8, bbox: BBox { x1: b[0], y1: b[1], x2: b[2], y2: b[3] } }
    }

    #[test]
    fn matching_needs_class_and_overlap_one_to_one() {
        let e = [g("person", [0.0, 0.0, 10.0, 20.0]), g("person", [50.0, 0.0, 60.0, 20.0])];
        // Shifted by 1 px: still the same person.
        assert_eq!(matched(&e, &[d(0, [1.0, 0.0, 11.0, 20.0]), d(0, [50.0, 0.0, 60.0, 20.0])]), 2);
        // Wrong class.
        assert_eq!(matched(&e, &[d(coco::SPORTS_BALL, [0.0, 0.0, 10.0, 20.0])]), 0);
        // Half off: IoU 1/3.
        assert_eq!(matched(&e, &[d(0, [5.0, 0.0, 15.0, 20.0])]), 0);
        // One detection cannot stand for two expected ones.
        assert_eq!(matched(&[e[0].clone(), e[0].clone()], &[d(0, [0.0, 0.0, 10.0, 20.0])]), 1);
    }

    #[test]
    fn p99_is_nearest_rank() {
        let ms = |v: &[u64]| v.iter().map(|&m| Duration::from_millis(m)).collect::<Vec<_>>();
        assert_eq!(p99(&ms(&[5, 1, 3])), Duration::from_millis(5));
        let hundred: Vec<u64> = (1..=100).collect();
        assert_eq!(p99(&ms(&hundred)), Duration::from_millis(99));
        assert_eq!(p99(&[]), Duration::ZERO);
    }

    #[test]
    fn shares_of_nothing_are_full() {
        let r = Report { frames: 3, p99_ms: 1.0, expected: 0, found: 0, matched: 0 };
        assert_eq!((r.recall(), r.precision()), (1.0, 1.0));
        let r = Report { expected: 4, found: 5, matched: 4, ..r };
        assert_eq!((r.recall(), r.precision()), (1.0, 0.8));
    }
}
