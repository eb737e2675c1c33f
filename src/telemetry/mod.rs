//! Loop health in numbers: per-stage latency distributions and the end-of-run summary.
//!
//! Samples go into buffers sized once; percentiles are computed only when asked. While the
//! device runs, [`metrics`] holds live numbers that [`server`] serves to Prometheus and
//! [`status`] summarises for a person at the device (docs/OBSERVABILITY.md).

pub mod alloc;
pub mod metrics;
pub mod server;
pub mod status;
pub mod text;
pub mod thermal;

use std::time::Duration;

use serde::Serialize;

/// Latency samples of one stage. Keeps the most recent `CAP` samples for percentiles and exact
/// count, mean and max over the whole run.
pub struct StageStats {
    name: &'static str,
    budget: Option<Duration>,
    overruns: u64,
    samples: Vec<u32>,
    next: usize,
    count: u64,
    sum_us: u64,
    max_us: u32,
}

const CAP: usize = 1 << 16;

impl StageStats {
    pub fn new(name: &'static str) -> Self {
        Self::with_budget(name, None)
    }

    /// Stats that also count samples over `budget` as overruns.
    pub fn with_budget(name: &'static str, budget: Option<Duration>) -> Self {
        Self {
            name,
            budget,
            overruns: 0,
            samples: Vec::with_capacity(CAP),
            next: 0,
            count: 0,
            sum_us: 0,
            max_us: 0,
        }
    }

    pub fn record(&mut self, d: Duration) {
        if self.budget.is_some_and(|b| d > b) {
            self.overruns += 1;
        }
        let us = d.as_micros().min(u32::MAX as u128) as u32;
        if self.samples.len() < CAP {
            self.samples.push(us);
        } else {
            self.samples[self.next] = us;
            self.next = (self.next + 1) % CAP;
        }
        self.count += 1;
        self.sum_us += us as u64;
        self.max_us = self.max_us.max(us);
    }

    pub fn summary(&self) -> StageSummary {
        let mut sorted = self.samples.clone();
        sorted.sort_unstable();
        let pct = |p: f64| -> u32 {
            if sorted.is_empty() {
                return 0;
            }
            let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
            sorted[i]
        };
        StageSummary {
            stage: self.name,
            count: self.count,
            mean_us: self.sum_us.checked_div(self.count).unwrap_or(0),
            p50_us: pct(50.0),
            p99_us: pct(99.0),
            max_us: self.max_us,
            overruns: self.overruns,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct StageSummary {
    pub stage: &'static str,
    pub count: u64,
    pub mean_us: u64,
    pub p50_us: u32,
    pub p99_us: u32,
    pub max_us: u32,
    /// Samples over the stage's budget (0 when it has none).
    pub overruns: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct AudioSummary {
    pub chunks: u64,
    pub seconds: f64,
    pub peak_dbfs: f32,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    pub frames: u64,
    /// Frames the camera produced that the loop never saw (it was busy: stale frames are
    /// dropped, not queued).
    pub dropped_frames: u64,
    pub seconds: f64,
    pub fps: f64,
    pub detections: u64,
    /// Of which people.
    pub persons: u64,
    pub alerts_raised: u64,
    pub alerts_cleared: u64,
    /// Events the recorder could not take in time (the loop never waits for it).
    pub events_dropped: u64,
    /// Alerts the output stage could not take in time.
    pub alerts_dropped: u64,
    /// Alerts driven but not recorded: the recorder's queue was full even in its reserve.
    pub alerts_unrecorded: u64,
    /// Decided frames whose decision came after capture + budget.
    pub deadline_misses: u64,
    pub budget_ms: f64,
    pub ladder_changes: u64,
    pub final_level: usize,
    /// Heap allocations per decided frame on the decision thread after warm-up (`None` when
    /// the counting allocator is not installed).
    pub allocs_per_frame: Option<f64>,
    pub peak_rss_mb: f64,
    pub stages: Vec<StageSummary>,
    pub audio: Option<AudioSummary>,
}

impl Summary {
    /// A short human-readable table.
    pub fn render(&self) -> String {
        let mut s = format!(
            "frames {} ({} dropped) in {:.1} s = {:.1} fps; detections {}; alerts raised {}, cleared {}",
            self.frames,
            self.dropped_frames,
            self.seconds,
            self.fps,
            self.detections,
            self.alerts_raised,
            self.alerts_cleared
        );
        s.push_str(&format!(
            "\ndeadline {:.1} ms: {} missed; degradation level {} ({} changes); peak RSS {:.0} MB",
            self.budget_ms, self.deadline_misses, self.final_level, self.ladder_changes, self.peak_rss_mb
        ));
        if let Some(a) = self.allocs_per_frame {
            s.push_str(&format!("; {a:.2} allocations per frame"));
        }
        if self.events_dropped + self.alerts_dropped + self.alerts_unrecorded > 0 {
            s.push_str(&format!(
                "; {} events and {} alerts dropped, {} alerts not recorded",
                self.events_dropped, self.alerts_dropped, self.alerts_unrecorded
            ));
        }
        if let Some(a) = &self.audio {
            s.push_str(&format!(
                "\naudio: {} chunks, {:.1} s, peak {:.1} dBFS",
                a.chunks, a.seconds, a.peak_dbfs
            ));
        }
        s.push_str(&format!(
            "\n{:<14} {:>8} {:>10} {:>10} {:>10} {:>9}",
            "stage", "count", "mean ms", "p99 ms", "max ms", "overruns"
        ));
        for st in &self.stages {
            s.push_str(&format!(
                "\n{:<14} {:>8} {:>10.3} {:>10.3} {:>10.3} {:>9}",
                st.stage,
                st.count,
                st.mean_us as f64 / 1000.0,
                st.p99_us as f64 / 1000.0,
                st.max_us as f64 / 1000.0,
                st.overruns
            ));
        }
        s
    }
}

/// Peak resident set size of this process, in MB.
pub fn peak_rss_mb() -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } == 0 {
        ru.ru_maxrss as f64 / 1024.0
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let mut s = StageStats::new("x");
        for i in 1..=100u64 {
            s.record(Duration::from_micros(i));
        }
        let m = s.summary();
        assert_eq!((m.count, m.mean_us, m.p50_us, m.p99_us, m.max_us), (100, 50, 51, 99, 100));
        let mut s = StageStats::with_budget("y", Some(Duration::from_micros(90)));
        for i in 1..=100u64 {
            s.record(Duration::from_micros(i));
        }
        assert_eq!(s.summary().overruns, 10);
    }
}
