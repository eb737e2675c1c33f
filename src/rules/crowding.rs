//! Crowding: more people inside a zone than it safely holds, for a while. The count (people's
//! foot points inside) must hold for `min_s`, both to raise and to clear, so the alert does not
//! flap around the limit; a dip shorter than `max_gap_s` does not restart that clock, because
//! in a crowd the detector loses someone behind someone else for a frame or two.

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
    gap: Duration,
    /// Since when the count has been on the other side of the limit from `active`.
    since: Option<MonoTime>,
    /// The last frame the count was on that side.
    last: MonoTime,
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
            gap: Duration::from_secs_f32(cfg.max_gap_s.max(0.0)),
            since: None,
            last: MonoTime::default(),
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
            if scene.ts.since(self.last) > self.gap {
                self.since = None;
            }
            return;
        }
        self.last = scene.ts;
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
        r.evaluate(
            &Scene { seq: ms, ts, objects: objs, carried: &[], coasting: &[], poses: None, luma: None },
            &mut alerts,
        );
        alerts
    }

    #[test]
    fn raises_when_the_zone_stays_over_its_limit_and_clears_when_it_empties() {
        let cfg = Crowding {
            name: "touchline".into(),
            polygon: vec![[0.0, 0.0], [100.0, 0.0], [100.0, 100.0], [0.0, 100.0]],
            max_people: 2,
            min_s: 1.0,
            max_gap_s: 0.3,
            severity: Severity::Warning,
            outputs: vec![],
        };
        let mut r = CrowdingRule::new(4, &cfg).unwrap();
        let three = [person(1, 10.0, 50.0), person(2, 50.0, 50.0), person(3, 90.0, 90.0)];
        // Two inside and one whose feet are outside: not a crowd.
        let two_in = [person(1, 10.0, 50.0), person(2, 50.0, 50.0), person(3, 90.0, 150.0)];
        // Frames every 100 ms from `from` up to `to`, inclusive.
        let frames = |r: &mut CrowdingRule, from: u64, to: u64, objs: &[Tracked]| -> Vec<Alert> {
            (from..=to).step_by(100).flat_map(|ms| step(r, ms, objs)).collect()
        };
        assert!(frames(&mut r, 0, 0, &two_in).is_empty());
        assert!(frames(&mut r, 100, 600, &three).is_empty(), "not for min_s yet");
        assert!(frames(&mut r, 700, 1100, &two_in).is_empty(), "a dip of 500 ms restarts the clock");
        assert!(frames(&mut r, 1200, 1500, &three).is_empty());
        assert!(frames(&mut r, 1600, 1700, &two_in).is_empty(), "a dip of 200 ms (a missed person) does not");
        assert!(frames(&mut r, 1800, 2100, &three).is_empty());
        let a = frames(&mut r, 2200, 2400, &three);
        assert_eq!(
            (a.len(), a[0].rule, a[0].state, a[0].track),
            (1, 4, AlertState::Raised, 3),
            "1 s after 1200"
        );
        assert!(frames(&mut r, 2500, 3000, &two_in).is_empty(), "clears only after min_s too");
        assert!(frames(&mut r, 3100, 3100, &three).is_empty(), "back over the limit for one frame");
        let a = frames(&mut r, 3200, 3600, &two_in);
        assert_eq!((a.len(), a[0].state), (1, AlertState::Cleared), "1 s after 2500: {a:?}");
        // Other classes do not count.
        let mut balls = three;
        balls.iter_mut().for_each(|o| o.class = 37);
        assert!(frames(&mut r, 4000, 6000, &balls).is_empty());
    }
}
