//! Microphones: where sound comes from.
//!
//! Audio arrives as fixed-size chunks of 16-bit mono samples at the profile's rate, each stamped
//! on the same monotonic clock as the frames, so an audio event and a video event can be compared
//! directly. The simulated microphone ([`wav::WavMic`]) plays a WAV file in real time; the
//! real one ([`alsa::AlsaMic`]) captures from the sound card.

pub mod alsa;
pub mod keyword;
pub mod speech;
pub mod stt;
pub mod thunder;
pub mod vad;
pub mod wav;
pub mod whistle;

use std::path::PathBuf;

use crate::clock::MonoTime;
use crate::rules::{AlertState, AudioRule};

/// A run of samples. The buffer is reused from chunk to chunk.
#[derive(Clone, Debug, Default)]
pub struct AudioChunk {
    pub seq: u64,
    /// Capture time of the first sample.
    pub ts: MonoTime,
    pub samples: Vec<i16>,
}

impl AudioChunk {
    /// Root-mean-square level in dB relative to full scale (-inf for silence).
    pub fn level_dbfs(&self) -> f32 {
        if self.samples.is_empty() {
            return f32::NEG_INFINITY;
        }
        let sum: f64 = self.samples.iter().map(|&s| (s as f64) * (s as f64)).sum();
        let rms = (sum / self.samples.len() as f64).sqrt() / 32768.0;
        (20.0 * rms.log10()) as f32
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    #[error("{}: cannot read WAV: {source}", path.display())]
    Wav { path: PathBuf, source: hound::Error },
    #[error("{}: {message}", path.display())]
    Format { path: PathBuf, message: String },
    #[error("audio kind `{0}` is not supported by this build yet")]
    Unsupported(String),
    #[error("ALSA device `{device}`: {message}")]
    Alsa { device: String, message: String },
}

/// A microphone.
pub trait AudioSource: Send {
    fn sample_rate(&self) -> u32;
    /// Samples per chunk.
    fn chunk_len(&self) -> usize;
    /// Fills `chunk` with the next samples, blocking until they are available.
    /// Returns `Ok(false)` at the end of the stream.
    fn next_chunk(&mut self, chunk: &mut AudioChunk) -> Result<bool, AudioError>;
}

/// The detector of one audio rule, as the microphone thread and `sideline scenarios` run it.
pub enum Detector {
    Whistle(whistle::WhistleDetector),
    Thunder(thunder::ThunderDetector),
    Voice(vad::VoiceDetector),
}

impl Detector {
    /// `chunk_len` samples per chunk at `rate` Hz; buffers are made here, none per chunk.
    /// `None` for a keyword rule: it hears a voice rule's segments, not chunks ([`speech`]).
    pub fn new(rule: &AudioRule, rate: u32, chunk_len: usize) -> Option<Self> {
        Some(match rule {
            AudioRule::Whistle(w) => Self::Whistle(whistle::WhistleDetector::new(w, rate, chunk_len)),
            AudioRule::Thunder(t) => Self::Thunder(thunder::ThunderDetector::new(t, rate, chunk_len)),
            AudioRule::Voice(v) => Self::Voice(vad::VoiceDetector::new(v, rate)),
            AudioRule::Keyword(_) => return None,
        })
    }

    /// Feeds one chunk; returns a raise or clear, stamped with the capture time of the chunk
    /// that decided it.
    pub fn push(&mut self, chunk: &AudioChunk) -> Option<(AlertState, MonoTime)> {
        self.push_with(chunk, |_| {})
    }

    /// As [`push`](Self::push), handing each finished voice segment to `on_segment` (only a
    /// voice detector makes them).
    pub fn push_with(
        &mut self,
        chunk: &AudioChunk,
        on_segment: impl FnMut(&vad::VoiceSegment<'_>),
    ) -> Option<(AlertState, MonoTime)> {
        match self {
            Self::Whistle(d) => match d.push(chunk)? {
                whistle::WhistleEvent::Started { at, .. } => Some((AlertState::Raised, at)),
                whistle::WhistleEvent::Ended { at } => Some((AlertState::Cleared, at)),
            },
            Self::Thunder(d) => match d.push(chunk)? {
                thunder::ThunderEvent::Started { at, .. } => Some((AlertState::Raised, at)),
                thunder::ThunderEvent::Ended { at } => Some((AlertState::Cleared, at)),
            },
            // The segments are for speech-to-text (the keyword rules, `speech`); the voice
            // alert needs only their starts and ends.
            Self::Voice(d) => match d.push(chunk, on_segment)? {
                vad::VoiceEvent::Started { at } => Some((AlertState::Raised, at)),
                vad::VoiceEvent::Ended { at } => Some((AlertState::Cleared, at)),
            },
        }
    }

    /// Longest segment this detector hands over, samples (0: it makes none).
    pub fn segment_capacity(&self) -> usize {
        match self {
            Self::Voice(d) => d.segment_capacity(),
            _ => 0,
        }
    }

    /// Whether this detector holds its alert raised.
    pub fn active(&self) -> bool {
        match self {
            Self::Whistle(d) => d.active(),
            Self::Thunder(d) => d.active(),
            Self::Voice(d) => d.active(),
        }
    }
}
