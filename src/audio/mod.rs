//! Microphones: where sound comes from.
//!
//! Audio arrives as fixed-size chunks of 16-bit mono samples at the profile's rate, each stamped
//! on the same monotonic clock as the frames, so an audio event and a video event can be compared
//! directly. The simulated microphone ([`wav::WavMic`]) plays a WAV file in real time; the
//! real one ([`alsa::AlsaMic`]) captures from the sound card.

pub mod alsa;
pub mod wav;
pub mod whistle;

use std::path::PathBuf;

use crate::clock::MonoTime;

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
