//! Microphones: where sound comes from.
//!
//! Audio arrives as fixed-size chunks of 16-bit mono samples at the profile's rate, each stamped
//! on the same monotonic clock as the frames, so an audio event and a video event can be compared
//! directly. The simulated microphone ([`wav::WavMic`]) plays a WAV file in real time; the
//! real one ([`alsa::AlsaMic`]) captures from the sound card.

pub mod alsa;
pub mod thunder;
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
}

impl Detector {
    /// `chunk_len` samples per chunk at `rate` Hz; buffers are made here, none per chunk.
    pub fn new(rule: &AudioRule, rate: u32, chunk_len: usize) -> Self {
        match rule {
            AudioRule::Whistle(w) => Self::Whistle(whistle::WhistleDetector::new(w, rate, chunk_len)),
            AudioRule::Thunder(t) => Self::Thunder(thunder::ThunderDetector::new(t, rate, chunk_len)),
        }
    }

    /// Feeds one chunk; returns a raise or clear, stamped with the capture time of the chunk
    /// that decided it.
    pub fn push(&mut self, chunk: &AudioChunk) -> Option<(AlertState, MonoTime)> {
        match self {
            Self::Whistle(d) => match d.push(chunk)? {
                whistle::WhistleEvent::Started { at, .. } => Some((AlertState::Raised, at)),
                whistle::WhistleEvent::Ended { at } => Some((AlertState::Cleared, at)),
            },
            Self::Thunder(d) => match d.push(chunk)? {
                thunder::ThunderEvent::Started { at, .. } => Some((AlertState::Raised, at)),
                thunder::ThunderEvent::Ended { at } => Some((AlertState::Cleared, at)),
            },
        }
    }

    /// Whether this detector holds its alert raised.
    pub fn active(&self) -> bool {
        match self {
            Self::Whistle(d) => d.active(),
            Self::Thunder(d) => d.active(),
        }
    }
}
