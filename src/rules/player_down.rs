//! Player down: a person lying (torso near horizontal, hips near the ground) and staying still
//! for T seconds. Getting up clears it; rolling or crawling restarts the clock.
//!
//! Works on 2-D keypoints from a fixed, elevated camera. Every length is measured in torso
//! lengths, so the thresholds hold for near and far players alike.

use std::time::Duration;

use super::{Alert, AlertState, TrackStates, TrackedPose};
use crate::clock::MonoTime;
use crate::config::PlayerDown;
use crate::geometry::Point;
use crate::infer::pose::{kp, Pose};

/// What the keypoints say about posture.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Posture {
    /// Lying: hip centre and torso length, for the stillness check.
    Down {
        hip: Point,
        torso: f32,
    },
    Up,
    /// Too few confident keypoints to say.
    Unknown,
}

#[derive(Clone, Copy, Debug)]
pub struct PostureLimits {
    pub keypoint_threshold: f32,
    pub max_torso_angle_deg: f32,
    pub max_hip_height: f32,
}

impl PostureLimits {
    pub fn new(keypoint_threshold: f32, max_torso_angle_deg: f32, max_hip_height: f32) -> Self {
        Self { keypoint_threshold, max_torso_angle_deg, max_hip_height }
    }
}

fn mean_of(pose: &Pose, a: usize, b: usize, thr: f32) -> Option<Point> {
    let (ka, kb) = (pose.keypoints[a], pose.keypoints[b]);
    match (ka.score >= thr, kb.score >= thr) {
        (true, true) => Some(Point { x: (ka.x + kb.x) * 0.5, y: (ka.y + kb.y) * 0.5 }),
        (true, false) => Some(Point { x: ka.x, y: ka.y }),
        (false, true) => Some(Point { x: kb.x, y: kb.y }),
        (false, false) => None,
    }
}

pub fn posture(pose: &Pose, lim: &PostureLimits) -> Posture {
    let thr = lim.keypoint_threshold;
    let (Some(sh), Some(hip)) =
        (mean_of(pose, kp::L_SHOULDER, kp::R_SHOULDER, thr), mean_of(pose, kp::L_HIP, kp::R_HIP, thr))
    else {
        return Posture::Unknown;
    };
    let (dx, dy) = (sh.x - hip.x, sh.y - hip.y);
    let torso = (dx * dx + dy * dy).sqrt();
    if torso < 2.0 {
        return Posture::Unknown;
    }
    let angle = dy.abs().atan2(dx.abs()).to_degrees();
    // Image y grows downwards: the lowest keypoint has the largest y.
    let lowest = pose.keypoints.iter().filter(|k| k.score >= thr).map(|k| k.y).fold(hip.y, f32::max);
    let hip_height = (lowest - hip.y) / torso;
    if angle <= lim.max_torso_angle_deg && hip_height <= lim.max_hip_height {
        Posture::Down { hip, torso }
    } else {
        Posture::Up
    }
}

#[derive(Debug, Default)]
struct State {
    /// Since when, and from where, the player has been down and still.
    down_since: Option<(MonoTime, Point)>,
    active: bool,
    last_raised: Option<MonoTime>,
}

pub struct PlayerDownRule {
    index: usize,
    limits: PostureLimits,
    min_down: Duration,
    max_motion: f32,
    cooldown: Duration,
    states: TrackStates<State>,
}

/// A lying player may drop out of detection for a while; keep the episode that long.
const FORGET_AFTER: Duration = Duration::from_secs(10);

impl PlayerDownRule {
    pub fn new(index: usize, cfg: &PlayerDown, keypoint_threshold: f32) -> Self {
        Self {
            index,
            limits: PostureLimits::new(keypoint_threshold, cfg.max_torso_angle_deg, cfg.max_hip_height),
            min_down: Duration::from_secs_f32(cfg.min_down_s.max(0.0)),
            max_motion: cfg.max_motion,
            cooldown: Duration::from_secs_f32(cfg.cooldown_s.max(0.0)),
            states: TrackStates::new(),
        }
    }

    pub fn evaluate(&mut self, ts: MonoTime, poses: &[TrackedPose], alerts: &mut Vec<Alert>) {
        for tp in poses {
            let s = self.states.get(tp.track, ts);
            match posture(&tp.pose, &self.limits) {
                Posture::Down { hip, torso } => {
                    let since = match s.down_since {
                        Some((t0, anchor)) if dist(hip, anchor) <= self.max_motion * torso => t0,
                        // Just went down, or moved too much to count as still: restart.
                        _ => {
                            s.down_since = Some((ts, hip));
                            ts
                        }
                    };
                    let cooled = s.last_raised.is_none_or(|t| ts.since(t) >= self.cooldown);
                    if !s.active && cooled && ts.since(since) >= self.min_down {
                        s.active = true;
                        s.last_raised = Some(ts);
                        alerts.push(Alert {
                            rule: self.index,
                            state: AlertState::Raised,
                            track: tp.track,
                            at: hip,
                        });
                    }
                }
                Posture::Up => {
                    s.down_since = None;
                    if s.active {
                        s.active = false;
                        let c = tp.pose.bbox.center();
                        alerts.push(Alert {
                            rule: self.index,
                            state: AlertState::Cleared,
                            track: tp.track,
                            at: c,
                        });
                    }
                }
                // Not enough evidence either way: keep the clock as it is.
                Posture::Unknown => {}
            }
        }
        self.states.expire(ts, FORGET_AFTER, |_, _| {});
    }

    /// Clears every raised alert (the rule is being replaced).
    pub fn clear_all(&mut self, alerts: &mut Vec<Alert>) {
        self.states.clear_active(self.index, alerts, |s| &mut s.active);
    }
}

fn dist(a: Point, b: Point) -> f32 {
    ((a.x - b.x).powi(2) + (a.y - b.y).powi(2)).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Severity;
    use crate::geometry::BBox;
    use crate::infer::pose::{Keypoint, KEYPOINTS};

    /// A stick figure: shoulders, hips, knees and ankles along a line from (x, y) at `angle`
    /// degrees from horizontal, 40 px of torso.
    pub(crate) fn figure(x: f32, y: f32, angle_deg: f32) -> Pose {
        let (s, c) = angle_deg.to_radians().sin_cos();
        let at = |d: f32| Keypoint { x: x + c * d, y: y + s * d, score: 0.9 };
        let mut k = [Keypoint { x, y, score: 0.0 }; KEYPOINTS];
        k[kp::NOSE] = at(-15.0);
        k[kp::L_SHOULDER] = at(0.0);
        k[kp::R_SHOULDER] = at(0.0);
        k[kp::L_HIP] = at(40.0);
        k[kp::R_HIP] = at(40.0);
        k[13] = at(65.0);
        k[14] = at(65.0);
        k[kp::L_ANKLE] = at(90.0);
        k[kp::R_ANKLE] = at(90.0);
        Pose {
            score: 0.8,
            bbox: BBox { x1: x - 50.0, y1: y - 50.0, x2: x + 100.0, y2: y + 100.0 },
            keypoints: k,
        }
    }

    fn rule() -> PlayerDownRule {
        PlayerDownRule::new(
            0,
            &PlayerDown {
                name: "down".into(),
                min_down_s: 3.0,
                max_torso_angle_deg: 35.0,
                max_hip_height: 0.6,
                max_motion: 0.5,
                severity: Severity::Critical,
                outputs: vec!["log".into()],
                cooldown_s: 0.0,
            },
            0.3,
        )
    }

    /// Runs `poses(t)` at 10 fps for `secs`, returning (time, state) of each alert.
    fn play(
        r: &mut PlayerDownRule,
        secs: f32,
        t0: f32,
        pose: impl Fn(f32) -> Pose,
    ) -> Vec<(f32, AlertState)> {
        let mut out = vec![];
        let mut alerts = vec![];
        for i in 0..(secs * 10.0) as u32 {
            let t = t0 + i as f32 / 10.0;
            alerts.clear();
            r.evaluate(
                MonoTime::from_nanos((t * 1e9) as u64),
                &[TrackedPose { track: 7, pose: pose(t) }],
                &mut alerts,
            );
            out.extend(alerts.iter().map(|a| (t, a.state)));
        }
        out
    }

    #[test]
    fn posture_classification() {
        let lim = PostureLimits { keypoint_threshold: 0.3, max_torso_angle_deg: 35.0, max_hip_height: 0.6 };
        assert!(matches!(posture(&figure(100.0, 100.0, 0.0), &lim), Posture::Down { .. }));
        assert!(matches!(posture(&figure(100.0, 100.0, 180.0 - 20.0), &lim), Posture::Down { .. }));
        assert_eq!(posture(&figure(100.0, 100.0, 90.0), &lim), Posture::Up, "standing");
        assert_eq!(posture(&figure(100.0, 100.0, 60.0), &lim), Posture::Up, "leaning");
        let mut blind = figure(100.0, 100.0, 0.0);
        blind.keypoints[kp::L_HIP].score = 0.1;
        blind.keypoints[kp::R_HIP].score = 0.1;
        assert_eq!(posture(&blind, &lim), Posture::Unknown);
    }

    #[test]
    fn fires_after_t_seconds_down_and_clears_when_up() {
        let mut r = rule();
        let a = play(&mut r, 6.0, 0.0, |t| figure(100.0, 100.0, if t < 1.0 { 90.0 } else { 5.0 }));
        assert_eq!(a.len(), 1, "{a:?}");
        assert!((a[0].0 - 4.0).abs() < 0.05 && a[0].1 == AlertState::Raised, "{a:?}");
        let a = play(&mut r, 1.0, 6.0, |_| figure(100.0, 100.0, 90.0));
        assert_eq!(a, vec![(6.0, AlertState::Cleared)]);
    }

    #[test]
    fn does_not_fire_for_a_short_fall_or_a_rolling_player() {
        let mut r = rule();
        // Down for 2.5 s, then up: a tackle, not an injury.
        let a = play(&mut r, 6.0, 0.0, |t| figure(100.0, 100.0, if t < 2.5 { 0.0 } else { 90.0 }));
        assert!(a.is_empty(), "{a:?}");
        // Lying but moving 30 px/s (0.75 torso/s): not still, never fires.
        let a = play(&mut r, 8.0, 10.0, |t| figure(100.0 + 30.0 * t, 100.0, 0.0));
        assert!(a.is_empty(), "{a:?}");
    }
}
