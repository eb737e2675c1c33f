//! Speech to text: what a voice near the device said, as text, on the device.
//!
//! Why it exists: the microphone already listens for whistles and thunder; a steward, coach or
//! referee shouting "medic" or "clear the field" is the same kind of safety signal, but words
//! need a transcript before a rule can match them. A field has no dependable network, so the
//! model runs here, offline, on the onnxruntime the vision models already use. It is fed one
//! voice segment at a time, when voice activity detection says the utterance has ended, so the
//! latency that matters (end of utterance to text) is exactly one [`SpeechToText::transcribe`]
//! call, which [`Transcript::compute`] measures.
//!
//! The model is Moonshine tiny-en (27 M parameters, MIT), three files made by `scripts/setup`
//! in [`DEFAULT_DIR`]; models/MODELS.md ("Moonshine tiny-en") has their source, checksums,
//! inputs and outputs and the decoding. `moonshine.rs` runs it, [`tokenizer`] turns its ids
//! into text and [`wer`] scores transcripts against references. Running needs the `ort` feature;
//! without it [`SpeechToText::open`] says so ([`SttError::NotBuilt`]) and the rest still builds.

#[cfg(feature = "ort")]
mod moonshine;
pub mod tokenizer;
pub mod wer;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::config::Inference;
pub use tokenizer::Tokenizer;
pub use wer::{wer, word_errors, WordErrors};

/// Where `scripts/setup` puts the model, relative to the repository.
pub const DEFAULT_DIR: &str = ".cache/models/moonshine-tiny-en";
pub const ENCODER_FILE: &str = "encoder_model.ort";
pub const DECODER_FILE: &str = "decoder_model_merged.ort";
pub const TOKENIZER_FILE: &str = "tokenizer.bin";
/// The files [`SpeechToText::open`] needs in its directory.
pub const MODEL_FILES: [&str; 3] = [ENCODER_FILE, DECODER_FILE, TOKENIZER_FILE];

/// The model hears 16 kHz mono.
pub const SAMPLE_RATE: u32 = 16_000;
/// Longest segment accepted: Moonshine was trained on utterances of up to 30 s (its model
/// card's generation limit is 30 s x 6.5 tokens/s). Longer speech must be split first.
pub const MAX_SECONDS: f32 = 30.0;
/// Shortest segment accepted: the encoder's three strided convolutions (kernels 127, 7, 3;
/// strides 64, 3, 2) need 895 samples (56 ms) to produce a single frame.
pub const MIN_SAMPLES: usize = 895;
/// Decoding stops at `ceil(seconds x 6.5)` tokens if the model has not ended the text: the
/// limit Moonshine's own library uses for tiny, which stops a decoder that repeats itself.
/// Read speech needs 2 to 4 tokens a second, but fast speech cut tightly can reach the limit (a
/// 1.5 s telephone utterance took all of its 11 tokens), so segments should keep a little
/// silence at their ends.
pub const MAX_TOKENS_PER_SECOND: f32 = 6.5;

#[derive(Debug, thiserror::Error)]
pub enum SttError {
    #[error("{}: cannot read: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: bad tokenizer file at byte offset {offset}: {message}", path.display())]
    Tokenizer { path: PathBuf, offset: usize, message: String },
    #[error("{}: cannot load model: {message}", path.display())]
    Load { path: PathBuf, message: String },
    #[error("{}: not the model sideline expects: {message}", path.display())]
    Mismatch { path: PathBuf, message: String },
    #[error("onnxruntime library: {0}")]
    Runtime(String),
    #[error("{}: inference failed: {message}", path.display())]
    Run { path: PathBuf, message: String },
    #[error("audio segment rejected: {0}")]
    Input(String),
    #[error("speech-to-text runs on onnxruntime, and this build lacks the `ort` cargo feature")]
    NotBuilt,
}

/// One transcribed segment.
#[derive(Clone, Debug, PartialEq)]
pub struct Transcript {
    pub text: String,
    /// Tokens the decoder produced (end-of-text not counted).
    pub tokens: usize,
    /// Length of the segment.
    pub audio_s: f32,
    /// Wall time of the whole call: encoder, decoding and detokenising.
    pub compute: Duration,
}

impl Transcript {
    /// Compute time over audio time (below 1: faster than real time).
    pub fn real_time_factor(&self) -> f32 {
        self.compute.as_secs_f32() / self.audio_s.max(f32::EPSILON)
    }
}

/// Moonshine tiny-en, loaded and ready for segments.
pub struct SpeechToText {
    model: Model,
    tokenizer: Tokenizer,
}

impl SpeechToText {
    /// Loads the three files from `dir` (see [`DEFAULT_DIR`]). onnxruntime is found as
    /// everywhere else in sideline: `ORT_DYLIB_PATH`, else `ort_library`.
    pub fn open(dir: &Path, ort_library: Option<&Path>) -> Result<Self, SttError> {
        let settings = Inference { ort_library: ort_library.map(Path::to_path_buf), ..Inference::default() };
        Self::open_with(dir, &settings)
    }

    /// As [`open`](Self::open), with a profile's `[inference]` settings (library, threads). The
    /// model runs on the CPU whatever `accelerator` says.
    pub fn open_with(dir: &Path, settings: &Inference) -> Result<Self, SttError> {
        let tokenizer = Tokenizer::load(&dir.join(TOKENIZER_FILE))?;
        let model = Model::open(dir, settings, tokenizer.len())?;
        Ok(Self { model, tokenizer })
    }

    /// Transcribes one segment: 16 kHz mono samples in -1..1, [`MIN_SAMPLES`] to
    /// [`MAX_SECONDS`] long.
    pub fn transcribe(&mut self, samples_16k: &[f32]) -> Result<Transcript, SttError> {
        check_segment(samples_16k)?;
        let start = Instant::now();
        let audio_s = samples_16k.len() as f32 / SAMPLE_RATE as f32;
        let max_tokens = (audio_s * MAX_TOKENS_PER_SECOND).ceil() as usize;
        let ids = self.model.generate(samples_16k, max_tokens)?;
        let text = self.tokenizer.decode(&ids);
        Ok(Transcript { text, tokens: ids.len(), audio_s, compute: start.elapsed() })
    }
}

/// The segment must be something the model can take and was trained on.
pub fn check_segment(samples: &[f32]) -> Result<(), SttError> {
    let n = samples.len();
    let max = (MAX_SECONDS * SAMPLE_RATE as f32) as usize;
    if n < MIN_SAMPLES {
        return Err(SttError::Input(format!(
            "{n} samples ({:.1} ms at 16 kHz); the model needs at least {MIN_SAMPLES} (56 ms)",
            n as f32 / 16.0
        )));
    }
    if n > max {
        return Err(SttError::Input(format!(
            "{:.2} s long; at most {MAX_SECONDS} s per segment (split longer speech at pauses)",
            n as f32 / SAMPLE_RATE as f32
        )));
    }
    if let Some(i) = samples.iter().position(|s| !s.is_finite() || s.abs() > 1.0) {
        return Err(SttError::Input(format!(
            "sample {i} is {}; samples must be finite and within -1..1",
            samples[i]
        )));
    }
    Ok(())
}

#[cfg(feature = "ort")]
use moonshine::Moonshine as Model;

/// Stands in for the model in builds without onnxruntime; cannot be made.
#[cfg(not(feature = "ort"))]
struct Model(std::convert::Infallible);

#[cfg(not(feature = "ort"))]
impl Model {
    fn open(_: &Path, _: &Inference, _: usize) -> Result<Self, SttError> {
        Err(SttError::NotBuilt)
    }
    fn generate(&mut self, _: &[f32], _: usize) -> Result<Vec<u32>, SttError> {
        match self.0 {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_segments_the_model_cannot_take() {
        let e = check_segment(&[]).unwrap_err().to_string();
        assert!(e.contains("0 samples") && e.contains("895"), "{e}");
        assert!(check_segment(&vec![0.0; MIN_SAMPLES - 1]).is_err());
        assert!(check_segment(&vec![0.0; MIN_SAMPLES]).is_ok());
        assert!(check_segment(&vec![0.0; 30 * 16_000]).is_ok());
        let e = check_segment(&vec![0.0; 30 * 16_000 + 1]).unwrap_err().to_string();
        assert!(e.contains("30.00 s") && e.contains("at most 30 s"), "{e}");
        let mut x = vec![0.0; 2000];
        x[7] = f32::NAN;
        let e = check_segment(&x).unwrap_err().to_string();
        assert!(e.contains("sample 7 is NaN"), "{e}");
        x[7] = 1.5;
        assert!(check_segment(&x).unwrap_err().to_string().contains("within -1..1"));
    }

    #[test]
    fn missing_model_dir_names_the_file() {
        let e = SpeechToText::open(Path::new("/nonexistent/moonshine"), None).err().unwrap().to_string();
        assert!(e.contains("/nonexistent/moonshine/tokenizer.bin"), "{e}");
    }

    #[test]
    fn real_time_factor() {
        let t =
            Transcript { text: String::new(), tokens: 0, audio_s: 2.0, compute: Duration::from_millis(100) };
        assert!((t.real_time_factor() - 0.05).abs() < 1e-6);
    }
}
