//! Crowding: more people inside a zone than it safely holds, for a while. Counting tracked
//! people's foot points makes it robust to one missed detection; requiring the count to hold
//! for `min_s` (both to raise and to clear) keeps it from flapping around the limit.

use std::time::Duration;

use super::{Alert, AlertState, Scene};
use crate::clock::MonoTime;
use crate::config::Crowding;
use crate::geometry::{Point, Polygon, PolygonError};
use crate::infer::coco;

pub struct CrowdingRule {
    index: usize,
    polygon: Polygon,
    max_people: usize,
    hold: Duration,
    /// Since when the count has been on the other side of the limit from `active`.
    since: Option<MonoTime>,
    active: bool,
    /// Where to report it: the zone's centre.
    at: Point,
}

impl CrowdingRule {
    pub fn new(index: usize, cfg: &Crowding) -> Result<Self, PolygonError> {
        let polygon = Polygon::new(&cfg.polygon)?;
        let n = cfg.polygon.len() as f32;
        let at = Point {
            x: cfg.polygon.iter().map(|p| p[0]).sum::<f32>() / n,
            y: cfg.polygon.iter().map(|p| p[1]).sum::<f32>() / n,
        };
        Ok(Self {
            index,
            polygon,
            max_people: cfg.max_people as usize,
            hold: Duration::from_secs_f32(cfg.min_s.max(0.0)),
            since: None,
            active: false,
            at,
        })
    }

    pub fn evaluate(&mut self, scene: &Scene<'_>, alerts: &mut Vec<Alert>) {
        let inside = scene
            .objects
            .iter()
            .filter(|o| o.class == coco::PERSON && self.polygon.contains(o.bbox.foot()))
            .count();
        let over = inside > self.max_people;
        if over == self.active {
            self.since = None;
            return;
        }
        let since = *self.since.get_or_insert(scene.ts);
        if scene.ts.since(since) >= self.hold {
            self.active = over;
            self.since = None;
            let state = if over { AlertState::Raised } else { AlertState::Cleared };
            alerts.push(Alert { rule: self.index, state, track: inside as u32, at: self.at });
        }
    }

    pub fn clear_all(&mut self, alerts: &mut Vec<Alert>) {
        if self.active {
            self.active = false;
            alerts.push(Alert { rule: self.index, state: AlertState::Cleared, track: 0, at: self.at });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Severity;
    use crate::geometry::BBox;
    use crate::rules::Tracked;

    fn person(track: u32, x: f32, y: f32) -> Tracked {
        Tracked {
            track,
            class: coco::PERSON,
            score: 0.9,
            bbox: BBox { x1: x - 8.0, y1: y - 50.0, x2: x + 8.0, y2: y },
        }
    }

    fn step(r: &mut CrowdingRule, ms: u64, objs: &[Tracked]) -> Vec<Alert> {
        let mut alerts = vec![];
        let ts = MonoTime::from_nanos(ms * 1_000_000);
        r.evaluate(&Scene { seq: ms, ts, objects: objs, poses: None, luma: None }, &mut alerts);
        alerts
    }

    #[test]
    fn raises_when_the_zone_stays_over_its_limit_and_clears_when_it_empties() {
        let cfg = Crowding {
            name: "touchline".into(),
            polygon: vec![[0.0, 0.0], [100.0, 0.0], [100.0, 100.0], [0.0, 100.0]],
            max_people: 2,
            min_s: 1.0,
            severity: Severity::Warning,
            outputs: vec![],
        };
        let mut r = CrowdingRule::new(4, &cfg).unwrap();
        let three = [person(1, 10.0, 50.0), person(2, 50.0, 50.0), person(3, 90.0, 90.0)];
        // Two inside and one whose feet are outside: not a crowd.
        let two_in = [person(1, 10.0, 50.0), person(2, 50.0, 50.0), person(3, 90.0, 150.0)];
        assert!(step(&mut r, 0, &two_in).is_empty());
        assert!(step(&mut r, 100, &three).is_empty());
        assert!(step(&mut r, 600, &three).is_empty(), "not for min_s yet");
        assert!(step(&mut r, 700, &two_in).is_empty(), "a dip restarts the clock");
        assert!(step(&mut r, 800, &three).is_empty());
        let a = step(&mut r, 1800, &three);
        assert_eq!((a.len(), a[0].rule, a[0].state, a[0].track), (1, 4, AlertState::Raised, 3));
        assert!(step(&mut r, 1900, &three).is_empty(), "raised once");
        assert!(step(&mut r, 2000, &two_in).is_empty(), "clears only after min_s too");
        let a = step(&mut r, 3000, &two_in);
        assert_eq!(a[0].state, AlertState::Cleared);
        // Other classes do not count.
        let mut balls = three;
        balls.iter_mut().for_each(|o| o.class = 37);
        assert!(step(&mut r, 4000, &balls).is_empty() && step(&mut r, 6000, &balls).is_empty());
    }
}
