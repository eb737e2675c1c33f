//! Voice activity: someone speaking near the microphone, cut into segments for speech-to-text.
//!
//! Why: a spoken call ("help", "medic") is a safety signal the cameras cannot see. A
//! speech-to-text model is far too slow to run on every chunk, so this module finds where a voice
//! starts and ends and hands each stretch of voice over whole ([`VoiceSegment`]: its start and
//! end on the shared monotonic clock and its 16 kHz samples); the `voice` rule's alert is raised
//! while a segment lasts.
//!
//! Which VAD: [earshot](https://docs.rs/earshot) 1.2, a small recurrent network in pure Rust
//! (about 8 KiB of state, 95 KiB of code and weights, thousands of times faster than real time).
//! Silero VAD would need onnxruntime on the microphone thread and a model file to ship; earshot
//! needs neither and allocates nothing per frame. It hears 16 kHz only, in frames of exactly
//! 256 samples (16 ms), and gives each a voice score in 0..1; the profile's chunks (any length)
//! are re-framed through a fixed buffer here, so the result does not depend on the chunk size.
//! earshot 1.x offers no aggressiveness modes (its 0.x WebRTC port did): a score threshold is
//! its only knob.
//!
//! Why more than the score: a crowd is voices too, and earshot says so. On the scenario set's
//! crowd recording it scores a 2.7 s boo at 0.90-0.95 and an "ooh" at 0.7-0.87, as high as real
//! speech (0.85-0.98), and a crowd is always there at a match. What tells one voice near the
//! microphone from a crowd is its pitch: one voice is strongly periodic in its vowels (a
//! normalised autocorrelation of 0.85-0.98 at its pitch period), while many voices at different
//! pitches are not (the boo and the ooh reach 0.82 for a stray frame, never for 6 of them). So a
//! frame is voiced when its score reaches `threshold`, its level `min_level_dbfs`, and its
//! periodicity `min_periodicity`. Periodicity is measured on the last 48 ms (three periods of
//! the lowest pitch looked for, 62.5 Hz), band-limited to 60-1500 Hz so that a referee's
//! whistle (a pure tone at 2-4 kHz, periodic at every multiple of its period) does not count, and divided by the
//! window's own autocorrelation (Boersma's method, as Praat measures voicing). A pure tone is
//! periodic too, and earshot scores a loud one as voice: a frame with all but 1/5000 of its
//! energy in one spectral peak is not voiced. That catches sine beeps only: a held tone rich in
//! harmonics within a voice's pitch range (a horn, a vuvuzela) that earshot calls voice would
//! pass, and the scenario set has none to tell.
//!
//! Segments: `min_speech_ms` of voiced frames (gaps shorter than the hangover allowed) start a
//! segment at the first of them; `hangover_ms` without a voiced frame ends it at the last; one
//! longer than `max_segment_s` is handed over at that length and goes on in a new one (marked
//! [`VoiceSegment::split`]). Each segment carries `pre_roll_ms` of audio from before its start
//! (the soft onset the frames missed) and as much after its end (at most the hangover). The
//! audio is kept in one buffer of `pre_roll + max_segment` made at start-up; nothing is
//! allocated per chunk.

use std::sync::Arc;
use std::time::Duration;

use rustfft::num_complex::Complex32;
use rustfft::{Fft, FftPlanner};

use super::AudioChunk;
use crate::clock::MonoTime;
use crate::config::Voice;

/// The only rate earshot hears.
pub const RATE: u32 = 16_000;
/// Samples in one earshot frame (16 ms).
pub const FRAME: usize = 256;
/// Periodicity window: 48 ms, three periods at the lowest pitch looked for.
const PITCH_WINDOW: usize = 768;
/// FFT length: the window plus the longest lag, so the autocorrelation does not wrap.
const PITCH_FFT: usize = 1024;
/// Where a voice's pitch and first harmonics lie; a whistle lies above.
const PITCH_BAND_HZ: [f32; 2] = [60.0, 1500.0];
/// Pitch periods looked for, samples: 400 Hz down to 62.5 Hz.
const PITCH_LAGS: [usize; 2] = [40, 256];
/// Levels below this are silence.
const FLOOR_DBFS: f32 = -100.0;
/// A voice spreads its energy over several harmonics; a pure tone (periodic too, and scored as
/// voice by earshot when loud: 0.87 for a 440 Hz sine) holds all of it in one peak. Share of the
/// band's energy within 3 bins of its strongest: 0.9999 for a sine (the rest -40 to -44 dB);
/// voiced speech in the scenario set 0.25-0.9996 (the rest at least -34 dB), a near-sinusoidal
/// vowel ("Front") 0.998-0.999.
const MAX_PEAK_SHARE: f32 = 0.9998;

/// One stretch of voice, handed over when it ends (or reaches `max_segment_s`).
#[derive(Clone, Copy, Debug)]
pub struct VoiceSegment<'a> {
    /// Capture time of the first voiced frame.
    pub start: MonoTime,
    /// End of the last voiced frame (for a split segment: where it was cut).
    pub end: MonoTime,
    /// Capture time of `samples[0]`: `start` less the pre-roll (less of it at the stream's start).
    pub audio_start: MonoTime,
    /// 16 kHz mono audio: the pre-roll, the segment, and up to `pre_roll_ms` after `end`.
    pub samples: &'a [i16],
    /// Cut at `max_segment_s` with the voice still going: the next segment, if the voice goes
    /// on, starts where this one ends.
    pub split: bool,
}

/// A change of the voice alert, stamped with the capture time of the chunk that decided it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum VoiceEvent {
    Started { at: MonoTime },
    Ended { at: MonoTime },
}

/// What one 16 ms frame looked like.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FrameStats {
    /// earshot's voice score, 0..1.
    pub score: f32,
    pub level_dbfs: f32,
    /// Normalised autocorrelation at the best pitch period, 0..1 (0 when not measured: the
    /// score or the level already failed).
    pub periodicity: f32,
    /// Share of the 60-1500 Hz energy in its strongest peak (0 when not measured).
    pub peak_share: f32,
    pub voiced: bool,
}

/// Periodicity at a voice's pitch, by FFT autocorrelation; buffers and plans made once.
struct Pitch {
    fwd: Arc<dyn Fft<f32>>,
    inv: Arc<dyn Fft<f32>>,
    window: Vec<f32>,
    /// The window's own autocorrelation, normalised to 1 at lag 0.
    window_ac: Vec<f32>,
    /// The latest `PITCH_WINDOW` samples, oldest first, full scale 1.
    recent: Vec<f32>,
    buf: Vec<Complex32>,
    scratch: Vec<Complex32>,
    band: [usize; 2],
}

impl Pitch {
    fn new() -> Self {
        let mut planner = FftPlanner::new();
        let fwd = planner.plan_fft_forward(PITCH_FFT);
        let inv = planner.plan_fft_inverse(PITCH_FFT);
        let n = PITCH_WINDOW as f32;
        let window: Vec<f32> = (0..PITCH_WINDOW)
            .map(|i| 0.5 - 0.5 * (std::f32::consts::TAU * (i as f32 + 0.5) / n).cos())
            .collect();
        let scratch_len = fwd.get_inplace_scratch_len().max(inv.get_inplace_scratch_len());
        let bin = |hz: f32| (hz * PITCH_FFT as f32 / RATE as f32).round() as usize;
        let mut p = Self {
            fwd,
            inv,
            window,
            window_ac: vec![1.0; PITCH_FFT],
            recent: vec![0.0; PITCH_WINDOW],
            buf: vec![Complex32::default(); PITCH_FFT],
            scratch: vec![Complex32::default(); scratch_len],
            band: [bin(PITCH_BAND_HZ[0]), bin(PITCH_BAND_HZ[1])],
        };
        for (b, i) in p.buf.iter_mut().zip(0..) {
            *b = Complex32::new(p.window.get(i).copied().unwrap_or(0.0), 0.0);
        }
        let _ = p.autocorrelate(false);
        let r0 = p.buf[0].re.max(f32::MIN_POSITIVE);
        for (w, b) in p.window_ac.iter_mut().zip(&p.buf) {
            *w = b.re / r0;
        }
        p
    }

    /// Moves the window on by one frame.
    fn push(&mut self, frame: &[i16]) {
        self.recent.copy_within(frame.len().., 0);
        let at = PITCH_WINDOW - frame.len();
        for (r, &s) in self.recent[at..].iter_mut().zip(frame) {
            *r = s as f32 / 32768.0;
        }
    }

    /// `buf` (time domain) becomes its autocorrelation, band-limited if asked; returns the share
    /// of the band's power within 3 bins of its strongest bin.
    fn autocorrelate(&mut self, band_limited: bool) -> f32 {
        self.fwd.process_with_scratch(&mut self.buf, &mut self.scratch);
        let [lo, hi] = self.band;
        for (k, b) in self.buf.iter_mut().enumerate() {
            let f = k.min(PITCH_FFT - k);
            let keep = !band_limited || (lo..=hi).contains(&f);
            *b = Complex32::new(if keep { b.norm_sqr() } else { 0.0 }, 0.0);
        }
        let band = &self.buf[lo..=hi];
        let (peak, total) = band
            .iter()
            .enumerate()
            .fold((0, 0.0f32), |(p, t), (k, b)| (if b.re > band[p].re { k } else { p }, t + b.re));
        let near: f32 = band[peak.saturating_sub(3)..(peak + 4).min(band.len())].iter().map(|b| b.re).sum();
        self.inv.process_with_scratch(&mut self.buf, &mut self.scratch);
        if total > 0.0 {
            near / total
        } else {
            0.0
        }
    }

    /// The window's periodicity (its best normalised autocorrelation over the pitch lags) and
    /// how much of its energy lies in one peak.
    fn measure(&mut self) -> (f32, f32) {
        for (i, b) in self.buf.iter_mut().enumerate() {
            let x = if i < PITCH_WINDOW { self.recent[i] * self.window[i] } else { 0.0 };
            *b = Complex32::new(x, 0.0);
        }
        let peak_share = self.autocorrelate(true);
        let r0 = self.buf[0].re;
        if r0.is_nan() || r0 <= 1e-9 {
            return (0.0, peak_share);
        }
        let [from, to] = PITCH_LAGS;
        let best = (from..=to).map(|t| self.buf[t].re / r0 / self.window_ac[t]).fold(0.0f32, f32::max);
        (best.clamp(0.0, 1.0), peak_share)
    }
}

/// Voiced frames gathering towards a start.
#[derive(Clone, Copy, Debug)]
struct Candidate {
    /// Index (samples since the stream began) and capture time of the first voiced frame.
    onset: u64,
    onset_ts: MonoTime,
    voiced: u32,
}

/// The segment being recorded.
#[derive(Clone, Copy, Debug)]
struct Open {
    start: u64,
    start_ts: MonoTime,
    /// End of the last voiced frame (index, time); `start` when none since a split.
    last: u64,
    last_ts: MonoTime,
}

pub struct VoiceDetector {
    vad: Box<earshot::Detector>,
    pitch: Pitch,
    /// False when the profile's rate is not 16 kHz (refused by validation): then it hears nothing.
    usable: bool,
    frame: Box<[i16; FRAME]>,
    fill: usize,
    frame_ts: MonoTime,
    threshold: f32,
    min_periodicity: f32,
    min_level: f32,
    start_after: u32,
    end_after: u32,
    max_len: u64,
    pre_roll: u64,
    tail: u64,
    cooldown: Duration,
    /// Recent audio: `audio[0]` is sample `base` of the stream; capacity made at start-up.
    audio: Vec<i16>,
    base: u64,
    gap: u32,
    candidate: Option<Candidate>,
    open: Option<Open>,
    last_stats: FrameStats,
    raised: bool,
    cleared: Option<MonoTime>,
}

/// `ms` in whole frames, at least one.
fn frames(ms: f32) -> u32 {
    ((ms / 16.0).ceil() as u32).max(1)
}

impl VoiceDetector {
    /// A detector for audio at `rate` Hz (16000: validation refuses other rates; a detector
    /// made for another anyway hears nothing and says so in the log).
    pub fn new(cfg: &Voice, rate: u32) -> Self {
        let usable = rate == RATE;
        if !usable {
            tracing::warn!(rule = %cfg.name, rate, "voice: earshot hears {RATE} Hz only; this rule stays silent");
        }
        // Within validation's bounds even if handed something else: the buffer is sized by them.
        let max_len = frames(cfg.max_segment_s.clamp(1.0, 60.0) * 1000.0) as u64 * FRAME as u64;
        let pre_roll = (cfg.pre_roll_ms.clamp(0.0, 2000.0) * RATE as f32 / 1000.0) as u64;
        let end_after = frames(cfg.hangover_ms);
        let capacity = (pre_roll + max_len) as usize + FRAME;
        Self {
            vad: earshot::Detector::default_boxed(),
            pitch: Pitch::new(),
            usable,
            frame: Box::new([0; FRAME]),
            fill: 0,
            frame_ts: MonoTime::default(),
            threshold: cfg.threshold,
            min_periodicity: cfg.min_periodicity,
            min_level: cfg.min_level_dbfs,
            start_after: frames(cfg.min_speech_ms),
            end_after,
            max_len,
            pre_roll,
            tail: pre_roll.min(end_after as u64 * FRAME as u64),
            cooldown: Duration::try_from_secs_f32(cfg.cooldown_s.max(0.0)).unwrap_or(Duration::MAX),
            audio: Vec::with_capacity(capacity),
            base: 0,
            gap: 0,
            candidate: None,
            open: None,
            last_stats: FrameStats::default(),
            raised: false,
            cleared: None,
        }
    }

    /// Feeds one chunk. Each segment that ends in it is handed to `on_segment` (borrowed: copy
    /// what you keep). Returns the alert's change, if any: raised when a segment starts (unless
    /// within `cooldown_s` of the last clear), cleared when no segment is open any more.
    pub fn push(
        &mut self,
        chunk: &AudioChunk,
        mut on_segment: impl FnMut(&VoiceSegment<'_>),
    ) -> Option<VoiceEvent> {
        if !self.usable {
            return None;
        }
        let mut started = false;
        let step = Duration::from_nanos(1_000_000_000 / RATE as u64);
        for (i, &s) in chunk.samples.iter().enumerate() {
            if self.fill == 0 {
                self.frame_ts = chunk.ts.plus(step * i as u32);
            }
            self.frame[self.fill] = s;
            self.fill += 1;
            if self.fill == FRAME {
                self.fill = 0;
                started |= self.on_frame(&mut on_segment);
            }
        }
        let cooling = self.cleared.is_some_and(|t| chunk.ts.since(t) < self.cooldown);
        if !self.raised && (started || self.open.is_some()) && !cooling {
            self.raised = true;
            return Some(VoiceEvent::Started { at: chunk.ts });
        }
        if self.raised && self.open.is_none() {
            self.raised = false;
            self.cleared = Some(chunk.ts);
            return Some(VoiceEvent::Ended { at: chunk.ts });
        }
        None
    }

    /// Whether the alert is raised now.
    pub fn active(&self) -> bool {
        self.raised
    }

    /// Longest segment handed over, samples: the pre-roll, `max_segment_s` and the tail.
    pub fn segment_capacity(&self) -> usize {
        self.audio.capacity()
    }

    /// The latest frame's measurements.
    pub fn last_frame(&self) -> FrameStats {
        self.last_stats
    }

    /// Scores one complete frame, moves the segment state on; true when a segment started.
    fn on_frame(&mut self, on_segment: &mut impl FnMut(&VoiceSegment<'_>)) -> bool {
        let frame = *self.frame;
        let at = self.base + self.audio.len() as u64;
        self.keep_room();
        self.audio.extend_from_slice(&frame);
        let stats = self.measure(&frame);
        self.last_stats = stats;
        let end = at + FRAME as u64;
        let end_ts = self.frame_ts.plus(Duration::from_millis(16));
        self.gap = if stats.voiced { 0 } else { self.gap.saturating_add(1) };
        if let Some(mut open) = self.open {
            if stats.voiced {
                (open.last, open.last_ts) = (end, end_ts);
            }
            if self.gap >= self.end_after {
                self.open = None;
                if open.last > open.start {
                    self.hand_over(&open, open.last, open.last_ts, false, on_segment);
                }
            } else if end - open.start >= self.max_len {
                self.hand_over(&open, end, end_ts, true, on_segment);
                self.open = Some(Open { start: end, start_ts: end_ts, last: end, last_ts: end_ts });
            } else {
                self.open = Some(open);
            }
            return false;
        }
        if stats.voiced {
            let ts = self.frame_ts;
            self.candidate.get_or_insert(Candidate { onset: at, onset_ts: ts, voiced: 0 }).voiced += 1;
        } else if self.gap >= self.end_after {
            self.candidate = None;
        }
        match self.candidate {
            Some(c) if c.voiced >= self.start_after => {
                self.candidate = None;
                // An onset older than the audio kept (voiced frames spread over longer than a
                // segment) starts the segment at the oldest sample kept.
                let (start, start_ts) = if c.onset >= self.base {
                    (c.onset, c.onset_ts)
                } else {
                    (self.base, self.time_of(self.base, at, self.frame_ts))
                };
                self.open = Some(Open { start, start_ts, last: end, last_ts: end_ts });
                true
            }
            _ => false,
        }
    }

    fn measure(&mut self, frame: &[i16; FRAME]) -> FrameStats {
        let score = self.vad.predict_i16(frame);
        let sum: f64 = frame.iter().map(|&s| (s as f64) * (s as f64)).sum();
        let rms = (sum / FRAME as f64).sqrt() / 32768.0;
        let level_dbfs = ((20.0 * rms.max(1e-10).log10()) as f32).max(FLOOR_DBFS);
        self.pitch.push(frame);
        // The FFTs only where they can still matter.
        let (periodicity, peak_share) = if score >= self.threshold && level_dbfs >= self.min_level {
            self.pitch.measure()
        } else {
            (0.0, 0.0)
        };
        let voiced = score >= self.threshold
            && level_dbfs >= self.min_level
            && periodicity >= self.min_periodicity
            && peak_share <= MAX_PEAK_SHARE;
        FrameStats { score, level_dbfs, periodicity, peak_share, voiced }
    }

    /// Capture time of sample `index`, from a sample `known` whose time is `known_ts`.
    fn time_of(&self, index: u64, known: u64, known_ts: MonoTime) -> MonoTime {
        let ns = |samples: u64| samples.saturating_mul(1_000_000_000) / RATE as u64;
        if index >= known {
            known_ts.plus(Duration::from_nanos(ns(index - known)))
        } else {
            MonoTime::from_nanos(known_ts.as_nanos().saturating_sub(ns(known - index)))
        }
    }

    /// Hands over `open` from its pre-roll to `end` (and the tail after it, unless split).
    fn hand_over(
        &self,
        open: &Open,
        end: u64,
        end_ts: MonoTime,
        split: bool,
        on_segment: &mut impl FnMut(&VoiceSegment<'_>),
    ) {
        let last = self.base + self.audio.len() as u64;
        let from = open.start.saturating_sub(self.pre_roll).max(self.base);
        let to = if split { end } else { (end + self.tail).min(last) };
        let samples = &self.audio[(from - self.base) as usize..(to.max(from) - self.base) as usize];
        let audio_start = self.time_of(from, open.start, open.start_ts);
        on_segment(&VoiceSegment { start: open.start_ts, end: end_ts, audio_start, samples, split });
    }

    /// Makes room for one more frame, dropping the oldest audio no segment can still need.
    fn keep_room(&mut self) {
        if self.audio.len() + FRAME <= self.audio.capacity() {
            return;
        }
        let now = self.base + self.audio.len() as u64;
        let needed = match (self.open, self.candidate) {
            (Some(o), _) => o.start,
            (None, Some(c)) => c.onset,
            (None, None) => now,
        };
        let keep_from = needed
            .saturating_sub(self.pre_roll)
            .max(self.base)
            // Never more than the buffer holds (a candidate spread over longer than a segment).
            .max((now + FRAME as u64).saturating_sub(self.audio.capacity() as u64));
        self.audio.drain(..(keep_from - self.base) as usize);
        self.base = keep_from;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn rule(extra: &str) -> Voice {
        toml::from_str(&format!("name = \"voice\"\noutputs = [\"log\"]\n{extra}")).unwrap()
    }

    /// A sound from scripts/setup, as 16 kHz samples.
    fn sound(name: &str) -> Vec<i16> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cache/media/sounds");
        let path = dir.join(format!("{name}.wav"));
        assert!(path.is_file(), "{} is missing: run scripts/setup", path.display());
        super::super::wav::load_mono(&path, RATE)
            .unwrap()
            .into_iter()
            .map(|v| (v * 32767.0).round().clamp(-32768.0, 32767.0) as i16)
            .collect()
    }

    /// `samples` placed at `at_s` in `len_s` of silence.
    fn placed(len_s: f32, parts: &[(f32, &[i16])]) -> Vec<i16> {
        let mut out = vec![0i16; (len_s * RATE as f32) as usize];
        for (at, part) in parts {
            let at = (at * RATE as f32) as usize;
            for (o, &s) in out[at..].iter_mut().zip(*part) {
                *o = o.saturating_add(s);
            }
        }
        out
    }

    #[derive(Debug, Clone, PartialEq)]
    struct Seg {
        start: f32,
        end: f32,
        audio_start: f32,
        len: usize,
        split: bool,
        /// The samples themselves, to compare across chunkings.
        sum: i64,
    }

    /// Runs `samples` through a detector in `chunk`-sample chunks: segments (seconds from the
    /// start) and alert changes.
    fn run(cfg: &Voice, samples: &[i16], chunk: usize) -> (Vec<Seg>, Vec<(bool, f32)>) {
        let mut det = VoiceDetector::new(cfg, RATE);
        let t0 = MonoTime::from_nanos(5_000_000_000);
        let secs = |t: MonoTime| t.since(t0).as_secs_f32();
        let mut c = AudioChunk { samples: Vec::with_capacity(chunk), ..Default::default() };
        let (mut segs, mut alerts) = (vec![], vec![]);
        for (i, part) in samples.chunks(chunk).enumerate() {
            c.samples.clear();
            c.samples.extend_from_slice(part);
            c.ts = t0.plus(Duration::from_nanos((i * chunk) as u64 * 1_000_000_000 / RATE as u64));
            let ev = det.push(&c, |s| {
                segs.push(Seg {
                    start: secs(s.start),
                    end: secs(s.end),
                    audio_start: secs(s.audio_start),
                    len: s.samples.len(),
                    split: s.split,
                    sum: s.samples.iter().map(|&v| v as i64).sum(),
                })
            });
            match ev {
                Some(VoiceEvent::Started { at }) => alerts.push((true, secs(at))),
                Some(VoiceEvent::Ended { at }) => alerts.push((false, secs(at))),
                None => {}
            }
        }
        (segs, alerts)
    }

    #[test]
    fn speech_gives_segments_covering_the_utterances() {
        // Two alsa-utils voices 1.5 s apart, then espeak-ng's sentence.
        let (a, b, c) = (sound("Front_Center"), sound("Rear_Left"), sound("speech-medic"));
        let samples = placed(12.0, &[(1.0, &a), (4.0, &b), (7.0, &c)]);
        let (segs, alerts) = run(&rule(""), &samples, 512);
        let secs = |n: usize| n as f32 / 16e3;
        let utterances = [(1.0, 1.0 + secs(a.len())), (4.0, 4.0 + secs(b.len())), (7.0, 7.0 + secs(c.len()))];
        for (from, to) in utterances {
            assert!(segs.iter().any(|s| s.start >= from && s.end <= to), "nothing in {from}-{to}: {segs:?}");
        }
        assert!(
            segs.iter().all(|s| utterances.iter().any(|(f, t)| s.start >= *f && s.end <= *t)),
            "{segs:?}"
        );
        // What speech-to-text gets (pre-roll and tail included) holds the words: nearly every
        // 16 ms of the utterances louder than -40 dBFS.
        let loud: Vec<f32> = samples
            .chunks(FRAME)
            .enumerate()
            .filter(|(_, f)| {
                let ms = f.iter().map(|&v| (v as f64 / 32768.0).powi(2)).sum::<f64>() / f.len() as f64;
                10.0 * ms.log10() > -40.0
            })
            .map(|(i, _)| (i * FRAME) as f32 / 16e3)
            .collect();
        let handed =
            |t: &f32| segs.iter().any(|s| *t >= s.audio_start && *t + 0.016 <= s.audio_start + secs(s.len));
        let share = loud.iter().filter(|t| handed(t)).count() as f32 / loud.len() as f32;
        assert!(
            loud.len() > 200 && share >= 0.9,
            "{share} of {} loud frames handed over: {segs:?}",
            loud.len()
        );
        // The alert is raised at each segment's start and cleared after its end.
        assert_eq!(alerts.len(), 2 * segs.len(), "{alerts:?} for {segs:?}");
        for (s, pair) in segs.iter().zip(alerts.chunks(2)) {
            // Raised once 100 ms of voiced frames gathered: within the segment, not after it.
            assert!(
                pair[0].0 && pair[0].1 >= s.start + 0.05 && pair[0].1 <= s.end,
                "raised {pair:?} for {s:?}"
            );
            assert!(
                !pair[1].0 && pair[1].1 >= s.end && pair[1].1 - s.end < 0.4,
                "cleared {pair:?} for {s:?}"
            );
        }
    }

    #[test]
    fn silence_and_a_tone_give_nothing() {
        let silence = vec![0i16; 5 * RATE as usize];
        assert_eq!(run(&rule(""), &silence, 512), (vec![], vec![]));
        // Loud pure tones in a voice's pitch range: periodic, and earshot scores them up to 0.87,
        // but a voice is several harmonics.
        for hz in [120.0, 220.0, 440.0] {
            let tone: Vec<i16> = (0..5 * RATE as usize)
                .map(|i| ((std::f32::consts::TAU * hz * i as f32 / 16e3).sin() * 8000.0) as i16)
                .collect();
            assert_eq!(run(&rule(""), &tone, 512), (vec![], vec![]), "{hz} Hz");
        }
        // A referee's whistle over nothing: periodic, but far above a voice's pitch band.
        let w = sound("refwhistlelong");
        assert_eq!(run(&rule(""), &placed(4.0, &[(0.5, &w)]), 512), (vec![], vec![]));
    }

    #[test]
    fn the_crowd_is_voices_but_not_a_voice() {
        // earshot alone scores the crowd's boo and ooh as voice ...
        let crowd = sound("crowd");
        let loose = rule("min_periodicity = 0.0");
        let (segs, _) = run(&loose, &crowd, 512);
        assert!(!segs.is_empty(), "without the periodicity gate the crowd is voice");
        // ... but no single pitch holds in it.
        let (segs, alerts) = run(&rule(""), &crowd, 512);
        assert!(segs.is_empty() && alerts.is_empty(), "{segs:?}");
    }

    #[test]
    fn chunk_size_does_not_change_the_segments() {
        let (a, c) = (sound("Side_Right"), sound("speech-storm"));
        let samples = placed(9.0, &[(0.7, &a), (3.3, &c)]);
        let (want, _) = run(&rule(""), &samples, 256);
        assert!(want.len() >= 2, "{want:?}");
        for chunk in [1, 100, 333, 512, 1000, 4096, 16000] {
            let (got, _) = run(&rule(""), &samples, chunk);
            assert_eq!(got.len(), want.len(), "chunk {chunk}: {got:?}");
            for (g, w) in got.iter().zip(&want) {
                // Times are stamped from each chunk's capture time: equal to a nanosecond.
                assert!((g.start - w.start).abs() < 1e-4 && (g.end - w.end).abs() < 1e-4, "chunk {chunk}");
                assert_eq!((g.len, g.sum, g.split), (w.len, w.sum, w.split), "chunk {chunk}");
            }
        }
    }

    #[test]
    fn a_long_voice_is_split_at_max_segment_and_goes_on() {
        // 4.9 s of one utterance, cut every 1.5 s.
        let c = sound("speech-keywords");
        let samples = placed(7.0, &[(0.5, &c)]);
        let cfg = rule("max_segment_s = 1.5\nhangover_ms = 800\n");
        let (segs, alerts) = run(&cfg, &samples, 512);
        let splits: Vec<&Seg> = segs.iter().filter(|s| s.split).collect();
        assert!(splits.len() >= 2, "{segs:?}");
        for s in &splits {
            assert!((s.end - s.start - 1.504).abs() < 0.02, "cut at 1.5 s (94 frames): {s:?}");
            assert!(s.len <= ((1.504 + 0.2) * 16e3) as usize + 1, "pre-roll + segment: {s:?}");
        }
        for w in segs.windows(2).filter(|w| w[0].split) {
            assert!((w[1].start - w[0].end).abs() < 1e-3, "the next one carries on: {w:?}");
        }
        // One alert for the whole voice, cleared after it: the splits are for speech-to-text,
        // not for the outputs.
        assert_eq!(alerts.len(), 2, "{alerts:?} for {segs:?}");
        assert!(alerts[0].0 && !alerts[1].0 && alerts[1].1 > 5.0, "{alerts:?}");
    }

    #[test]
    fn pre_roll_and_tail_are_included() {
        let a = sound("Front_Left");
        let samples = placed(4.0, &[(1.0, &a)]);
        for pre in [0.0f32, 100.0, 300.0] {
            let (segs, _) = run(&rule(&format!("pre_roll_ms = {pre}\n")), &samples, 512);
            assert!(!segs.is_empty());
            for s in &segs {
                assert!((s.start - s.audio_start - pre / 1000.0).abs() < 1e-3, "pre-roll {pre}: {s:?}");
                // Samples run from audio_start to end plus a tail of min(pre-roll, hangover).
                let want = ((s.end - s.audio_start + pre.min(300.0) / 1000.0) * 16e3).round() as usize;
                assert!(s.len.abs_diff(want) <= 1, "pre-roll {pre}: {} samples, want {want}: {s:?}", s.len);
            }
        }
        // The pre-roll holds the samples from before the start.
        let (segs, _) = run(&rule("pre_roll_ms = 300\n"), &samples, 512);
        let s = &segs[0];
        let from = (s.audio_start * 16e3).round() as usize;
        let want: i64 = samples[from..from + s.len].iter().map(|&v| v as i64).sum();
        assert_eq!(s.sum, want);
    }

    #[test]
    fn cooldown_holds_back_the_alert_not_the_segments() {
        let (a, b) = (sound("Front_Center"), sound("Rear_Left"));
        let samples = placed(6.0, &[(0.5, &a), (3.0, &b)]);
        let (segs, alerts) = run(&rule("cooldown_s = 10\n"), &samples, 512);
        assert!(segs.len() >= 2, "{segs:?}");
        assert_eq!(alerts.iter().filter(|a| a.0).count(), 1, "{alerts:?}");
        let (_, alerts) = run(&rule(""), &samples, 512);
        assert!(alerts.iter().filter(|a| a.0).count() >= 2, "no cooldown by default: {alerts:?}");
    }

    #[test]
    fn another_rate_hears_nothing_and_odd_input_does_not_panic() {
        let a = sound("Front_Center");
        let mut det = VoiceDetector::new(&rule(""), 48_000);
        let c = AudioChunk { samples: a.clone(), ..Default::default() };
        assert_eq!(det.push(&c, |_| panic!("no segments")), None);
        // Full-scale square waves, empty chunks, a clock that does not move.
        let mut det = VoiceDetector::new(&rule(""), RATE);
        let loud: Vec<i16> = (0..40_000).map(|i| if i / 40 % 2 == 0 { i16::MAX } else { i16::MIN }).collect();
        for samples in [loud, vec![], a] {
            det.push(&AudioChunk { samples, ..Default::default() }, |_| {});
        }
    }
}
