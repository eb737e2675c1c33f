//! Alerts on a serial port, to a siren controller, a PLC or a small computer, with the
//! protocol of docs/SERIAL.md: framed, checksummed, acknowledged, resent, and a receiver that
//! stops answering is a fault, not a silence nobody notices.
//!
//! [`protocol`] is the byte format, [`link`] the timing rules without I/O; this module is the
//! output the loop drives. [`SerialOutput::drive`] never touches the port: it hands the alert
//! to a link thread over a bounded queue ([`crate::handoff`]) and returns, so a slow or
//! unplugged port cannot hold up the other outputs. The link thread owns the port (through
//! `tokio-serial`, on a current-thread runtime), runs the [`link::Link`], and publishes its
//! health; `drive` reports a fault as an error after queueing the alert anyway, so the output
//! stage counts it.

pub mod link;
pub mod protocol;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;
use tokio_serial::{DataBits, FlowControl, Parity, SerialPortBuilderExt, SerialStream, StopBits};

use self::link::{Counters, Health, Link, LinkConfig};
use self::protocol::{kind_code, Alert, RuleName, MAX_WIRE, UNKNOWN_CAPTURE, UNKNOWN_LATENCY};
use super::{AlertError, AlertOutput, Signal};
use crate::clock::MonoTime;
use crate::config::Output;
use crate::handoff::{handoff, Handoff, HandoffRx};

pub const DEFAULT_BAUD: u32 = 115_200;
pub const DEFAULT_ACK_TIMEOUT_MS: u32 = 250;
pub const DEFAULT_RETRIES: u32 = 3;
pub const DEFAULT_HEARTBEAT_MS: u32 = 1_000;
pub const DEFAULT_SILENT_AFTER_MS: u32 = 3_000;
/// Alerts waiting for the link thread, and waiting in the link for their turn on the wire.
const QUEUE: usize = 64;
/// A write that takes this long means the port is stuck (no reader, flow control held).
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between attempts to reopen a port that failed.
const REOPEN_EVERY: Duration = Duration::from_secs(1);
/// Longest wait for queued alerts to go out when the output is dropped.
const DRAIN_MAX: Duration = Duration::from_secs(5);

/// A serial output's settings, defaults applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub port: String,
    pub baud: u32,
    pub link: LinkConfig,
}

impl Settings {
    /// `o`'s settings; a missing port is empty (validation reports it).
    pub fn from_output(o: &Output) -> Self {
        let ms = |v: Option<u32>, d: u32| Duration::from_millis(v.unwrap_or(d) as u64);
        Self {
            port: o.port.clone().unwrap_or_default(),
            baud: o.baud.unwrap_or(DEFAULT_BAUD),
            link: LinkConfig {
                ack_timeout: ms(o.ack_timeout_ms, DEFAULT_ACK_TIMEOUT_MS),
                retries: o.retries.unwrap_or(DEFAULT_RETRIES),
                silent_after: ms(o.silent_after_ms, DEFAULT_SILENT_AFTER_MS),
                heartbeat: ms(o.heartbeat_ms, DEFAULT_HEARTBEAT_MS),
                queue: QUEUE,
            },
        }
    }

    /// Out-of-range serial settings of `o`, as `(field, message)`, for the profile checks.
    pub fn problems(o: &Output) -> Vec<(&'static str, String)> {
        let mut p = Vec::new();
        let s = Self::from_output(o);
        let ms = |d: Duration| d.as_millis() as u64;
        if !(50..=4_000_000).contains(&s.baud) {
            p.push(("baud", format!("{} is outside 50..=4000000", s.baud)));
        }
        let (ack, beat, silent) = (ms(s.link.ack_timeout), ms(s.link.heartbeat), ms(s.link.silent_after));
        if !(10..=10_000).contains(&ack) {
            p.push(("ack_timeout_ms", format!("{ack} ms is outside 10..=10000")));
        } else if s.baud > 0 {
            // The longest frame and an ACK, 10 bits a byte (8N1), twice over for the receiver's turn.
            let round_trip = (2 * (MAX_WIRE as u64 + 11) * 10 * 1_000).div_ceil(s.baud as u64);
            if ack <= round_trip {
                p.push((
                    "ack_timeout_ms",
                    format!(
                        "{ack} ms is too short at {} baud: a frame and its ACK take ~{round_trip} ms",
                        s.baud
                    ),
                ));
            }
        }
        if s.link.retries > 20 {
            p.push(("retries", format!("{} is outside 0..=20", s.link.retries)));
        }
        if !(50..=60_000).contains(&beat) {
            p.push(("heartbeat_ms", format!("{beat} ms is outside 50..=60000")));
        }
        if silent > 600_000 {
            p.push(("silent_after_ms", format!("{silent} ms is more than 600000")));
        } else if silent < beat + ack {
            // A healthy receiver answers at least every heartbeat, within the ACK timeout.
            p.push((
                "silent_after_ms",
                format!("{silent} ms is shorter than heartbeat_ms + ack_timeout_ms ({beat} + {ack})"),
            ));
        }
        p
    }
}

/// The link as last published by its thread.
#[derive(Clone, Debug)]
pub struct SerialStatus {
    pub health: Health,
    /// The port failed and is being reopened.
    pub port_error: Option<String>,
    pub counters: Counters,
}

impl SerialStatus {
    pub fn is_ok(&self) -> bool {
        self.health.is_ok() && self.port_error.is_none()
    }
}

struct Shared {
    wake: Notify,
    stop: AtomicBool,
    /// Mirrors `!status.is_ok()`, read on every drive without the lock.
    faulted: AtomicBool,
    status: Mutex<SerialStatus>,
    loop_beats: AtomicU32,
}

pub struct SerialOutput {
    name: String,
    settings: Settings,
    tx: Handoff<Alert>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    level: bool,
}

fn err(output: &str, message: impl std::fmt::Display) -> AlertError {
    AlertError::Drive { output: output.to_string(), message: message.to_string() }
}

impl SerialOutput {
    /// Opens the output a profile describes.
    pub fn open(o: &Output) -> Result<Self, AlertError> {
        if o.port.as_deref().is_none_or(str::is_empty) {
            return Err(err(&o.name, "no `port`"));
        }
        Self::open_with(&o.name, Settings::from_output(o))
    }

    /// Opens `settings.port` on a new link thread; fails, naming the port, if it cannot be opened.
    pub fn open_with(name: &str, settings: Settings) -> Result<Self, AlertError> {
        let (tx, rx) = handoff(QUEUE);
        let shared = Arc::new(Shared {
            wake: Notify::new(),
            stop: AtomicBool::new(false),
            faulted: AtomicBool::new(false),
            status: Mutex::new(SerialStatus {
                health: Health::Ok,
                port_error: None,
                counters: Counters::default(),
            }),
            loop_beats: AtomicU32::new(0),
        });
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let (task_name, task_settings, task_shared) = (name.to_string(), settings.clone(), shared.clone());
        let thread = std::thread::Builder::new()
            .name(format!("serial:{name}"))
            .spawn(move || link_thread(task_name, task_settings, rx, task_shared, ready_tx))
            .map_err(|e| err(name, format!("starting the link thread: {e}")))?;
        match ready_rx.recv() {
            Ok(Ok(())) => {
                tracing::info!(output = %name, port = %settings.port, baud = settings.baud, "serial link open");
                Ok(Self { name: name.to_string(), settings, tx, shared, thread: Some(thread), level: false })
            }
            Ok(Err(message)) => {
                let _ = thread.join();
                Err(err(name, message))
            }
            Err(_) => {
                let _ = thread.join();
                Err(err(name, "the link thread stopped while opening the port"))
            }
        }
    }

    /// Queues one alert for the receiver. Errors when it could not be queued, or when the link
    /// is in fault (the alert is queued all the same and goes out if the receiver comes back).
    pub fn send(&mut self, alert: Alert) -> Result<(), AlertError> {
        let dropped = self.tx.dropped_urgent();
        self.tx.send_urgent(alert);
        self.shared.wake.notify_one();
        if self.tx.dropped_urgent() != dropped {
            return Err(err(&self.name, "link queue full or link thread gone: alert dropped"));
        }
        match self.fault() {
            Some(m) => Err(err(&self.name, m)),
            None => Ok(()),
        }
    }

    /// The link as its thread last saw it.
    pub fn status(&self) -> SerialStatus {
        self.shared.status.lock().map(|s| s.clone()).unwrap_or_else(|p| p.into_inner().clone())
    }

    pub fn is_faulted(&self) -> bool {
        self.shared.faulted.load(Ordering::Acquire)
    }

    /// What is wrong, in words, if anything.
    pub fn fault(&self) -> Option<String> {
        if !self.is_faulted() {
            return None;
        }
        let s = self.status();
        let port = &self.settings.port;
        if let Some(e) = s.port_error {
            return Some(format!("port `{port}`: {e}"));
        }
        match s.health {
            Health::Ok => None,
            Health::ReceiverSilent { last_heard } => Some(format!(
                "receiver on `{port}` silent: no ACK for {} ms",
                MonoTime::now().since(last_heard).as_millis()
            )),
            Health::Undelivered { seq, .. } => Some(format!(
                "alert seq {seq} on `{port}` not acknowledged after {} retries",
                self.settings.link.retries
            )),
        }
    }
}

/// The ALERT frame for `s`. `capture` and `arrived` (when the frame reached the loop) give the
/// capture time and the latency, when the caller has them.
pub fn alert_from_signal(
    s: &Signal<'_>,
    capture: Option<MonoTime>,
    arrived: Option<MonoTime>,
    now: MonoTime,
) -> Alert {
    let latency =
        |a: MonoTime| u32::try_from(now.since(a).as_micros()).unwrap_or(u32::MAX).min(UNKNOWN_LATENCY - 1);
    Alert {
        state: s.state,
        severity: s.rule.severity,
        kind: kind_code(s.rule.kind),
        track: s.track,
        capture_us: capture.map_or(UNKNOWN_CAPTURE, MonoTime::as_micros),
        latency_us: arrived.map_or(UNKNOWN_LATENCY, latency),
        name: RuleName::new(&s.rule.name),
    }
}

impl AlertOutput for SerialOutput {
    fn name(&self) -> &str {
        &self.name
    }

    fn drive(&mut self, s: &Signal<'_>) -> Result<(), AlertError> {
        self.send(alert_from_signal(s, Some(s.capture), Some(s.arrived), MonoTime::now()))
    }

    /// The loop's heartbeat: every change of level is counted and the count rides on the next
    /// HEARTBEAT frame, so a receiver sees the loop is alive, not only the link thread.
    fn heartbeat(&mut self, level: bool) -> Result<(), AlertError> {
        if level != self.level {
            self.level = level;
            self.shared.loop_beats.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

impl Drop for SerialOutput {
    /// Gives queued alerts a bounded time to go out, then stops the link thread.
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // What the link did, for the journal: the first thing to read when a receiver says it
        // heard nothing.
        let s = self.status();
        let c = s.counters;
        tracing::info!(
            output = %self.name,
            port = %self.settings.port,
            "serial link closed: alerts sent {}, resent {}, acknowledged {}, given up {}, dropped {}; \
             heartbeats {}, acknowledged {}; {} decode errors; health {:?}{}",
            c.sent,
            c.resent,
            c.acked,
            c.failed,
            c.dropped,
            c.heartbeats,
            c.heartbeat_acks,
            c.decode_errors,
            s.health,
            s.port_error.map(|e| format!("; port: {e}")).unwrap_or_default()
        );
    }
}

fn open_port(s: &Settings) -> Result<SerialStream, String> {
    tokio_serial::new(&s.port, s.baud)
        .data_bits(DataBits::Eight)
        .parity(Parity::None)
        .stop_bits(StopBits::One)
        .flow_control(FlowControl::None)
        .open_native_async()
        .map_err(|e| format!("cannot open serial port `{}` at {} baud: {e}", s.port, s.baud))
}

fn link_thread(
    name: String,
    settings: Settings,
    rx: HandoffRx<Alert>,
    shared: Arc<Shared>,
    ready: std::sync::mpsc::SyncSender<Result<(), String>>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(format!("starting the link runtime: {e}")));
            return;
        }
    };
    rt.block_on(async move {
        // Opened inside the runtime: the port registers with its reactor.
        let port = match open_port(&settings) {
            Ok(p) => p,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let _ = ready.send(Ok(()));
        LinkTask { name, settings, rx, shared, last: Health::Ok }.run(port).await;
    });
}

struct LinkTask {
    name: String,
    settings: Settings,
    rx: HandoffRx<Alert>,
    shared: Arc<Shared>,
    /// Health as last logged, to log changes once.
    last: Health,
}

enum Exit {
    Stopped,
    Port(String),
}

impl LinkTask {
    async fn run(mut self, port: SerialStream) {
        let mut link = Link::new(self.settings.link, MonoTime::now());
        let mut port = Some(port);
        loop {
            if let Some(mut p) = port.take() {
                match self.serve(&mut p, &mut link).await {
                    Exit::Stopped => return,
                    Exit::Port(e) => {
                        tracing::error!(output = %self.name, port = %self.settings.port, "serial port failed: {e}");
                        self.publish(&link, MonoTime::now(), Some(e));
                    }
                }
            }
            // Port closed: keep taking alerts (they wait in the link) and try again shortly.
            tokio::select! {
                _ = tokio::time::sleep(REOPEN_EVERY) => {}
                _ = self.shared.wake.notified() => {}
            }
            self.take_alerts(&mut link);
            if self.shared.stop.load(Ordering::Acquire) {
                return;
            }
            if let Ok(p) = open_port(&self.settings) {
                tracing::info!(output = %self.name, port = %self.settings.port, "serial port reopened");
                link.reopened(MonoTime::now());
                self.publish(&link, MonoTime::now(), None);
                port = Some(p);
            }
        }
    }

    /// Runs the link on an open port until it fails or the output is dropped.
    async fn serve(&mut self, port: &mut SerialStream, link: &mut Link) -> Exit {
        let mut buf = [0u8; 256];
        let mut stop_by: Option<MonoTime> = None;
        loop {
            let now = MonoTime::now();
            self.take_alerts(link);
            link.set_loop_beats(self.shared.loop_beats.load(Ordering::Relaxed));
            if self.shared.stop.load(Ordering::Acquire) {
                let cfg = &self.settings.link;
                let drain = (cfg.ack_timeout * (cfg.retries + 2)).min(DRAIN_MAX);
                let by = *stop_by.get_or_insert(now.plus(drain));
                if link.is_idle() || now >= by {
                    self.publish(link, now, None);
                    return Exit::Stopped;
                }
            }
            while let Some(bytes) = link.poll_transmit(now) {
                match tokio::time::timeout(WRITE_TIMEOUT, port.write_all(bytes)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Exit::Port(format!("write: {e}")),
                    Err(_) => return Exit::Port(format!("write blocked for {} s", WRITE_TIMEOUT.as_secs())),
                }
            }
            self.publish(link, now, None);
            let mut wake_at = link.next_deadline();
            if let Some(by) = stop_by {
                wake_at = wake_at.min(by);
            }
            let wait = wake_at.since(MonoTime::now());
            tokio::select! {
                r = port.read(&mut buf) => match r {
                    Ok(0) => return Exit::Port("end of file".into()),
                    Ok(n) => link.on_bytes(&buf[..n], MonoTime::now()),
                    Err(e) => return Exit::Port(format!("read: {e}")),
                },
                _ = self.shared.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    fn take_alerts(&self, link: &mut Link) {
        while let Ok(a) = self.rx.try_recv() {
            if !link.queue(a) {
                tracing::warn!(output = %self.name, "serial link queue full: the oldest waiting alert was dropped");
            }
        }
    }

    /// Publishes the link's state for `drive`, and logs each change of health once.
    fn publish(&mut self, link: &Link, now: MonoTime, port_error: Option<String>) {
        let health = link.status(now);
        if health != self.last {
            let (name, port) = (&self.name, &self.settings.port);
            match health {
                Health::Ok => tracing::info!(output = %name, port = %port, "serial receiver answering"),
                Health::ReceiverSilent { last_heard } => tracing::error!(
                    output = %name,
                    port = %port,
                    "serial receiver silent: no ACK for {} ms (last heard at {last_heard})",
                    now.since(last_heard).as_millis()
                ),
                Health::Undelivered { seq, .. } => tracing::error!(
                    output = %name,
                    port = %port,
                    "alert seq {seq} not acknowledged after {} retries: given up",
                    self.settings.link.retries
                ),
            }
            self.last = health;
        }
        let status = SerialStatus { health, port_error, counters: *link.counters() };
        self.shared.faulted.store(!status.is_ok(), Ordering::Release);
        match self.shared.status.lock() {
            Ok(mut s) => *s = status,
            Err(p) => *p.into_inner() = status,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OutputKind;

    fn output() -> Output {
        let toml = "name = \"plc\"\nkind = \"serial\"\nport = \"/dev/ttyTHS1\"";
        toml::from_str(toml).expect("a serial output parses")
    }

    #[test]
    fn defaults_are_consistent() {
        let o = output();
        assert_eq!(o.kind, OutputKind::Serial);
        let s = Settings::from_output(&o);
        assert_eq!(s.baud, DEFAULT_BAUD);
        assert_eq!(s.link.ack_timeout, Duration::from_millis(DEFAULT_ACK_TIMEOUT_MS as u64));
        assert!(Settings::problems(&o).is_empty(), "{:?}", Settings::problems(&o));
    }

    #[test]
    fn out_of_range_settings_are_named() {
        let mut o = output();
        o.baud = Some(9_600);
        o.ack_timeout_ms = Some(15);
        o.retries = Some(50);
        o.heartbeat_ms = Some(1_000);
        o.silent_after_ms = Some(500);
        let fields: Vec<_> = Settings::problems(&o).into_iter().map(|(f, _)| f).collect();
        assert_eq!(fields, vec!["ack_timeout_ms", "retries", "silent_after_ms"]);
    }

    #[test]
    fn signal_timing_becomes_capture_and_latency() {
        use crate::config::Severity;
        use crate::rules::{AlertState, RuleKind, RuleMeta};
        let rule = RuleMeta {
            name: "road".into(),
            kind: RuleKind::ZoneIncursion,
            severity: Severity::Warning,
            outputs: vec![],
        };
        let t = MonoTime::from_nanos(0);
        let s = Signal { rule: &rule, state: AlertState::Raised, track: 3, frame: 9, capture: t, arrived: t };
        let at = |us: u64| MonoTime::from_nanos(us * 1_000);
        let a = alert_from_signal(&s, Some(at(5_000_000)), Some(at(5_010_000)), at(5_010_812));
        assert_eq!((a.capture_us, a.latency_us, a.track), (5_000_000, 812, 3));
        assert_eq!(a.name.as_bytes(), b"road");
        let a = alert_from_signal(&s, None, None, at(1));
        assert_eq!((a.capture_us, a.latency_us), (UNKNOWN_CAPTURE, UNKNOWN_LATENCY));
        // Two hours late still says "late", never "unknown".
        let a = alert_from_signal(&s, None, Some(at(0)), at(7_200_000_000));
        assert_eq!(a.latency_us, UNKNOWN_LATENCY - 1);
    }

    #[test]
    fn a_missing_port_is_a_clear_error() {
        let mut o = output();
        o.port = Some("/dev/does-not-exist-sideline".into());
        let e = SerialOutput::open(&o).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("/dev/does-not-exist-sideline") && e.contains("plc"), "{e}");
    }
}
