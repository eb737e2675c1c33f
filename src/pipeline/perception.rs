//! The model stage of the loop, behind one trait so the loop can be exercised with a stage of
//! known cost (an artificially slow model) as well as with the real models.

use anyhow::Context;

use super::ladder::FramePlan;
use crate::capture::{Frame, PixelFormat};
use crate::config::Board;
use crate::infer::coco;
use crate::infer::detector::{Detection, Detector};
use crate::infer::pose::{Pose, PoseEstimator};

pub trait Perception: Send {
    /// COCO classes the detector reports.
    fn classes(&self) -> &[u16];
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
    detector: Detector,
    /// Index = pose variant of [`FramePlan`]; empty when no rule needs pose.
    pose: Vec<PoseEstimator>,
}

impl Models {
    pub fn load(
        board: &Board,
        width: u32,
        height: u32,
        pose_inputs: &[Option<[u32; 2]>],
    ) -> anyhow::Result<Self> {
        let detector = Detector::new(&board.models.detector, width, height, &board.inference)
            .context("loading the detector")?;
        let needs_pose = !board.rules.player_down.is_empty();
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
        let mut models = Self { classes, detector, pose };
        models.warm_up(width, height)?;
        Ok(models)
    }

    /// Runs every model once on a blank frame: first runs are slow (allocation, kernel
    /// selection), and that cost belongs to start-up, not to the first frame's deadline.
    fn warm_up(&mut self, width: u32, height: u32) -> anyhow::Result<()> {
        let blank = Frame::new(width, height, PixelFormat::I420);
        let mut dets = Vec::with_capacity(128);
        self.detector.prepare(&blank);
        self.detector.infer(&mut dets).context("warming up the detector")?;
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

    fn has_pose(&self) -> bool {
        !self.pose.is_empty()
    }

    fn prepare(&mut self, frame: &Frame, plan: &FramePlan) {
        self.detector.prepare(frame);
        if plan.run_pose {
            if let Some(p) = self.pose.get_mut(plan.pose_variant) {
                p.prepare(frame);
            }
        }
    }

    fn detect(&mut self, out: &mut Vec<Detection>) -> anyhow::Result<()> {
        Ok(self.detector.infer(out)?)
    }

    fn pose(&mut self, plan: &FramePlan, out: &mut Vec<Pose>) -> anyhow::Result<()> {
        match self.pose.get_mut(plan.pose_variant) {
            Some(p) => Ok(p.infer(out)?),
            None => Ok(()),
        }
    }
}
