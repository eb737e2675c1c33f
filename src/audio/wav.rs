//! Simulated microphone: a WAV file, converted once to mono at the profile's rate, then handed
//! out chunk by chunk at real-time pace (or as fast as asked, for tests).

use std::path::Path;
use std::time::Duration;

use super::{AudioChunk, AudioError, AudioSource};
use crate::clock::{sleep_until, MonoTime};

pub struct WavMic {
    samples: Vec<i16>,
    rate: u32,
    chunk: usize,
    pos: usize,
    seq: u64,
    paced: bool,
    start: MonoTime,
}

impl WavMic {
    pub fn open(path: &Path, rate: u32, chunk_ms: u32, paced: bool) -> Result<Self, AudioError> {
        let samples = load_mono(path, rate)?
            .into_iter()
            .map(|v| (v * 32767.0).round().clamp(-32768.0, 32767.0) as i16)
            .collect();
        Ok(Self {
            samples,
            rate,
            chunk: (rate as usize * chunk_ms as usize / 1000).max(1),
            pos: 0,
            seq: 0,
            paced,
            start: MonoTime::now(),
        })
    }
}

/// Reads a WAV file (any channel count, integer or float samples) as mono samples in -1..1 at
/// `rate` Hz. Done once, at start-up.
pub fn load_mono(path: &Path, rate: u32) -> Result<Vec<f32>, AudioError> {
    let wav_err = |source| AudioError::Wav { path: path.to_path_buf(), source };
    let mut reader = hound::WavReader::open(path).map_err(wav_err)?;
    let spec = reader.spec();
    if spec.channels == 0 || spec.sample_rate == 0 {
        return Err(AudioError::Format {
            path: path.to_path_buf(),
            message: "header declares no channels or a zero sample rate".into(),
        });
    }
    // Everything to f32 in -1..1 first.
    let interleaved: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Float => reader.samples::<f32>().collect::<Result<_, _>>().map_err(wav_err)?,
        hound::SampleFormat::Int => {
            let scale = 1.0 / (1u64 << (spec.bits_per_sample - 1)) as f32;
            reader
                .samples::<i32>()
                .map(|s| s.map(|v| v as f32 * scale))
                .collect::<Result<_, _>>()
                .map_err(wav_err)?
        }
    };
    let mono: Vec<f32> = interleaved
        .chunks_exact(spec.channels as usize)
        .map(|c| c.iter().sum::<f32>() / c.len() as f32)
        .collect();
    Ok(resample_linear(&mono, spec.sample_rate, rate))
}

/// Linear-interpolation resampler; adequate for event detection, not for hi-fi.
fn resample_linear(x: &[f32], from: u32, to: u32) -> Vec<f32> {
    if from == to || x.is_empty() {
        return x.to_vec();
    }
    let n = (x.len() as u64 * to as u64 / from as u64) as usize;
    let step = from as f64 / to as f64;
    (0..n)
        .map(|i| {
            let t = i as f64 * step;
            let j = t as usize;
            let frac = (t - j as f64) as f32;
            let a = x[j.min(x.len() - 1)];
            let b = x[(j + 1).min(x.len() - 1)];
            a + (b - a) * frac
        })
        .collect()
}

impl AudioSource for WavMic {
    fn sample_rate(&self) -> u32 {
        self.rate
    }

    fn chunk_len(&self) -> usize {
        self.chunk
    }

    fn next_chunk(&mut self, chunk: &mut AudioChunk) -> Result<bool, AudioError> {
        if self.pos >= self.samples.len() {
            return Ok(false);
        }
        if self.seq == 0 {
            // The recording starts when it is first listened to, not when it was opened.
            self.start = MonoTime::now();
        }
        let end = (self.pos + self.chunk).min(self.samples.len());
        let first = self.start.plus(Duration::from_secs_f64(self.pos as f64 / self.rate as f64));
        chunk.samples.clear();
        chunk.samples.extend_from_slice(&self.samples[self.pos..end]);
        chunk.seq = self.seq;
        if self.paced {
            // A chunk exists only once its last sample has been "heard".
            sleep_until(self.start.plus(Duration::from_secs_f64(end as f64 / self.rate as f64)));
        }
        chunk.ts = first;
        self.pos = end;
        self.seq += 1;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_stereo_44k1_to_mono_16k() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.wav");
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: 44_100,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(&path, spec).unwrap();
        for _ in 0..44_100 {
            w.write_sample(16_000i16).unwrap();
            w.write_sample(0i16).unwrap();
        }
        w.finalize().unwrap();
        let mut mic = WavMic::open(&path, 16_000, 32, false).unwrap();
        let mut c = AudioChunk::default();
        let mut total = 0;
        let mut last_ts = None;
        while mic.next_chunk(&mut c).unwrap() {
            assert!(c.samples.iter().all(|&s| (s - 8000).abs() <= 1), "mono mix of 16000 and 0");
            if let Some(t) = last_ts {
                assert_eq!(c.ts.since(t), Duration::from_millis(32));
            }
            last_ts = Some(c.ts);
            total += c.samples.len();
        }
        assert_eq!(total, 16_000);
        assert!((c.level_dbfs() - 20.0 * (8000.0f32 / 32768.0).log10()).abs() < 0.1);
    }

    #[test]
    fn not_a_wav_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.wav");
        std::fs::write(&path, b"hello").unwrap();
        let e = WavMic::open(&path, 16_000, 32, false).err().unwrap().to_string();
        assert!(e.contains("x.wav"), "{e}");
    }
}
