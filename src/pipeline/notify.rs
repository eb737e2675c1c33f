//! Telling systemd how the loop is doing: readiness, status and watchdog pings (sd_notify).
//!
//! The service is `Type=notify` with `WatchdogSec=` (systemd/sideline.service). What matters is
//! that these messages come from the deadline loop's own health, not from the process being
//! alive: `READY=1` once the loop has decided its first frame, `WATCHDOG=1` only while the loop
//! is alive (deciding frames, however late), so a loop that stalls (or a camera that goes blind) stops the pings and systemd
//! restarts the service. [`SystemdWatch`] follows the supervisor's verdicts to do that.
//!
//! The protocol is one datagram of `KEY=VALUE` lines to `$NOTIFY_SOCKET`, which std's
//! `UnixDatagram` sends; linking libsystemd (or a crate around it) for that is not worth it.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

use super::supervisor::{HealthNow, HealthWatch};
use crate::clock::MonoTime;

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("NOTIFY_SOCKET={0:?} is neither an absolute path nor an @abstract socket name")]
    Address(OsString),
    #[error("WATCHDOG_USEC={0:?} is not a positive number of microseconds")]
    WatchdogUsec(OsString),
    #[error("WATCHDOG_PID={0:?} is not a process id")]
    WatchdogPid(OsString),
    #[error("notification socket: {0}")]
    Io(#[from] io::Error),
}

/// What the service manager asked of this process, read from its environment.
#[derive(Debug, PartialEq, Eq)]
pub struct Settings {
    /// `$NOTIFY_SOCKET`; `None` when not started by systemd as `Type=notify`.
    pub socket: Option<OsString>,
    /// The watchdog timeout, when there is one and it is meant for this process.
    pub watchdog: Option<Duration>,
}

impl Settings {
    pub fn from_env() -> Result<Self, NotifyError> {
        Self::from_vars(|k| std::env::var_os(k), std::process::id())
    }

    /// As `sd_watchdog_enabled()` reads them: `WATCHDOG_USEC` is the timeout, and a
    /// `WATCHDOG_PID` naming another process means the watchdog is not ours (it was meant for a
    /// parent that did not clear it). `NotifyAccess=main` with an `exec` launcher keeps the PID.
    pub fn from_vars(var: impl Fn(&str) -> Option<OsString>, pid: u32) -> Result<Self, NotifyError> {
        let socket = var("NOTIFY_SOCKET");
        let parse = |v: &OsStr| v.to_str().and_then(|s| s.trim().parse::<u64>().ok());
        let watchdog = match var("WATCHDOG_USEC") {
            None => None,
            Some(v) => match parse(&v) {
                Some(us) if us > 0 => Some(Duration::from_micros(us)),
                _ => return Err(NotifyError::WatchdogUsec(v)),
            },
        };
        let for_us = match var("WATCHDOG_PID") {
            None => true,
            Some(v) => match parse(&v) {
                Some(p) if p > 0 => p == pid as u64,
                _ => return Err(NotifyError::WatchdogPid(v)),
            },
        };
        Ok(Self { socket, watchdog: watchdog.filter(|_| for_us) })
    }
}

/// A socket to the service manager. Sends never block: a message that does not fit in the
/// manager's queue is dropped (the next ping comes half a watchdog interval later).
pub struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
    name: OsString,
}

impl Notifier {
    /// `address` is `$NOTIFY_SOCKET`: a path, or `@name` for the abstract namespace.
    pub fn new(address: &OsStr) -> Result<Self, NotifyError> {
        let bytes = address.as_bytes();
        let addr = match bytes.first() {
            Some(b'/') => SocketAddr::from_pathname(address)?,
            Some(b'@') if bytes.len() > 1 => SocketAddr::from_abstract_name(&bytes[1..])?,
            _ => return Err(NotifyError::Address(address.to_owned())),
        };
        let socket = UnixDatagram::unbound()?;
        socket.set_nonblocking(true)?;
        Ok(Self { socket, addr, name: address.to_owned() })
    }

    pub fn send(&self, msg: &Message) -> Result<(), NotifyError> {
        self.socket.send_to_addr(msg.0.as_bytes(), &self.addr)?;
        Ok(())
    }

    pub fn name(&self) -> &OsStr {
        &self.name
    }
}

/// One notification: `KEY=VALUE` lines.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Message(String);

impl Message {
    pub fn ready(mut self) -> Self {
        self.push("READY", "1");
        self
    }

    pub fn watchdog(mut self) -> Self {
        self.push("WATCHDOG", "1");
        self
    }

    pub fn stopping(mut self) -> Self {
        self.push("STOPPING", "1");
        self
    }

    /// Free text for `systemctl status`; one line, so newlines become spaces.
    pub fn status(mut self, text: &str) -> Self {
        self.push("STATUS", &text.replace('\n', " "));
        self
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn push(&mut self, key: &str, value: &str) {
        if !self.0.is_empty() {
            self.0.push('\n');
        }
        self.0.push_str(key);
        self.0.push('=');
        self.0.push_str(value);
    }
}

/// How often `STATUS=` is refreshed when nothing changes.
pub const STATUS_EVERY: Duration = Duration::from_secs(10);

/// Readiness, status and watchdog pings from the supervisor's verdicts.
pub struct SystemdWatch {
    notifier: Notifier,
    /// Half the watchdog timeout, as systemd recommends; `None`: no watchdog.
    ping_every: Option<Duration>,
    last_ping: Option<MonoTime>,
    ready: bool,
    /// When the status was last sent, and what it said was wrong (empty: nothing).
    last_status: Option<(MonoTime, Problems, usize)>,
    /// A send failed and was logged; later failures are quieter until one succeeds.
    failing: bool,
}

/// What keeps the loop from being healthy, as the watchdog sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Problems {
    camera_blind: bool,
    late: bool,
    faulted_outputs: u32,
}

impl Problems {
    fn of(h: &HealthNow) -> Self {
        Self {
            camera_blind: !h.camera_ok,
            late: h.camera_ok && !h.on_time,
            faulted_outputs: h.faulted_outputs,
        }
    }

    fn describe(&self) -> String {
        let mut out = Vec::new();
        if self.camera_blind {
            out.push("camera blind".to_string());
        }
        if self.late {
            out.push("loop late or stalled".to_string());
        }
        if self.faulted_outputs > 0 {
            out.push(format!("{} output(s) faulted", self.faulted_outputs));
        }
        out.join(", ")
    }
}

impl SystemdWatch {
    /// The watch systemd asked for, if any: `None` (and a debug log) outside `Type=notify`.
    pub fn from_env() -> Result<Option<Self>, NotifyError> {
        let settings = Settings::from_env()?;
        let Some(socket) = settings.socket else {
            tracing::debug!(
                "NOTIFY_SOCKET is not set (not run by systemd as Type=notify): \
                 no readiness or watchdog notifications"
            );
            return Ok(None);
        };
        let watch = Self::new(Notifier::new(&socket)?, settings.watchdog);
        match watch.ping_every {
            Some(every) => tracing::info!(
                "systemd: readiness to {:?}; watchdog pings every {every:?} while the loop decides frames",
                watch.notifier.name()
            ),
            None => tracing::info!("systemd: readiness to {:?}; no watchdog", watch.notifier.name()),
        }
        Ok(Some(watch))
    }

    pub fn new(notifier: Notifier, watchdog: Option<Duration>) -> Self {
        Self {
            notifier,
            ping_every: watchdog.map(|w| w / 2),
            last_ping: None,
            ready: false,
            last_status: None,
            failing: false,
        }
    }

    fn send(&mut self, msg: &Message) {
        match self.notifier.send(msg) {
            Ok(()) => self.failing = false,
            Err(e) if !self.failing => {
                self.failing = true;
                tracing::warn!("systemd notification {:?} not sent: {e}", msg.as_str());
            }
            Err(e) => tracing::debug!("systemd notification {:?} not sent: {e}", msg.as_str()),
        }
    }
}

impl HealthWatch for SystemdWatch {
    fn tick(&mut self, h: &HealthNow) {
        // Before the first decided frame the verdict describes a loop that has not started.
        if h.decided == 0 {
            return;
        }
        let mut msg = Message::default();
        if !self.ready {
            self.ready = true;
            msg = msg.ready();
        }
        let problems = Problems::of(h);
        let status_due = match self.last_status {
            None => true,
            Some((at, p, level)) => p != problems || level != h.level || h.now.since(at) >= STATUS_EVERY,
        };
        if status_due {
            self.last_status = Some((h.now, problems, h.level));
            let state = match problems.describe() {
                d if d.is_empty() => "deciding frames".to_string(),
                d => format!("unhealthy: {d}"),
            };
            msg = msg.status(&format!("{state}; {} frames decided, ladder level {}", h.decided, h.level));
        }
        if let Some(every) = self.ping_every {
            let due = self.last_ping.is_none_or(|at| h.now.since(at) >= every);
            if due && h.alive() {
                self.last_ping = Some(h.now);
                msg = msg.watchdog();
            }
        }
        if !msg.is_empty() {
            self.send(&msg);
        }
    }

    fn max_tick(&self) -> Option<Duration> {
        // Ticks at a quarter of the timeout keep pings at most 3/4 of it apart.
        self.ping_every.map(|every| every / 2)
    }

    fn finish(&mut self) {
        self.send(&Message::default().stopping().status("stopping"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FrameLoop;
    use crate::pipeline::supervisor::tick_period;

    fn vars<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| OsString::from(v))
    }

    #[test]
    fn messages_are_key_value_lines() {
        let m = Message::default().ready().status("1 frame\ndecided").watchdog();
        assert_eq!(m.as_str(), "READY=1\nSTATUS=1 frame decided\nWATCHDOG=1");
        assert_eq!(Message::default().stopping().as_str(), "STOPPING=1");
        assert!(Message::default().is_empty());
    }

    #[test]
    fn settings_follow_sd_watchdog_enabled() {
        let s = Settings::from_vars(vars(&[("NOTIFY_SOCKET", "/run/n"), ("WATCHDOG_USEC", "200000")]), 7)
            .unwrap();
        assert_eq!(s.socket.as_deref(), Some(OsStr::new("/run/n")));
        assert_eq!(s.watchdog, Some(Duration::from_millis(200)));
        let ours = vars(&[("NOTIFY_SOCKET", "@n"), ("WATCHDOG_USEC", "3000000"), ("WATCHDOG_PID", "7")]);
        assert_eq!(Settings::from_vars(ours, 7).unwrap().watchdog, Some(Duration::from_secs(3)));
        let other = vars(&[("NOTIFY_SOCKET", "@n"), ("WATCHDOG_USEC", "3000000"), ("WATCHDOG_PID", "8")]);
        let s = Settings::from_vars(other, 7).unwrap();
        assert_eq!(s.watchdog, None, "another process's watchdog is not ours");
        assert!(s.socket.is_some(), "notifications still go out");
        assert_eq!(Settings::from_vars(vars(&[]), 7).unwrap(), Settings { socket: None, watchdog: None });
        for bad in ["0", "-5", "ten", ""] {
            let e = Settings::from_vars(vars(&[("WATCHDOG_USEC", bad)]), 7).unwrap_err();
            assert!(matches!(e, NotifyError::WatchdogUsec(_)), "{bad}: {e}");
        }
        let e = Settings::from_vars(vars(&[("WATCHDOG_USEC", "1"), ("WATCHDOG_PID", "x")]), 7).unwrap_err();
        assert!(matches!(e, NotifyError::WatchdogPid(_)), "{e}");
    }

    #[test]
    fn socket_addresses_are_paths_or_abstract_names() {
        for bad in ["", "@", "relative/sock", "vsock:2:1234"] {
            let e = Notifier::new(OsStr::new(bad)).err().unwrap();
            assert!(matches!(e, NotifyError::Address(_)), "{bad:?}: {e}");
        }
        // An abstract name: '@' stands for the leading NUL byte, as in systemd.
        let name = format!("sideline-notify-test-{}", std::process::id());
        let rx = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
        let tx = Notifier::new(OsStr::new(&format!("@{name}"))).unwrap();
        tx.send(&Message::default().ready()).unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        // A path.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        Notifier::new(path.as_os_str()).unwrap().send(&Message::default().watchdog()).unwrap();
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1");
    }

    #[test]
    fn a_full_queue_drops_the_message_instead_of_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let _rx = UnixDatagram::bind(&path).unwrap();
        let tx = Notifier::new(path.as_os_str()).unwrap();
        let msg = Message::default().watchdog();
        // Nobody reads: the receive queue fills and a send then fails at once.
        let err = (0..100_000).find_map(|_| tx.send(&msg).err()).expect("the queue never filled");
        assert!(matches!(&err, NotifyError::Io(e) if e.kind() == io::ErrorKind::WouldBlock), "{err}");
    }

    fn at(ms: u64) -> MonoTime {
        MonoTime::from_nanos(1_000_000_000 + ms * 1_000_000)
    }

    fn health(ms: u64, decided: u64, camera_ok: bool, on_time: bool) -> HealthNow {
        let frame = decided.saturating_sub(1);
        let deciding = on_time;
        HealthNow { now: at(ms), camera_ok, on_time, deciding, faulted_outputs: 0, frame, decided, level: 0 }
    }

    fn drain(rx: &UnixDatagram) -> Vec<String> {
        let mut buf = [0u8; 512];
        let mut out = Vec::new();
        while let Ok(n) = rx.recv(&mut buf) {
            out.push(String::from_utf8(buf[..n].to_vec()).unwrap());
        }
        out
    }

    #[test]
    fn ready_after_the_first_frame_and_pings_only_while_alive() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        rx.set_nonblocking(true).unwrap();
        let mut w =
            SystemdWatch::new(Notifier::new(path.as_os_str()).unwrap(), Some(Duration::from_millis(200)));
        assert_eq!(w.max_tick(), Some(Duration::from_millis(50)));

        // Started, nothing decided yet: the verdict says healthy, but nothing is sent.
        w.tick(&health(0, 0, true, true));
        assert!(drain(&rx).is_empty());
        w.tick(&health(50, 1, true, true));
        let first = drain(&rx);
        assert_eq!(first.len(), 1);
        assert!(first[0].starts_with("READY=1\nSTATUS=deciding frames; 1 frames decided"), "{first:?}");
        assert!(first[0].ends_with("\nWATCHDOG=1"), "{first:?}");
        // Half the timeout between pings, on ticks a quarter of it apart.
        for ms in [100, 150, 200, 250, 300] {
            w.tick(&health(ms, ms / 50, true, true));
        }
        assert_eq!(drain(&rx), ["WATCHDOG=1", "WATCHDOG=1"], "pings at 150 and 250 ms");
        // Camera blind: the status says why, and no pings however long it lasts.
        for ms in (350..1000).step_by(50) {
            w.tick(&health(ms, 6, false, false));
        }
        assert_eq!(drain(&rx), ["STATUS=unhealthy: camera blind; 6 frames decided, ladder level 0"]);
        // Frames again, but the loop has stopped deciding them: still no pings.
        for ms in (1000..1500).step_by(50) {
            w.tick(&health(ms, 7, true, false));
        }
        assert_eq!(drain(&rx), ["STATUS=unhealthy: loop late or stalled; 7 frames decided, ladder level 0"]);
        // Recovered: a ping at once, with the new status.
        w.tick(&health(1500, 8, true, true));
        assert_eq!(drain(&rx), ["STATUS=deciding frames; 8 frames decided, ladder level 0\nWATCHDOG=1"]);
        // Deciding, but late, or with a faulted output: the status says so and pings go on,
        // since a restart cures neither and would blind the device while it starts.
        let mut h = health(1600, 9, true, false);
        h.deciding = true;
        w.tick(&h);
        assert_eq!(
            drain(&rx),
            ["STATUS=unhealthy: loop late or stalled; 9 frames decided, ladder level 0\nWATCHDOG=1"]
        );
        let mut h = health(1700, 10, true, true);
        h.faulted_outputs = 1;
        w.tick(&h);
        assert_eq!(
            drain(&rx),
            ["STATUS=unhealthy: 1 output(s) faulted; 10 frames decided, ladder level 0\nWATCHDOG=1"]
        );
        let mut h = health(1800, 11, true, true);
        h.level = 2;
        w.tick(&h);
        assert_eq!(drain(&rx), ["STATUS=deciding frames; 11 frames decided, ladder level 2\nWATCHDOG=1"]);
        // Nothing changes for a while: the status is refreshed every STATUS_EVERY only.
        let mut statuses = 0;
        for ms in (1850..1800 + 25_000).step_by(50) {
            let mut h = health(ms, 11, true, true);
            h.level = 2;
            w.tick(&h);
            statuses += drain(&rx).iter().filter(|m| m.contains("STATUS=")).count();
        }
        assert_eq!(statuses, 2, "at 11.8 s and 21.8 s");
        w.finish();
        assert_eq!(drain(&rx), ["STOPPING=1\nSTATUS=stopping"]);
    }

    #[test]
    fn without_a_watchdog_only_readiness_and_status_go_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        rx.set_nonblocking(true).unwrap();
        let mut w = SystemdWatch::new(Notifier::new(path.as_os_str()).unwrap(), None);
        assert_eq!(w.max_tick(), None);
        for ms in (0..1000).step_by(50) {
            w.tick(&health(ms, 1 + ms / 50, true, true));
        }
        let got = drain(&rx);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(got[0].starts_with("READY=1\nSTATUS="), "{got:?}");
    }

    #[test]
    fn the_supervisor_ticks_often_enough_for_the_watchdog() {
        let cfg = FrameLoop::default(); // heartbeat 250 ms, alarms after 1000 ms
        let watch = |timeout: Option<Duration>| -> Vec<Box<dyn HealthWatch>> {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("notify");
            let _rx = UnixDatagram::bind(&path).unwrap();
            vec![Box::new(SystemdWatch::new(Notifier::new(path.as_os_str()).unwrap(), timeout))]
        };
        assert_eq!(tick_period(&cfg, &[]), Duration::from_millis(250));
        assert_eq!(tick_period(&cfg, &watch(None)), Duration::from_millis(250));
        // WatchdogSec=10s: the alarms' tick is already short enough.
        assert_eq!(tick_period(&cfg, &watch(Some(Duration::from_secs(10)))), Duration::from_millis(250));
        // A watchdog shorter than the heartbeat: the supervisor ticks at a quarter of it.
        assert_eq!(tick_period(&cfg, &watch(Some(Duration::from_millis(200)))), Duration::from_millis(50));
    }
}
