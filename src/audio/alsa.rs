//! ALSA capture: a microphone on the sound card, delivered as 16-bit mono chunks at the
//! profile's rate and stamped on the monotonic clock.
//!
//! The device is asked for S16 mono at the profile's rate. A `hw:` device that cannot do that
//! (most USB microphones are 48 kHz, some stereo only) is reopened through ALSA's `plug` layer,
//! which converts and resamples, with a log line saying so. A chunk's capture time is the time
//! it was read minus what was still buffered: `now - (delay + chunk) / rate`, on
//! `CLOCK_MONOTONIC`, the clock frames are stamped on. An overrun (the reader fell behind and
//! the card overwrote samples) is counted, logged, recovered from, and the chunk numbering
//! skips ahead by the samples lost, as far as ALSA can tell.

use alsa::pcm::{Access, Format, HwParams, PCM};
use alsa::{Direction, ValueOr};

use super::{AudioChunk, AudioError, AudioSource};
use crate::clock::MonoTime;

pub struct AlsaMic {
    device: String,
    pcm: PCM,
    rate: u32,
    chunk_len: usize,
    seq: u64,
    overruns: u64,
}

fn err(device: &str, what: &str, e: alsa::Error) -> AudioError {
    AudioError::Alsa { device: device.to_string(), message: format!("{what}: {e}") }
}

/// Opens `device` for S16 mono capture at exactly `rate`, with periods of `period` frames.
fn open_exact(device: &str, rate: u32, period: usize) -> Result<PCM, AudioError> {
    let pcm = PCM::new(device, Direction::Capture, false).map_err(|e| err(device, "open", e))?;
    {
        let hw = HwParams::any(&pcm).map_err(|e| err(device, "hardware parameters", e))?;
        hw.set_access(Access::RWInterleaved).map_err(|e| err(device, "interleaved access", e))?;
        hw.set_format(Format::s16()).map_err(|e| err(device, "16-bit samples", e))?;
        hw.set_channels(1).map_err(|e| err(device, "mono", e))?;
        hw.set_rate(rate, ValueOr::Nearest).map_err(|e| err(device, &format!("{rate} Hz"), e))?;
        hw.set_period_size_near(period as alsa::pcm::Frames, ValueOr::Nearest)
            .map_err(|e| err(device, "period size", e))?;
        // Room for a second of audio: the reader may be descheduled, not the card.
        hw.set_buffer_size_near(rate as alsa::pcm::Frames).map_err(|e| err(device, "buffer size", e))?;
        pcm.hw_params(&hw).map_err(|e| err(device, "applying hardware parameters", e))?;
    }
    pcm.prepare().map_err(|e| err(device, "prepare", e))?;
    Ok(pcm)
}

impl AlsaMic {
    pub fn open(device: &str, rate: u32, chunk_ms: u32) -> Result<Self, AudioError> {
        let chunk_len = (rate as usize * chunk_ms as usize / 1000).max(1);
        let (device, pcm) = match open_exact(device, rate, chunk_len) {
            Ok(pcm) => (device.to_string(), pcm),
            Err(first) => match device.strip_prefix("hw:") {
                Some(rest) => {
                    let plug = format!("plughw:{rest}");
                    let pcm = open_exact(&plug, rate, chunk_len).map_err(|_| first)?;
                    tracing::info!(
                        "{device} cannot capture {rate} Hz mono S16 itself; using {plug}, which converts"
                    );
                    (plug, pcm)
                }
                None => return Err(first),
            },
        };
        pcm.start().map_err(|e| err(&device, "start", e))?;
        tracing::info!("{device}: capturing {rate} Hz mono, {chunk_len}-sample chunks");
        Ok(Self { device, pcm, rate, chunk_len, seq: 0, overruns: 0 })
    }

    /// Overruns so far: samples the card dropped because the reader fell behind.
    pub fn overruns(&self) -> u64 {
        self.overruns
    }
}

impl AudioSource for AlsaMic {
    fn sample_rate(&self) -> u32 {
        self.rate
    }

    fn chunk_len(&self) -> usize {
        self.chunk_len
    }

    fn next_chunk(&mut self, chunk: &mut AudioChunk) -> Result<bool, AudioError> {
        chunk.samples.resize(self.chunk_len, 0);
        let io = self.pcm.io_i16().map_err(|e| err(&self.device, "sample format", e))?;
        let mut filled = 0;
        while filled < self.chunk_len {
            match io.readi(&mut chunk.samples[filled..]) {
                Ok(n) => filled += n,
                Err(e) if e.errno() == libc::EPIPE || e.errno() == libc::ESTRPIPE => {
                    self.overruns += 1;
                    tracing::warn!("{}: capture overrun ({} so far); recovering", self.device, self.overruns);
                    self.pcm.try_recover(e, true).map_err(|e| err(&self.device, "overrun recovery", e))?;
                    self.pcm.start().ok();
                    // What was read of this chunk is no longer continuous with what follows.
                    filled = 0;
                    self.seq += 1;
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
                Err(e) => return Err(err(&self.device, "read", e)),
            }
        }
        let now = MonoTime::now();
        let delay = self.pcm.delay().unwrap_or(0).max(0) as u64;
        let behind_ns = (delay + self.chunk_len as u64) * 1_000_000_000 / self.rate as u64;
        chunk.ts = MonoTime::from_nanos(now.as_nanos().saturating_sub(behind_ns));
        chunk.seq = self.seq;
        self.seq += 1;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_device_is_a_clear_error() {
        let e = AlsaMic::open("hw:SidelineNoSuchCard,0", 16_000, 32).err().expect("must fail").to_string();
        assert!(e.contains("SidelineNoSuchCard"), "{e}");
    }
}
