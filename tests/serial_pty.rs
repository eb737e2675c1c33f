//! The serial alert output on a real kernel tty: a pseudo-terminal pair, the output on the
//! slave (opened by path, through tokio-serial, like `/dev/ttyTHS1`), and this test playing the
//! receiver on the master with the protocol module's own decoder. It checks what a unit test
//! of the link cannot: that the bytes really cross a tty intact, that ACKs are read back in
//! time, and that the fault reaches `drive`.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver as Rx};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sideline::alert::serial::link::LinkConfig;
use sideline::alert::serial::protocol::{
    kind_code, Alert, Body, Decoder, Encoder, Frame, RuleName, UNKNOWN_LATENCY,
};
use sideline::alert::serial::{SerialOutput, Settings};
use sideline::alert::{AlertOutput, Signal};
use sideline::clock::MonoTime;
use sideline::config::Severity;
use sideline::rules::{AlertState, RuleKind, RuleMeta};

const ACK_TIMEOUT: Duration = Duration::from_millis(100);
const SILENT_AFTER: Duration = Duration::from_millis(600);
const HEARTBEAT: Duration = Duration::from_millis(200);
/// Room for scheduling on a loaded 2-core machine.
const MARGIN: Duration = Duration::from_millis(500);

/// A pseudo-terminal pair in raw mode, and the slave's path.
struct Pty {
    master: File,
    slave: OwnedFd,
    path: String,
}

fn open_pty() -> Pty {
    let (mut m, mut s) = (-1, -1);
    // SAFETY: both out-pointers are valid; null name/termios/winsize are allowed.
    let rc =
        unsafe { libc::openpty(&mut m, &mut s, std::ptr::null_mut(), std::ptr::null(), std::ptr::null()) };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: openpty returned two fresh descriptors that we now own.
    let (master, slave) = unsafe { (File::from_raw_fd(m), OwnedFd::from_raw_fd(s)) };
    // Raw mode, so no line discipline turns 0x0a into 0x0d 0x0a or eats 0x03.
    // SAFETY: termios is plain data; tcgetattr fills it before it is used.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    unsafe {
        assert_eq!(libc::tcgetattr(slave.as_raw_fd(), &mut t), 0);
        libc::cfmakeraw(&mut t);
        assert_eq!(libc::tcsetattr(slave.as_raw_fd(), libc::TCSANOW, &t), 0);
    }
    let mut name = [0 as libc::c_char; 256];
    // SAFETY: the buffer and its length match.
    let rc = unsafe { libc::ttyname_r(slave.as_raw_fd(), name.as_mut_ptr(), name.len()) };
    assert_eq!(rc, 0, "ttyname_r");
    // SAFETY: ttyname_r wrote a NUL-terminated string into `name`.
    let path = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }.to_string_lossy().into_owned();
    Pty { master, slave, path }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Policy {
    AckAll,
    /// Do not acknowledge the first transmission of the next ALERT.
    WithholdNextAlert,
    /// Read everything, acknowledge nothing.
    Silent,
}

/// The test's receiver: decodes what the device sends and acknowledges it per the policy.
struct FakeReceiver {
    policy: Arc<Mutex<Policy>>,
    frames: Rx<(Instant, Frame)>,
    stop: Arc<AtomicBool>,
    errors: Arc<Mutex<Vec<String>>>,
    handle: Option<JoinHandle<()>>,
    /// Held open for the receiver's lifetime, so the master never sees a hang-up.
    _slave: OwnedFd,
}

impl FakeReceiver {
    fn start(mut master: File, slave: OwnedFd) -> Self {
        let policy = Arc::new(Mutex::new(Policy::AckAll));
        let stop = Arc::new(AtomicBool::new(false));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let (tx, frames) = channel();
        let (p, s, e) = (policy.clone(), stop.clone(), errors.clone());
        let handle = std::thread::spawn(move || {
            let mut dec = Decoder::default();
            let mut enc = Encoder::default();
            let mut buf = [0u8; 512];
            while !s.load(Ordering::Relaxed) {
                let mut pfd = libc::pollfd { fd: master.as_raw_fd(), events: libc::POLLIN, revents: 0 };
                // SAFETY: one valid pollfd.
                if unsafe { libc::poll(&mut pfd, 1, 20) } <= 0 {
                    continue;
                }
                let n = match master.read(&mut buf) {
                    Ok(n) => n,
                    Err(_) => break,
                };
                let got: Vec<_> = dec.feed(&buf[..n]).collect();
                for r in got {
                    let f = match r {
                        Ok(f) => f,
                        Err(err) => {
                            e.lock().unwrap().push(err.to_string());
                            continue;
                        }
                    };
                    let now = Instant::now();
                    let ack = {
                        let mut policy = p.lock().unwrap();
                        match (*policy, f.body) {
                            (Policy::Silent, _) => false,
                            (Policy::WithholdNextAlert, Body::Alert(_)) => {
                                *policy = Policy::AckAll;
                                false
                            }
                            _ => true,
                        }
                    };
                    if ack {
                        let bytes = enc.encode(&Frame { seq: f.seq, body: Body::Ack });
                        if master.write_all(bytes).is_err() {
                            return;
                        }
                    }
                    let _ = tx.send((now, f));
                }
            }
        });
        Self { policy, frames, stop, errors, handle: Some(handle), _slave: slave }
    }

    fn set(&self, p: Policy) {
        *self.policy.lock().unwrap() = p;
    }

    /// The next frame for which `want` is true, within `within`; the others are skipped.
    fn next(&self, within: Duration, want: impl Fn(&Frame) -> bool) -> Option<(Instant, Frame)> {
        let end = Instant::now() + within;
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match self.frames.recv_timeout(left) {
                Ok((t, f)) if want(&f) => return Some((t, f)),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    }

    fn next_alert(&self, within: Duration) -> Option<(Instant, u16, Alert)> {
        let (t, f) = self.next(within, |f| matches!(f.body, Body::Alert(_)))?;
        match f.body {
            Body::Alert(a) => Some((t, f.seq, a)),
            _ => None,
        }
    }
}

impl Drop for FakeReceiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn settings(path: &str) -> Settings {
    Settings {
        port: path.to_string(),
        baud: 115_200,
        link: LinkConfig {
            ack_timeout: ACK_TIMEOUT,
            retries: 2,
            silent_after: SILENT_AFTER,
            heartbeat: HEARTBEAT,
            queue: 64,
        },
    }
}

fn road() -> RuleMeta {
    RuleMeta {
        name: "road".into(),
        kind: RuleKind::ZoneIncursion,
        severity: Severity::Warning,
        outputs: vec![0],
    }
}

/// Receiver first, output second: the output is dropped first, while the receiver still reads.
fn rig() -> (FakeReceiver, SerialOutput) {
    let pty = open_pty();
    let out =
        SerialOutput::open_with("plc", settings(&pty.path)).expect("the pty slave opens as a serial port");
    (FakeReceiver::start(pty.master, pty.slave), out)
}

fn wait_until(within: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < within {
        if cond() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

#[test]
fn an_alert_arrives_with_its_fields_and_is_acknowledged() {
    let (rx, mut out) = rig();
    let (_, hello) = rx.next(MARGIN, |_| true).expect("a frame within the margin");
    assert!(
        matches!(hello.body, Body::Hello(h) if h.heartbeat_ms == 200 && h.ack_timeout_ms == 100),
        "{hello:?}"
    );
    assert_eq!(hello.seq, 0);

    let rule = road();
    let arrived = MonoTime::now();
    let capture = MonoTime::from_nanos(arrived.as_nanos().saturating_sub(40_000_000));
    out.drive(&Signal { rule: &rule, state: AlertState::Raised, track: 6, frame: 98, capture, arrived })
        .expect("drive");
    let (_, _, a) = rx.next_alert(MARGIN).expect("the alert crosses the tty");
    assert_eq!(a.state, AlertState::Raised);
    assert_eq!(a.severity, Severity::Warning);
    assert_eq!(a.kind, kind_code(RuleKind::ZoneIncursion));
    assert_eq!(a.track, 6);
    assert_eq!(a.name.as_bytes(), b"road");
    // Its own capture time, and the time from the frame's arrival to the frame on the wire.
    assert_eq!(a.capture_us, capture.as_micros());
    assert!(a.latency_us < 1_000_000 && a.latency_us != UNKNOWN_LATENCY, "{}", a.latency_us);

    // Through the lower-level entry point every field crosses as given, bytes 0x00 and 0x0a included.
    let sent = Alert {
        state: AlertState::Cleared,
        severity: Severity::Critical,
        kind: kind_code(RuleKind::Whistle),
        track: 0x0A00_0A0D,
        capture_us: 0x0000_0A0D_0003_0011,
        latency_us: 0x0A0A,
        name: RuleName::new("whistle\n\r\u{3}\u{11}\u{13}"),
    };
    out.send(sent).expect("send");
    let (_, _, a) = rx.next_alert(MARGIN).expect("the second alert");
    assert_eq!(a, sent);

    assert!(wait_until(MARGIN, || out.status().counters.acked == 2).is_some(), "{:?}", out.status());
    let s = out.status();
    assert!(s.is_ok() && !out.is_faulted(), "{s:?}");
    assert_eq!((s.counters.sent, s.counters.resent, s.counters.failed), (2, 0, 0));
    assert_eq!(s.counters.decode_errors, 0);
    assert!(rx.errors.lock().unwrap().is_empty(), "{:?}", rx.errors.lock().unwrap());
}

#[test]
fn a_withheld_ack_makes_the_same_sequence_number_come_again() {
    let (rx, mut out) = rig();
    rx.next(MARGIN, |f| matches!(f.body, Body::Hello(_))).expect("hello");
    rx.set(Policy::WithholdNextAlert);
    let rule = road();
    out.drive(&Signal {
        rule: &rule,
        state: AlertState::Raised,
        track: 1,
        frame: 1,
        capture: MonoTime::now(),
        arrived: MonoTime::now(),
    })
    .expect("drive");
    let (t1, seq1, a1) = rx.next_alert(MARGIN).expect("first copy");
    let (t2, seq2, a2) = rx.next_alert(ACK_TIMEOUT + MARGIN).expect("the resend");
    assert_eq!((seq2, a2), (seq1, a1), "a resend is the same frame");
    // Both times are taken on reading, so allow for the first read having been late.
    assert!(t2 - t1 >= ACK_TIMEOUT - Duration::from_millis(20), "resent after {:?}", t2 - t1);
    assert!(wait_until(MARGIN, || out.status().counters.acked == 1).is_some());
    let c = out.status().counters;
    assert_eq!((c.sent, c.resent, c.failed), (1, 1, 0));

    out.drive(&Signal {
        rule: &rule,
        state: AlertState::Cleared,
        track: 1,
        frame: 2,
        capture: MonoTime::now(),
        arrived: MonoTime::now(),
    })
    .expect("drive");
    let (_, seq3, a3) = rx.next_alert(MARGIN).expect("the next alert");
    assert_ne!(seq3, seq1);
    assert_eq!(a3.state, AlertState::Cleared);
}

#[test]
fn a_silent_receiver_is_a_fault_that_drive_reports_until_acks_resume() {
    let (rx, mut out) = rig();
    rx.next(MARGIN, |f| matches!(f.body, Body::Hello(_))).expect("hello");
    let rule = road();
    let signal = |track| Signal {
        rule: &rule,
        state: AlertState::Raised,
        track,
        frame: 1,
        capture: MonoTime::now(),
        arrived: MonoTime::now(),
    };
    out.drive(&signal(1)).expect("a healthy link");
    assert_eq!(rx.next_alert(MARGIN).map(|(_, _, a)| a.track), Some(1));
    assert!(wait_until(MARGIN, || out.status().counters.acked == 1).is_some());

    rx.set(Policy::Silent);
    let quiet = Instant::now();
    // The last ACK was at most a heartbeat ago: no fault this early.
    std::thread::sleep(Duration::from_millis(100));
    assert!(!out.is_faulted(), "{:?}", out.status());
    let took = wait_until(SILENT_AFTER + MARGIN, || out.is_faulted());
    assert!(took.is_some(), "no fault {:?} after the receiver fell silent", quiet.elapsed());
    assert!(quiet.elapsed() <= SILENT_AFTER + MARGIN, "{:?}", quiet.elapsed());

    // The alert is still queued and sent; `drive` says why it cannot be trusted.
    let e = out.drive(&signal(2)).expect_err("a silent receiver is a drive failure").to_string();
    assert!(e.contains("silent") && e.contains("plc"), "{e}");
    let (_, seq, a) = rx.next_alert(MARGIN).expect("sent all the same");
    assert_eq!(a.track, 2);
    let (_, again, _) = rx.next_alert(ACK_TIMEOUT + MARGIN).expect("and resent");
    assert_eq!(again, seq);

    // The receiver answers again: the silence clears at the next heartbeat; the alert given up
    // on meanwhile stays a fault until a later alert is acknowledged.
    rx.set(Policy::AckAll);
    assert!(
        wait_until(HEARTBEAT + MARGIN, || !matches!(
            out.status().health,
            sideline::alert::serial::link::Health::ReceiverSilent { .. }
        ))
        .is_some(),
        "{:?}",
        out.status()
    );
    let _ = out.drive(&signal(3));
    assert!(wait_until(ACK_TIMEOUT * 4 + MARGIN, || !out.is_faulted()).is_some(), "{:?}", out.status());
    out.drive(&signal(4)).expect("healthy again");
    let c = out.status().counters;
    assert!(c.failed <= 1 && c.resent >= 1, "{c:?}");
    assert!(rx.errors.lock().unwrap().is_empty());
}
