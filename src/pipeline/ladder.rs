//! The degradation ladder: when frames miss their deadline, give up the least important work
//! first (pose on fewer frames, a smaller pose input, fewer frames decided), and take it back
//! when there is headroom again. Rules and alert outputs are never on the ladder.
//!
//! Hysteresis comes from asymmetric triggers: a few misses in a short window step down at once;
//! only a long run of comfortably early frames steps back up. A step up that fails at once (the
//! level above still misses) doubles the run needed before the next try, so a loop that cannot
//! afford a level does not keep probing it.

use std::time::Duration;

use crate::config::{FrameLoop, LadderLevel};

/// What the loop does on one frame at the current level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FramePlan {
    pub level: usize,
    pub run_pose: bool,
    /// Which pose input variant (0 = the model's own input size).
    pub pose_variant: usize,
    /// Which loaded detector (an index into [`Ladder::detectors`]).
    pub detector: usize,
    /// Whether this frame is decided at all (frame skipping).
    pub decide: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Down { from: usize, to: usize },
    Up { from: usize, to: usize },
}

pub struct Ladder {
    /// Level 0 is everything on every frame.
    levels: Vec<LadderLevel>,
    /// Distinct pose inputs in use; index = pose variant.
    pose_inputs: Vec<Option<[u32; 2]>>,
    /// Detector variant (index into the profile's variants, primary = 0) of each level.
    level_detector: Vec<usize>,
    /// Distinct detector variants in use, the start variant first.
    detectors: Vec<usize>,
    level: usize,
    budget: Duration,
    headroom: Duration,
    degrade_after: u32,
    window: u32,
    recover_after: u32,
    /// Recent frames, newest in bit 0: 1 = missed.
    recent: u64,
    seen: u32,
    early_run: u32,
    counter: u64,
    /// Multiplier on `recover_after` after failed step-ups.
    backoff: u32,
    /// Decided frames since the last level change, and whether that change was a step up.
    since_change: u32,
    last_was_up: bool,
}

const MAX_BACKOFF: u32 = 16;

impl Ladder {
    pub fn new(cfg: &FrameLoop, budget: Duration) -> Self {
        let mut levels = vec![LadderLevel { pose_every: 1, pose_input: None, frame_skip: 1, detector: None }];
        levels.extend(cfg.ladder.iter().cloned());
        let mut pose_inputs = vec![None];
        for l in &levels {
            if !pose_inputs.contains(&l.pose_input) {
                pose_inputs.push(l.pose_input);
            }
        }
        Self {
            level_detector: vec![0; levels.len()],
            detectors: vec![0],
            levels,
            pose_inputs,
            level: 0,
            budget,
            headroom: budget.mul_f32(cfg.headroom.clamp(0.0, 1.0)),
            degrade_after: cfg.degrade_after.max(1),
            window: cfg.window.clamp(1, 64),
            recover_after: cfg.recover_after.max(1),
            recent: 0,
            seen: 0,
            early_run: 0,
            counter: 0,
            backoff: 1,
            since_change: 0,
            last_was_up: false,
        }
    }

    pub fn level(&self) -> usize {
        self.level
    }

    pub fn budget(&self) -> Duration {
        self.budget
    }

    /// Pose input sizes the loop must be able to run (`None` = the model's configured input).
    pub fn pose_inputs(&self) -> &[Option<[u32; 2]>] {
        &self.pose_inputs
    }

    /// Detector variants the loop must be able to run, as indices into the profile's variant
    /// list (primary = 0); [`FramePlan::detector`] indexes this list.
    pub fn detectors(&self) -> &[usize] {
        &self.detectors
    }

    /// Starts on detector variant `start` (chosen by budget) and moves along `names` (the
    /// profile's variants, most accurate first) where levels name one. A level never runs a
    /// variant more expensive than the one above it, nor than `start`: what did not fit the
    /// budget at start is not tried when the loop is already struggling.
    pub fn select_detectors(&mut self, names: &[&str], start: usize) {
        let mut current = start.min(names.len().saturating_sub(1));
        self.detectors = vec![current];
        for (level, l) in self.levels.iter().enumerate() {
            if let Some(i) = l.detector.as_deref().and_then(|n| names.iter().position(|v| *v == n)) {
                current = current.max(i);
            }
            self.level_detector[level] = current;
            if !self.detectors.contains(&current) {
                self.detectors.push(current);
            }
        }
    }

    /// The plan for the next frame from the camera.
    pub fn plan(&mut self) -> FramePlan {
        let l = &self.levels[self.level];
        let n = self.counter;
        self.counter += 1;
        let decide = n % l.frame_skip.max(1) as u64 == 0;
        let run_pose =
            decide && l.pose_every > 0 && (n / l.frame_skip.max(1) as u64) % l.pose_every as u64 == 0;
        let pose_variant = self.pose_inputs.iter().position(|p| *p == l.pose_input).unwrap_or(0);
        let want = self.level_detector[self.level];
        let detector = self.detectors.iter().position(|&d| d == want).unwrap_or(0);
        FramePlan { level: self.level, run_pose, pose_variant, detector, decide }
    }

    /// Records how old a decided frame was when its decision was out; may change the level.
    pub fn record(&mut self, age: Duration) -> Option<Change> {
        let missed = age > self.budget;
        self.recent = (self.recent << 1) | missed as u64;
        self.seen = (self.seen + 1).min(self.window);
        self.early_run = if age <= self.headroom { self.early_run + 1 } else { 0 };
        let mask = if self.window >= 64 { u64::MAX } else { (1u64 << self.window) - 1 };
        let misses = (self.recent & mask).count_ones();
        self.since_change = self.since_change.saturating_add(1);
        let from = self.level;
        if misses >= self.degrade_after && self.level + 1 < self.levels.len() {
            if self.last_was_up && self.since_change <= self.recover_after {
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
            }
            self.set_level(self.level + 1, false);
            return Some(Change::Down { from, to: self.level });
        }
        if self.last_was_up && self.since_change > self.recover_after {
            // The last step up held: probing is cheap again.
            self.backoff = 1;
        }
        if self.early_run >= self.recover_after * self.backoff && self.level > 0 {
            self.set_level(self.level - 1, true);
            return Some(Change::Up { from, to: self.level });
        }
        None
    }

    fn set_level(&mut self, level: usize, up: bool) {
        self.level = level;
        self.last_was_up = up;
        self.since_change = 0;
        // Judge the new level on its own frames only.
        self.recent = 0;
        self.seen = 0;
        self.early_run = 0;
        self.counter = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ladder() -> Ladder {
        let cfg: FrameLoop = toml::from_str(
            "degrade_after = 3\nwindow = 10\nrecover_after = 5\nheadroom = 0.5\n\
             [[ladder]]\npose_every = 2\n[[ladder]]\npose_every = 0\n[[ladder]]\npose_every = 0\nframe_skip = 2\n",
        )
        .unwrap();
        Ladder::new(&cfg, Duration::from_millis(100))
    }

    const LATE: Duration = Duration::from_millis(150);
    const OK: Duration = Duration::from_millis(80);
    const EARLY: Duration = Duration::from_millis(40);

    #[test]
    fn steps_down_on_misses_and_up_only_after_a_run_of_headroom() {
        let mut l = ladder();
        assert_eq!(l.record(LATE), None);
        assert_eq!(l.record(OK), None);
        assert_eq!(l.record(LATE), None);
        assert_eq!(l.record(LATE), Some(Change::Down { from: 0, to: 1 }));
        // Frames that meet the deadline without headroom hold the level: no flapping.
        for _ in 0..50 {
            assert_eq!(l.record(OK), None);
        }
        for _ in 0..4 {
            assert_eq!(l.record(EARLY), None);
        }
        assert_eq!(l.record(EARLY), Some(Change::Up { from: 1, to: 0 }));
    }

    #[test]
    fn a_failed_step_up_doubles_the_wait_before_the_next() {
        let mut l = ladder();
        let down = |l: &mut Ladder| (0..3).find_map(|_| l.record(LATE));
        assert_eq!(down(&mut l), Some(Change::Down { from: 0, to: 1 }));
        let ups_after = |l: &mut Ladder| (1..=200).find(|_| l.record(EARLY).is_some());
        assert_eq!(ups_after(&mut l), Some(5));
        // Level 0 still cannot be afforded: down again at once, and the next try waits 10.
        assert_eq!(down(&mut l), Some(Change::Down { from: 0, to: 1 }));
        assert_eq!(ups_after(&mut l), Some(10));
        assert_eq!(down(&mut l), Some(Change::Down { from: 0, to: 1 }));
        assert_eq!(ups_after(&mut l), Some(20));
        // This time level 0 holds; after that, a later slump recovers at the base pace again.
        for _ in 0..10 {
            assert_eq!(l.record(OK), None);
        }
        assert_eq!(down(&mut l), Some(Change::Down { from: 0, to: 1 }));
        assert_eq!(ups_after(&mut l), Some(5));
    }

    #[test]
    fn the_detector_moves_along_the_variant_list_never_above_the_start() {
        let cfg: FrameLoop = toml::from_str(
            "degrade_after = 1\nwindow = 4\nrecover_after = 2\n\
             [[ladder]]\npose_every = 2\n[[ladder]]\ndetector = \"int8-384\"\n[[ladder]]\nframe_skip = 2\n",
        )
        .unwrap();
        let names = ["primary", "int8-512", "int8-384"];
        let variants = |start| {
            let mut l = Ladder::new(&cfg, Duration::from_millis(100));
            l.select_detectors(&names, start);
            let mut seen = Vec::new();
            for _ in 0..4 {
                let d = l.plan().detector;
                seen.push(l.detectors()[d]);
                l.record(LATE);
            }
            seen
        };
        // Level 2 switches to int8-384, and level 3 keeps it.
        assert_eq!(variants(0), [0, 0, 2, 2]);
        // Started on int8-512 by budget: the levels above 2 never go back to primary.
        assert_eq!(variants(1), [1, 1, 2, 2]);
        // Started on the cheapest: a level naming a dearer variant does not climb back.
        assert_eq!(variants(2), [2, 2, 2, 2]);
        let mut l = Ladder::new(&cfg, Duration::from_millis(100));
        l.select_detectors(&names, 1);
        assert_eq!(l.detectors(), [1, 2]);
    }

    #[test]
    fn bottoms_out_and_plans_follow_the_level() {
        let mut l = ladder();
        let plans =
            |l: &mut Ladder| (0..4).map(|_| l.plan()).map(|p| (p.decide, p.run_pose)).collect::<Vec<_>>();
        assert_eq!(plans(&mut l), [(true, true); 4]);
        for to in 1..=3 {
            for _ in 0..2 {
                l.record(LATE);
            }
            assert_eq!(l.record(LATE), Some(Change::Down { from: to - 1, to }));
        }
        for _ in 0..20 {
            assert_eq!(l.record(LATE), None, "no level below the last");
        }
        assert_eq!(plans(&mut l), [(true, false), (false, false), (true, false), (false, false)]);
        for _ in 0..4 {
            l.record(EARLY);
        }
        assert_eq!(l.record(EARLY), Some(Change::Up { from: 3, to: 2 }));
        assert_eq!(plans(&mut l), [(true, false); 4]);
        for _ in 0..5 {
            l.record(EARLY);
        }
        assert_eq!(plans(&mut l), [(true, true), (true, false), (true, true), (true, false)]);
    }
}
