//! The serial link's state machine, without I/O: what to send, when to resend, when to give up,
//! and whether the receiver is still there.
//!
//! It exists apart from the port so every timing rule of docs/SERIAL.md is tested
//! deterministically: time is an argument, bytes go in through [`Link::on_bytes`] and come out
//! of [`Link::poll_transmit`], and the caller sleeps until [`Link::next_deadline`].
//!
//! Alerts go stop-and-wait: one ALERT is in flight at a time and the next is not sent before it
//! is acknowledged or given up on. That costs a round trip per alert (milliseconds; alerts are
//! rare) and buys order: a receiver never sees a `cleared` overtake its `raised` because the
//! first copy of the `raised` was lost. Heartbeats are not queued behind alerts and are never
//! resent; the next one is as good.

use std::collections::VecDeque;
use std::time::Duration;

use super::protocol::{Alert, Beat, Body, DecodeError, Decoder, Encoder, Frame, Hello};
use crate::clock::MonoTime;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkConfig {
    /// How long to wait for an ACK before resending.
    pub ack_timeout: Duration,
    /// Resends of an unacknowledged ALERT before it is given up on.
    pub retries: u32,
    /// No ACK at all for this long is a receiver-silent fault.
    pub silent_after: Duration,
    /// Period of HEARTBEAT (or HELLO) frames.
    pub heartbeat: Duration,
    /// ALERTs waiting to be sent, at most; past it the oldest waiting one is dropped.
    pub queue: usize,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            ack_timeout: Duration::from_millis(250),
            retries: 3,
            silent_after: Duration::from_millis(3_000),
            heartbeat: Duration::from_millis(1_000),
            queue: 64,
        }
    }
}

/// Whether alerts are getting through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    Ok,
    /// No ACK for anything for `silent_after`; the receiver was last heard at `last_heard`
    /// (the link's start if never).
    ReceiverSilent {
        last_heard: MonoTime,
    },
    /// ALERT `seq` was given up on at `since`; lasts until a later ALERT is acknowledged.
    Undelivered {
        seq: u16,
        since: MonoTime,
    },
}

impl Health {
    pub fn is_ok(&self) -> bool {
        matches!(self, Health::Ok)
    }
}

/// What the link did, since it was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// ALERTs sent for the first time.
    pub sent: u64,
    /// ALERTs sent again for want of an ACK.
    pub resent: u64,
    /// ALERTs acknowledged.
    pub acked: u64,
    /// ALERTs given up on after every retry.
    pub failed: u64,
    /// ALERTs dropped unsent because the queue was full.
    pub dropped: u64,
    /// HEARTBEAT and HELLO frames sent.
    pub heartbeats: u64,
    /// HEARTBEAT and HELLO frames acknowledged.
    pub heartbeat_acks: u64,
    /// Byte runs from the receiver that were not frames.
    pub decode_errors: u64,
    /// ACKs for nothing outstanding: duplicates, late ones, unknown numbers.
    pub ignored_acks: u64,
    /// Well-formed frames the receiver should not send (anything but ACK).
    pub unexpected: u64,
}

#[derive(Clone, Copy, Debug)]
struct InFlight {
    seq: u16,
    sent_at: MonoTime,
    /// Transmissions so far, the first included.
    attempts: u32,
}

/// HEARTBEAT/HELLO frames still waiting for their ACK. A few are remembered, so a late ACK
/// still counts as a sign of life.
const BEATS_REMEMBERED: usize = 4;

pub struct Link {
    cfg: LinkConfig,
    next_seq: u16,
    /// Waiting ALERTs; the front one is in flight when `in_flight` is set.
    queue: VecDeque<Alert>,
    in_flight: Option<InFlight>,
    encoder: Encoder,
    decoder: Decoder,
    next_beat: MonoTime,
    /// (seq, was a HELLO) of recent beats not yet acknowledged.
    beats: [Option<(u16, bool)>; BEATS_REMEMBERED],
    beat_slot: usize,
    hello_acked: bool,
    last_heard: MonoTime,
    /// The latest time the caller passed in.
    clock: MonoTime,
    undelivered: Option<(u16, MonoTime)>,
    loop_beats: u32,
    counters: Counters,
    last_error: Option<DecodeError>,
}

impl Link {
    /// A link that starts at `now`: it says HELLO at once, and the receiver has
    /// `silent_after` from now to answer anything.
    pub fn new(cfg: LinkConfig, now: MonoTime) -> Self {
        let cfg = LinkConfig { queue: cfg.queue.max(1), ..cfg };
        Self {
            queue: VecDeque::with_capacity(cfg.queue),
            cfg,
            next_seq: 0,
            in_flight: None,
            encoder: Encoder::default(),
            decoder: Decoder::default(),
            next_beat: now,
            beats: [None; BEATS_REMEMBERED],
            beat_slot: 0,
            hello_acked: false,
            last_heard: now,
            clock: now,
            undelivered: None,
            loop_beats: 0,
            counters: Counters::default(),
            last_error: None,
        }
    }

    /// Starts numbering at `seq` (tests of wrap-around; a device always starts at 0).
    pub fn with_first_seq(mut self, seq: u16) -> Self {
        self.next_seq = seq;
        self
    }

    /// Queues an ALERT. Returns false when the queue was full and the oldest waiting ALERT was
    /// dropped to make room: the newest state of the world matters most.
    pub fn queue(&mut self, alert: Alert) -> bool {
        if self.queue.len() < self.cfg.queue {
            self.queue.push_back(alert);
            return true;
        }
        self.counters.dropped += 1;
        // The one in flight stays: the receiver may already hold it. With a queue of one
        // holding only that, the new alert is the one dropped.
        let oldest_waiting = usize::from(self.in_flight.is_some());
        if self.queue.remove(oldest_waiting).is_some() {
            self.queue.push_back(alert);
        }
        false
    }

    /// Takes bytes read from the port.
    pub fn on_bytes(&mut self, bytes: &[u8], now: MonoTime) {
        self.tick(now);
        for &b in bytes {
            match self.decoder.push(b) {
                None => {}
                Some(Err(e)) => {
                    self.counters.decode_errors += 1;
                    self.last_error = Some(e);
                }
                Some(Ok(Frame { seq, body: Body::Ack })) => self.on_ack(seq, now),
                Some(Ok(_)) => self.counters.unexpected += 1,
            }
        }
    }

    fn on_ack(&mut self, seq: u16, now: MonoTime) {
        if self.in_flight.is_some_and(|f| f.seq == seq) {
            self.in_flight = None;
            self.queue.pop_front();
            self.counters.acked += 1;
            self.undelivered = None;
            self.last_heard = now;
            return;
        }
        if let Some(slot) = self.beats.iter_mut().find(|b| matches!(b, Some((s, _)) if *s == seq)) {
            if let Some((_, hello)) = slot.take() {
                self.hello_acked |= hello;
            }
            self.counters.heartbeat_acks += 1;
            self.last_heard = now;
            return;
        }
        self.counters.ignored_acks += 1;
    }

    /// The next frame to write, if any is due at `now`; call again until `None`. The slice is
    /// valid until the next call.
    pub fn poll_transmit(&mut self, now: MonoTime) -> Option<&[u8]> {
        self.tick(now);
        if let Some(f) = self.in_flight {
            if now >= f.sent_at.plus(self.cfg.ack_timeout) {
                if f.attempts <= self.cfg.retries {
                    let alert = *self.queue.front()?;
                    self.in_flight = Some(InFlight { sent_at: now, attempts: f.attempts + 1, ..f });
                    self.counters.resent += 1;
                    return Some(self.encoder.encode(&Frame { seq: f.seq, body: Body::Alert(alert) }));
                }
                self.in_flight = None;
                self.queue.pop_front();
                self.counters.failed += 1;
                self.undelivered = Some((f.seq, now));
            }
        }
        if self.in_flight.is_none() {
            if let Some(&alert) = self.queue.front() {
                let seq = self.take_seq();
                self.in_flight = Some(InFlight { seq, sent_at: now, attempts: 1 });
                self.counters.sent += 1;
                return Some(self.encoder.encode(&Frame { seq, body: Body::Alert(alert) }));
            }
        }
        if now >= self.next_beat {
            self.next_beat = now.plus(self.cfg.heartbeat);
            let seq = self.take_seq();
            let beat = Beat {
                time_us: now.as_micros(),
                given_up: self.counters.failed as u32,
                loop_beats: self.loop_beats,
            };
            // Until the receiver has answered a HELLO, every beat is one: a receiver that
            // starts after the device still learns its settings within a heartbeat period.
            let hello = !self.hello_acked;
            let body = if hello {
                Body::Hello(Hello {
                    beat,
                    heartbeat_ms: millis(self.cfg.heartbeat),
                    ack_timeout_ms: millis(self.cfg.ack_timeout),
                })
            } else {
                Body::Heartbeat(beat)
            };
            self.beats[self.beat_slot] = Some((seq, hello));
            self.beat_slot = (self.beat_slot + 1) % BEATS_REMEMBERED;
            self.counters.heartbeats += 1;
            return Some(self.encoder.encode(&Frame { seq, body }));
        }
        None
    }

    /// When the link next needs [`poll_transmit`](Self::poll_transmit) (or a look at
    /// [`status`](Self::status)) even if nothing is read: at or before the latest time passed
    /// in when something is due already.
    pub fn next_deadline(&self) -> MonoTime {
        let mut d = self.next_beat;
        match self.in_flight {
            Some(f) => d = d.min(f.sent_at.plus(self.cfg.ack_timeout)),
            None if !self.queue.is_empty() => return self.clock,
            None => {}
        }
        let silent_at = self.last_heard.plus(self.cfg.silent_after);
        // Only while still in the future, or a silent receiver would make the caller spin.
        if silent_at > self.clock {
            d = d.min(silent_at);
        }
        d
    }

    pub fn status(&self, now: MonoTime) -> Health {
        if now.since(self.last_heard) >= self.cfg.silent_after {
            Health::ReceiverSilent { last_heard: self.last_heard }
        } else if let Some((seq, since)) = self.undelivered {
            Health::Undelivered { seq, since }
        } else {
            Health::Ok
        }
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The latest byte run from the receiver that was not a frame, and why.
    pub fn last_decode_error(&self) -> Option<DecodeError> {
        self.last_error
    }

    /// Nothing waiting and nothing in flight.
    pub fn is_idle(&self) -> bool {
        self.queue.is_empty()
    }

    /// Sets the loop heartbeat count the next beats carry.
    pub fn set_loop_beats(&mut self, n: u32) {
        self.loop_beats = n;
    }

    /// The port was closed and opened again: a half-read frame is gone, and the receiver may
    /// have restarted, so say HELLO again and resend what is in flight now.
    pub fn reopened(&mut self, now: MonoTime) {
        self.tick(now);
        self.decoder.reset();
        self.hello_acked = false;
        self.next_beat = now;
        if let Some(f) = &mut self.in_flight {
            f.sent_at =
                MonoTime::from_nanos(now.as_nanos().saturating_sub(self.cfg.ack_timeout.as_nanos() as u64));
        }
    }

    fn take_seq(&mut self) -> u16 {
        let s = self.next_seq;
        self.next_seq = s.wrapping_add(1);
        s
    }

    fn tick(&mut self, now: MonoTime) {
        self.clock = self.clock.max(now);
    }
}

fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::serial::protocol::{kind_code, RuleName, UNKNOWN_CAPTURE, UNKNOWN_LATENCY};
    use crate::config::Severity;
    use crate::rules::{AlertState, RuleKind};

    const MS: u64 = 1_000_000;

    fn t(ms: u64) -> MonoTime {
        MonoTime::from_nanos(1_000 * MS + ms * MS)
    }

    fn cfg() -> LinkConfig {
        LinkConfig {
            ack_timeout: Duration::from_millis(100),
            retries: 2,
            silent_after: Duration::from_millis(1_000),
            heartbeat: Duration::from_millis(300),
            queue: 4,
        }
    }

    fn alert(track: u32) -> Alert {
        Alert {
            state: AlertState::Raised,
            severity: Severity::Critical,
            kind: kind_code(RuleKind::PlayerDown),
            track,
            capture_us: UNKNOWN_CAPTURE,
            latency_us: UNKNOWN_LATENCY,
            name: RuleName::new("down"),
        }
    }

    /// Everything due at `now`, decoded.
    fn drain(link: &mut Link, now: MonoTime) -> Vec<Frame> {
        let mut dec = Decoder::default();
        let mut out = Vec::new();
        while let Some(bytes) = link.poll_transmit(now) {
            out.extend(dec.feed(bytes).map(|r| r.expect("the link sends valid frames")));
            assert!(out.len() < 100, "poll_transmit never stops");
        }
        out
    }

    fn ack(link: &mut Link, seq: u16, now: MonoTime) {
        let bytes = Encoder::default().encode(&Frame { seq, body: Body::Ack }).to_vec();
        link.on_bytes(&bytes, now);
    }

    fn alerts(frames: &[Frame]) -> Vec<(u16, u32)> {
        frames
            .iter()
            .filter_map(|f| match f.body {
                Body::Alert(a) => Some((f.seq, a.track)),
                _ => None,
            })
            .collect()
    }

    /// A link past its HELLO, acknowledged, at t(0).
    fn started() -> Link {
        let mut l = Link::new(cfg(), t(0));
        let f = drain(&mut l, t(0));
        assert!(matches!(f[..], [Frame { seq: 0, body: Body::Hello(_) }]), "{f:?}");
        ack(&mut l, 0, t(1));
        l
    }

    #[test]
    fn hello_first_and_repeated_until_acknowledged() {
        let mut l = Link::new(cfg(), t(0));
        let f = drain(&mut l, t(0));
        let Body::Hello(h) = f[0].body else { panic!("{f:?}") };
        assert_eq!((h.heartbeat_ms, h.ack_timeout_ms, h.beat.time_us), (300, 100, t(0).as_micros()));
        assert!(drain(&mut l, t(299)).is_empty());
        assert!(matches!(drain(&mut l, t(300))[..], [Frame { seq: 1, body: Body::Hello(_) }]));
        ack(&mut l, 1, t(310));
        assert!(matches!(drain(&mut l, t(610))[..], [Frame { seq: 2, body: Body::Heartbeat(_) }]));
        assert_eq!(l.counters().heartbeat_acks, 1);
    }

    #[test]
    fn ack_clears_the_alert() {
        let mut l = started();
        l.queue(alert(1));
        assert_eq!(l.next_deadline(), t(1), "a queued alert is due at once");
        let f = drain(&mut l, t(10));
        assert_eq!(alerts(&f), vec![(1, 1)]);
        ack(&mut l, 1, t(20));
        assert!(l.is_idle());
        assert!(alerts(&drain(&mut l, t(500))).is_empty(), "nothing resent after the ACK");
        let c = l.counters();
        assert_eq!((c.sent, c.acked, c.resent, c.failed), (1, 1, 0, 0));
        assert_eq!(l.status(t(500)), Health::Ok);
    }

    #[test]
    fn missing_ack_resends_after_the_timeout_with_the_same_seq() {
        let mut l = started();
        l.queue(alert(1));
        assert_eq!(alerts(&drain(&mut l, t(10))), vec![(1, 1)]);
        assert_eq!(l.next_deadline(), t(110));
        assert!(alerts(&drain(&mut l, t(109))).is_empty());
        assert_eq!(alerts(&drain(&mut l, t(110))), vec![(1, 1)]);
        ack(&mut l, 1, t(120));
        assert_eq!((l.counters().sent, l.counters().resent, l.counters().acked), (1, 1, 1));
    }

    #[test]
    fn resends_keep_order_and_the_next_alert_waits() {
        let mut l = started();
        for track in 1..=3 {
            l.queue(alert(track));
        }
        let mut sent = alerts(&drain(&mut l, t(10)));
        sent.extend(alerts(&drain(&mut l, t(110))));
        assert_eq!(sent, vec![(1, 1), (1, 1)], "the first is resent before the second goes");
        ack(&mut l, 1, t(115));
        sent = alerts(&drain(&mut l, t(115)));
        ack(&mut l, 2, t(120));
        sent.extend(alerts(&drain(&mut l, t(120))));
        assert_eq!(sent, vec![(2, 2), (3, 3)]);
    }

    #[test]
    fn gives_up_after_the_retries_counts_it_and_reports_it() {
        let mut l = started();
        l.queue(alert(1));
        l.queue(alert(2));
        let mut sent = Vec::new();
        for ms in [10, 110, 210] {
            sent.extend(alerts(&drain(&mut l, t(ms))));
        }
        assert_eq!(sent, vec![(1, 1); 3], "first send and two retries");
        let f = drain(&mut l, t(310));
        assert_eq!(alerts(&f), vec![(2, 2)], "given up on 1, the next goes");
        // The beat due at 300 goes after it and tells the receiver one was lost.
        assert!(f.iter().any(|f| matches!(f.body, Body::Heartbeat(b) if b.given_up == 1)), "{f:?}");
        assert_eq!(l.counters().failed, 1);
        assert_eq!(l.status(t(310)), Health::Undelivered { seq: 1, since: t(310) });
        ack(&mut l, 3, t(320));
        assert_eq!(
            l.status(t(320)),
            Health::Undelivered { seq: 1, since: t(310) },
            "a heartbeat ACK is not enough"
        );
        ack(&mut l, 2, t(330));
        assert_eq!(l.status(t(330)), Health::Ok, "a later alert delivered clears it");
    }

    #[test]
    fn silence_is_a_fault_and_clears_when_acks_resume() {
        let mut l = started();
        // Heard at t(1); nothing acknowledged after that.
        for ms in (0..=1_000).step_by(50) {
            drain(&mut l, t(ms));
        }
        assert_eq!(l.status(t(1_000)), Health::Ok);
        assert_eq!(l.next_deadline(), t(1_001), "wakes for the fault");
        assert_eq!(l.status(t(1_001)), Health::ReceiverSilent { last_heard: t(1) });
        drain(&mut l, t(1_001));
        assert!(l.next_deadline() > t(1_001), "no spinning once silent");
        // The receiver comes back and acknowledges the latest heartbeat.
        let f = drain(&mut l, t(1_300));
        let seq = f.iter().find(|f| matches!(f.body, Body::Heartbeat(_))).map(|f| f.seq);
        ack(&mut l, seq.expect("a heartbeat is due"), t(1_305));
        assert_eq!(l.status(t(1_305)), Health::Ok);
    }

    #[test]
    fn silence_from_the_start_when_nobody_answers() {
        let mut l = Link::new(cfg(), t(0));
        for ms in (0..=1_000).step_by(100) {
            drain(&mut l, t(ms));
        }
        assert_eq!(l.status(t(1_000)), Health::ReceiverSilent { last_heard: t(0) });
        let hellos = l.counters().heartbeats;
        assert_eq!(hellos, 4, "HELLO at 0, 300, 600, 900");
    }

    #[test]
    fn sequence_numbers_wrap() {
        let mut l = Link::new(cfg(), t(0)).with_first_seq(0xFFFE);
        assert_eq!(drain(&mut l, t(0))[0].seq, 0xFFFE);
        ack(&mut l, 0xFFFE, t(1));
        l.queue(alert(1));
        l.queue(alert(2));
        assert_eq!(alerts(&drain(&mut l, t(2))), vec![(0xFFFF, 1)]);
        ack(&mut l, 0xFFFF, t(3));
        assert_eq!(alerts(&drain(&mut l, t(3))), vec![(0, 2)]);
        ack(&mut l, 0, t(4));
        assert_eq!(l.counters().acked, 2);
        assert!(l.is_idle());
    }

    #[test]
    fn duplicate_and_unknown_acks_are_ignored() {
        let mut l = started();
        l.queue(alert(1));
        l.queue(alert(2));
        drain(&mut l, t(10));
        ack(&mut l, 1, t(20));
        ack(&mut l, 1, t(21)); // duplicate
        ack(&mut l, 0, t(22)); // the HELLO's, already taken
        ack(&mut l, 999, t(23)); // never sent
        assert_eq!(l.counters().ignored_acks, 3);
        assert_eq!(l.counters().acked, 1);
        // Alert 2 is in flight (seq 2) and is not cleared by the stray ACKs.
        assert_eq!(alerts(&drain(&mut l, t(22))), vec![(2, 2)]);
        assert_eq!(alerts(&drain(&mut l, t(122))), vec![(2, 2)]);
        // Stray ACKs are not signs of life either.
        for ms in (200..1_100).step_by(100) {
            drain(&mut l, t(ms));
            ack(&mut l, 777, t(ms));
        }
        assert!(matches!(l.status(t(1_100)), Health::ReceiverSilent { .. }));
    }

    #[test]
    fn late_heartbeat_ack_still_counts_as_life() {
        let mut l = started();
        let f = drain(&mut l, t(300));
        let first = f[0].seq;
        drain(&mut l, t(600));
        ack(&mut l, first, t(650));
        assert_eq!(l.counters().heartbeat_acks, 2);
        assert_eq!(l.status(t(1_600)), Health::Ok, "heard at 650");
    }

    #[test]
    fn full_queue_drops_the_oldest_waiting_alert() {
        let mut l = started();
        l.queue(alert(1));
        drain(&mut l, t(10)); // 1 in flight
        for track in 2..=4 {
            assert!(l.queue(alert(track)));
        }
        assert!(!l.queue(alert(5)), "4 places: 1 in flight, 2..4 waiting");
        assert_eq!(l.counters().dropped, 1);
        let mut got = Vec::new();
        for (i, ms) in [20u64, 30, 40, 50].iter().enumerate() {
            ack(&mut l, i as u16 + 1, t(*ms));
            got.extend(alerts(&drain(&mut l, t(*ms))));
        }
        assert_eq!(got.iter().map(|a| a.1).collect::<Vec<_>>(), vec![3, 4, 5], "2 was dropped");
    }

    #[test]
    fn garbage_and_unexpected_frames_are_counted() {
        let mut l = started();
        l.on_bytes(b"\x00\x05junk\x00", t(5));
        let hb =
            Encoder::default().encode(&Frame { seq: 3, body: Body::Heartbeat(Beat::default()) }).to_vec();
        l.on_bytes(&hb, t(6));
        assert_eq!((l.counters().decode_errors, l.counters().unexpected), (1, 1));
        assert!(l.last_decode_error().is_some());
    }

    #[test]
    fn reopened_says_hello_and_resends_at_once() {
        let mut l = started();
        l.queue(alert(1));
        drain(&mut l, t(10));
        l.reopened(t(20));
        let f = drain(&mut l, t(20));
        assert_eq!(alerts(&f), vec![(1, 1)]);
        assert!(f.iter().any(|f| matches!(f.body, Body::Hello(_))));
    }
}
