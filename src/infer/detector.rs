//! Person and ball detector: CenterNet (MobileNetV3, COCO-80). The graph does top-k (100 rows,
//! best first) but no NMS: the same person can come out twice, so decoding is a threshold, a
//! class filter, the letterbox inverse and per-class non-maximum suppression.

use std::collections::BTreeMap;

use serde::Serialize;

use super::letterbox::Letterbox;
use super::preprocess::Preprocessor;
use super::{coco, DType, Engine, InferError};
use crate::capture::Frame;
use crate::config::{DetectorModel, Inference};
use crate::geometry::BBox;

/// The graph's output: `[1, N, 6]` rows of x1, y1, x2, y2 (input pixels), score, class.
pub const OUTPUT: &str = "tower_0/detections";
const ROW: usize = 6;

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Detection {
    pub class: u16,
    pub score: f32,
    #[serde(rename = "box")]
    pub bbox: BBox,
}

/// Which classes to keep, by COCO id.
#[derive(Clone, Copy, Debug)]
pub struct ClassFilter([f32; 80]);

impl ClassFilter {
    /// Keeps `names` at `threshold`, or at their entry in `overrides`.
    pub fn new(names: &[String], threshold: f32, overrides: &BTreeMap<String, f32>) -> Self {
        let mut min = [f32::INFINITY; 80];
        for name in names {
            if let Some(id) = coco::class_id(name) {
                min[id as usize] = overrides.get(name).copied().unwrap_or(threshold);
            }
        }
        Self(min)
    }

    /// Whether a detection of `class` scoring `score` is kept.
    pub fn keeps(&self, class: u16, score: f32) -> bool {
        self.0.get(class as usize).is_some_and(|&min| score >= min)
    }

    /// The score from which `class` is kept (infinite: not kept at all).
    pub fn threshold(&self, class: u16) -> f32 {
        self.0.get(class as usize).copied().unwrap_or(f32::INFINITY)
    }

    /// The same classes, each kept from `floor` where that is below its threshold.
    pub fn lowered(&self, floor: f32) -> Self {
        Self(self.0.map(|min| if min.is_finite() { min.min(floor) } else { min }))
    }
}

/// Two boxes of one class overlapping more than this are one object.
pub const NMS_IOU: f32 = 0.5;

/// Decodes raw rows into frame-space detections, appending to `out`. Rows with non-finite
/// values or unknown classes are skipped: a model's garbage never becomes an alert.
pub fn decode(raw: &[f32], lb: &Letterbox, keep: &ClassFilter, out: &mut Vec<Detection>) {
    let start = out.len();
    for row in raw.chunks_exact(ROW) {
        let [x1, y1, x2, y2, score, class] = [row[0], row[1], row[2], row[3], row[4], row[5]];
        if !row.iter().all(|v| v.is_finite()) || class < 0.0 {
            continue;
        }
        let class = class.round() as u16;
        if !keep.keeps(class, score) {
            continue;
        }
        let bbox = lb.box_to_frame(BBox { x1: x1.min(x2), y1: y1.min(y2), x2: x1.max(x2), y2: y1.max(y2) });
        if bbox.area() > 0.0 {
            out.push(Detection { class, score, bbox });
        }
    }
    nms(out, start, NMS_IOU);
}

/// Greedy per-class non-maximum suppression over `dets[start..]`, in place, best score first.
pub fn nms(dets: &mut Vec<Detection>, start: usize, max_iou: f32) {
    dets[start..].sort_unstable_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept = start;
    for i in start..dets.len() {
        let d = dets[i];
        let dup = dets[start..kept].iter().any(|k| k.class == d.class && k.bbox.iou(&d.bbox) > max_iou);
        if !dup {
            dets[kept] = d;
            kept += 1;
        }
    }
    dets.truncate(kept);
}

pub struct Detector {
    engine: Box<dyn Engine>,
    pre: Preprocessor,
    outputs: Vec<Vec<f32>>,
    keep: ClassFilter,
    /// What decoding keeps: `keep`, or lower for the tracker's low-score stage.
    decode: ClassFilter,
}

impl Detector {
    pub fn new(
        cfg: &DetectorModel,
        frame_w: u32,
        frame_h: u32,
        settings: &Inference,
    ) -> Result<Self, InferError> {
        let [w, h] = cfg.input;
        let shape = [1, h as usize, w as usize, 3];
        let engine = super::load(&cfg.path, cfg.backend, &shape, DType::F32, &[OUTPUT], settings)?;
        let spec = &engine.outputs()[0];
        if spec.shape.last().is_some_and(|&d| d >= 0 && d != ROW as i64) {
            return Err(InferError::Mismatch {
                path: cfg.path.clone(),
                message: format!("output `{}` has shape {:?}; expected [1, N, 6]", spec.name, spec.shape),
            });
        }
        let pre = Preprocessor::new(frame_w, frame_h, w, h, 0.0).with_gpu(settings);
        Ok(Self {
            outputs: vec![Vec::with_capacity(100 * ROW)],
            engine,
            pre,
            keep: ClassFilter::new(&cfg.classes, cfg.score_threshold, &cfg.class_thresholds),
            decode: ClassFilter::new(&cfg.classes, cfg.score_threshold, &cfg.class_thresholds),
        })
    }

    /// Also output detections from `floor` up to each class's threshold, for the tracker's
    /// low-score stage; [`Detector::threshold`] tells them apart. Non-maximum suppression is best
    /// first, so the detections at or above the thresholds are the same as without.
    pub fn keep_low_scores(&mut self, floor: f32) {
        self.decode = self.keep.lowered(floor);
    }

    /// The score from which a detection of `class` counts (is reported); below it, only the
    /// tracker sees it.
    pub fn threshold(&self, class: u16) -> f32 {
        self.keep.threshold(class)
    }

    pub fn engine(&self) -> &dyn Engine {
        self.engine.as_ref()
    }

    /// Converts the frame into the model input (the preprocess stage).
    pub fn prepare(&mut self, frame: &Frame) {
        self.pre.fill(frame, self.engine.input_buffer());
    }

    /// Runs the model on the prepared input and appends detections to `out`.
    pub fn infer(&mut self, out: &mut Vec<Detection>) -> Result<(), InferError> {
        self.engine.run(&mut self.outputs)?;
        decode(&self.outputs[0], &self.pre.letterbox, &self.decode, out);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keep(names: &[&str], threshold: f32) -> ClassFilter {
        ClassFilter::new(
            &names.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            threshold,
            &BTreeMap::new(),
        )
    }

    #[test]
    fn per_class_thresholds() {
        let lb = Letterbox::new(512, 512, 512, 512);
        #[rustfmt::skip]
        let raw = [
            10.0, 10.0, 20.0, 20.0, 0.62, 32.0,   // a "ball" that is a plastic bag
            40.0, 10.0, 50.0, 20.0, 0.80, 32.0,   // a ball
            70.0, 10.0, 90.0, 60.0, 0.50, 0.0,    // a person
        ];
        let names = vec!["person".to_string(), "sports ball".to_string()];
        let overrides = BTreeMap::from([("sports ball".to_string(), 0.7)]);
        let mut out = vec![];
        decode(&raw, &lb, &ClassFilter::new(&names, 0.45, &overrides), &mut out);
        let got: Vec<(u16, f32)> = out.iter().map(|d| (d.class, d.score)).collect();
        assert_eq!(got, vec![(32, 0.8), (0, 0.5)]);
    }

    #[test]
    fn lowered_filter_adds_low_scores_without_changing_the_high_ones() {
        let lb = Letterbox::new(512, 512, 512, 512);
        #[rustfmt::skip]
        let raw = [
            100.0, 100.0, 140.0, 200.0, 0.8, 0.0,   // a person
            102.0, 101.0, 141.0, 201.0, 0.3, 0.0,   // the same person again, low: suppressed
            300.0, 100.0, 340.0, 200.0, 0.3, 0.0,   // a half-hidden person: low
            10.0, 10.0, 20.0, 20.0, 0.5, 32.0,      // a ball below its own threshold: low
            60.0, 10.0, 70.0, 20.0, 0.05, 32.0,     // below the floor
        ];
        let names = vec!["person".to_string(), "sports ball".to_string()];
        let high = ClassFilter::new(&names, 0.45, &BTreeMap::from([("sports ball".to_string(), 0.7)]));
        let (mut a, mut b) = (vec![], vec![]);
        decode(&raw, &lb, &high, &mut a);
        decode(&raw, &lb, &high.lowered(0.1), &mut b);
        assert_eq!(a.len(), 1);
        assert_eq!(b.len(), 3);
        let reported: Vec<Detection> =
            b.iter().copied().filter(|d| d.score >= high.threshold(d.class)).collect();
        assert_eq!(reported, a);
        assert_eq!((high.threshold(0), high.threshold(32), high.threshold(2)), (0.45, 0.7, f32::INFINITY));
    }

    #[test]
    fn decodes_known_rows_through_the_letterbox() {
        // 768x576 into 512x512: scale 2/3, 64 rows of bars top and bottom.
        let lb = Letterbox::new(768, 576, 512, 512);
        #[rustfmt::skip]
        let raw = [
            100.0, 164.0, 200.0, 364.0, 0.9, 0.0,   // person
            10.0, 74.0, 20.0, 84.0, 0.6, 32.0,      // sports ball
            0.0, 0.0, 50.0, 50.0, 0.95, 2.0,        // car: filtered out
            0.0, 64.0, 512.0, 448.0, 0.2, 0.0,      // below threshold
            f32::NAN, 0.0, 1.0, 1.0, 0.9, 0.0,      // garbage
            300.0, 100.0, 200.0, 0.0, 0.8, 0.0,     // corners swapped, top in the bar
        ];
        let mut out = vec![];
        decode(&raw, &lb, &keep(&["person", "sports ball"], 0.5), &mut out);
        // Best score first.
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].class, 0);
        assert_eq!(out[0].bbox, BBox { x1: 150.0, y1: 150.0, x2: 300.0, y2: 450.0 });
        assert_eq!(out[1].bbox, BBox { x1: 300.0, y1: 0.0, x2: 450.0, y2: 54.0 });
        assert_eq!(out[2].class, 32);
        assert_eq!(out[2].bbox, BBox { x1: 15.0, y1: 15.0, x2: 30.0, y2: 30.0 });
    }

    #[test]
    fn suppresses_duplicates_of_one_class_only() {
        let lb = Letterbox::new(512, 512, 512, 512);
        #[rustfmt::skip]
        let raw = [
            100.0, 100.0, 140.0, 200.0, 0.7, 0.0,   // person
            101.0, 102.0, 141.0, 201.0, 0.8, 0.0,   // the same person again, scored higher
            110.0, 100.0, 150.0, 200.0, 0.6, 32.0,  // a ball overlapping them: kept
            300.0, 100.0, 340.0, 200.0, 0.5, 0.0,   // another person
        ];
        let mut out = vec![];
        decode(&raw, &lb, &keep(&["person", "sports ball"], 0.3), &mut out);
        let got: Vec<(u16, f32)> = out.iter().map(|d| (d.class, d.score)).collect();
        assert_eq!(got, vec![(0, 0.8), (32, 0.6), (0, 0.5)]);
    }

    #[test]
    fn odd_frame_size_maps_back_exactly() {
        // 641x359 into 512x512: content 512x287 (scale 0.7987...), pad_y 112.
        let lb = Letterbox::new(641, 359, 512, 512);
        assert_eq!((lb.content_w, lb.content_h, lb.pad_x, lb.pad_y), (512, 287, 0, 112));
        let raw = [0.0, 112.0, 512.0, 399.0, 0.7, 0.0];
        let mut out = vec![];
        decode(&raw, &lb, &keep(&["person"], 0.5), &mut out);
        assert_eq!(out[0].bbox, BBox { x1: 0.0, y1: 0.0, x2: 641.0, y2: 359.0 });
        let raw = [256.0, 255.5, 256.0 + 64.0, 255.5 + 28.7, 0.7, 0.0];
        out.clear();
        decode(&raw, &lb, &keep(&["person"], 0.5), &mut out);
        let b = out[0].bbox;
        let s = 641.0 / 512.0;
        assert!((b.x1 - 256.0 * s).abs() < 1e-3 && (b.x2 - 320.0 * s).abs() < 1e-3, "{b:?}");
        let sy = 359.0 / 287.0;
        assert!((b.y1 - 143.5 * sy).abs() < 1e-3 && (b.y2 - 172.2 * sy).abs() < 1e-2, "{b:?}");
    }
}
