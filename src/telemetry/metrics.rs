//! Live numbers of the running device, for the metrics endpoint.
//!
//! The decision loop writes here on every frame, so everything it touches is preallocated and
//! lock-free: fixed-bucket histograms as arrays of atomics, counters and gauges. The HTTP thread
//! only loads them; it can be slow or wedged without the loop noticing. Alerts are counted by
//! rule name on the output thread, which owns the rule metadata (rule packs swap the rule set at
//! run time, so an index means nothing across a swap) and is off the hot path, so a small mutex
//! is fine there.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

use super::text::Writer;
use crate::clock::MonoTime;
use crate::rules::{AlertState, RuleMeta};

/// Upper bounds of the latency buckets, in microseconds: fine around the stage costs seen on a
/// Jetson and a PC (ms), coarse up to seconds for stalls. 33 ms and 100 ms are one frame at 30
/// and 10 fps.
pub const BOUNDS_US: [u64; 15] = [
    250, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 33_000, 50_000, 100_000, 200_000, 500_000, 1_000_000,
    2_000_000, 5_000_000,
];

/// A latency histogram with fixed buckets: one atomic per bucket plus one beyond the last bound.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative): `buckets[i]` counts those above bound `i-1`
    /// and at or below bound `i`; the last counts those above every bound.
    buckets: [AtomicU64; BOUNDS_US.len() + 1],
    sum_us: AtomicU64,
}

/// A consistent reading of a [`Histogram`].
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramSnapshot {
    /// Observations at or below each bound, then the total (`+Inf`).
    pub cumulative: Vec<u64>,
    pub sum_seconds: f64,
}

impl HistogramSnapshot {
    pub fn count(&self) -> u64 {
        self.cumulative.last().copied().unwrap_or(0)
    }
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let us = d.as_micros().min(u64::MAX as u128) as u64;
        let i = BOUNDS_US.partition_point(|&b| b < us);
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
    }

    /// The count is the sum of the buckets as read, so `+Inf` always equals the count even
    /// while the loop writes; only the sum may be a few observations ahead or behind.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut total = 0;
        let cumulative = self
            .buckets
            .iter()
            .map(|b| {
                total += b.load(Relaxed);
                total
            })
            .collect();
        HistogramSnapshot { cumulative, sum_seconds: self.sum_us.load(Relaxed) as f64 / 1e6 }
    }
}

/// The loop's stages, each with its own histogram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Frame arrival to the loop taking it.
    Queue,
    Preprocess,
    Detect,
    Pose,
    /// Tracking and rules.
    Rules,
    /// Handing alerts to the output thread.
    Output,
}

impl Stage {
    pub const ALL: [Stage; 6] =
        [Stage::Queue, Stage::Preprocess, Stage::Detect, Stage::Pose, Stage::Rules, Stage::Output];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Queue => "queue",
            Stage::Preprocess => "preprocess",
            Stage::Detect => "detect",
            Stage::Pose => "pose",
            Stage::Rules => "track_rules",
            Stage::Output => "output",
        }
    }
}

/// What the loop measured on one decided frame.
#[derive(Clone, Copy, Debug, Default)]
pub struct FrameSample {
    /// Per stage, in [`Stage::ALL`] order; `None` for a stage that did not run (pose).
    pub stages: [Option<Duration>; 6],
    /// Capture (or taking, unpaced) to decision out: what the deadline is about.
    pub age: Duration,
    pub missed: bool,
    pub decided: MonoTime,
    pub level: usize,
    // Run totals the loop keeps anyway; mirrored rather than counted twice.
    pub dropped_frames: u64,
    pub ladder_changes: u64,
    pub events_dropped: u64,
    pub alerts_dropped: u64,
}

/// Raises and clears of one rule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleAlerts {
    pub raised: u64,
    pub cleared: u64,
}

#[derive(Debug)]
pub struct Metrics {
    stages: [Histogram; 6],
    /// Stage budgets (µs, 0 = none) and the observations over them.
    budgets_us: [AtomicU64; 6],
    overruns: [AtomicU64; 6],
    frame_age: Histogram,
    /// Decision to outputs driven, on the output thread.
    alert_output: Histogram,
    deadline_us: AtomicU64,
    frames: AtomicU64,
    deadline_misses: AtomicU64,
    dropped_frames: AtomicU64,
    ladder_level: AtomicU64,
    ladder_changes: AtomicU64,
    events_dropped: AtomicU64,
    alerts_dropped: AtomicU64,
    output_failures: AtomicU64,
    /// Monotonic ns of the last decided frame; 0 before the first.
    last_decided_ns: AtomicU64,
    started: MonoTime,
    started_unix_s: f64,
    alerts: Mutex<BTreeMap<String, RuleAlerts>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Self {
            stages: Default::default(),
            budgets_us: Default::default(),
            overruns: Default::default(),
            frame_age: Histogram::default(),
            alert_output: Histogram::default(),
            deadline_us: AtomicU64::new(0),
            frames: AtomicU64::new(0),
            deadline_misses: AtomicU64::new(0),
            dropped_frames: AtomicU64::new(0),
            ladder_level: AtomicU64::new(0),
            ladder_changes: AtomicU64::new(0),
            events_dropped: AtomicU64::new(0),
            alerts_dropped: AtomicU64::new(0),
            output_failures: AtomicU64::new(0),
            last_decided_ns: AtomicU64::new(0),
            started: MonoTime::now(),
            started_unix_s: unix.as_secs_f64(),
            alerts: Mutex::new(BTreeMap::new()),
        }
    }

    /// The frame deadline and the per-stage budgets (in [`Stage::ALL`] order), before the loop.
    pub fn set_budgets(&self, deadline: Duration, stages: [Option<Duration>; 6]) {
        self.deadline_us.store(deadline.as_micros() as u64, Relaxed);
        for (slot, b) in self.budgets_us.iter().zip(stages) {
            slot.store(b.map_or(0, |b| (b.as_micros() as u64).max(1)), Relaxed);
        }
    }

    /// One decided frame. Atomics only: this runs on the decision thread.
    pub fn frame(&self, s: &FrameSample) {
        for (i, d) in s.stages.iter().enumerate() {
            let Some(d) = d else { continue };
            self.stages[i].observe(*d);
            let budget = self.budgets_us[i].load(Relaxed);
            if budget > 0 && d.as_micros() as u64 > budget {
                self.overruns[i].fetch_add(1, Relaxed);
            }
        }
        self.frame_age.observe(s.age);
        self.deadline_misses.fetch_add(s.missed as u64, Relaxed);
        self.ladder_level.store(s.level as u64, Relaxed);
        self.ladder_changes.store(s.ladder_changes, Relaxed);
        self.dropped_frames.store(s.dropped_frames, Relaxed);
        self.events_dropped.store(s.events_dropped, Relaxed);
        self.alerts_dropped.store(s.alerts_dropped, Relaxed);
        self.last_decided_ns.store(s.decided.as_nanos(), Relaxed);
        // Last, so a reader that sees the frame also sees its histograms.
        self.frames.fetch_add(1, std::sync::atomic::Ordering::Release);
    }

    /// Rules a rule set has, so their counters exist (at 0) before their first alert.
    pub fn register_rules(&self, metas: &[RuleMeta]) {
        let mut alerts = self.alerts.lock().unwrap_or_else(|e| e.into_inner());
        for m in metas {
            alerts.entry(m.name.clone()).or_default();
        }
    }

    /// An alert the output thread drove (or tried to).
    pub fn alert(&self, rule: &str, state: AlertState, decision_to_output: Duration) {
        self.alert_output.observe(decision_to_output);
        let mut alerts = self.alerts.lock().unwrap_or_else(|e| e.into_inner());
        let counts = match alerts.get_mut(rule) {
            Some(c) => c,
            None => alerts.entry(rule.to_string()).or_default(),
        };
        match state {
            AlertState::Raised => counts.raised += 1,
            AlertState::Cleared => counts.cleared += 1,
        }
    }

    pub fn output_failed(&self) {
        self.output_failures.fetch_add(1, Relaxed);
    }

    pub fn frames(&self) -> u64 {
        self.frames.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn stage(&self, stage: Stage) -> HistogramSnapshot {
        self.stages[stage as usize].snapshot()
    }

    pub fn alerts(&self) -> BTreeMap<String, RuleAlerts> {
        self.alerts.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Writes the loop's and the outputs' families.
    pub fn render(&self, w: &mut Writer) {
        let now = MonoTime::now();
        // Frames first: everything read after it is at least as new.
        let frames = self.frames();
        let bounds: Vec<f64> = BOUNDS_US.iter().map(|&b| b as f64 / 1e6).collect();
        w.single("sideline_start_time_seconds", "gauge", "Unix time the run started.", self.started_unix_s);
        w.single(
            "sideline_uptime_seconds",
            "gauge",
            "Seconds since the run started.",
            now.since(self.started).as_secs_f64(),
        );
        w.single("sideline_frames_total", "counter", "Frames decided by the loop.", frames as f64);
        w.single(
            "sideline_dropped_frames_total",
            "counter",
            "Frames the camera delivered that were never decided (the loop was busy, or the ladder skips frames).",
            self.dropped_frames.load(Relaxed) as f64,
        );
        w.single(
            "sideline_deadline_misses_total",
            "counter",
            "Decided frames whose decision came after capture + deadline.",
            self.deadline_misses.load(Relaxed) as f64,
        );
        w.single(
            "sideline_deadline_seconds",
            "gauge",
            "The per-frame deadline (budget after capture).",
            self.deadline_us.load(Relaxed) as f64 / 1e6,
        );
        let last = self.last_decided_ns.load(Relaxed);
        if last > 0 {
            w.single(
                "sideline_last_decision_age_seconds",
                "gauge",
                "Seconds since the loop last decided a frame.",
                now.since(MonoTime::from_nanos(last)).as_secs_f64(),
            );
        }
        w.single(
            "sideline_ladder_level",
            "gauge",
            "Degradation ladder level (0 = everything on every frame).",
            self.ladder_level.load(Relaxed) as f64,
        );
        w.single(
            "sideline_ladder_changes_total",
            "counter",
            "Degradation ladder steps, down or up.",
            self.ladder_changes.load(Relaxed) as f64,
        );
        w.family(
            "sideline_stage_seconds",
            "histogram",
            "Time per loop stage per decided frame (pose only on frames that ran it).",
        );
        for st in Stage::ALL {
            let s = self.stages[st as usize].snapshot();
            w.histogram(
                "sideline_stage_seconds",
                &[("stage", st.name())],
                &bounds,
                &s.cumulative,
                s.sum_seconds,
            );
        }
        w.family(
            "sideline_stage_overruns_total",
            "counter",
            "Stage runs over the stage's budget ([loop] stage_budget_ms; stages without one are not listed).",
        );
        for st in Stage::ALL {
            if self.budgets_us[st as usize].load(Relaxed) > 0 {
                let n = self.overruns[st as usize].load(Relaxed);
                w.sample("sideline_stage_overruns_total", &[("stage", st.name())], n as f64);
            }
        }
        w.family(
            "sideline_frame_age_seconds",
            "histogram",
            "Capture to decision out per decided frame (what the deadline bounds).",
        );
        let s = self.frame_age.snapshot();
        w.histogram("sideline_frame_age_seconds", &[], &bounds, &s.cumulative, s.sum_seconds);
        w.family(
            "sideline_alert_output_seconds",
            "histogram",
            "Decision to alert outputs driven, per alert raise or clear.",
        );
        let s = self.alert_output.snapshot();
        w.histogram("sideline_alert_output_seconds", &[], &bounds, &s.cumulative, s.sum_seconds);
        let alerts = self.alerts();
        w.family("sideline_alerts_total", "counter", "Alerts driven to the outputs, by rule name and state.");
        for (rule, c) in &alerts {
            w.sample("sideline_alerts_total", &[("rule", rule), ("state", "raised")], c.raised as f64);
            w.sample("sideline_alerts_total", &[("rule", rule), ("state", "cleared")], c.cleared as f64);
        }
        w.family(
            "sideline_alerts_active",
            "gauge",
            "Alerts raised and not yet cleared, by rule name (per track for track rules).",
        );
        for (rule, c) in &alerts {
            w.sample("sideline_alerts_active", &[("rule", rule)], c.raised.saturating_sub(c.cleared) as f64);
        }
        w.single(
            "sideline_output_failures_total",
            "counter",
            "Failed drives of an alert output (each raises output-fault on the others).",
            self.output_failures.load(Relaxed) as f64,
        );
        w.single(
            "sideline_events_dropped_total",
            "counter",
            "Events the recorder could not take in time (the loop never waits for it).",
            self.events_dropped.load(Relaxed) as f64,
        );
        w.single(
            "sideline_alerts_dropped_total",
            "counter",
            "Alerts the output thread's queue could not take.",
            self.alerts_dropped.load(Relaxed) as f64,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Severity;
    use crate::rules::RuleKind;

    fn us(v: u64) -> Duration {
        Duration::from_micros(v)
    }

    #[test]
    fn histogram_buckets_are_inclusive_upper_bounds_and_cumulative() {
        let h = Histogram::default();
        for v in [0, 250, 251, 1_000, 33_000, 33_001, 5_000_000, 5_000_001, 60_000_000] {
            h.observe(us(v));
        }
        let s = h.snapshot();
        assert_eq!(s.cumulative.len(), BOUNDS_US.len() + 1);
        let at = |bound: u64| s.cumulative[BOUNDS_US.iter().position(|&b| b == bound).unwrap()];
        assert_eq!(at(250), 2, "0 and 250 are at or below 250 µs");
        assert_eq!(at(500), 3);
        assert_eq!(at(1_000), 4);
        assert_eq!(at(20_000), 4);
        assert_eq!(at(33_000), 5);
        assert_eq!(at(50_000), 6);
        assert_eq!(at(5_000_000), 7);
        assert_eq!(s.count(), 9, "+Inf holds everything");
        assert!(s.cumulative.windows(2).all(|w| w[0] <= w[1]));
        let sum: u64 = [0, 250, 251, 1_000, 33_000, 33_001, 5_000_000, 5_000_001, 60_000_000].iter().sum();
        assert!((s.sum_seconds - sum as f64 / 1e6).abs() < 1e-9);
    }

    #[test]
    fn concurrent_writers_lose_nothing_and_readers_see_consistent_counts() {
        let h = std::sync::Arc::new(Histogram::default());
        let writers: Vec<_> = (0..4)
            .map(|t| {
                let h = h.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000u64 {
                        h.observe(us((i * 37 + t) % 3_000_000));
                    }
                })
            })
            .collect();
        while !writers.iter().all(|w| w.is_finished()) {
            let s = h.snapshot();
            assert!(s.cumulative.windows(2).all(|w| w[0] <= w[1]), "monotone while written");
        }
        for w in writers {
            w.join().unwrap();
        }
        assert_eq!(h.snapshot().count(), 40_000);
    }

    #[test]
    fn frames_overruns_and_alerts_by_rule_name() {
        let m = Metrics::new();
        let mut budgets = [None; 6];
        budgets[Stage::Detect as usize] = Some(Duration::from_millis(50));
        m.set_budgets(Duration::from_millis(100), budgets);
        let mut s =
            FrameSample { age: Duration::from_millis(120), missed: true, level: 2, ..Default::default() };
        s.stages[Stage::Detect as usize] = Some(Duration::from_millis(60));
        s.decided = MonoTime::now();
        m.frame(&s);
        s.stages[Stage::Detect as usize] = Some(Duration::from_millis(40));
        s.missed = false;
        m.frame(&s);
        assert_eq!(m.frames(), 2);
        assert_eq!(m.stage(Stage::Detect).count(), 2);
        assert_eq!(m.stage(Stage::Pose).count(), 0, "a stage that did not run is not observed");
        let meta = |name: &str| RuleMeta {
            name: name.into(),
            kind: RuleKind::ZoneIncursion,
            severity: Severity::Warning,
            outputs: vec![],
        };
        m.register_rules(&[meta("road"), meta("lawn")]);
        m.alert("road", AlertState::Raised, us(100));
        m.alert("road", AlertState::Raised, us(100));
        m.alert("road", AlertState::Cleared, us(100));
        // A rule of a later rule pack, never registered: counted all the same.
        m.alert("road-v2", AlertState::Raised, us(100));
        let a = m.alerts();
        assert_eq!(a["road"], RuleAlerts { raised: 2, cleared: 1 });
        assert_eq!(a["lawn"], RuleAlerts::default());
        assert_eq!(a["road-v2"].raised, 1);

        let mut w = Writer::new();
        m.render(&mut w);
        let text = w.finish();
        let samples = super::super::text::parse(&text).unwrap();
        let value = |name: &str, labels: &[(&str, &str)]| {
            samples
                .iter()
                .find(|s| {
                    s.name == name
                        && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(v))
                })
                .unwrap_or_else(|| panic!("no {name} {labels:?} in\n{text}"))
                .value
        };
        assert_eq!(value("sideline_frames_total", &[]), 2.0);
        assert_eq!(value("sideline_deadline_misses_total", &[]), 1.0);
        assert_eq!(value("sideline_ladder_level", &[]), 2.0);
        assert_eq!(value("sideline_stage_overruns_total", &[("stage", "detect")]), 1.0);
        assert!(!text.contains(r#"sideline_stage_overruns_total{stage="pose"}"#), "no budget, not listed");
        assert_eq!(value("sideline_alerts_total", &[("rule", "road"), ("state", "raised")]), 2.0);
        assert_eq!(value("sideline_alerts_active", &[("rule", "road")]), 1.0);
        assert_eq!(value("sideline_alerts_total", &[("rule", "lawn"), ("state", "raised")]), 0.0);
        assert_eq!(value("sideline_alert_output_seconds_count", &[]), 4.0);
        assert_eq!(value("sideline_stage_seconds_count", &[("stage", "detect")]), 2.0);
        assert_eq!(value("sideline_deadline_seconds", &[]), 0.1);
    }
}
