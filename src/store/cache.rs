//! Recent alerts in memory, for rules that must know what already fired: debounce, and "is
//! this the same player still down?" when the tracker gave them a new id.
//!
//! A fixed ring allocated once; lookups scan newest first, which for the few hundred alerts a
//! match produces in minutes is far faster than any query against the disk store.

use crate::clock::MonoTime;
use crate::geometry::Point;
use crate::rules::AlertState;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Recent {
    pub rule: usize,
    pub track: u32,
    pub state: AlertState,
    pub at: Point,
    pub ts: MonoTime,
}

pub struct RecentAlerts {
    ring: Vec<Recent>,
    /// Where the next entry goes.
    head: usize,
    len: usize,
}

impl RecentAlerts {
    pub fn with_capacity(capacity: usize) -> Self {
        let empty = Recent {
            rule: usize::MAX,
            track: 0,
            state: AlertState::Cleared,
            at: Point { x: 0.0, y: 0.0 },
            ts: MonoTime::from_nanos(0),
        };
        Self { ring: vec![empty; capacity.max(1)], head: 0, len: 0 }
    }

    /// Remembers an alert, forgetting the oldest when full. Never allocates.
    pub fn push(&mut self, r: Recent) {
        self.ring[self.head] = r;
        self.head = (self.head + 1) % self.ring.len();
        self.len = (self.len + 1).min(self.ring.len());
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Newest first.
    pub fn iter(&self) -> impl Iterator<Item = &Recent> {
        let n = self.ring.len();
        (1..=self.len).map(move |i| &self.ring[(self.head + n - i) % n])
    }

    /// The latest entry of `rule` for `track`.
    pub fn last(&self, rule: usize, track: u32) -> Option<&Recent> {
        self.iter().find(|r| r.rule == rule && r.track == track)
    }

    /// An alert of `rule` for a track other than `track`, raised within `radius` pixels of `at`
    /// no earlier than `since`, and not cleared since: likely the same person, whom the tracker
    /// has given a new id.
    pub fn raised_near(
        &self,
        rule: usize,
        track: u32,
        at: Point,
        radius: f32,
        since: MonoTime,
    ) -> Option<&Recent> {
        let r2 = radius * radius;
        self.iter().take_while(|r| r.ts >= since).find(|r| {
            let (dx, dy) = (r.at.x - at.x, r.at.y - at.y);
            r.rule == rule
                && r.track != track
                && r.state == AlertState::Raised
                && dx * dx + dy * dy <= r2
                && self.last(rule, r.track).is_some_and(|l| l.state == AlertState::Raised)
        })
    }

    /// Forgets everything (the rule indexes changed).
    pub fn clear(&mut self) {
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> MonoTime {
        MonoTime::from_nanos(ms * 1_000_000)
    }

    fn alert(rule: usize, track: u32, state: AlertState, x: f32, ms: u64) -> Recent {
        Recent { rule, track, state, at: Point { x, y: 100.0 }, ts: at(ms) }
    }

    #[test]
    fn ring_keeps_the_newest() {
        let mut c = RecentAlerts::with_capacity(3);
        for i in 0..5 {
            c.push(alert(0, i, AlertState::Raised, 0.0, i as u64));
        }
        assert_eq!(c.len(), 3);
        assert_eq!(c.iter().map(|r| r.track).collect::<Vec<_>>(), vec![4, 3, 2]);
        assert!(c.last(0, 1).is_none());
        assert_eq!(c.last(0, 3).unwrap().track, 3);
    }

    #[test]
    fn raised_near_finds_the_same_player_under_a_new_id() {
        let mut c = RecentAlerts::with_capacity(16);
        c.push(alert(1, 7, AlertState::Raised, 200.0, 1000));
        c.push(alert(0, 9, AlertState::Raised, 205.0, 1100)); // another rule
        let near = Point { x: 210.0, y: 100.0 };
        assert_eq!(c.raised_near(1, 8, near, 30.0, at(500)).unwrap().track, 7);
        assert!(c.raised_near(1, 7, near, 30.0, at(500)).is_none(), "its own track is not another");
        assert!(c.raised_near(1, 8, Point { x: 300.0, y: 100.0 }, 30.0, at(500)).is_none(), "too far");
        assert!(c.raised_near(1, 8, near, 30.0, at(1050)).is_none(), "too old");
        c.push(alert(1, 7, AlertState::Cleared, 200.0, 1200));
        assert!(c.raised_near(1, 8, near, 30.0, at(500)).is_none(), "got up");
        c.push(alert(1, 3, AlertState::Raised, 200.0, 1300));
        c.clear();
        assert!(c.is_empty() && c.raised_near(1, 8, near, 30.0, at(0)).is_none());
    }
}
