//! The supervisor: a thread that watches the camera and the decision loop from outside.
//!
//! It raises the camera-blind alarm when no fresh frame arrives for `blind_after_ms`, the
//! loop-stalled alarm when frames arrive but none is decided for `stall_after_ms`, and clears
//! them on recovery. It toggles the heartbeat output only while the loop is deciding frames on
//! time; otherwise it holds the line low, so external hardware sees a stall even if this
//! process cannot say anything else.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;

use super::output::{AlertMsg, OutputMsg, OutputTx};
use crate::clock::MonoTime;
use crate::config::FrameLoop;
use crate::geometry::Point;
use crate::rules::{Alert, AlertState};

/// What the camera, the loop and the outputs tell the supervisor, lock-free.
#[derive(Debug)]
pub struct Health {
    last_arrival: AtomicU64,
    last_decided: AtomicU64,
    /// Arrival of the first frame after the last decision: a stall counts from there, not
    /// from the last decision, which a camera that was away for a while leaves far behind.
    waiting_since: AtomicU64,
    last_met: AtomicBool,
    last_frame: AtomicU64,
    decided: AtomicU64,
    level: AtomicUsize,
    faulted_outputs: AtomicU32,
}

/// Follows the loop's health from the supervisor thread: the systemd watchdog, the update
/// health gate. Called on every supervisor tick (a few ms to `heartbeat_ms` apart); must not
/// block for long, since the heartbeat and the alarms share the thread.
pub trait HealthWatch: Send {
    fn tick(&mut self, health: &HealthNow);

    /// The longest gap between ticks this watch can live with (the watchdog's does); the
    /// supervisor ticks at least this often.
    fn max_tick(&self) -> Option<Duration> {
        None
    }

    /// The supervisor is stopping: the run is over.
    fn finish(&mut self) {}
}

/// One supervisor tick's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthNow {
    pub now: MonoTime,
    /// The camera delivered a frame within `blind_after_ms`.
    pub camera_ok: bool,
    /// The loop decided a frame recently and met its last deadline: the heartbeat condition.
    pub on_time: bool,
    /// The loop decided a frame within `stall_after_ms`: it is running, on time or not.
    pub deciding: bool,
    /// Outputs whose last drive failed (each one has `output-fault` raised).
    pub faulted_outputs: u32,
    /// Last decided frame.
    pub frame: u64,
    /// Frames decided so far: 0 until the loop has decided its first one (until then the
    /// other fields describe a loop that has not started, not a healthy one).
    pub decided: u64,
    /// Current level of the degradation ladder (0: everything on every frame).
    pub level: usize,
}

impl HealthNow {
    /// Everything a field device needs: camera, loop and outputs working.
    pub fn healthy(&self) -> bool {
        self.camera_ok && self.on_time && self.faulted_outputs == 0
    }

    /// Camera delivering and loop deciding, however late: what the systemd watchdog needs. A
    /// restart can cure a hung loop or a wedged camera, not a slow model or a cut wire; those
    /// raise their own alarms, and restarting for them would only blind the device meanwhile.
    pub fn alive(&self) -> bool {
        self.camera_ok && self.deciding
    }
}

impl Health {
    pub fn new(now: MonoTime) -> Self {
        Self {
            last_arrival: AtomicU64::new(now.as_nanos()),
            last_decided: AtomicU64::new(now.as_nanos()),
            waiting_since: AtomicU64::new(now.as_nanos()),
            last_met: AtomicBool::new(true),
            last_frame: AtomicU64::new(0),
            decided: AtomicU64::new(0),
            level: AtomicUsize::new(0),
            faulted_outputs: AtomicU32::new(0),
        }
    }

    /// The output stage's count of outputs whose last drive failed.
    pub fn set_faulted_outputs(&self, n: u32) {
        self.faulted_outputs.store(n, Ordering::Relaxed);
    }

    /// The camera delivered a frame.
    pub fn frame_arrived(&self, at: MonoTime) {
        if self.last_arrival.load(Ordering::Acquire) <= self.last_decided.load(Ordering::Acquire) {
            self.waiting_since.store(at.as_nanos(), Ordering::Release);
        }
        self.last_arrival.store(at.as_nanos(), Ordering::Release);
    }

    /// The loop decided a frame; `met` says whether it met its deadline.
    pub fn frame_decided(&self, frame: u64, at: MonoTime, met: bool) {
        self.last_frame.store(frame, Ordering::Relaxed);
        self.decided.fetch_add(1, Ordering::Relaxed);
        self.last_met.store(met, Ordering::Relaxed);
        self.last_decided.store(at.as_nanos(), Ordering::Release);
    }

    /// The ladder moved to `level`.
    pub fn set_level(&self, level: usize) {
        self.level.store(level, Ordering::Relaxed);
    }

    fn since(v: &AtomicU64, now: MonoTime) -> Duration {
        now.since(MonoTime::from_nanos(v.load(Ordering::Acquire)))
    }

    /// How long frames have waited for the loop: since the last decision, or since the first
    /// frame that came after it, whichever is later.
    fn undecided_for(&self, now: MonoTime) -> Duration {
        Self::since(&self.last_decided, now).min(Self::since(&self.waiting_since, now))
    }
}

/// How often the supervisor looks: often enough to raise an alarm well within its configured
/// time, and as often as the watches need (the systemd watchdog's interval can be shorter than
/// the heartbeat's).
pub fn tick_period(cfg: &FrameLoop, watches: &[Box<dyn HealthWatch>]) -> Duration {
    let ms = |v: u32| Duration::from_millis(v as u64);
    let alarms = ms(cfg.heartbeat_ms).min(ms(cfg.blind_after_ms) / 4).min(ms(cfg.stall_after_ms) / 4);
    watches.iter().filter_map(|w| w.max_tick()).fold(alarms, Duration::min).max(Duration::from_millis(1))
}

pub struct Supervisor {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<()>,
}

struct Alarm {
    rule: usize,
    active: bool,
}

impl Alarm {
    /// Sends a raise or clear when the condition changes.
    fn update(&mut self, bad: bool, frame: u64, now: MonoTime, out: &OutputTx) {
        if bad == self.active {
            return;
        }
        self.active = bad;
        let state = if bad { AlertState::Raised } else { AlertState::Cleared };
        out.send(OutputMsg::Alert(AlertMsg {
            alert: Alert { rule: self.rule, state, track: 0, at: Point::default() },
            frame,
            capture: now,
            arrived: now,
            decided: now,
            // The alarms have the same index in every rule set.
            rules: 0,
            same_as: None,
        }));
    }
}

impl Supervisor {
    pub fn spawn(
        cfg: &FrameLoop,
        health: Arc<Health>,
        alarms: (usize, usize),
        heartbeat: bool,
        out: OutputTx,
        mut watches: Vec<Box<dyn HealthWatch>>,
    ) -> anyhow::Result<Self> {
        let blind_after = Duration::from_millis(cfg.blind_after_ms as u64);
        let stall_after = Duration::from_millis(cfg.stall_after_ms as u64);
        let period = Duration::from_millis(cfg.heartbeat_ms as u64);
        let tick = tick_period(cfg, &watches);
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let handle = std::thread::Builder::new()
            .name("supervisor".into())
            .spawn(move || {
                let mut blind = Alarm { rule: alarms.0, active: false };
                let mut stalled = Alarm { rule: alarms.1, active: false };
                let mut level = false;
                let mut next_beat = MonoTime::now();
                while !stop2.load(Ordering::Relaxed) {
                    std::thread::park_timeout(tick);
                    let now = MonoTime::now();
                    let frame = health.last_frame.load(Ordering::Relaxed);
                    let camera_ok = Health::since(&health.last_arrival, now) <= blind_after;
                    // A blind camera leaves nothing to decide: that is not a stalled loop.
                    let loop_ok = !camera_ok || health.undecided_for(now) <= stall_after;
                    blind.update(!camera_ok, frame, now, &out);
                    stalled.update(!loop_ok, frame, now, &out);
                    let decided = health.decided.load(Ordering::Relaxed);
                    // Not before the first decision: a loop still warming up has met nothing.
                    let on_time = camera_ok
                        && decided > 0
                        && Health::since(&health.last_decided, now) <= period.max(stall_after / 4)
                        && health.last_met.load(Ordering::Relaxed);
                    let verdict = HealthNow {
                        now,
                        camera_ok,
                        on_time,
                        deciding: health.undecided_for(now) <= stall_after,
                        faulted_outputs: health.faulted_outputs.load(Ordering::Relaxed),
                        frame,
                        decided,
                        level: health.level.load(Ordering::Relaxed),
                    };
                    for w in &mut watches {
                        w.tick(&verdict);
                    }
                    if heartbeat && now >= next_beat {
                        next_beat = now.plus(period);
                        if on_time {
                            level = !level;
                            out.send(OutputMsg::Heartbeat(level));
                        } else if level {
                            level = false;
                            out.send(OutputMsg::Heartbeat(false));
                        }
                    }
                }
                for w in &mut watches {
                    w.finish();
                }
            })
            .context("starting the supervisor thread")?;
        Ok(Self { stop, handle })
    }

    pub fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.thread().unpark();
        let _ = self.handle.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stall_counts_from_the_first_frame_the_loop_has_not_decided() {
        let t0 = MonoTime::from_nanos(1_000_000_000);
        let at = |ms: u64| t0.plus(Duration::from_millis(ms));
        let h = Health::new(t0);
        h.frame_arrived(at(10));
        h.frame_decided(0, at(30), true);
        assert_eq!(h.undecided_for(at(40)), Duration::from_millis(10));
        // The camera was away for 2 s; its first frame back has waited 50 ms, not 2 s.
        h.frame_arrived(at(2030));
        assert_eq!(h.undecided_for(at(2080)), Duration::from_millis(50));
        // The loop hangs on it while frames keep coming: the wait grows from that first frame.
        h.frame_arrived(at(2063));
        h.frame_arrived(at(2096));
        assert_eq!(h.undecided_for(at(3030)), Duration::from_millis(1000));
        // Decided again: counted from the decision.
        h.frame_decided(1, at(3040), true);
        assert_eq!(h.undecided_for(at(3050)), Duration::from_millis(10));
    }
}
