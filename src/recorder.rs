//! The recorder thread: everything the loop reports (events, alerts) crosses one bounded
//! hand-off to here, so file and disk I/O never stall a frame. Alerts, ladder changes and
//! summaries become patterns in the durable store, a batch per wake-up (one fsync for many),
//! where the uplink finds them; alerts also go to the hash-chained audit log ([`crate::audit`]).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::thread::JoinHandle;

use anyhow::Context;

use crate::audit::AuditLog;
use crate::event::Event;
use crate::handoff::{handoff_with_reserve, Handoff, HandoffRx};
use crate::store::{NewPattern, Priority, Store};

#[derive(Clone, Debug, PartialEq)]
pub enum EventsDest {
    Stdout,
    File(PathBuf),
}

impl EventsDest {
    pub fn parse(s: &str) -> Self {
        if s == "-" {
            EventsDest::Stdout
        } else {
            EventsDest::File(PathBuf::from(s))
        }
    }
}

/// Room for a burst of events while the disk is slow; beyond it events are counted and dropped.
const CAPACITY: usize = 8192;
/// Of which kept for alerts, so routine events never crowd them out.
const ALERT_RESERVE: usize = 1024;

/// The loop's and the output stage's way into the recorder. Cloneable; never blocks.
pub type RecorderTx = Handoff<Event>;

pub struct Recorder {
    tx: RecorderTx,
    handle: JoinHandle<anyhow::Result<()>>,
}

impl Recorder {
    pub fn spawn(events: Option<&EventsDest>, store: Store) -> anyhow::Result<Self> {
        Self::spawn_with_audit(events, store, None)
    }

    /// Like [`spawn`](Self::spawn), also appending every alert to the audit log.
    pub fn spawn_with_audit(
        events: Option<&EventsDest>,
        store: Store,
        audit: Option<AuditLog>,
    ) -> anyhow::Result<Self> {
        let out: Option<Box<dyn Write + Send>> = match events {
            None => None,
            Some(EventsDest::Stdout) => Some(Box::new(std::io::stdout())),
            Some(EventsDest::File(p)) => Some(Box::new(
                File::create(p).with_context(|| format!("creating events file {}", p.display()))?,
            )),
        };
        let (tx, rx) = handoff_with_reserve(CAPACITY, ALERT_RESERVE);
        let handle = std::thread::Builder::new()
            .name("recorder".into())
            .spawn(move || record(rx, out.map(|w| BufWriter::with_capacity(1 << 16, w)), store, audit))
            .context("starting the recorder thread")?;
        Ok(Self { tx, handle })
    }

    pub fn sender(&self) -> RecorderTx {
        self.tx.clone()
    }

    /// Sends the final event and waits for everything to be written; every other sender must
    /// be gone by now. Reports the first I/O error.
    pub fn finish(self, last: Event) -> anyhow::Result<()> {
        // Blocking here is fine: the loop is over.
        self.tx.send_blocking(last);
        drop(self.tx);
        self.handle.join().map_err(|_| anyhow::anyhow!("recorder thread panicked"))?
    }
}

/// Which events are kept upstream, and how urgently.
fn pattern_of(ev: &Event) -> Option<(Priority, &'static str, u64)> {
    match ev {
        Event::Alert(a) => Some((Priority::Safety, "alert", a.capture_us)),
        Event::Ladder { .. } => {
            Some((Priority::Telemetry, "ladder", crate::clock::MonoTime::now().as_micros()))
        }
        Event::Rules { .. } => Some((Priority::Event, "rulepack", crate::clock::MonoTime::now().as_micros())),
        Event::Summary(_) => {
            Some((Priority::Telemetry, "summary", crate::clock::MonoTime::now().as_micros()))
        }
        Event::Detection { .. } | Event::Frame { .. } | Event::Status { .. } => None,
    }
}

fn record(
    rx: HandoffRx<Event>,
    mut out: Option<BufWriter<Box<dyn Write + Send>>>,
    mut store: Store,
    mut audit: Option<AuditLog>,
) -> anyhow::Result<()> {
    let mut line = Vec::with_capacity(1024);
    let mut batch: Vec<NewPattern> = Vec::with_capacity(256);
    let mut first_err: Option<anyhow::Error> = None;
    while let Ok(ev) = rx.recv() {
        let mut next = Some(ev);
        // Write everything queued, then flush and commit once.
        while let Some(ev) = next {
            line.clear();
            let pattern = pattern_of(&ev);
            if out.is_some() || pattern.is_some() {
                serde_json::to_writer(&mut line, &ev)?;
            }
            if let Some(w) = out.as_mut() {
                if let Err(e) = w.write_all(&line).and_then(|()| w.write_all(b"\n")) {
                    first_err.get_or_insert(anyhow::Error::new(e).context("writing events"));
                    out = None;
                }
            }
            if let Event::Status { frame, people, balls, level } = &ev {
                tracing::info!(frame, people, balls, level, "running");
            }
            if let Event::Ladder { frame, from, to, .. } = &ev {
                tracing::warn!(frame, from, to, "degradation level changed");
            }
            if let (Event::Alert(a), Some(log)) = (&ev, audit.as_mut()) {
                if let Err(e) = log.append_alert(a) {
                    tracing::error!("{e}; alerts are no longer audited in this run");
                    first_err.get_or_insert(e.into());
                    audit = None;
                }
            }
            if let Some((priority, kind, capture_us)) = pattern {
                let body = String::from_utf8_lossy(&line).into_owned();
                batch.push(NewPattern { priority, kind, capture_us, body });
            }
            next = rx.try_recv().ok();
        }
        if let Some(w) = out.as_mut() {
            if let Err(e) = w.flush() {
                first_err.get_or_insert(anyhow::Error::new(e).context("writing events"));
                out = None;
            }
        }
        if !batch.is_empty() {
            if let Err(e) = store.append(&batch) {
                tracing::error!("{e}; {} patterns not stored", batch.len());
                first_err.get_or_insert(e.into());
            }
            batch.clear();
        }
        // One fsync per batch, as for the store. A failed write may leave a torn line: the
        // log is not written again this run, and the next open repairs it on the record.
        if let Some(Err(e)) = audit.as_mut().map(AuditLog::sync) {
            tracing::error!("{e}; alerts are no longer audited in this run");
            first_err.get_or_insert(e.into());
            audit = None;
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
