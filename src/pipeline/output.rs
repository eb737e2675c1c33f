//! The output stage: its own thread owns the alert outputs. The decision loop and the supervisor
//! hand it small messages over a bounded queue, so deciding never waits on a slow line or
//! port, and the output thread reports what it drove, and when, to the recorder.

use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::Context;

use crate::alert::{AlertOutput, Signal};
use crate::clock::MonoTime;
use crate::event::{AlertEvent, Event};
use crate::handoff::{handoff, Handoff, HandoffRx};
use crate::recorder::RecorderTx;
use crate::rules::{Alert, AlertState, RuleMeta};
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
    ) -> anyhow::Result<(Self, OutputTx)> {
        let (tx, rx) = handoff(CAPACITY);
        let handle = std::thread::Builder::new()
            .name("outputs".into())
            .spawn(move || drive(rx, outputs, heartbeat, meta, recorder))
            .context("starting the output thread")?;
        Ok((Self { handle }, tx))
    }

    /// Waits for the queue to drain; every sender must be gone.
    pub fn finish(self) -> anyhow::Result<OutputReport> {
        self.handle.join().map_err(|_| anyhow::anyhow!("output thread panicked"))
    }
}

fn drive(
    rx: HandoffRx<OutputMsg>,
    mut outputs: Vec<Box<dyn AlertOutput>>,
    heartbeat: Option<usize>,
    meta: Arc<[RuleMeta]>,
    recorder: RecorderTx,
) -> OutputReport {
    // Every generation's metadata: an alert queued before a rule pack change still names the
    // rule it was raised for. Packs are rare, so this stays small.
    let mut tables: Vec<(u32, Arc<[RuleMeta]>)> = vec![(0, meta)];
    let mut report = OutputReport::default();
    let mut latency = StageStats::new("decide->out");
    while let Ok(msg) = rx.recv() {
        match msg {
            OutputMsg::Heartbeat(level) => {
                if let Some(out) = heartbeat.and_then(|i| outputs.get_mut(i)) {
                    match out.heartbeat(level) {
                        Ok(()) => report.heartbeats += 1,
                        Err(e) => {
                            report.failures += 1;
                            tracing::error!("heartbeat: {e}");
                        }
                    }
                }
            }
            OutputMsg::Rules(generation, meta) => tables.push((generation, meta)),
            OutputMsg::Alert(m) => {
                let table = tables.iter().rev().find(|(g, _)| *g == m.rules).or(tables.last());
                let Some(rule) = table.and_then(|(_, t)| t.get(m.alert.rule)) else { continue };
                let (state, track, frame) = (m.alert.state, m.alert.track, m.frame);
                let signal = Signal { rule, state, track, frame, capture: m.capture, arrived: m.arrived };
                let mut driven = Vec::with_capacity(rule.outputs.len());
                for &oi in &rule.outputs {
                    let Some(out) = outputs.get_mut(oi) else { continue };
                    match out.drive(&signal) {
                        Ok(()) => driven.push(out.name().to_string()),
                        Err(e) => {
                            report.failures += 1;
                            tracing::error!("{e}");
                        }
                    }
                }
                let done = MonoTime::now();
                latency.record(done.since(m.decided));
                match m.alert.state {
                    AlertState::Raised => report.raised += 1,
                    AlertState::Cleared => report.cleared += 1,
                }
                recorder.send_urgent(Event::Alert(AlertEvent {
                    rule: rule.name.clone(),
                    kind: rule.kind,
                    severity: rule.severity,
                    state: m.alert.state,
                    track: m.alert.track,
                    frame: m.frame,
                    capture_us: m.capture.as_micros(),
                    decision_us: m.decided.as_micros(),
                    latency_us: done.since(m.arrived).as_micros() as u64,
                    outputs: driven,
                    at: m.alert.at,
                    same_as: m.same_as,
                }));
            }
        }
    }
    if report.raised + report.cleared > 0 {
        report.latency = Some(latency.summary());
    }
    report
}
