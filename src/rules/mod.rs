//! Safety rules: turn tracked people and poses into alerts.
//!
//! Rules see one [`Scene`] per frame, keep their own per-track state, and push [`Alert`]s.
//! They never allocate per frame in steady state and never block: output is the caller's job.

pub mod collision;
pub mod crowding;
pub mod fusion;
pub mod obstructed;
pub mod player_down;
pub mod zone;

use std::sync::{Arc, Mutex};

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
    /// Confirmed tracks this frame carried only by a low-score detection (a person half hidden,
    /// say behind another at a clash): not objects the rules report, but evidence of where a
    /// followed person is. Only the collision rule reads them.
    pub carried: &'a [Tracked],
    /// Confirmed tracks with no detection this frame, for a frame or two, on their predicted
    /// box ([`crate::track::Tracker::coasting`]): a person wholly hidden. Only the collision
    /// rule reads them, for contact.
    pub coasting: &'a [Tracked],
    /// `None` when pose did not run on this frame.
    pub poses: Option<&'a [TrackedPose]>,
    /// How much detail the picture has (`None`: not measured, e.g. in model-only tests).
    pub luma: Option<obstructed::LumaStats>,
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
    /// Frames arrive but show nothing: lens covered, blinded or dark.
    CameraObstructed,
    /// An alert output failed to drive, or did not read back what it was driven to.
    OutputFault,
    /// More people in a zone than it safely holds.
    Crowding,
    /// Thunder on the microphone.
    Thunder,
    /// Alerts of other rules meeting (a whistle and a player down: a medic alert).
    Fusion,
    /// Two people running into each other, then one of them down.
    Collision,
    /// Someone speaking near the microphone.
    Voice,
    /// A spoken keyword ("help") in a voice segment's transcript.
    Keyword,
}

/// An audio rule's configuration, for the microphone thread.
#[derive(Clone, Debug)]
pub enum AudioRule {
    Whistle(crate::config::Whistle),
    Thunder(crate::config::Thunder),
    Voice(crate::config::Voice),
    /// Transcribed on the speech thread (src/audio/speech.rs), fed by a voice rule's segments.
    Keyword(crate::config::Keyword),
}

/// Index of the built-in `output-fault` rule in every rule set.
pub const OUTPUT_FAULT: usize = 2;

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
    meta: Arc<[RuleMeta]>,
    camera_blind: usize,
    loop_stalled: usize,
    /// Audio rules, run on the microphone thread: (rule index, configuration).
    audio: Vec<(usize, AudioRule)>,
    /// Fusion rules, run where every alert passes (the output thread).
    fusion: Arc<[fusion::FusionSpec]>,
    zones: Vec<zone::ZoneRule>,
    downs: Vec<player_down::PlayerDownRule>,
    obstructed: Vec<obstructed::ObstructedRule>,
    crowds: Vec<crowding::CrowdingRule>,
    collisions: Vec<collision::CollisionRule>,
}

impl RuleSet {
    /// Builds the rules of a profile.
    pub fn new(board: &Board) -> Result<Self, crate::geometry::PolygonError> {
        let out_index = |names: &[String]| -> Vec<usize> {
            names.iter().filter_map(|n| board.outputs.iter().position(|o| &o.name == n)).collect()
        };
        // Outputs that take only more severe alerts are left out of a rule's routing.
        let routed = |names: &[String], severity: Severity| -> Vec<usize> {
            out_index(names)
                .into_iter()
                .filter(|&i| board.outputs[i].min_severity.is_none_or(|min| severity >= min))
                .collect()
        };
        // The loop's own alarms come first: their indexes are the same in every rule set, so
        // the supervisor's alerts mean the same rule across a rule pack change.
        let alarm_outputs: Vec<usize> = if board.frame_loop.alarm_outputs.is_empty() {
            (0..board.outputs.len()).collect()
        } else {
            out_index(&board.frame_loop.alarm_outputs)
        };
        let mut meta = vec![
            RuleMeta {
                name: "camera-blind".into(),
                kind: RuleKind::CameraBlind,
                severity: Severity::Critical,
                outputs: alarm_outputs.clone(),
            },
            RuleMeta {
                name: "loop-stalled".into(),
                kind: RuleKind::LoopStalled,
                severity: Severity::Critical,
                outputs: alarm_outputs.clone(),
            },
            RuleMeta {
                name: "output-fault".into(),
                kind: RuleKind::OutputFault,
                severity: Severity::Critical,
                outputs: alarm_outputs,
            },
        ];
        let (camera_blind, loop_stalled) = (0, 1);
        let mut zones = Vec::new();
        for z in &board.rules.zone_incursion {
            zones.push(zone::ZoneRule::new(meta.len(), z)?);
            meta.push(RuleMeta {
                name: z.name.clone(),
                kind: RuleKind::ZoneIncursion,
                severity: z.severity,
                outputs: routed(&z.outputs, z.severity),
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
                outputs: routed(&r.outputs, r.severity),
            });
        }
        let mut crowds = Vec::new();
        for c in &board.rules.crowding {
            crowds.push(crowding::CrowdingRule::new(meta.len(), c)?);
            meta.push(RuleMeta {
                name: c.name.clone(),
                kind: RuleKind::Crowding,
                severity: c.severity,
                outputs: routed(&c.outputs, c.severity),
            });
        }
        let mut collisions = Vec::new();
        for c in &board.rules.collision {
            collisions.push(collision::CollisionRule::new(meta.len(), c, kp_threshold));
            meta.push(RuleMeta {
                name: c.name.clone(),
                kind: RuleKind::Collision,
                severity: c.severity,
                outputs: routed(&c.outputs, c.severity),
            });
        }
        let mut obstructed = Vec::new();
        for c in &board.rules.camera_obstructed {
            obstructed.push(obstructed::ObstructedRule::new(meta.len(), c));
            meta.push(RuleMeta {
                name: c.name.clone(),
                kind: RuleKind::CameraObstructed,
                severity: c.severity,
                outputs: routed(&c.outputs, c.severity),
            });
        }
        let mut audio = Vec::new();
        for w in &board.rules.whistle {
            audio.push((meta.len(), AudioRule::Whistle(w.clone())));
            meta.push(RuleMeta {
                name: w.name.clone(),
                kind: RuleKind::Whistle,
                severity: w.severity,
                outputs: routed(&w.outputs, w.severity),
            });
        }
        for t in &board.rules.thunder {
            audio.push((meta.len(), AudioRule::Thunder(t.clone())));
            meta.push(RuleMeta {
                name: t.name.clone(),
                kind: RuleKind::Thunder,
                severity: t.severity,
                outputs: routed(&t.outputs, t.severity),
            });
        }
        for v in &board.rules.voice {
            audio.push((meta.len(), AudioRule::Voice(v.clone())));
            meta.push(RuleMeta {
                name: v.name.clone(),
                kind: RuleKind::Voice,
                severity: v.severity,
                outputs: routed(&v.outputs, v.severity),
            });
        }
        for k in &board.rules.keyword {
            audio.push((meta.len(), AudioRule::Keyword(k.clone())));
            meta.push(RuleMeta {
                name: k.name.clone(),
                kind: RuleKind::Keyword,
                severity: k.severity,
                outputs: routed(&k.outputs, k.severity),
            });
        }
        // Last: fusion rules name the rules above.
        let inputs = meta.len();
        let mut fusion = Vec::new();
        for f in &board.rules.fusion {
            let index = |name: &String| meta[..inputs].iter().position(|m| &m.name == name);
            let rules = f.all_of.iter().filter_map(index).collect();
            fusion.push(fusion::FusionSpec::new(meta.len(), rules, f.within_s));
            meta.push(RuleMeta {
                name: f.name.clone(),
                kind: RuleKind::Fusion,
                severity: f.severity,
                outputs: routed(&f.outputs, f.severity),
            });
        }
        Ok(Self {
            meta: meta.into(),
            camera_blind,
            loop_stalled,
            zones,
            downs,
            obstructed,
            crowds,
            collisions,
            audio,
            fusion: fusion.into(),
        })
    }

    /// Every rule's metadata, indexed by [`Alert::rule`].
    pub fn metas(&self) -> &[RuleMeta] {
        &self.meta
    }

    /// The same, shared with the output thread without copying.
    pub fn shared_metas(&self) -> Arc<[RuleMeta]> {
        self.meta.clone()
    }

    /// Audio rules with their indexes, for the microphone thread.
    pub fn audio(&self) -> &[(usize, AudioRule)] {
        &self.audio
    }

    /// Fusion rules, for the output thread.
    pub fn fusion(&self) -> Arc<[fusion::FusionSpec]> {
        self.fusion.clone()
    }

    /// Indexes of the loop's own alarms: (camera blind, loop stalled).
    pub fn alarms(&self) -> (usize, usize) {
        (self.camera_blind, self.loop_stalled)
    }

    /// Clears every alert these rules hold raised, appending the `Cleared` alerts: the rule set
    /// is being replaced, and an output latched by it must not stay on for a rule that is gone.
    pub fn clear_all(&mut self, alerts: &mut Vec<Alert>) {
        for z in &mut self.zones {
            z.clear_all(alerts);
        }
        for d in &mut self.downs {
            d.clear_all(alerts);
        }
        for o in &mut self.obstructed {
            o.clear_all(alerts);
        }
        for c in &mut self.crowds {
            c.clear_all(alerts);
        }
        for c in &mut self.collisions {
            c.clear_all(alerts);
        }
    }

    /// Evaluates every rule on one frame, appending alerts.
    pub fn evaluate(&mut self, scene: &Scene<'_>, alerts: &mut Vec<Alert>) {
        for z in &mut self.zones {
            z.evaluate(scene, alerts);
        }
        for c in &mut self.crowds {
            c.evaluate(scene, alerts);
        }
        for c in &mut self.collisions {
            c.evaluate(scene, alerts);
        }
        if let Some(poses) = scene.poses {
            for d in &mut self.downs {
                d.evaluate(scene.ts, poses, alerts);
            }
        }
        if let Some(luma) = scene.luma {
            for o in &mut self.obstructed {
                o.evaluate(scene.ts, luma, alerts);
            }
        }
    }
}

/// Rules from an accepted rule pack, built off the loop and waiting to be swapped in.
pub struct RulesUpdate {
    pub version: u64,
    pub rules: RuleSet,
    /// A copy of the audio rules for the microphone thread, made here so the loop need not.
    pub audio: Vec<(usize, AudioRule)>,
}

impl RulesUpdate {
    pub fn new(board: &Board, version: u64) -> Result<Self, crate::geometry::PolygonError> {
        let rules = RuleSet::new(board)?;
        let audio = rules.audio().to_vec();
        Ok(Self { version, rules, audio })
    }
}

/// A one-place mailbox between a thread that builds something and one that must never wait
/// for it: the newest post wins, and the taker only ever tries the lock.
pub struct Mailbox<T> {
    slot: Mutex<Option<T>>,
}

impl<T> Default for Mailbox<T> {
    fn default() -> Self {
        Self { slot: Mutex::new(None) }
    }
}

impl<T> Mailbox<T> {
    pub fn post(&self, item: T) {
        // A poisoned lock only means a taker panicked; the slot itself is still sound.
        *self.slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(item);
    }

    /// What was posted, if anything and if the lock is free right now.
    pub fn take(&self) -> Option<T> {
        match self.slot.try_lock() {
            Ok(mut g) => g.take(),
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner().take(),
            Err(std::sync::TryLockError::WouldBlock) => None,
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

    /// State of `track` if it is kept, without marking it seen.
    pub fn peek(&self, track: u32) -> Option<&S> {
        self.items.iter().find(|(t, _, _)| *t == track).map(|(_, _, s)| s)
    }

    /// Clears every track whose `active` flag is set, appending a `Cleared` alert of `rule` for
    /// each: the rule is being replaced.
    pub fn clear_active(
        &mut self,
        rule: usize,
        alerts: &mut Vec<Alert>,
        active: impl Fn(&mut S) -> &mut bool,
    ) {
        for (track, _, s) in &mut self.items {
            let flag = active(s);
            if *flag {
                *flag = false;
                alerts.push(Alert { rule, state: AlertState::Cleared, track: *track, at: Point::default() });
            }
        }
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
