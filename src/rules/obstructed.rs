//! Camera obstructed: a lens covered by a hand, a bag or mud, blinded by a floodlight, or a
//! camera gone dark still delivers frames, so the blind alarm never fires; but the picture has
//! no detail left. The rule watches the spread of luma over a sparse grid of each frame (the
//! 10th to 90th percentile, so a small bright speck or a sensor's noise does not count as a
//! picture) and raises when it stays at or below a threshold for `min_s` seconds; detail
//! coming back clears it.

use std::time::Duration;

use super::{Alert, AlertState};
use crate::capture::Frame;
use crate::clock::MonoTime;
use crate::config::CameraObstructed;

/// Luma over every `STEP`-th pixel of every `STEP`-th row: mean, standard deviation, and the
/// spread from the 10th to the 90th percentile.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LumaStats {
    pub mean: f32,
    pub std: f32,
    pub spread: f32,
}

/// Sampling stride: ~2k samples on a 768x576 frame, a few microseconds.
const STEP: usize = 12;

impl LumaStats {
    pub fn of(frame: &Frame) -> Self {
        let (y, _, _) = frame.planes();
        let w = frame.width as usize;
        let (mut n, mut sum, mut sq) = (0u64, 0u64, 0u64);
        let mut hist = [0u32; 256];
        for row in y.chunks_exact(w.max(1)).step_by(STEP) {
            for &v in row.iter().step_by(STEP) {
                n += 1;
                sum += v as u64;
                sq += (v as u64) * (v as u64);
                hist[v as usize] += 1;
            }
        }
        if n == 0 {
            return Self::default();
        }
        let mean = sum as f64 / n as f64;
        let var = (sq as f64 / n as f64 - mean * mean).max(0.0);
        let percentile = |q: f64| {
            let target = (q * n as f64).ceil().max(1.0) as u64;
            let mut seen = 0u64;
            hist.iter()
                .position(|&c| {
                    seen += c as u64;
                    seen >= target
                })
                .unwrap_or(255) as f32
        };
        Self { mean: mean as f32, std: var.sqrt() as f32, spread: percentile(0.9) - percentile(0.1) }
    }
}

pub struct ObstructedRule {
    index: usize,
    max_spread: f32,
    min: Duration,
    /// Since when the picture has had no detail.
    flat_since: Option<MonoTime>,
    active: bool,
}

impl ObstructedRule {
    pub fn new(index: usize, cfg: &CameraObstructed) -> Self {
        Self {
            index,
            max_spread: cfg.max_luma_spread,
            min: Duration::from_secs_f32(cfg.min_s.max(0.0)),
            flat_since: None,
            active: false,
        }
    }

    pub fn evaluate(&mut self, ts: MonoTime, stats: LumaStats, alerts: &mut Vec<Alert>) {
        let alert = |state| Alert { rule: self.index, state, track: 0, at: Default::default() };
        if stats.spread <= self.max_spread {
            let since = *self.flat_since.get_or_insert(ts);
            if !self.active && ts.since(since) >= self.min {
                self.active = true;
                alerts.push(alert(AlertState::Raised));
            }
        } else {
            self.flat_since = None;
            if self.active {
                self.active = false;
                alerts.push(alert(AlertState::Cleared));
            }
        }
    }

    pub fn clear_all(&mut self, alerts: &mut Vec<Alert>) {
        if self.active {
            self.active = false;
            alerts.push(Alert {
                rule: self.index,
                state: AlertState::Cleared,
                track: 0,
                at: Default::default(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::PixelFormat;
    use crate::config::Severity;

    fn frame(fill: impl Fn(usize, usize) -> u8) -> Frame {
        let mut f = Frame::new(96, 72, PixelFormat::I420);
        let w = f.width as usize;
        for (i, v) in f.data.iter_mut().take(96 * 72).enumerate() {
            *v = fill(i % w, i / w);
        }
        f
    }

    #[test]
    fn stats_tell_a_picture_from_a_covered_lens() {
        let picture = LumaStats::of(&frame(|x, y| ((x * 7 + y * 3) % 200) as u8));
        let black = LumaStats::of(&frame(|_, _| 16));
        let glare = LumaStats::of(&frame(|x, _| 250 - (x % 3) as u8));
        // Black with a bright speck in one corner: the speck is no picture.
        let speck = LumaStats::of(&frame(|x, y| if x < 20 && y < 12 { 200 } else { 16 }));
        assert!(picture.spread > 100.0, "{picture:?}");
        assert_eq!(black, LumaStats { mean: 16.0, std: 0.0, spread: 0.0 });
        assert!(glare.spread <= 2.0 && glare.mean > 240.0, "{glare:?}");
        assert!(speck.std > 20.0 && speck.spread == 0.0, "{speck:?}");
    }

    #[test]
    fn raises_after_min_s_flat_and_clears_when_detail_returns() {
        let cfg = CameraObstructed {
            name: "lens".into(),
            max_luma_spread: 12.0,
            min_s: 2.0,
            severity: Severity::Critical,
            outputs: vec![],
        };
        let mut r = ObstructedRule::new(3, &cfg);
        let flat = LumaStats { mean: 20.0, std: 1.0, spread: 3.0 };
        let busy = LumaStats { mean: 90.0, std: 40.0, spread: 120.0 };
        let mut alerts = vec![];
        let at = |ms: u64| MonoTime::from_nanos(ms * 1_000_000);
        for ms in (0..1900).step_by(100) {
            r.evaluate(at(ms), flat, &mut alerts);
        }
        assert!(alerts.is_empty(), "not before min_s");
        r.evaluate(at(1950), busy, &mut alerts);
        r.evaluate(at(2000), flat, &mut alerts);
        r.evaluate(at(3900), flat, &mut alerts);
        assert!(alerts.is_empty(), "one detailed frame restarts the clock");
        r.evaluate(at(4000), flat, &mut alerts);
        assert_eq!(alerts.len(), 1);
        assert_eq!((alerts[0].rule, alerts[0].state), (3, AlertState::Raised));
        r.evaluate(at(4100), flat, &mut alerts);
        assert_eq!(alerts.len(), 1, "raised once");
        r.evaluate(at(4200), busy, &mut alerts);
        assert_eq!(alerts[1].state, AlertState::Cleared);
    }
}
