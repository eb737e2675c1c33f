//! The model stage of the loop, behind one trait so the loop can be exercised with a stage of
//! known cost (an artificially slow model) as well as with the real models.

use anyhow::Context;

use super::ladder::{FramePlan, Ladder};
use crate::capture::{Frame, PixelFormat};
use crate::config::Board;
use crate::infer::coco;
use crate::infer::detector::{Detection, Detector};
use crate::infer::pose::{Pose, PoseEstimator};

pub trait Perception: Send {
    /// COCO classes the detector reports.
    fn classes(&self) -> &[u16];
    /// The score from which a detection of `class` is reported; [`Perception::detect`] may
    /// also return lower ones, for the tracker's low-score stage only.
    fn score_threshold(&self, _class: u16) -> f32 {
        0.0
    }
    /// Whether there is a pose stage at all.
    fn has_pose(&self) -> bool;
    /// Converts the frame into the model inputs this plan needs. Runs while the loop still holds
    /// the frame buffer; everything after works on the converted inputs.
    fn prepare(&mut self, frame: &Frame, plan: &FramePlan);
    fn detect(&mut self, out: &mut Vec<Detection>) -> anyhow::Result<()>;
    /// Runs pose on the prepared input; only called when the plan asked for pose.
    fn pose(&mut self, plan: &FramePlan, out: &mut Vec<Pose>) -> anyhow::Result<()>;
}

/// The real models: the detector, and the pose model at each input size the ladder uses.
pub struct Models {
    classes: Vec<u16>,
    /// Index = [`FramePlan::detector`]: the detector variants the ladder uses.
    detectors: Vec<Detector>,
    /// The variant chosen for the frame being processed.
    active: usize,
    /// Index = pose variant of [`FramePlan`]; empty when no rule needs pose.
    pose: Vec<PoseEstimator>,
}

impl Models {
    pub fn load(board: &Board, width: u32, height: u32, ladder: &Ladder) -> anyhow::Result<Self> {
        let variants = board.models.detector.all_variants();
        let detectors = ladder
            .detectors()
            .iter()
            .map(|&i| {
                let cfg = board.models.detector.variant(i);
                let name = variants.get(i).map_or("?", |v| v.0);
                Detector::new(&cfg, width, height, &board.inference)
                    .with_context(|| format!("loading the detector (variant `{name}`)"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let pose_inputs = ladder.pose_inputs();
        // A collision rule that waits for a fall judges it by pose where pose is loaded.
        let needs_pose =
            !board.rules.player_down.is_empty() || board.rules.collision.iter().any(|c| c.require_down);
        let pose = match &board.models.pose {
            Some(cfg) if needs_pose => pose_inputs
                .iter()
                .map(|input| {
                    let mut cfg = cfg.clone();
                    if let Some(i) = input {
                        cfg.input = *i;
                    }
                    PoseEstimator::new(&cfg, width, height, &board.inference).with_context(|| {
                        format!("loading the pose model at {}x{}", cfg.input[0], cfg.input[1])
                    })
                })
                .collect::<anyhow::Result<_>>()?,
            _ => Vec::new(),
        };
        let classes = board.models.detector.classes.iter().filter_map(|c| coco::class_id(c)).collect();
        // The trackers' low-score stage needs the boxes under the thresholds too; the loop
        // reports only those at or above them (`score_threshold`).
        let mut detectors = detectors;
        detectors.iter_mut().for_each(|d| d.keep_low_scores(board.tracking.low_score));
        let mut models = Self { classes, detectors, active: 0, pose };
        models.warm_up(width, height)?;
        Ok(models)
    }

    /// Runs every model once on a blank frame: first runs are slow (allocation, kernel
    /// selection), and that cost belongs to start-up, not to the first frame's deadline.
    fn warm_up(&mut self, width: u32, height: u32) -> anyhow::Result<()> {
        let blank = Frame::new(width, height, PixelFormat::I420);
        let mut dets = Vec::with_capacity(128);
        for d in &mut self.detectors {
            d.prepare(&blank);
            d.infer(&mut dets).context("warming up the detector")?;
        }
        let mut poses = Vec::with_capacity(8);
        for p in &mut self.pose {
            p.prepare(&blank);
            p.infer(&mut poses).context("warming up the pose model")?;
        }
        Ok(())
    }
}

impl Perception for Models {
    fn classes(&self) -> &[u16] {
        &self.classes
    }

    fn score_threshold(&self, class: u16) -> f32 {
        self.detectors[0].threshold(class)
    }

    fn has_pose(&self) -> bool {
        !self.pose.is_empty()
    }

    fn prepare(&mut self, frame: &Frame, plan: &FramePlan) {
        self.active = plan.detector.min(self.detectors.len() - 1);
        self.detectors[self.active].prepare(frame);
        if plan.run_pose {
            if let Some(p) = self.pose.get_mut(plan.pose_variant) {
                p.prepare(frame);
            }
        }
    }

    fn detect(&mut self, out: &mut Vec<Detection>) -> anyhow::Result<()> {
        Ok(self.detectors[self.active].infer(out)?)
    }

    fn pose(&mut self, plan: &FramePlan, out: &mut Vec<Pose>) -> anyhow::Result<()> {
        match self.pose.get_mut(plan.pose_variant) {
            Some(p) => Ok(p.infer(out)?),
            None => Ok(()),
        }
    }
}
