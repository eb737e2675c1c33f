//! The event stream: one JSON object per line, for people, tests and the pattern store.
//!
//! Times are microseconds on the monotonic clock (`capture_us`, `decision_us`) so events from
//! cameras and microphones can be ordered against each other.

use serde::Serialize;

use crate::config::Severity;
use crate::geometry::{BBox, Point};
use crate::rules::{AlertState, RuleKind};

#[derive(Clone, Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    Detection {
        frame: u64,
        capture_us: u64,
        class: &'static str,
        score: f32,
        #[serde(rename = "box")]
        bbox: BBox,
        track: u32,
    },
    Alert(AlertEvent),
    /// One decided frame (only with `--frame-events`): how old it was and what ran.
    Frame {
        frame: u64,
        capture_us: u64,
        /// Age when the loop took it, and when its decision was out.
        taken_age_us: u64,
        age_us: u64,
        level: usize,
        pose: bool,
        missed: bool,
        /// Mean and 10th-90th percentile spread of the picture's luma (what
        /// `camera_obstructed` watches).
        luma_mean: f32,
        luma_spread: f32,
    },
    /// The degradation ladder moved.
    Ladder {
        frame: u64,
        from: usize,
        to: usize,
        direction: &'static str,
    },
    /// A rule pack was swapped in before this frame.
    Rules {
        frame: u64,
        version: u64,
    },
    /// A periodic sign of life, logged by the recorder.
    Status {
        frame: u64,
        people: usize,
        balls: usize,
        level: usize,
    },
    Summary(crate::telemetry::Summary),
}

#[derive(Clone, Debug, Serialize)]
pub struct AlertEvent {
    pub rule: String,
    pub kind: RuleKind,
    pub severity: Severity,
    pub state: AlertState,
    pub track: u32,
    pub frame: u64,
    pub capture_us: u64,
    pub decision_us: u64,
    /// Frame arrival to outputs driven.
    pub latency_us: u64,
    pub outputs: Vec<String>,
    pub at: Point,
    /// A player-down raised next to one still open: the track that is probably the same
    /// player (the tracker gave them a new id). Raised anyway: two players can go down together.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub same_as: Option<u32>,
}
