//! Loop health in numbers: per-stage latency distributions and the end-of-run summary.
//!
//! Samples go into buffers sized once; percentiles are computed only when asked.

use std::time::Duration;

use serde::Serialize;

/// Latency samples of one stage. Keeps the most recent `CAP` samples for percentiles and exact
/// count, mean and max over the whole run.
pub struct StageStats {
    name: &'static str,
    samples: Vec<u32>,
    next: usize,
    count: u64,
    sum_us: u64,
    max_us: u32,
}

const CAP: usize = 1 << 16;

impl StageStats {
    pub fn new(name: &'static str) -> Self {
        Self { name, samples: Vec::with_capacity(CAP), next: 0, count: 0, sum_us: 0, max_us: 0 }
    }

    pub fn record(&mut self, d: Duration) {
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
    pub alerts_raised: u64,
    pub alerts_cleared: u64,
    /// Events the recorder could not take in time (the loop never waits for it).
    pub events_dropped: u64,
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
        if self.events_dropped > 0 {
            s.push_str(&format!("; {} events dropped", self.events_dropped));
        }
        if let Some(a) = &self.audio {
            s.push_str(&format!(
                "\naudio: {} chunks, {:.1} s, peak {:.1} dBFS",
                a.chunks, a.seconds, a.peak_dbfs
            ));
        }
        s.push_str(&format!(
            "\n{:<12} {:>8} {:>10} {:>10} {:>10}",
            "stage", "count", "mean ms", "p99 ms", "max ms"
        ));
        for st in &self.stages {
            s.push_str(&format!(
                "\n{:<12} {:>8} {:>10.2} {:>10.2} {:>10.2}",
                st.stage,
                st.count,
                st.mean_us as f64 / 1000.0,
                st.p99_us as f64 / 1000.0,
                st.max_us as f64 / 1000.0
            ));
        }
        s
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
    }
}
