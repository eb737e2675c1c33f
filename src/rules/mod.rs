//! Safety rules: turn tracked people and poses into alerts.
//!
//! Rules see one [`Scene`] per frame, keep their own per-track state, and push [`Alert`]s.
//! They never allocate per frame in steady state and never block: output is the caller's job.

pub mod player_down;
pub mod zone;

use serde::Serialize;

use crate::clock::MonoTime;
use crate::config::{Board, Severity};
use crate::geometry::{BBox, Point};
use crate::infer::pose::Pose;

/// A detection with its track identity.
#[derive(Clone, Copy, Debug)]
pub struct Tracked {
    pub track: u32,
    pub class: u16,
    pub score: f32,
    pub bbox: BBox,
}

/// A pose with its track identity.
#[derive(Clone, Copy, Debug)]
pub struct TrackedPose {
    pub track: u32,
    pub pose: Pose,
}

/// What the rules see of one frame.
pub struct Scene<'a> {
    pub seq: u64,
    /// Capture time: rules measure durations on it.
    pub ts: MonoTime,
    pub objects: &'a [Tracked],
    /// `None` when pose did not run on this frame.
    pub poses: Option<&'a [TrackedPose]>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleKind {
    ZoneIncursion,
    PlayerDown,
    /// A referee's whistle on the microphone.
    Whistle,
    /// No fresh frame from the camera.
    CameraBlind,
    /// Frames arrive but the loop decides none.
    LoopStalled,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    /// The condition began: drive the outputs.
    Raised,
    /// The condition ended (the person left the zone, the player got up).
    Cleared,
}

/// Name, severity and targets of one configured rule.
#[derive(Clone, Debug)]
pub struct RuleMeta {
    pub name: String,
    pub kind: RuleKind,
    pub severity: Severity,
    /// Indexes into the board's outputs.
    pub outputs: Vec<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Alert {
    /// Index into [`RuleSet::meta`].
    pub rule: usize,
    pub state: AlertState,
    pub track: u32,
    /// Where in the frame, in pixels.
    pub at: Point,
}

pub struct RuleSet {
    meta: Vec<RuleMeta>,
    camera_blind: usize,
    loop_stalled: usize,
    /// Audio rules, run on the microphone thread: (rule index, configuration).
    whistles: Vec<(usize, crate::config::Whistle)>,
    zones: Vec<zone::ZoneRule>,
    downs: Vec<player_down::PlayerDownRule>,
}

impl RuleSet {
    /// Builds the rules of a profile.
    pub fn new(board: &Board) -> Result<Self, crate::geometry::PolygonError> {
        let out_index = |names: &[String]| -> Vec<usize> {
            names.iter().filter_map(|n| board.outputs.iter().position(|o| &o.name == n)).collect()
        };
        let mut meta = Vec::new();
        let mut zones = Vec::new();
        for z in &board.rules.zone_incursion {
            zones.push(zone::ZoneRule::new(meta.len(), z)?);
            meta.push(RuleMeta {
                name: z.name.clone(),
                kind: RuleKind::ZoneIncursion,
                severity: z.severity,
                outputs: out_index(&z.outputs),
            });
        }
        let kp_threshold = board.models.pose.as_ref().map_or(0.2, |p| p.keypoint_threshold);
        let mut downs = Vec::new();
        for r in &board.rules.player_down {
            downs.push(player_down::PlayerDownRule::new(meta.len(), r, kp_threshold));
            meta.push(RuleMeta {
                name: r.name.clone(),
                kind: RuleKind::PlayerDown,
                severity: r.severity,
                outputs: out_index(&r.outputs),
            });
        }
        // The loop's own alarms: to the configured alarm outputs, else to every output.
        let alarm_outputs = if board.frame_loop.alarm_outputs.is_empty() {
            (0..board.outputs.len()).collect()
        } else {
            out_index(&board.frame_loop.alarm_outputs)
        };
        let camera_blind = meta.len();
        meta.push(RuleMeta {
            name: "camera-blind".into(),
            kind: RuleKind::CameraBlind,
            severity: Severity::Critical,
            outputs: alarm_outputs.clone(),
        });
        let loop_stalled = meta.len();
        meta.push(RuleMeta {
            name: "loop-stalled".into(),
            kind: RuleKind::LoopStalled,
            severity: Severity::Critical,
            outputs: alarm_outputs,
        });
        let mut whistles = Vec::new();
        for w in &board.rules.whistle {
            whistles.push((meta.len(), w.clone()));
            meta.push(RuleMeta {
                name: w.name.clone(),
                kind: RuleKind::Whistle,
                severity: w.severity,
                outputs: out_index(&w.outputs),
            });
        }
        Ok(Self { meta, camera_blind, loop_stalled, zones, downs, whistles })
    }

    /// Every rule's metadata, indexed by [`Alert::rule`].
    pub fn metas(&self) -> &[RuleMeta] {
        &self.meta
    }

    /// Whistle rules with their indexes, for the microphone thread.
    pub fn whistles(&self) -> &[(usize, crate::config::Whistle)] {
        &self.whistles
    }

    /// Indexes of the loop's own alarms: (camera blind, loop stalled).
    pub fn alarms(&self) -> (usize, usize) {
        (self.camera_blind, self.loop_stalled)
    }

    /// Evaluates every rule on one frame, appending alerts.
    pub fn evaluate(&mut self, scene: &Scene<'_>, alerts: &mut Vec<Alert>) {
        for z in &mut self.zones {
            z.evaluate(scene, alerts);
        }
        if let Some(poses) = scene.poses {
            for d in &mut self.downs {
                d.evaluate(scene.ts, poses, alerts);
            }
        }
    }
}

/// Per-track rule state with expiry of tracks that are gone. A handful of tracks per rule, so a
/// linear scan beats hashing, and the storage is reused.
#[derive(Debug)]
pub(crate) struct TrackStates<S> {
    items: Vec<(u32, MonoTime, S)>,
}

impl<S: Default> TrackStates<S> {
    pub fn new() -> Self {
        Self { items: Vec::with_capacity(32) }
    }

    /// State of `track`, marked as seen at `ts`.
    pub fn get(&mut self, track: u32, ts: MonoTime) -> &mut S {
        let i = match self.items.iter().position(|(t, _, _)| *t == track) {
            Some(i) => i,
            None => {
                self.items.push((track, ts, S::default()));
                self.items.len() - 1
            }
        };
        self.items[i].1 = ts;
        &mut self.items[i].2
    }

    /// Forgets tracks unseen for `max_age`, handing each to `on_expire` first.
    pub fn expire(
        &mut self,
        now: MonoTime,
        max_age: std::time::Duration,
        mut on_expire: impl FnMut(u32, &S),
    ) {
        self.items.retain(|(t, seen, s)| {
            let keep = now.since(*seen) <= max_age;
            if !keep {
                on_expire(*t, s);
            }
            keep
        });
    }
}
