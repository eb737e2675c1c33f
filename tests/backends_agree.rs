//! onnxruntime and tract run the same ONNX files on the same frames and must agree: same
//! classes, matched boxes with IoU >= 0.9, pose keypoints within 2 px.
//!
//! Scores differ slightly between backends, so a detection near the threshold may exist on one
//! side only. Each side therefore decodes at a low threshold, and only confident detections
//! (>= 0.5) must find their counterpart on the other side.

mod common;

use sideline::config::{Backend, Board};
use sideline::infer::detector::Detection;
use sideline::infer::pose::{Pose, PoseEstimator};

const FRAMES: [u64; 5] = [0, 150, 300, 500, 700];

fn board() -> Board {
    common::ort_env();
    let mut b = common::load_board(&common::repo().join("board/sim.toml"));
    b.models.detector.score_threshold = 0.3;
    b.models.pose.as_mut().unwrap().score_threshold = 0.15;
    b
}

fn detect(board: &Board, backend: Backend) -> Vec<Vec<Detection>> {
    let mut cfg = board.models.detector.clone();
    cfg.backend = backend;
    let frames = common::clip_frames(&common::media("vtest.y4m"), &FRAMES);
    common::detect_frames(&cfg, &board.inference, &frames)
}

fn poses(board: &Board, backend: Backend) -> Vec<Vec<Pose>> {
    let mut cfg = board.models.pose.clone().unwrap();
    cfg.backend = backend;
    let frames = common::clip_frames(&common::media("vtest.y4m"), &FRAMES);
    let mut est = PoseEstimator::new(&cfg, frames[0].width, frames[0].height, &board.inference).unwrap();
    frames
        .iter()
        .map(|f| {
            let mut out = vec![];
            est.prepare(f);
            est.infer(&mut out).unwrap();
            out
        })
        .collect()
}

/// Every confident detection in `a` has a same-class counterpart in `b` with IoU >= 0.9.
fn all_matched(a: &[Detection], b: &[Detection], what: &str) -> usize {
    let confident: Vec<_> = a.iter().filter(|d| d.score >= 0.5).collect();
    for d in &confident {
        let best = b.iter().filter(|o| o.class == d.class).map(|o| o.bbox.iou(&d.bbox)).fold(0.0, f32::max);
        assert!(best >= 0.9, "{what}: {d:?} has no counterpart (best IoU {best}) in {b:?}");
    }
    confident.len()
}

#[test]
fn detector_agrees_across_backends() {
    let board = board();
    let ort = detect(&board, Backend::Ort);
    let tract = detect(&board, Backend::Tract);
    let mut matched = 0;
    for (i, (o, t)) in ort.iter().zip(&tract).enumerate() {
        matched += all_matched(o, t, &format!("frame {} ort->tract", FRAMES[i]));
        all_matched(t, o, &format!("frame {} tract->ort", FRAMES[i]));
    }
    assert!(matched >= 10, "too few confident detections to compare: {matched}");
}

#[test]
fn pose_agrees_across_backends() {
    let board = board();
    let ort = poses(&board, Backend::Ort);
    let tract = poses(&board, Backend::Tract);
    let mut compared = 0;
    for (i, (o, t)) in ort.iter().zip(&tract).enumerate() {
        for p in o.iter().filter(|p| p.score >= 0.25) {
            let q = t
                .iter()
                .max_by(|a, b| a.bbox.iou(&p.bbox).total_cmp(&b.bbox.iou(&p.bbox)))
                .unwrap_or_else(|| panic!("frame {}: tract found no pose", FRAMES[i]));
            assert!(q.bbox.iou(&p.bbox) >= 0.9, "frame {}: {p:?} vs {q:?}", FRAMES[i]);
            for (k, (a, b)) in p.keypoints.iter().zip(&q.keypoints).enumerate() {
                if a.score >= 0.3 && b.score >= 0.3 {
                    let d = ((a.x - b.x).powi(2) + (a.y - b.y).powi(2)).sqrt();
                    assert!(d <= 2.0, "frame {} keypoint {k}: {a:?} vs {b:?} ({d:.2} px)", FRAMES[i]);
                    compared += 1;
                }
            }
        }
    }
    assert!(compared >= 30, "too few keypoints to compare: {compared}");
}
