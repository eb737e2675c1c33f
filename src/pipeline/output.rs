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
use crate::rules::{Alert, AlertState, RuleMeta, OUTPUT_FAULT};
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
    ) -> anyhow::Result<(Self, OutputTx)> {
        let (tx, rx) = handoff(CAPACITY);
        let handle = std::thread::Builder::new()
            .name("outputs".into())
            .spawn(move || drive(rx, outputs, heartbeat, meta, recorder, health))
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
}

fn drive(
    rx: HandoffRx<OutputMsg>,
    outputs: Vec<Box<dyn AlertOutput>>,
    heartbeat: Option<usize>,
    meta: Arc<[RuleMeta]>,
    recorder: RecorderTx,
    health: Option<Arc<Health>>,
) -> OutputReport {
    let mut st = Stage {
        faulted: vec![false; outputs.len()],
        outputs,
        heartbeat,
        tables: vec![(0, meta)],
        report: OutputReport::default(),
        latency: StageStats::new("decide->out"),
        recorder,
        health,
    };
    loop {
        let msg = if st.outputs.iter().any(|o| o.pending()) {
            rx.recv_timeout(TICK)
        } else {
            rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
        };
        match msg {
            Ok(OutputMsg::Heartbeat(level)) => st.heartbeat(level),
            Ok(OutputMsg::Rules(generation, meta)) => st.tables.push((generation, meta)),
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
    }

    fn record(&self, rule: &RuleMeta, m: &AlertMsg, done: MonoTime, outputs: Vec<String>) {
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
                    Err(_) => self.report.failures += 1,
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
        let (stage, tx) = OutputStage::spawn(outputs, None, metas, rec_tx, None).unwrap();
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
    }
}
