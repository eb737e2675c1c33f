//! Zone incursion: a tracked object's ground point inside a polygon for N consecutive frames.
//! Consecutive frames, not one, so a box jittering across the boundary does not fire.

use std::time::Duration;

use super::{Alert, AlertState, Scene, TrackStates};
use crate::clock::MonoTime;
use crate::config::ZoneIncursion;
use crate::geometry::{Polygon, PolygonError};
use crate::infer::coco;

#[derive(Debug, Default)]
struct State {
    inside_frames: u32,
    active: bool,
    last_raised: Option<MonoTime>,
}

pub struct ZoneRule {
    index: usize,
    polygon: Polygon,
    classes: Vec<u16>,
    min_frames: u32,
    cooldown: Duration,
    states: TrackStates<State>,
}

/// How long a vanished track's state is kept, so a short occlusion does not re-arm the rule.
const FORGET_AFTER: Duration = Duration::from_secs(5);

impl ZoneRule {
    pub fn new(index: usize, cfg: &ZoneIncursion) -> Result<Self, PolygonError> {
        Ok(Self {
            index,
            polygon: Polygon::new(&cfg.polygon)?,
            classes: cfg.classes.iter().filter_map(|c| coco::class_id(c)).collect(),
            min_frames: cfg.min_frames.max(1),
            cooldown: Duration::from_secs_f32(cfg.cooldown_s.max(0.0)),
            states: TrackStates::new(),
        })
    }

    pub fn evaluate(&mut self, scene: &Scene<'_>, alerts: &mut Vec<Alert>) {
        for obj in scene.objects.iter().filter(|o| self.classes.contains(&o.class)) {
            let foot = obj.bbox.foot();
            let s = self.states.get(obj.track, scene.ts);
            if self.polygon.contains(foot) {
                s.inside_frames = s.inside_frames.saturating_add(1);
                let cooled = s.last_raised.is_none_or(|t| scene.ts.since(t) >= self.cooldown);
                if s.inside_frames >= self.min_frames && !s.active && cooled {
                    s.active = true;
                    s.last_raised = Some(scene.ts);
                    alerts.push(Alert {
                        rule: self.index,
                        state: AlertState::Raised,
                        track: obj.track,
                        at: foot,
                    });
                }
            } else {
                s.inside_frames = 0;
                if s.active {
                    s.active = false;
                    alerts.push(Alert {
                        rule: self.index,
                        state: AlertState::Cleared,
                        track: obj.track,
                        at: foot,
                    });
                }
            }
        }
        self.states.expire(scene.ts, FORGET_AFTER, |_, _| {});
    }

    /// Clears every raised alert (the rule is being replaced).
    pub fn clear_all(&mut self, alerts: &mut Vec<Alert>) {
        self.states.clear_active(self.index, alerts, |s| &mut s.active);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Severity;
    use crate::geometry::BBox;
    use crate::rules::Tracked;

    fn rule(min_frames: u32, cooldown_s: f32) -> ZoneRule {
        ZoneRule::new(
            0,
            &ZoneIncursion {
                name: "z".into(),
                polygon: vec![[100.0, 100.0], [200.0, 100.0], [200.0, 200.0], [100.0, 200.0]],
                classes: vec!["person".into()],
                min_frames,
                severity: Severity::Warning,
                outputs: vec!["log".into()],
                cooldown_s,
            },
        )
        .unwrap()
    }

    fn person(track: u32, foot_x: f32, foot_y: f32) -> Tracked {
        Tracked {
            track,
            class: 0,
            score: 0.9,
            bbox: BBox { x1: foot_x - 10.0, y1: foot_y - 60.0, x2: foot_x + 10.0, y2: foot_y },
        }
    }

    fn step(r: &mut ZoneRule, i: u64, objs: &[Tracked]) -> Vec<Alert> {
        let mut alerts = vec![];
        let scene = Scene {
            seq: i,
            ts: MonoTime::from_nanos(i * 100_000_000),
            objects: objs,
            carried: &[],
            coasting: &[],
            poses: None,
            luma: None,
        };
        r.evaluate(&scene, &mut alerts);
        alerts
    }

    #[test]
    fn replacing_the_rule_clears_what_it_raised() {
        let mut r = rule(1, 0.0);
        let a = step(&mut r, 0, &[person(1, 150.0, 150.0), person(2, 150.0, 250.0)]);
        assert_eq!((a.len(), a[0].state, a[0].track), (1, AlertState::Raised, 1));
        let mut cleared = vec![];
        r.clear_all(&mut cleared);
        assert_eq!(cleared.len(), 1, "only the raised track: {cleared:?}");
        assert_eq!((cleared[0].state, cleared[0].track), (AlertState::Cleared, 1));
        cleared.clear();
        r.clear_all(&mut cleared);
        assert!(cleared.is_empty());
    }

    #[test]
    fn fires_after_n_consecutive_frames_then_clears() {
        let mut r = rule(3, 0.0);
        // Only the foot point counts: a body inside with feet outside is not an incursion.
        assert!(step(&mut r, 0, &[person(1, 150.0, 250.0)]).is_empty());
        assert!(step(&mut r, 1, &[person(1, 150.0, 150.0)]).is_empty());
        assert!(step(&mut r, 2, &[person(1, 150.0, 150.0)]).is_empty());
        let a = step(&mut r, 3, &[person(1, 150.0, 150.0)]);
        assert_eq!(a.len(), 1);
        assert_eq!((a[0].state, a[0].track), (AlertState::Raised, 1));
        assert!(step(&mut r, 4, &[person(1, 150.0, 150.0)]).is_empty(), "fires once");
        let a = step(&mut r, 5, &[person(1, 300.0, 150.0)]);
        assert_eq!(a[0].state, AlertState::Cleared);
    }

    #[test]
    fn jitter_across_the_edge_and_other_classes_do_not_fire() {
        let mut r = rule(3, 0.0);
        for i in 0..20 {
            let x = if i % 2 == 0 { 195.0 } else { 205.0 };
            let mut ball = person(2, 150.0, 150.0);
            ball.class = 32;
            assert!(step(&mut r, i, &[person(1, x, 150.0), ball]).is_empty(), "frame {i}");
        }
    }

    #[test]
    fn cooldown_holds_back_a_quick_reentry() {
        let mut r = rule(1, 2.0);
        assert_eq!(step(&mut r, 0, &[person(1, 150.0, 150.0)]).len(), 1);
        assert_eq!(step(&mut r, 1, &[person(1, 300.0, 150.0)]).len(), 1); // cleared
        assert!(step(&mut r, 2, &[person(1, 150.0, 150.0)]).is_empty(), "within 2 s");
        assert!(step(&mut r, 3, &[person(1, 300.0, 150.0)]).is_empty());
        let a = step(&mut r, 25, &[person(1, 150.0, 150.0)]);
        assert_eq!(a[0].state, AlertState::Raised);
    }
}
