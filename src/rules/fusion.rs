//! Fusion: alerts of other rules meeting make an alert of their own.
//!
//! A referee's whistle a few seconds before or after a player goes down is a medic call. The
//! rules that see each (the microphone thread, the decision loop) run apart, so fusion runs
//! where every alert passes: the output thread. Each fusion rule watches the alerts of the rules
//! it names; when one is raised and every other named rule is still raised, or was raised
//! within `within_s` of it (either order: a player-down alert comes `min_down_s` after the fall,
//! often after the whistle), the fused alert is raised, once per episode. It clears when none of
//! the named rules holds an alert raised any more.
//!
//! Times are capture times (of the frame or audio chunk behind each alert), on the one
//! monotonic clock, so the order alerts reach the output thread in does not matter.

use std::time::Duration;

use super::{Alert, AlertState};
use crate::clock::MonoTime;
use crate::geometry::Point;

/// One fusion rule, resolved to rule indexes.
#[derive(Clone, Debug, PartialEq)]
pub struct FusionSpec {
    /// Index of the fused rule.
    pub rule: usize,
    /// Indexes of the rules that must meet.
    pub inputs: Vec<usize>,
    pub within: Duration,
}

impl FusionSpec {
    pub fn new(rule: usize, inputs: Vec<usize>, within_s: f32) -> Self {
        Self { rule, inputs, within: Duration::from_secs_f32(within_s.max(0.0)) }
    }
}

/// What one input rule has done lately.
#[derive(Clone, Debug, Default)]
struct Input {
    /// Tracks with an alert of this rule raised now (a handful at most).
    raised: Vec<u32>,
    /// The latest raise: when, of which track, where.
    last: Option<(MonoTime, u32, Point)>,
}

/// The state of one fusion rule.
#[derive(Clone, Debug)]
pub struct Fusion {
    spec: FusionSpec,
    inputs: Vec<Input>,
    raised: bool,
    /// Track of the fused alert while raised (the first input's with a track, e.g. the player).
    track: u32,
}

impl Fusion {
    pub fn new(spec: FusionSpec) -> Self {
        let inputs =
            spec.inputs.iter().map(|_| Input { raised: Vec::with_capacity(8), last: None }).collect();
        Self { spec, inputs, raised: false, track: 0 }
    }

    pub fn spec(&self) -> &FusionSpec {
        &self.spec
    }

    /// Takes one alert of any rule, captured at `at`; appends the fused rule's raise or clear.
    pub fn observe(&mut self, alert: &Alert, at: MonoTime, out: &mut Vec<Alert>) {
        let Some(i) = self.spec.inputs.iter().position(|&r| r == alert.rule) else { return };
        let input = &mut self.inputs[i];
        match alert.state {
            AlertState::Raised => {
                if !input.raised.contains(&alert.track) {
                    input.raised.push(alert.track);
                }
                input.last = Some((at, alert.track, alert.at));
                if !self.raised && self.inputs.iter().all(|inp| live(inp, at, self.spec.within)) {
                    // The first input that names a track and a place (a player) locates it.
                    let (track, place) = self
                        .inputs
                        .iter()
                        .filter_map(|inp| inp.last.map(|(_, t, p)| (t, p)))
                        .find(|&(t, _)| t != 0)
                        .unwrap_or((0, Point::default()));
                    self.raised = true;
                    self.track = track;
                    out.push(Alert { rule: self.spec.rule, state: AlertState::Raised, track, at: place });
                }
            }
            AlertState::Cleared => {
                input.raised.retain(|&t| t != alert.track);
                if self.raised && self.inputs.iter().all(|inp| inp.raised.is_empty()) {
                    self.raised = false;
                    out.push(Alert {
                        rule: self.spec.rule,
                        state: AlertState::Cleared,
                        track: self.track,
                        at: Point::default(),
                    });
                }
            }
        }
    }

    /// Clears the fused alert if raised, appending the `Cleared`: the rules are being replaced.
    pub fn clear_all(&mut self, out: &mut Vec<Alert>) {
        if self.raised {
            self.raised = false;
            out.push(Alert {
                rule: self.spec.rule,
                state: AlertState::Cleared,
                track: self.track,
                at: Point::default(),
            });
        }
        for inp in &mut self.inputs {
            inp.raised.clear();
            inp.last = None;
        }
    }

    pub fn raised(&self) -> bool {
        self.raised
    }
}

/// Raised now, or raised within `within` of `at` (before or after: alerts of different
/// threads reach fusion slightly out of capture order).
fn live(input: &Input, at: MonoTime, within: Duration) -> bool {
    !input.raised.is_empty()
        || input.last.is_some_and(|(t, _, _)| {
            let gap = if at >= t { at.since(t) } else { t.since(at) };
            gap <= within
        })
}

/// Every fusion rule of one rule set.
#[derive(Clone, Debug, Default)]
pub struct FusionSet {
    rules: Vec<Fusion>,
}

impl FusionSet {
    pub fn new(specs: &[FusionSpec]) -> Self {
        Self { rules: specs.iter().cloned().map(Fusion::new).collect() }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Takes one alert; appends the fused alerts it raises or clears.
    pub fn observe(&mut self, alert: &Alert, at: MonoTime, out: &mut Vec<Alert>) {
        for f in &mut self.rules {
            f.observe(alert, at, out);
        }
    }

    pub fn clear_all(&mut self, out: &mut Vec<Alert>) {
        for f in &mut self.rules {
            f.clear_all(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOWN: usize = 3;
    const WHISTLE: usize = 4;
    const MEDIC: usize = 5;

    fn at(s: f64) -> MonoTime {
        MonoTime::from_nanos((100.0e9 + s * 1e9) as u64)
    }

    fn alert(rule: usize, state: AlertState, track: u32) -> Alert {
        Alert { rule, state, track, at: Point { x: track as f32, y: 1.0 } }
    }

    /// Feeds (time s, rule, state, track); returns (time s, state, track) of medic alerts.
    fn run(events: &[(f64, usize, AlertState, u32)]) -> Vec<(f64, AlertState, u32)> {
        let mut f = FusionSet::new(&[FusionSpec::new(MEDIC, vec![DOWN, WHISTLE], 5.0)]);
        let mut out = Vec::new();
        let mut got = Vec::new();
        for &(t, rule, state, track) in events {
            out.clear();
            f.observe(&alert(rule, state, track), at(t), &mut out);
            got.extend(out.iter().map(|a| {
                assert_eq!(a.rule, MEDIC);
                (t, a.state, a.track)
            }));
        }
        got
    }

    use AlertState::{Cleared as C, Raised as R};

    #[test]
    fn a_whistle_while_a_player_is_down_is_a_medic_alert_once() {
        let got = run(&[
            (10.0, DOWN, R, 7),
            (12.0, WHISTLE, R, 0),
            (12.8, WHISTLE, C, 0),
            (14.0, WHISTLE, R, 0), // a second whistle in the same episode
            (14.5, WHISTLE, C, 0),
            (30.0, DOWN, C, 7),
        ]);
        assert_eq!(got, vec![(12.0, R, 7), (30.0, C, 7)], "raised once, cleared when all clear");
    }

    #[test]
    fn either_order_within_the_window_and_not_beyond() {
        // Whistle first, the player-down alert (which waits min_down_s) 3 s later.
        let got =
            run(&[(10.0, WHISTLE, R, 0), (10.6, WHISTLE, C, 0), (13.0, DOWN, R, 2), (20.0, DOWN, C, 2)]);
        assert_eq!(got, vec![(13.0, R, 2), (20.0, C, 2)]);
        // Too far apart: nothing.
        let got =
            run(&[(10.0, WHISTLE, R, 0), (10.6, WHISTLE, C, 0), (16.0, DOWN, R, 2), (20.0, DOWN, C, 2)]);
        assert!(got.is_empty(), "{got:?}");
        // A whistle long after the player got up: nothing.
        let got = run(&[(10.0, DOWN, R, 2), (12.0, DOWN, C, 2), (30.0, WHISTLE, R, 0)]);
        assert!(got.is_empty(), "{got:?}");
        // Other rules are ignored.
        let got = run(&[(10.0, 9, R, 2), (10.5, WHISTLE, R, 0)]);
        assert!(got.is_empty(), "{got:?}");
    }

    #[test]
    fn a_new_episode_after_everything_cleared_raises_again() {
        let got = run(&[
            (10.0, DOWN, R, 1),
            (11.0, WHISTLE, R, 0),
            (11.5, WHISTLE, C, 0),
            (20.0, DOWN, C, 1),
            (100.0, DOWN, R, 4),
            (101.0, WHISTLE, R, 0),
            (101.4, WHISTLE, C, 0),
        ]);
        assert_eq!(got, vec![(11.0, R, 1), (20.0, C, 1), (101.0, R, 4)]);
    }

    #[test]
    fn two_players_down_clear_only_when_both_are_up() {
        let got = run(&[
            (10.0, DOWN, R, 1),
            (10.5, DOWN, R, 2),
            (11.0, WHISTLE, R, 0),
            (11.5, WHISTLE, C, 0),
            (20.0, DOWN, C, 1),
            (25.0, DOWN, C, 2),
        ]);
        assert_eq!(got, vec![(11.0, R, 2), (25.0, C, 2)], "located at the latest player down");
    }

    #[test]
    fn a_rule_swap_clears_a_raised_fusion() {
        let mut f = FusionSet::new(&[FusionSpec::new(MEDIC, vec![DOWN, WHISTLE], 5.0)]);
        let mut out = Vec::new();
        f.observe(&alert(DOWN, R, 1), at(1.0), &mut out);
        f.observe(&alert(WHISTLE, R, 0), at(2.0), &mut out);
        assert_eq!(out.len(), 1);
        out.clear();
        f.clear_all(&mut out);
        assert_eq!(out, vec![Alert { rule: MEDIC, state: C, track: 1, at: Point::default() }]);
    }
}
