//! Simulated camera: a YUV4MPEG2 clip played as if a sensor produced it.
//!
//! Y4M is raw 4:2:0 with a one-line header, so playing it needs no codec and no system library,
//! and the pixels are exactly what a camera in I420 would hand over. The clip is read strictly
//! forwards, so it can be a named pipe that another process writes frames into as they come
//! (and stops writing into, to play a camera that stalls).

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{CaptureError, Frame, FrameSource, PixelFormat, SourceInfo};
use crate::clock::{sleep_until, MonoTime};

pub struct Y4mCamera {
    path: PathBuf,
    reader: BufReader<File>,
    info: SourceInfo,
    /// Sleep until each frame's nominal time, as a camera delivers them.
    paced: bool,
    start: MonoTime,
    seq: u64,
    line: Vec<u8>,
}

impl Y4mCamera {
    /// Opens a clip; `expect` is the size the profile promises, checked against the header.
    pub fn open(path: &Path, paced: bool, expect: Option<(u32, u32)>) -> Result<Self, CaptureError> {
        let file =
            File::open(path).map_err(|source| CaptureError::Open { path: path.to_path_buf(), source })?;
        // Smaller than a frame: a frame's bytes then go straight from the file into the frame,
        // not through the buffer (one copy, not two, on the camera thread).
        let mut reader = BufReader::with_capacity(64 << 10, file);
        let fmt_err = |message: String| CaptureError::Format { path: path.to_path_buf(), message };
        let mut header = Vec::new();
        (&mut reader)
            .take(4096)
            .read_until(b'\n', &mut header)
            .map_err(|source| CaptureError::Open { path: path.to_path_buf(), source })?;
        let header = std::str::from_utf8(&header)
            .map_err(|_| fmt_err("not a YUV4MPEG2 file (header is not text)".into()))?;
        let info = parse_header(header).map_err(fmt_err)?;
        if let Some((w, h)) = expect {
            if (w, h) != (info.width, info.height) {
                return Err(CaptureError::SizeMismatch {
                    path: path.to_path_buf(),
                    got_w: info.width,
                    got_h: info.height,
                    want_w: w,
                    want_h: h,
                });
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            reader,
            info,
            paced,
            start: MonoTime::now(),
            seq: 0,
            line: Vec::with_capacity(64),
        })
    }

    /// Plays the clip at `fps` instead of the rate in its header (a faster camera, for benches).
    pub fn with_rate(mut self, fps: f64) -> Self {
        if fps > 0.0 && fps.is_finite() {
            self.info.fps = fps;
        }
        self
    }

    /// Starts the clip `frames` frames in: they are read and dropped, and the next frame is
    /// the clip's first (seq 0, t = 0), as if the camera had been switched on there. Returns how
    /// many could be skipped (fewer when the clip is shorter).
    pub fn skip(&mut self, frames: u64) -> Result<u64, CaptureError> {
        let mut scratch = Frame::new(self.info.width, self.info.height, self.info.format);
        let paced = std::mem::replace(&mut self.paced, false);
        let mut skipped = 0;
        while skipped < frames && self.next_frame(&mut scratch)? {
            skipped += 1;
        }
        self.paced = paced;
        self.seq = 0;
        Ok(skipped)
    }

    fn nominal_time(&mut self, seq: u64) -> MonoTime {
        // The clip starts when its first frame is read, not when it was opened: model loading in
        // between must not make the first frames look late.
        if seq == 0 {
            self.start = MonoTime::now();
        }
        self.start.plus(Duration::from_secs_f64(seq as f64 / self.info.fps))
    }
}

fn parse_header(header: &str) -> Result<SourceInfo, String> {
    let header = header.trim_end_matches('\n');
    let mut fields = header.split(' ');
    if fields.next() != Some("YUV4MPEG2") {
        return Err("not a YUV4MPEG2 file (missing `YUV4MPEG2` magic)".into());
    }
    let (mut w, mut h, mut fps, mut colour) = (None, None, None, "420jpeg");
    for f in fields {
        let (tag, val) = f.split_at(f.len().min(1));
        match tag {
            "W" => w = val.parse::<u32>().ok(),
            "H" => h = val.parse::<u32>().ok(),
            "F" => {
                fps = val.split_once(':').and_then(|(n, d)| {
                    let (n, d) = (n.parse::<f64>().ok()?, d.parse::<f64>().ok()?);
                    (n > 0.0 && d > 0.0).then_some(n / d)
                })
            }
            "C" => colour = val,
            _ => {}
        }
    }
    let (Some(width), Some(height)) = (w, h) else {
        return Err(format!("header `{header}` lacks a valid W or H"));
    };
    if width == 0 || height == 0 || width > 16384 || height > 16384 {
        return Err(format!("frame size {width}x{height} is not plausible"));
    }
    if !colour.starts_with("420") {
        return Err(format!("colour space C{colour} is not supported; convert the clip to 4:2:0 (yuv420p)"));
    }
    let fps = fps.ok_or_else(|| format!("header `{header}` lacks a valid frame rate F"))?;
    Ok(SourceInfo { width, height, fps, format: PixelFormat::I420 })
}

impl FrameSource for Y4mCamera {
    fn info(&self) -> SourceInfo {
        self.info
    }

    fn next_frame(&mut self, frame: &mut Frame) -> Result<bool, CaptureError> {
        let read_err = |source, seq| CaptureError::Read { path: self.path.clone(), frame: seq, source };
        self.line.clear();
        let n = (&mut self.reader)
            .take(1024)
            .read_until(b'\n', &mut self.line)
            .map_err(|e| read_err(e, self.seq))?;
        if n == 0 {
            return Ok(false);
        }
        if !self.line.starts_with(b"FRAME") || self.line.last() != Some(&b'\n') {
            return Err(CaptureError::Format {
                path: self.path.clone(),
                message: format!("frame {}: missing FRAME marker (file corrupt or truncated)", self.seq),
            });
        }
        let len = self.info.format.frame_len(self.info.width, self.info.height);
        frame.width = self.info.width;
        frame.height = self.info.height;
        frame.format = self.info.format;
        frame.data.resize(len, 0);
        self.reader.read_exact(&mut frame.data).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                CaptureError::Format {
                    path: self.path.clone(),
                    message: format!("frame {} is truncated", self.seq),
                }
            } else {
                read_err(e, self.seq)
            }
        })?;
        let nominal = self.nominal_time(self.seq);
        if self.paced {
            sleep_until(nominal);
            frame.ts = MonoTime::now();
        } else {
            // Unpaced playback keeps clip time, so durations in rules mean the same thing.
            frame.ts = nominal;
        }
        frame.arrived = MonoTime::now();
        frame.seq = self.seq;
        self.seq += 1;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn clip(frames: usize, truncate_last: usize) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, "YUV4MPEG2 W4 H2 F25:1 Ip A1:1 C420jpeg").unwrap();
        for i in 0..frames {
            f.write_all(b"FRAME\n").unwrap();
            let mut px = vec![i as u8; 8 + 2 + 2];
            if i + 1 == frames {
                px.truncate(px.len() - truncate_last);
            }
            f.write_all(&px).unwrap();
        }
        f
    }

    #[test]
    fn reads_frames_with_clip_time() {
        let f = clip(3, 0);
        let mut cam = Y4mCamera::open(f.path(), false, Some((4, 2))).unwrap();
        assert_eq!(cam.info().fps, 25.0);
        let mut fr = Frame::new(4, 2, PixelFormat::I420);
        let mut stamps = vec![];
        while cam.next_frame(&mut fr).unwrap() {
            assert_eq!(fr.data[0], fr.seq as u8);
            stamps.push(fr.ts);
        }
        assert_eq!(stamps.len(), 3);
        assert_eq!(stamps[2].since(stamps[0]), Duration::from_millis(80));
    }

    #[test]
    fn a_skipped_clip_starts_where_the_skip_ends() {
        let f = clip(5, 0);
        let mut cam = Y4mCamera::open(f.path(), false, None).unwrap();
        assert_eq!(cam.skip(3).unwrap(), 3);
        let mut fr = Frame::new(4, 2, PixelFormat::I420);
        assert!(cam.next_frame(&mut fr).unwrap());
        // The clip's fourth frame, numbered as the first.
        assert_eq!((fr.data[0], fr.seq), (3, 0));
        assert!(cam.next_frame(&mut fr).unwrap());
        assert_eq!((fr.data[0], fr.seq), (4, 1));
        assert!(!cam.next_frame(&mut fr).unwrap());
        let mut cam = Y4mCamera::open(f.path(), false, None).unwrap();
        assert_eq!(cam.skip(9).unwrap(), 5, "a short clip says how far it got");
    }

    #[test]
    fn truncated_and_mismatched_clips_are_errors() {
        let f = clip(2, 3);
        let mut cam = Y4mCamera::open(f.path(), false, None).unwrap();
        let mut fr = Frame::new(4, 2, PixelFormat::I420);
        assert!(cam.next_frame(&mut fr).unwrap());
        let e = cam.next_frame(&mut fr).unwrap_err().to_string();
        assert!(e.contains("frame 1 is truncated"), "{e}");
        let e = Y4mCamera::open(f.path(), false, Some((8, 8))).err().unwrap().to_string();
        assert!(e.contains("4x2 but the profile says 8x8"), "{e}");
    }

    #[test]
    fn reads_a_named_pipe_written_in_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("camera");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let path = fifo.clone();
        let writer = std::thread::spawn(move || {
            let mut w = std::fs::OpenOptions::new().write(true).open(path).unwrap();
            w.write_all(b"YUV4MPEG2 W4 H2 F25:1 C420jpeg\n").unwrap();
            for i in 0..3u8 {
                // Marker and pixels in separate writes, with pauses: the reader sees short reads.
                w.write_all(b"FRAME\n").unwrap();
                std::thread::sleep(Duration::from_millis(20));
                w.write_all(&[i; 5]).unwrap();
                std::thread::sleep(Duration::from_millis(20));
                w.write_all(&[i; 7]).unwrap();
            }
        });
        let mut cam = Y4mCamera::open(&fifo, false, Some((4, 2))).unwrap();
        let mut fr = Frame::new(4, 2, PixelFormat::I420);
        let mut seen = vec![];
        while cam.next_frame(&mut fr).unwrap() {
            assert!(fr.data.iter().all(|&b| b == fr.seq as u8));
            seen.push(fr.seq);
        }
        writer.join().unwrap();
        assert_eq!(seen, [0, 1, 2], "every frame, then the end when the writer closes");
    }

    #[test]
    fn rejects_bad_headers() {
        assert!(parse_header("RIFF blah").unwrap_err().contains("magic"));
        assert!(parse_header("YUV4MPEG2 W4 F25:1").unwrap_err().contains("W or H"));
        assert!(parse_header("YUV4MPEG2 W4 H4 F25:1 C444").unwrap_err().contains("not supported"));
        assert!(parse_header("YUV4MPEG2 W4 H4 F0:1").unwrap_err().contains("frame rate"));
    }
}
