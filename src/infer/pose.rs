//! Multi-person pose: MoveNet MultiPose Lightning. Up to six people, each with a box and the 17
//! COCO keypoints, normalised to the (letterboxed) input.

use serde::Serialize;

use super::letterbox::Letterbox;
use super::preprocess::Preprocessor;
use super::{DType, Engine, InferError};
use crate::capture::Frame;
use crate::config::{Inference, PoseModel};
use crate::geometry::BBox;

pub const KEYPOINTS: usize = 17;
/// The graph's output: `[1, 6, 56]`.
pub const OUTPUT: &str = "output_0";
/// Per person: 17 x (y, x, score), then ymin, xmin, ymax, xmax, score.
const ROW: usize = KEYPOINTS * 3 + 5;

/// COCO keypoint order.
pub mod kp {
    pub const NOSE: usize = 0;
    pub const L_SHOULDER: usize = 5;
    pub const R_SHOULDER: usize = 6;
    pub const L_HIP: usize = 11;
    pub const R_HIP: usize = 12;
    pub const L_ANKLE: usize = 15;
    pub const R_ANKLE: usize = 16;
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Keypoint {
    pub x: f32,
    pub y: f32,
    pub score: f32,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Pose {
    pub score: f32,
    #[serde(rename = "box")]
    pub bbox: BBox,
    pub keypoints: [Keypoint; KEYPOINTS],
}

/// Decodes raw MultiPose output into frame-space poses scoring at least `threshold`.
pub fn decode(raw: &[f32], lb: &Letterbox, threshold: f32, out: &mut Vec<Pose>) {
    let (iw, ih) = (lb.dst_w as f32, lb.dst_h as f32);
    for row in raw.chunks_exact(ROW) {
        let score = row[ROW - 1];
        if score < threshold || !row.iter().all(|v| v.is_finite()) {
            continue;
        }
        let mut keypoints = [Keypoint::default(); KEYPOINTS];
        for (k, kp) in keypoints.iter_mut().enumerate() {
            let p = lb.to_frame(row[k * 3 + 1] * iw, row[k * 3] * ih);
            *kp = Keypoint { x: p.x, y: p.y, score: row[k * 3 + 2] };
        }
        let b = &row[KEYPOINTS * 3..];
        let bbox = lb.box_to_frame(BBox { x1: b[1] * iw, y1: b[0] * ih, x2: b[3] * iw, y2: b[2] * ih });
        out.push(Pose { score, bbox, keypoints });
    }
}

pub struct PoseEstimator {
    engine: Box<dyn Engine>,
    pre: Preprocessor,
    outputs: Vec<Vec<f32>>,
    threshold: f32,
}

impl PoseEstimator {
    pub fn new(
        cfg: &PoseModel,
        frame_w: u32,
        frame_h: u32,
        settings: &Inference,
    ) -> Result<Self, InferError> {
        let [w, h] = cfg.input;
        let shape = [1, h as usize, w as usize, 3];
        let engine = super::load(&cfg.path, cfg.backend, &shape, DType::I32, &[OUTPUT], settings)?;
        let out = &engine.outputs()[0];
        if out.shape.last().is_some_and(|&d| d >= 0 && d != ROW as i64) {
            return Err(InferError::Mismatch {
                path: cfg.path.clone(),
                message: format!("output `{}` has shape {:?}; expected [1, 6, {ROW}]", out.name, out.shape),
            });
        }
        let pre = Preprocessor::new(frame_w, frame_h, w, h, 0.0).with_gpu(settings);
        Ok(Self { outputs: vec![Vec::with_capacity(6 * ROW)], engine, pre, threshold: cfg.score_threshold })
    }

    pub fn engine(&self) -> &dyn Engine {
        self.engine.as_ref()
    }

    pub fn prepare(&mut self, frame: &Frame) {
        self.pre.fill(frame, self.engine.input_buffer());
    }

    pub fn infer(&mut self, out: &mut Vec<Pose>) -> Result<(), InferError> {
        self.engine.run(&mut self.outputs)?;
        decode(&self.outputs[0], &self.pre.letterbox, self.threshold, out);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_keypoints_and_box() {
        // 768x576 frame into a 512x384 input: plain 2/3 scale, no bars.
        let lb = Letterbox::new(768, 576, 512, 384);
        let mut raw = vec![0.0f32; 2 * ROW];
        for k in 0..KEYPOINTS {
            raw[k * 3] = 0.5; // y
            raw[k * 3 + 1] = 0.25; // x
            raw[k * 3 + 2] = 0.8;
        }
        raw[KEYPOINTS * 3..ROW].copy_from_slice(&[0.25, 0.125, 0.75, 0.375, 0.6]);
        raw[2 * ROW - 1] = 0.05; // second person below threshold
        let mut out = vec![];
        decode(&raw, &lb, 0.3, &mut out);
        assert_eq!(out.len(), 1);
        let p = &out[0];
        assert_eq!(p.keypoints[kp::NOSE], Keypoint { x: 192.0, y: 288.0, score: 0.8 });
        assert_eq!(p.bbox, BBox { x1: 96.0, y1: 144.0, x2: 288.0, y2: 432.0 });
    }

    #[test]
    fn decodes_through_bars_at_odd_size() {
        // 500x301 into 256x256: content 256x154, pad_y 51.
        let lb = Letterbox::new(500, 301, 256, 256);
        assert_eq!((lb.content_h, lb.pad_y), (154, 51));
        let mut raw = vec![0.0f32; ROW];
        raw[0] = (51.0 + 77.0) / 256.0; // middle row of the content
        raw[1] = 0.5;
        raw[2] = 0.9;
        raw[ROW - 1] = 0.9;
        let mut out = vec![];
        decode(&raw, &lb, 0.3, &mut out);
        let k = out[0].keypoints[0];
        assert!((k.x - 250.0).abs() < 1e-3 && (k.y - 150.5).abs() < 1e-3, "{k:?}");
    }
}
