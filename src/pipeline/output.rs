//! The output stage: its own thread owns the alert outputs. The decision loop and the supervisor
//! hand it small messages over a bounded queue, so deciding never waits on a slow line or
//! port, and the output thread reports what it drove, and when, to the recorder.

use std::sync::mpsc::RecvTimeoutError;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;

use super::supervisor::Health;
use crate::alert::{AlertError, AlertOutput, Signal};
use crate::clock::MonoTime;
use crate::event::{AlertEvent, Event};
use crate::handoff::{handoff, Handoff, HandoffRx};
use crate::recorder::RecorderTx;
use crate::rules::fusion::{FusionSet, FusionSpec};
use crate::rules::{Alert, AlertState, RuleMeta, OUTPUT_FAULT};
use crate::telemetry::metrics::Metrics;
use crate::telemetry::{StageStats, StageSummary};

#[derive(Clone, Copy, Debug)]
pub struct AlertMsg {
    pub alert: Alert,
    pub frame: u64,
    pub capture: MonoTime,
    /// When the frame reached the loop: the alert's latency runs from here.
    pub arrived: MonoTime,
    pub decided: MonoTime,
    /// Generation of the rule set `alert.rule` indexes (0: the one the run started with).
    pub rules: u32,
    /// See [`AlertEvent::same_as`].
    pub same_as: Option<u32>,
}

#[derive(Clone, Debug)]
pub enum OutputMsg {
    Alert(AlertMsg),
    Heartbeat(bool),
    /// A new rule set's metadata, sent before any alert of it.
    Rules(u32, Arc<[RuleMeta]>),
    /// That rule set's fusion rules, sent right after its metadata.
    Fusion(u32, Arc<[FusionSpec]>),
}

/// Sending side, shared by the loop and the supervisor; never blocks.
pub type OutputTx = Handoff<OutputMsg>;

#[derive(Debug, Default)]
pub struct OutputReport {
    pub raised: u64,
    pub cleared: u64,
    pub heartbeats: u64,
    pub failures: u64,
    /// Decision to outputs driven.
    pub latency: Option<StageSummary>,
}

pub struct OutputStage {
    handle: JoinHandle<OutputReport>,
}

const CAPACITY: usize = 256;

impl OutputStage {
    pub fn spawn(
        outputs: Vec<Box<dyn AlertOutput>>,
        heartbeat: Option<usize>,
        meta: Arc<[RuleMeta]>,
        recorder: RecorderTx,
        health: Option<Arc<Health>>,
        metrics: Option<Arc<Metrics>>,
    ) -> anyhow::Result<(Self, OutputTx)> {
        let (tx, rx) = handoff(CAPACITY);
        let handle = std::thread::Builder::new()
            .name("outputs".into())
            .spawn(move || drive(rx, outputs, heartbeat, meta, recorder, health, metrics))
            .context("starting the output thread")?;
        Ok((Self { handle }, tx))
    }

    /// Waits for the queue to drain; every sender must be gone.
    pub fn finish(self) -> anyhow::Result<OutputReport> {
        self.handle.join().map_err(|_| anyhow::anyhow!("output thread panicked"))
    }
}

/// How often outputs with timed work (a pulse to end) get a tick; with none, the thread
/// sleeps until a message, so it never wakes during inference for nothing.
const TICK: Duration = Duration::from_millis(10);

struct Stage {
    outputs: Vec<Box<dyn AlertOutput>>,
    heartbeat: Option<usize>,
    /// Every generation's metadata: an alert queued before a rule pack change still names the
    /// rule it was raised for. Packs are rare, so this stays small.
    tables: Vec<(u32, Arc<[RuleMeta]>)>,
    /// Outputs that failed their last drive (an `output-fault` alert is raised for each).
    faulted: Vec<bool>,
    report: OutputReport,
    latency: StageStats,
    recorder: RecorderTx,
    /// Told how many outputs are faulted, for the watchdog and the update gate.
    health: Option<Arc<Health>>,
    /// Alerts by rule name and output failures, for the metrics endpoint.
    metrics: Option<Arc<Metrics>>,
    /// Fusion rules of rule set generation `fusion_gen`: every alert passes here, from the
    /// loop, the supervisor and the microphone thread alike.
    fusion: FusionSet,
    fusion_gen: u32,
    /// Fused alerts of the alert being handled (reused).
    fused: Vec<Alert>,
}

fn drive(
    rx: HandoffRx<OutputMsg>,
    outputs: Vec<Box<dyn AlertOutput>>,
    heartbeat: Option<usize>,
    meta: Arc<[RuleMeta]>,
    recorder: RecorderTx,
    health: Option<Arc<Health>>,
    metrics: Option<Arc<Metrics>>,
) -> OutputReport {
    if let Some(m) = &metrics {
        m.register_rules(&meta);
    }
    let mut st = Stage {
        faulted: vec![false; outputs.len()],
        outputs,
        heartbeat,
        tables: vec![(0, meta)],
        report: OutputReport::default(),
        latency: StageStats::new("decide->out"),
        recorder,
        health,
        metrics,
        fusion: FusionSet::default(),
        fusion_gen: 0,
        fused: Vec::with_capacity(4),
    };
    loop {
        let msg = if st.outputs.iter().any(|o| o.pending()) {
            rx.recv_timeout(TICK)
        } else {
            rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
        };
        match msg {
            Ok(OutputMsg::Heartbeat(level)) => st.heartbeat(level),
            Ok(OutputMsg::Rules(generation, meta)) => {
                if let Some(m) = &st.metrics {
                    m.register_rules(&meta);
                }
                st.tables.push((generation, meta));
            }
            Ok(OutputMsg::Fusion(generation, specs)) => st.set_fusion(generation, &specs),
            Ok(OutputMsg::Alert(m)) => st.alert(&m),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        st.tick();
    }
    if st.report.raised + st.report.cleared > 0 {
        st.report.latency = Some(st.latency.summary());
    }
    st.report
}

impl Stage {
    fn heartbeat(&mut self, level: bool) {
        let Some(i) = self.heartbeat.filter(|&i| i < self.outputs.len()) else { return };
        let result = self.outputs[i].heartbeat(level);
        if result.is_ok() {
            self.report.heartbeats += 1;
        }
        self.checked(i, result);
    }

    fn tick(&mut self) {
        let now = MonoTime::now();
        for i in 0..self.outputs.len() {
            if !self.outputs[i].pending() {
                continue;
            }
            let result = self.outputs[i].tick(now);
            self.checked(i, result);
        }
    }

    fn alert(&mut self, m: &AlertMsg) {
        let table = self.tables.iter().rev().find(|(g, _)| *g == m.rules).or(self.tables.last());
        let Some(table) = table.map(|(_, t)| t.clone()) else { return };
        let Some(rule) = table.get(m.alert.rule) else { return };
        let (state, track, frame) = (m.alert.state, m.alert.track, m.frame);
        let signal = Signal { rule, state, track, frame, capture: m.capture, arrived: m.arrived };
        let mut driven = Vec::with_capacity(rule.outputs.len());
        for &oi in &rule.outputs {
            let Some(out) = self.outputs.get_mut(oi) else { continue };
            let result = out.drive(&signal);
            if result.is_ok() {
                driven.push(out.name().to_string());
            }
            self.checked(oi, result);
        }
        let done = MonoTime::now();
        self.latency.record(done.since(m.decided));
        match m.alert.state {
            AlertState::Raised => self.report.raised += 1,
            AlertState::Cleared => self.report.cleared += 1,
        }
        self.record(rule, m, done, driven);
        self.fuse(m);
    }

    /// Runs the fusion rules on an alert just driven, and drives what they raise or clear at
    /// once. A fused alert keeps its trigger's frame and times, so its latency runs from the
    /// trigger's frame or chunk.
    fn fuse(&mut self, m: &AlertMsg) {
        if self.fusion.is_empty() || m.rules != self.fusion_gen {
            return;
        }
        let mut fused = std::mem::take(&mut self.fused);
        fused.clear();
        self.fusion.observe(&m.alert, m.capture, &mut fused);
        for &alert in &fused {
            let decided = MonoTime::now();
            self.alert(&AlertMsg { alert, decided, same_as: None, ..*m });
        }
        self.fused = fused;
    }

    /// A new rule set's fusion rules; what the old ones hold raised is cleared under them.
    fn set_fusion(&mut self, generation: u32, specs: &[FusionSpec]) {
        let mut cleared = std::mem::take(&mut self.fused);
        cleared.clear();
        self.fusion.clear_all(&mut cleared);
        let now = MonoTime::now();
        for &alert in &cleared {
            let rules = self.fusion_gen;
            self.alert(&AlertMsg {
                alert,
                frame: 0,
                capture: now,
                arrived: now,
                decided: now,
                rules,
                same_as: None,
            });
        }
        self.fused = cleared;
        self.fusion = FusionSet::new(specs);
        self.fusion_gen = generation;
    }

    fn record(&self, rule: &RuleMeta, m: &AlertMsg, done: MonoTime, outputs: Vec<String>) {
        if let Some(metrics) = &self.metrics {
            metrics.alert(&rule.name, m.alert.state, done.since(m.decided));
        }
        self.recorder.send_urgent(Event::Alert(AlertEvent {
            rule: rule.name.clone(),
            kind: rule.kind,
            severity: rule.severity,
            state: m.alert.state,
            track: m.alert.track,
            frame: m.frame,
            capture_us: m.capture.as_micros(),
            decision_us: m.decided.as_micros(),
            latency_us: done.since(m.arrived).as_micros() as u64,
            outputs,
            at: m.alert.at,
            same_as: m.same_as,
        }));
    }

    /// Counts a failed drive, and raises (or, once it works again, clears) `output-fault`
    /// for that output on the alarm outputs: a line that was not driven is itself an alert.
    fn checked(&mut self, i: usize, result: Result<(), AlertError>) {
        let failed = result.is_err();
        if let Err(e) = result {
            self.report.failures += 1;
            if let Some(m) = &self.metrics {
                m.output_failed();
            }
            if !self.faulted[i] {
                tracing::error!("{e}");
            }
        }
        if failed == self.faulted[i] {
            return;
        }
        self.faulted[i] = failed;
        if let Some(h) = &self.health {
            h.set_faulted_outputs(self.faulted.iter().filter(|&&f| f).count() as u32);
        }
        let Some(table) = self.tables.last().map(|(_, t)| t.clone()) else { return };
        let Some(rule) = table.get(OUTPUT_FAULT) else { return };
        let state = if failed { AlertState::Raised } else { AlertState::Cleared };
        let now = MonoTime::now();
        let signal = Signal { rule, state, track: i as u32, frame: 0, capture: now, arrived: now };
        let mut driven = Vec::new();
        // Not the faulty output itself; and no fault-on-fault: a failure here is only counted.
        for &oi in rule.outputs.iter().filter(|&&oi| oi != i) {
            if let Some(out) = self.outputs.get_mut(oi) {
                match out.drive(&signal) {
                    Ok(()) => driven.push(out.name().to_string()),
                    Err(_) => {
                        self.report.failures += 1;
                        if let Some(m) = &self.metrics {
                            m.output_failed();
                        }
                    }
                }
            }
        }
        match state {
            AlertState::Raised => self.report.raised += 1,
            AlertState::Cleared => self.report.cleared += 1,
        }
        let alert = Alert { rule: OUTPUT_FAULT, state, track: i as u32, at: Default::default() };
        let m = AlertMsg {
            alert,
            frame: 0,
            capture: now,
            arrived: now,
            decided: now,
            rules: self.tables.last().map_or(0, |(g, _)| *g),
            same_as: None,
        };
        self.record(rule, &m, MonoTime::now(), driven);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Severity;
    use crate::rules::RuleKind;

    /// An output that fails while `broken` is set, and remembers what it was told.
    struct Flaky {
        name: &'static str,
        broken: Arc<std::sync::atomic::AtomicBool>,
        told: Arc<std::sync::Mutex<Vec<(String, AlertState, u32)>>>,
    }

    impl AlertOutput for Flaky {
        fn name(&self) -> &str {
            self.name
        }

        fn drive(&mut self, s: &Signal<'_>) -> Result<(), AlertError> {
            if self.broken.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(AlertError::Drive {
                    output: self.name.into(),
                    message: "readback mismatch".into(),
                });
            }
            self.told.lock().unwrap().push((s.rule.name.clone(), s.state, s.track));
            Ok(())
        }
    }

    #[test]
    fn a_failing_output_raises_output_fault_on_the_others_and_clears_it() {
        let meta = |name: &str, kind, outputs: Vec<usize>| RuleMeta {
            name: name.into(),
            kind,
            severity: Severity::Critical,
            outputs,
        };
        let metas: Arc<[RuleMeta]> = vec![
            meta("camera-blind", RuleKind::CameraBlind, vec![1]),
            meta("loop-stalled", RuleKind::LoopStalled, vec![1]),
            meta("output-fault", RuleKind::OutputFault, vec![0, 1]),
            meta("road", RuleKind::ZoneIncursion, vec![0]),
        ]
        .into();
        let broken = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let told: Arc<std::sync::Mutex<Vec<(String, AlertState, u32)>>> = Arc::default();
        let outputs: Vec<Box<dyn AlertOutput>> = vec![
            Box::new(Flaky { name: "siren", broken: broken.clone(), told: Arc::default() }),
            Box::new(Flaky { name: "lamp", broken: Arc::default(), told: told.clone() }),
        ];
        let (rec_tx, rec_rx) = crate::handoff::handoff(64);
        let metrics = Arc::new(Metrics::new());
        let (stage, tx) =
            OutputStage::spawn(outputs, None, metas, rec_tx, None, Some(metrics.clone())).unwrap();
        let now = MonoTime::now();
        let msg = |state| {
            let alert = Alert { rule: 3, state, track: 7, at: Default::default() };
            OutputMsg::Alert(AlertMsg {
                alert,
                frame: 1,
                capture: now,
                arrived: now,
                decided: now,
                rules: 0,
                same_as: None,
            })
        };
        tx.send(msg(AlertState::Raised));
        std::thread::sleep(Duration::from_millis(50));
        broken.store(false, std::sync::atomic::Ordering::Relaxed);
        tx.send(msg(AlertState::Cleared));
        drop(tx);
        let report = stage.finish().unwrap();
        assert_eq!(report.failures, 1);
        let told = told.lock().unwrap().clone();
        assert_eq!(
            told,
            vec![
                ("output-fault".into(), AlertState::Raised, 0),
                ("output-fault".into(), AlertState::Cleared, 0)
            ],
            "the lamp hears of the siren's fault, and of its end"
        );
        let mut recorded = Vec::new();
        while let Ok(Event::Alert(a)) = rec_rx.try_recv() {
            recorded.push((a.rule, a.state, a.outputs));
        }
        assert_eq!(recorded[0], ("output-fault".to_string(), AlertState::Raised, vec!["lamp".to_string()]));
        assert_eq!(
            recorded[1],
            ("road".to_string(), AlertState::Raised, vec![]),
            "the siren did not take it"
        );
        let by_rule = metrics.alerts();
        let counts = |r: &str| (by_rule[r].raised, by_rule[r].cleared);
        assert_eq!(counts("road"), (1, 1), "counted by name, driven or not");
        assert_eq!(counts("output-fault"), (1, 1));
        assert_eq!(counts("camera-blind"), (0, 0), "every rule listed from the start");
    }

    /// An output that notes when it was told what.
    struct Timed(Arc<std::sync::Mutex<Vec<(String, AlertState, MonoTime)>>>);

    impl AlertOutput for Timed {
        fn name(&self) -> &str {
            "timed"
        }

        fn drive(&mut self, s: &Signal<'_>) -> Result<(), AlertError> {
            self.0.lock().unwrap().push((s.rule.name.clone(), s.state, MonoTime::now()));
            Ok(())
        }
    }

    #[test]
    fn a_whistle_while_a_player_is_down_drives_the_medic_alert_within_the_fusion_budget() {
        let meta = |name: &str, kind| RuleMeta {
            name: name.into(),
            kind,
            severity: Severity::Critical,
            outputs: vec![0],
        };
        let metas: Arc<[RuleMeta]> = vec![
            meta("camera-blind", RuleKind::CameraBlind),
            meta("loop-stalled", RuleKind::LoopStalled),
            meta("output-fault", RuleKind::OutputFault),
            meta("player-down", RuleKind::PlayerDown),
            meta("whistle", RuleKind::Whistle),
            meta("medic", RuleKind::Fusion),
        ]
        .into();
        let told: Arc<std::sync::Mutex<Vec<(String, AlertState, MonoTime)>>> = Arc::default();
        let (rec_tx, _rec_rx) = crate::handoff::handoff(4096);
        let (stage, tx) =
            OutputStage::spawn(vec![Box::new(Timed(told.clone()))], None, metas, rec_tx, None, None).unwrap();
        tx.send_urgent(OutputMsg::Fusion(0, vec![FusionSpec::new(5, vec![3, 4], 5.0)].into()));
        let send = |rule, state, track, capture: MonoTime| {
            let alert = Alert { rule, state, track, at: Default::default() };
            let now = MonoTime::now();
            let msg =
                AlertMsg { alert, frame: 1, capture, arrived: now, decided: now, rules: 0, same_as: None };
            tx.send(OutputMsg::Alert(msg));
            now
        };
        const EPISODES: usize = 100;
        let mut whistle_decided = Vec::new();
        for i in 0..EPISODES {
            // Capture times one minute apart: every episode is a new one.
            let t = MonoTime::from_nanos(1_000_000_000_000 + i as u64 * 60_000_000_000);
            let s = |secs: u64| t.plus(Duration::from_secs(secs));
            send(3, AlertState::Raised, 7, s(0));
            whistle_decided.push(send(4, AlertState::Raised, 0, s(2)));
            send(4, AlertState::Cleared, 0, s(3));
            send(3, AlertState::Cleared, 7, s(10));
            // A whistle with nobody down: no medic.
            send(4, AlertState::Raised, 0, s(30));
            send(4, AlertState::Cleared, 0, s(31));
            std::thread::sleep(Duration::from_millis(2));
        }
        drop(tx);
        stage.finish().unwrap();
        let told = told.lock().unwrap().clone();
        let of = |name: &str, state| -> Vec<MonoTime> {
            told.iter().filter(|(n, s, _)| n == name && *s == state).map(|(_, _, t)| *t).collect()
        };
        let (medic_raised, whistle_driven) =
            (of("medic", AlertState::Raised), of("whistle", AlertState::Raised));
        assert_eq!(medic_raised.len(), EPISODES, "one medic alert per episode, none for a lone whistle");
        assert_eq!(of("medic", AlertState::Cleared).len(), EPISODES, "cleared when the player is up");
        // Each episode's medic alert follows its whistle (the first of its two).
        let mut total = Vec::new();
        let mut added = Vec::new();
        for (i, medic) in medic_raised.iter().enumerate() {
            total.push(medic.since(whistle_decided[i]));
            added.push(medic.since(whistle_driven[2 * i]));
        }
        let max = |v: &[Duration]| v.iter().max().copied().unwrap_or_default();
        let mean = |v: &[Duration]| v.iter().sum::<Duration>() / v.len() as u32;
        eprintln!(
            "fusion: whistle decided -> medic driven mean {:?} max {:?}; whistle driven -> medic driven mean {:?} max {:?} ({EPISODES} episodes)",
            mean(&total),
            max(&total),
            mean(&added),
            max(&added)
        );
        assert!(max(&total) < Duration::from_millis(50), "fusion budget is 50 ms: {:?}", max(&total));
    }
}
