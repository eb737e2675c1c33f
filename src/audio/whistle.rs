//! Referee whistle: sustained, tonal energy in the whistle band.
//!
//! A pea whistle is a strong narrow peak (with a trill) between about 2 and 4.5 kHz that lasts
//! 0.2 s or more. Crowd noise is broadband (band energy but no dominant peak), speech has its
//! energy below 1 kHz, and both rarely hold a single peak in the band for long. Each chunk is
//! windowed and transformed once (buffers and the FFT plan are made at start-up); a whistle is
//! declared when enough consecutive chunks are tonal in the band, tolerating the short dips of
//! the trill.

use std::sync::Arc;

use rustfft::num_complex::Complex32;
use rustfft::{Fft, FftPlanner};

use super::AudioChunk;
use crate::clock::MonoTime;
use crate::config::Whistle;

/// A change of whistle state, stamped with the capture time of the chunk that decided it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum WhistleEvent {
    Started { at: MonoTime, peak_hz: f32 },
    Ended { at: MonoTime },
}

/// What one chunk looks like in the whistle band.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BandStats {
    /// Share of the 100 Hz..8 kHz energy that lies in the whistle band.
    pub band_share: f32,
    /// Strongest bin in the band over the band's mean bin (a pure tone scores high).
    pub peakiness: f32,
    pub peak_hz: f32,
    pub level_dbfs: f32,
}

pub struct WhistleDetector {
    fft: Arc<dyn Fft<f32>>,
    window: Vec<f32>,
    buf: Vec<Complex32>,
    scratch: Vec<Complex32>,
    bin_hz: f32,
    band: (usize, usize),
    total: (usize, usize),
    min_share: f32,
    min_peakiness: f32,
    min_dbfs: f32,
    /// Consecutive tonal chunks needed to start, non-tonal chunks needed to end.
    start_after: u32,
    end_after: u32,
    tonal_run: u32,
    quiet_run: u32,
    active: bool,
}

impl WhistleDetector {
    /// `chunk_len` samples per chunk at `rate` Hz.
    pub fn new(cfg: &Whistle, rate: u32, chunk_len: usize) -> Self {
        let n = chunk_len.next_power_of_two().max(64);
        let fft = FftPlanner::new().plan_fft_forward(n);
        let scratch = vec![Complex32::default(); fft.get_inplace_scratch_len()];
        let window = (0..chunk_len)
            .map(|i| {
                let x = std::f32::consts::PI * 2.0 * i as f32 / chunk_len.max(2) as f32;
                0.5 - 0.5 * x.cos()
            })
            .collect();
        let bin_hz = rate as f32 / n as f32;
        let bin = |hz: f32| ((hz / bin_hz).round() as usize).clamp(1, n / 2);
        let chunk_ms = chunk_len as f32 * 1000.0 / rate as f32;
        Self {
            fft,
            window,
            buf: vec![Complex32::default(); n],
            scratch,
            bin_hz,
            band: (bin(cfg.band_hz[0]), bin(cfg.band_hz[1])),
            total: (bin(100.0), bin(8000.0_f32.min(rate as f32 / 2.0))),
            min_share: cfg.min_band_share,
            min_peakiness: cfg.min_peakiness,
            min_dbfs: cfg.min_level_dbfs,
            start_after: ((cfg.min_duration_ms / chunk_ms).ceil() as u32).max(1),
            end_after: ((cfg.max_gap_ms / chunk_ms).ceil() as u32).max(1),
            tonal_run: 0,
            quiet_run: 0,
            active: false,
        }
    }

    /// Spectral statistics of one chunk.
    pub fn analyse(&mut self, samples: &[i16]) -> BandStats {
        let n = self.buf.len();
        let mut sum_sq = 0.0f64;
        for (i, slot) in self.buf.iter_mut().enumerate() {
            let v = samples.get(i).map_or(0.0, |&s| s as f32 / 32768.0);
            sum_sq += (v * v) as f64;
            *slot = Complex32::new(v * self.window.get(i).copied().unwrap_or(0.0), 0.0);
        }
        self.fft.process_with_scratch(&mut self.buf, &mut self.scratch);
        let power = |b: &Complex32| b.norm_sqr();
        let total: f32 = self.buf[self.total.0..self.total.1].iter().map(power).sum();
        let band = &self.buf[self.band.0..self.band.1];
        let band_sum: f32 = band.iter().map(power).sum();
        let (peak_i, peak) =
            band.iter()
                .map(power)
                .enumerate()
                .fold((0, 0.0f32), |best, (i, p)| if p > best.1 { (i, p) } else { best });
        let mean = band_sum / band.len().max(1) as f32;
        let rms = (sum_sq / samples.len().clamp(1, n) as f64).sqrt();
        BandStats {
            band_share: if total > 0.0 { band_sum / total } else { 0.0 },
            peakiness: if mean > 0.0 { peak / mean } else { 0.0 },
            peak_hz: (self.band.0 + peak_i) as f32 * self.bin_hz,
            level_dbfs: (20.0 * rms.max(1e-9).log10()) as f32,
        }
    }

    /// Feeds one chunk; returns a state change, if any.
    pub fn push(&mut self, chunk: &AudioChunk) -> Option<WhistleEvent> {
        let s = self.analyse(&chunk.samples);
        let tonal = s.band_share >= self.min_share
            && s.peakiness >= self.min_peakiness
            && s.level_dbfs >= self.min_dbfs;
        if tonal {
            self.tonal_run += 1;
            self.quiet_run = 0;
            if !self.active && self.tonal_run >= self.start_after {
                self.active = true;
                return Some(WhistleEvent::Started { at: chunk.ts, peak_hz: s.peak_hz });
            }
        } else {
            self.quiet_run += 1;
            // A trill dips between blasts: only a real gap ends the whistle or resets the count.
            if self.quiet_run >= self.end_after {
                self.tonal_run = 0;
                if self.active {
                    self.active = false;
                    return Some(WhistleEvent::Ended { at: chunk.ts });
                }
            }
        }
        None
    }

    /// Whether a whistle is being heard (its alert raised).
    pub fn active(&self) -> bool {
        self.active
    }
}
