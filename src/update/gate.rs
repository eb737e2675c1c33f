//! The health gate: a pending version is committed only after the running loop has been
//! healthy, without a break, for `gate_s`; if that has not happened `gate_timeout_s` after the
//! start, the version is rolled back and the process stops (non-zero), so the service manager
//! starts the committed slot.
//!
//! Healthy is [`HealthNow::healthy`] on every supervisor tick of the window, and the loop
//! deciding frames during it: the camera delivers, the loop decides each frame within its
//! deadline, and no alert output is faulted. That last part is the outputs' self-test: every
//! output is opened (and a GPIO line or serial port claimed) before the loop starts, or the run
//! fails, and an output whose drive fails or whose receiver stops acknowledging counts as
//! faulted, so a version that breaks the path to the siren cannot pass.
//!
//! [`Gate`] is the pure decision, fed one [`HealthNow`] per tick; [`GateWatch`] runs it on the
//! supervisor thread and hands the decision's disk writes to a thread of its own, so a slow
//! fsync never delays the heartbeat.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::slots::{Outcome, SlotDir};
use super::{UpdateError, Version};
use crate::clock::MonoTime;
use crate::config::Board;
use crate::pipeline::supervisor::{HealthNow, HealthWatch};

#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    Commit { reason: String },
    RollBack { reason: String },
}

/// Unhealthy ticks by cause, for the rollback's reason.
#[derive(Clone, Copy, Debug, Default)]
struct Causes {
    ticks: u64,
    not_started: u64,
    camera: u64,
    late: u64,
    outputs: u64,
}

#[derive(Debug)]
pub struct Gate {
    need: Duration,
    timeout: Duration,
    started: MonoTime,
    /// Start of the current healthy stretch and the decided count then.
    window: Option<(MonoTime, u64)>,
    longest: Duration,
    causes: Causes,
    done: bool,
}

impl Gate {
    pub fn new(need: Duration, timeout: Duration, started: MonoTime) -> Self {
        Self {
            need,
            timeout,
            started,
            window: None,
            longest: Duration::ZERO,
            causes: Causes::default(),
            done: false,
        }
    }

    /// One tick; returns the decision once, then `None` forever.
    pub fn feed(&mut self, h: &HealthNow) -> Option<Decision> {
        if self.done {
            return None;
        }
        self.causes.ticks += 1;
        if h.healthy() && h.decided > 0 {
            let (since, decided_then) = *self.window.get_or_insert((h.now, h.decided));
            let stretch = h.now.since(since);
            self.longest = self.longest.max(stretch);
            // The loop must have moved on during the window, not just look healthy.
            if stretch >= self.need && h.decided > decided_then {
                self.done = true;
                return Some(Decision::Commit {
                    reason: format!(
                        "health gate passed: healthy for {:.1} s ({} frames decided on time)",
                        stretch.as_secs_f64(),
                        h.decided - decided_then
                    ),
                });
            }
        } else {
            self.window = None;
            let c = &mut self.causes;
            if h.decided == 0 {
                c.not_started += 1;
            } else if !h.camera_ok {
                c.camera += 1;
            } else if !h.on_time {
                c.late += 1;
            }
            if h.faulted_outputs > 0 {
                c.outputs += 1;
            }
        }
        if h.now.since(self.started) >= self.timeout {
            self.done = true;
            let c = self.causes;
            return Some(Decision::RollBack {
                reason: format!(
                    "health gate not passed within {:.0} s (needs {:.0} s healthy without a break; longest \
                     was {:.1} s): of {} checks, {} before the first decided frame, {} with the camera \
                     blind, {} with the loop late, {} with an output faulted",
                    self.timeout.as_secs_f64(),
                    self.need.as_secs_f64(),
                    self.longest.as_secs_f64(),
                    c.ticks,
                    c.not_started,
                    c.camera,
                    c.late,
                    c.outputs
                ),
            });
        }
        None
    }
}

/// What the gate's run learns: the decision once it is carried out.
#[derive(Default)]
struct Shared {
    rolled_back: Mutex<Option<String>>,
    io: Mutex<Option<JoinHandle<()>>>,
}

/// The gate on the supervisor thread.
pub struct GateWatch {
    gate: Gate,
    dir: SlotDir,
    version: Version,
    stop: &'static AtomicBool,
    shared: Arc<Shared>,
}

/// The run's side of the gate: after the loop ends, [`GateHandle::finish`] says whether the
/// version was rolled back.
pub struct GateHandle {
    version: Version,
    shared: Arc<Shared>,
}

/// A gate for this run if the running slot is pending, from the profile's `[update]`.
/// Problems reading the update state are logged and mean no gate: the loop must run anyway.
pub fn attach(board: &Board, stop: &'static AtomicBool) -> Option<(GateWatch, GateHandle)> {
    let cfg = board.update.as_ref()?;
    let dir = SlotDir::new(&cfg.dir);
    let (state, current) = match dir.read_state().and_then(|s| Ok((s, dir.current()?))) {
        Ok((Some(s), c)) => (s, c),
        Ok((None, _)) => return None,
        Err(e) => {
            tracing::error!("update: cannot read the update state, no health gate: {e}");
            return None;
        }
    };
    let p = state.pending.filter(|p| Some(p.slot) == current)?;
    tracing::info!(
        "update: version {} (slot {}) is pending: committing it after {} s healthy, rolling back if not \
         within {} s",
        p.version,
        p.slot,
        cfg.gate_s,
        cfg.gate_timeout_s
    );
    let gate = Gate::new(
        Duration::from_secs_f64(cfg.gate_s),
        Duration::from_secs_f64(cfg.gate_timeout_s),
        MonoTime::now(),
    );
    let shared = Arc::new(Shared::default());
    let handle = GateHandle { version: p.version.clone(), shared: shared.clone() };
    Some((GateWatch { gate, dir, version: p.version, stop, shared }, handle))
}

impl HealthWatch for GateWatch {
    fn tick(&mut self, health: &HealthNow) {
        let Some(decision) = self.gate.feed(health) else { return };
        let (dir, version, stop, shared) =
            (self.dir.clone(), self.version.clone(), self.stop, self.shared.clone());
        let io = std::thread::Builder::new().name("update-gate".into()).spawn(move || {
            carry_out(&dir, &version, decision, stop, &shared);
        });
        match io {
            Ok(h) => *self.shared.io.lock().unwrap_or_else(|e| e.into_inner()) = Some(h),
            Err(e) => tracing::error!("update: cannot start the gate's thread: {e}"),
        }
    }
}

/// Writes the decision, if the state still has this version pending (an operator may have
/// decided meanwhile).
fn carry_out(dir: &SlotDir, version: &Version, decision: Decision, stop: &AtomicBool, shared: &Shared) {
    let result = (|| {
        let lock = dir.lock(true)?;
        let state = dir.reconcile(&lock)?;
        if state.pending.as_ref().map(|p| &p.version) != Some(version) {
            tracing::warn!("update: version {version} is no longer pending; the gate leaves the state alone");
            return Ok(None);
        }
        match &decision {
            Decision::Commit { reason } => {
                let st = dir.commit(&lock, reason.clone())?;
                tracing::info!("update: committed version {version} in slot {}: {reason}", st.committed.slot);
                Ok(None)
            }
            Decision::RollBack { reason } => {
                let st = dir.roll_back(&lock, reason.clone(), false)?;
                debug_assert_eq!(st.last.as_ref().map(|e| e.result), Some(Outcome::RolledBack));
                tracing::error!(
                    "update: rolled back version {version} to {} in slot {}: {reason}",
                    st.committed.version,
                    st.committed.slot
                );
                Ok(Some(reason.clone()))
            }
        }
    })();
    match result {
        Ok(Some(reason)) => {
            *shared.rolled_back.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
            stop.store(true, Ordering::Relaxed);
        }
        Ok(None) => {}
        Err::<_, UpdateError>(e) => {
            tracing::error!("update: cannot record the health gate's decision on {version}: {e}");
            // A rollback that could not be written must still end this run: the next start
            // counts a boot try and rolls back once they are used up.
            if matches!(decision, Decision::RollBack { .. }) {
                stop.store(true, Ordering::Relaxed);
            }
        }
    }
}

impl GateHandle {
    /// Waits for the decision's disk writes; an error if the version was rolled back.
    pub fn finish(self) -> Result<(), UpdateError> {
        let io = self.shared.io.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = io {
            let _ = h.join();
        }
        match self.shared.rolled_back.lock().unwrap_or_else(|e| e.into_inner()).take() {
            Some(reason) => Err(UpdateError::RolledBack { version: self.version, reason }),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn h(t_ms: u64, decided: u64, healthy: bool) -> HealthNow {
        HealthNow {
            now: MonoTime::from_nanos(S + t_ms * 1_000_000),
            camera_ok: true,
            on_time: healthy,
            deciding: healthy,
            faulted_outputs: 0,
            frame: decided,
            decided,
            level: 0,
        }
    }

    fn gate() -> Gate {
        Gate::new(Duration::from_secs(2), Duration::from_secs(10), MonoTime::from_nanos(S))
    }

    /// Feeds ticks every 100 ms with `f(t_ms) -> (decided, healthy)` until a decision.
    fn run(g: &mut Gate, f: impl Fn(u64) -> (u64, bool)) -> (u64, Decision) {
        for t in (0..=20_000).step_by(100) {
            let (decided, ok) = f(t);
            if let Some(d) = g.feed(&h(t, decided, ok)) {
                return (t, d);
            }
        }
        panic!("no decision in 20 s");
    }

    #[test]
    fn commits_after_gate_s_continuously_healthy() {
        let mut g = gate();
        let (t, d) = run(&mut g, |t| (t / 100, true));
        assert!(matches!(d, Decision::Commit { .. }), "{d:?}");
        // First healthy tick with a decided frame at 100 ms; 2 s later.
        assert_eq!(t, 2100);
        assert_eq!(g.feed(&h(t + 100, 99, true)), None, "decides once");
    }

    #[test]
    fn a_single_late_frame_restarts_the_window() {
        let mut g = gate();
        let (t, d) = run(&mut g, |t| (t / 100, t != 1500));
        assert!(matches!(d, Decision::Commit { .. }));
        assert_eq!(t, 3600);
    }

    #[test]
    fn rolls_back_at_the_timeout_with_the_cause() {
        let mut g = gate();
        let (t, d) = run(&mut g, |t| (t / 100, false));
        assert_eq!(t, 10_000);
        let Decision::RollBack { reason } = d else { panic!("{d:?}") };
        assert!(reason.contains("not passed within 10 s"), "{reason}");
        assert!(reason.contains("100 with the loop late"), "{reason}");
    }

    #[test]
    fn flapping_health_never_commits() {
        let mut g = gate();
        let (_, d) = run(&mut g, |t| (t / 100, (t / 1000) % 2 == 0));
        assert!(matches!(d, Decision::RollBack { .. }));
    }

    #[test]
    fn healthy_looking_but_not_deciding_frames_is_not_enough() {
        // Before the first decision the loop only looks healthy (nothing has been late yet).
        let mut g = gate();
        let (_, d) = run(&mut g, |_| (0, true));
        let Decision::RollBack { reason } = d else { panic!("{d:?}") };
        assert!(reason.contains("before the first decided frame"), "{reason}");
        // Decided once, then stuck: no progress during the window.
        let mut g = gate();
        assert!(matches!(run(&mut g, |_| (5, true)).1, Decision::RollBack { .. }));
    }

    #[test]
    fn faulted_outputs_or_a_blind_camera_fail_the_gate() {
        let mut g = gate();
        let mut t = 0;
        let d = loop {
            let mut now = h(t, t / 100 + 1, true);
            now.faulted_outputs = 1;
            if let Some(d) = g.feed(&now) {
                break d;
            }
            t += 100;
        };
        let Decision::RollBack { reason } = d else { panic!("{d:?}") };
        assert!(reason.contains("101 with an output faulted"), "{reason}");

        let mut g = gate();
        let mut t = 0;
        let d = loop {
            let mut now = h(t, 7, true);
            now.camera_ok = false;
            if let Some(d) = g.feed(&now) {
                break d;
            }
            t += 100;
        };
        let Decision::RollBack { reason } = d else { panic!("{d:?}") };
        assert!(reason.contains("101 with the camera blind"), "{reason}");
    }
}
