//! The recorder thread: everything the loop reports (events, alerts) crosses one bounded
//! hand-off to here, so file and network I/O never stall a frame. Alerts are also appended to
//! the durable pattern log and offered to the uplink.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::mpsc::Receiver;
use std::thread::JoinHandle;

use anyhow::Context;

use crate::event::Event;
use crate::handoff::{handoff, Handoff};
use crate::store::PatternLog;
use crate::sync::Uplink;

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

/// The loop's and the output stage's way into the recorder. Cloneable; never blocks.
pub type RecorderTx = Handoff<Event>;

pub struct Recorder {
    tx: RecorderTx,
    handle: JoinHandle<anyhow::Result<()>>,
}

impl Recorder {
    pub fn spawn(
        events: Option<&EventsDest>,
        store: PatternLog,
        uplink: Box<dyn Uplink>,
        topic: String,
    ) -> anyhow::Result<Self> {
        let out: Option<Box<dyn Write + Send>> = match events {
            None => None,
            Some(EventsDest::Stdout) => Some(Box::new(std::io::stdout())),
            Some(EventsDest::File(p)) => Some(Box::new(
                File::create(p).with_context(|| format!("creating events file {}", p.display()))?,
            )),
        };
        let (tx, rx) = handoff(CAPACITY);
        let handle = std::thread::Builder::new()
            .name("recorder".into())
            .spawn(move || {
                record(rx, out.map(|w| BufWriter::with_capacity(1 << 16, w)), store, uplink, topic)
            })
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

fn record(
    rx: Receiver<Event>,
    mut out: Option<BufWriter<Box<dyn Write + Send>>>,
    mut store: PatternLog,
    mut uplink: Box<dyn Uplink>,
    topic: String,
) -> anyhow::Result<()> {
    let mut line = Vec::with_capacity(1024);
    let mut first_err: Option<anyhow::Error> = None;
    while let Ok(ev) = rx.recv() {
        let mut next = Some(ev);
        // Write everything queued, then flush once: events reach a reader promptly.
        while let Some(ev) = next {
            line.clear();
            // Serialise only what goes somewhere: every event to an events file, alerts always.
            if out.is_some() || matches!(ev, Event::Alert(_)) {
                serde_json::to_writer(&mut line, &ev)?;
                line.push(b'\n');
            }
            if let Some(w) = out.as_mut() {
                if let Err(e) = w.write_all(&line) {
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
            if let Event::Alert(a) = &ev {
                if let Err(e) = store.append(a) {
                    tracing::error!("pattern store: {e}");
                    first_err.get_or_insert(e.into());
                }
                if uplink.is_connected() {
                    if let Err(e) = uplink.publish(&topic, &line) {
                        tracing::warn!("uplink: {e}; the pattern stays in the local store");
                    }
                }
            }
            next = rx.try_recv().ok();
        }
        if let Some(w) = out.as_mut() {
            if let Err(e) = w.flush() {
                first_err.get_or_insert(anyhow::Error::new(e).context("writing events"));
                out = None;
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
