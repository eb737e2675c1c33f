//! Thunder: a burst of low-frequency, noise-like energy well above the background.
//!
//! A thunder roll puts most of its energy below a few hundred hertz and lasts seconds. Each chunk
//! updates a sliding analysis window (long enough to resolve the band: 128 ms by default), which
//! is transformed once (buffers and the FFT plan are made at start-up). A chunk is loud when
//!
//! - the band level rises `min_rise_db` over a running background estimate (which follows a
//!   louder level slowly, `background_s`, and a quieter one quickly, `background_fall_s`),
//! - it is at least `min_level_dbfs`,
//! - the band holds `min_band_share` of the energy from the band's low edge up (crowd noise and
//!   rain lie higher), and
//! - the band's spectrum is flat, as noise is (`min_flatness`): a voice in the same band is a
//!   few harmonics of its pitch, so speech is not thunder even when it is loud and low.
//!
//! Loud for `min_duration_ms` (dips up to `max_gap_ms` tolerated) raises the alert; a longer
//! quiet spell clears it, and `cooldown_s` holds back a new one.

use std::sync::Arc;
use std::time::Duration;

use rustfft::num_complex::Complex32;
use rustfft::{Fft, FftPlanner};

use super::AudioChunk;
use crate::clock::MonoTime;
use crate::config::Thunder;

/// A change of thunder state, stamped with the capture time of the chunk that decided it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ThunderEvent {
    Started { at: MonoTime, level_dbfs: f32 },
    Ended { at: MonoTime },
}

/// What the analysis window looks like in the thunder band.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RumbleStats {
    /// Band level, dB relative to full scale.
    pub level_dbfs: f32,
    /// Band level over the background before this chunk, dB.
    pub rise_db: f32,
    /// Share of the energy from the band's low edge up that lies in the band.
    pub band_share: f32,
    /// Geometric over arithmetic mean of the band's bins (1: flat noise, near 0: a few tones).
    pub flatness: f32,
}

/// Samples in the analysis window: `window_ms` at `rate`, at least one chunk, rounded up to a
/// power of two.
pub fn window_len(rate: u32, window_ms: f32, chunk_len: usize) -> usize {
    let n = (rate as f32 * window_ms / 1000.0).ceil().max(1.0) as usize;
    n.max(chunk_len).next_power_of_two().max(64)
}

/// Levels below this are silence; it also bounds how far the background can fall.
const FLOOR_DBFS: f32 = -100.0;

pub struct ThunderDetector {
    fft: Arc<dyn Fft<f32>>,
    window: Vec<f32>,
    /// The latest `n` samples, oldest first.
    history: Vec<f32>,
    buf: Vec<Complex32>,
    scratch: Vec<Complex32>,
    /// Power of a bin to mean square of the signal (one-sided, window-corrected).
    norm: f32,
    band: (usize, usize),
    above: (usize, usize),
    min_rise: f32,
    min_share: f32,
    min_flatness: f32,
    min_dbfs: f32,
    /// Per-chunk weights of the background's rise and fall.
    rise_w: f32,
    fall_w: f32,
    background: Option<f32>,
    start_after: u32,
    end_after: u32,
    cooldown: Duration,
    loud_run: u32,
    quiet_run: u32,
    active: bool,
    ended: Option<MonoTime>,
}

impl ThunderDetector {
    /// `chunk_len` samples per chunk at `rate` Hz.
    pub fn new(cfg: &Thunder, rate: u32, chunk_len: usize) -> Self {
        let n = window_len(rate, cfg.window_ms, chunk_len);
        let fft = FftPlanner::new().plan_fft_forward(n);
        let scratch = vec![Complex32::default(); fft.get_inplace_scratch_len()];
        let window: Vec<f32> =
            (0..n).map(|i| 0.5 - 0.5 * (std::f32::consts::PI * 2.0 * i as f32 / n as f32).cos()).collect();
        let sum_w2: f32 = window.iter().map(|w| w * w).sum();
        let bin_hz = rate as f32 / n as f32;
        let bin = |hz: f32| ((hz / bin_hz).ceil() as usize).clamp(1, n / 2);
        let chunk_s = chunk_len.max(1) as f32 / rate as f32;
        let weight = |tau_s: f32| 1.0 - (-chunk_s / tau_s.max(1e-3)).exp();
        let (lo, hi) = (bin(cfg.band_hz[0]), bin(cfg.band_hz[1]).max(bin(cfg.band_hz[0]) + 1));
        Self {
            fft,
            window,
            history: vec![0.0; n],
            buf: vec![Complex32::default(); n],
            scratch,
            norm: 2.0 / (n as f32 * sum_w2),
            band: (lo, hi),
            above: (lo, n / 2),
            min_rise: cfg.min_rise_db,
            min_share: cfg.min_band_share,
            min_flatness: cfg.min_flatness,
            min_dbfs: cfg.min_level_dbfs,
            rise_w: weight(cfg.background_s),
            fall_w: weight(cfg.background_fall_s),
            background: None,
            start_after: ((cfg.min_duration_ms / (chunk_s * 1000.0)).ceil() as u32).max(1),
            end_after: ((cfg.max_gap_ms / (chunk_s * 1000.0)).ceil() as u32).max(1),
            cooldown: Duration::from_secs_f32(cfg.cooldown_s.max(0.0)),
            loud_run: 0,
            quiet_run: 0,
            active: false,
            ended: None,
        }
    }

    /// Adds one chunk to the analysis window and measures it; the background moves on.
    pub fn analyse(&mut self, samples: &[i16]) -> RumbleStats {
        let n = self.history.len();
        let take = samples.len().min(n);
        self.history.copy_within(take.., 0);
        for (slot, &s) in self.history[n - take..].iter_mut().zip(&samples[samples.len() - take..]) {
            *slot = s as f32 / 32768.0;
        }
        for ((b, &x), &w) in self.buf.iter_mut().zip(&self.history).zip(&self.window) {
            *b = Complex32::new(x * w, 0.0);
        }
        self.fft.process_with_scratch(&mut self.buf, &mut self.scratch);
        let power = |b: &Complex32| b.norm_sqr() as f64;
        let band = &self.buf[self.band.0..self.band.1];
        let band_sum: f64 = band.iter().map(power).sum();
        let above: f64 = self.buf[self.above.0..self.above.1].iter().map(power).sum();
        // Flatness on bins floored far below anything audible, so silence is not "tonal".
        let eps = 1e-12f64 / self.norm as f64;
        let log_mean = band.iter().map(|b| (power(b) + eps).ln()).sum::<f64>() / band.len() as f64;
        let mean = band_sum / band.len() as f64 + eps;
        let level = (10.0 * (band_sum * self.norm as f64).max(1e-30).log10()) as f32;
        let level = level.max(FLOOR_DBFS);
        let background = *self.background.get_or_insert(level);
        let w = if level < background { self.fall_w } else { self.rise_w };
        self.background = Some(background + w * (level - background));
        RumbleStats {
            level_dbfs: level,
            rise_db: level - background,
            band_share: if above > 0.0 { (band_sum / above) as f32 } else { 0.0 },
            flatness: (log_mean.exp() / mean) as f32,
        }
    }

    /// Feeds one chunk; returns a state change, if any.
    pub fn push(&mut self, chunk: &AudioChunk) -> Option<ThunderEvent> {
        let s = self.analyse(&chunk.samples);
        let loud = s.rise_db >= self.min_rise
            && s.level_dbfs >= self.min_dbfs
            && s.band_share >= self.min_share
            && s.flatness >= self.min_flatness;
        if loud {
            self.loud_run += 1;
            self.quiet_run = 0;
            let cooling = self.ended.is_some_and(|t| chunk.ts.since(t) < self.cooldown);
            if !self.active && self.loud_run >= self.start_after && !cooling {
                self.active = true;
                return Some(ThunderEvent::Started { at: chunk.ts, level_dbfs: s.level_dbfs });
            }
        } else {
            self.quiet_run += 1;
            if self.quiet_run >= self.end_after {
                self.loud_run = 0;
                if self.active {
                    self.active = false;
                    self.ended = Some(chunk.ts);
                    return Some(ThunderEvent::Ended { at: chunk.ts });
                }
            }
        }
        None
    }

    /// Whether an alert is raised now.
    pub fn active(&self) -> bool {
        self.active
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule() -> Thunder {
        toml::from_str("name = \"thunder\"\nseverity = \"warning\"\noutputs = [\"log\"]\n").unwrap()
    }

    /// Deterministic white noise in -1..1.
    struct Noise(u64);
    impl Noise {
        fn next(&mut self) -> f32 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        }
    }

    /// Feeds `secs` of `signal(t)` (full scale 1.0) in 32 ms chunks; returns (start s, end s) of
    /// every thunder heard.
    fn heard(secs: f32, mut signal: impl FnMut(f32) -> f32) -> Vec<(f32, f32)> {
        let (rate, len) = (16_000u32, 512usize);
        let mut det = ThunderDetector::new(&rule(), rate, len);
        let t0 = MonoTime::from_nanos(1_000_000_000);
        let mut chunk = AudioChunk { samples: Vec::with_capacity(len), ..Default::default() };
        let mut out = vec![];
        let mut start = None;
        for c in 0..(secs * rate as f32 / len as f32) as u64 {
            chunk.samples.clear();
            for i in 0..len {
                let t = (c as usize * len + i) as f32 / rate as f32;
                chunk.samples.push((signal(t) * 32767.0).clamp(-32768.0, 32767.0) as i16);
            }
            chunk.seq = c;
            chunk.ts = t0.plus(Duration::from_secs_f64(c as f64 * len as f64 / rate as f64));
            let secs = |at: MonoTime| at.since(t0).as_secs_f32();
            match det.push(&chunk) {
                Some(ThunderEvent::Started { at, .. }) => start = Some(secs(at)),
                Some(ThunderEvent::Ended { at }) => out.push((start.take().unwrap(), secs(at))),
                None => {}
            }
        }
        if let Some(s) = start {
            out.push((s, f32::INFINITY));
        }
        out
    }

    /// Noise low-passed to about `cutoff` Hz by a one-pole filter, run twice.
    fn rumble(cutoff: f32) -> impl FnMut(f32) -> f32 {
        let a = (-2.0 * std::f32::consts::PI * cutoff / 16_000.0).exp();
        let (mut noise, mut y1, mut y2) = (Noise(0x9e37_79b9_7f4a_7c15), 0.0f32, 0.0f32);
        move |_| {
            y1 = a * y1 + (1.0 - a) * noise.next();
            y2 = a * y2 + (1.0 - a) * y1;
            y2 * 4.0
        }
    }

    #[test]
    fn a_low_rumble_out_of_quiet_is_thunder_once_it_lasts() {
        let mut r = rumble(150.0);
        let mut quiet = Noise(7);
        let got = heard(10.0, |t| {
            let bed = quiet.next() * 0.001;
            let roll = r(t);
            bed + if (3.0..6.0).contains(&t) { roll } else { 0.0 }
        });
        assert_eq!(got.len(), 1, "{got:?}");
        let (start, end) = got[0];
        assert!((3.5..=4.0).contains(&start), "raised {start} s: 0.6 s of rumble after 3 s");
        assert!((6.0..=6.6).contains(&end), "cleared {end} s: 0.4 s after it stops");
    }

    #[test]
    fn a_voice_a_whistle_and_hiss_are_not_thunder() {
        // A vowel: 120 Hz pitch with harmonics, loud and in the band, but not noise-like.
        let voice = heard(6.0, |t| {
            let on = (1.0..4.0).contains(&t) as u8 as f32;
            on * (1..20).map(|k| (std::f32::consts::TAU * 120.0 * k as f32 * t).sin() / k as f32).sum::<f32>()
                * 0.2
        });
        assert!(voice.is_empty(), "voice: {voice:?}");
        let whistle = heard(6.0, |t| {
            ((1.0..4.0).contains(&t) as u8 as f32) * (std::f32::consts::TAU * 2300.0 * t).sin() * 0.5
        });
        assert!(whistle.is_empty(), "whistle: {whistle:?}");
        let mut n = Noise(11);
        let hiss = heard(6.0, |t| ((1.0..4.0).contains(&t) as u8 as f32) * n.next() * 0.3);
        assert!(hiss.is_empty(), "white noise has little of its energy below 250 Hz: {hiss:?}");
    }

    #[test]
    fn a_steady_rumble_becomes_background_and_cooldown_holds_back_a_second_alert() {
        let mut r = rumble(150.0);
        // Two rolls 3 s apart: one alert (cooldown 30 s).
        let got = heard(14.0, |t| {
            let roll = r(t);
            if (2.0..4.0).contains(&t) || (7.0..9.0).contains(&t) {
                roll
            } else {
                0.0
            }
        });
        assert_eq!(got.len(), 1, "the second roll is inside the cooldown: {got:?}");
        // A rumble that never stops: raised once, then the background catches up and it clears.
        let mut r = rumble(150.0);
        let got = heard(120.0, |t| if t > 2.0 { r(t) } else { 0.0 });
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(got[0].1.is_finite(), "a steady rumble is background after a while: {got:?}");
    }

    #[test]
    fn the_window_is_a_power_of_two_and_at_least_a_chunk() {
        assert_eq!(window_len(16_000, 128.0, 512), 2048);
        assert_eq!(window_len(16_000, 10.0, 512), 512);
        assert_eq!(window_len(48_000, 128.0, 1536), 8192);
    }
}
