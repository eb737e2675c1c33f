//! Cameras: where frames come from.
//!
//! A [`FrameSource`] fills caller-owned [`Frame`] buffers, so the loop can allocate a few frames
//! once and recycle them. The simulated camera ([`y4m::Y4mCamera`]) plays a recorded clip at
//! the camera's nominal rate; the V4L2 camera plugs in behind the same trait.

pub mod convert;
pub mod slot;
pub mod v4l2;
pub mod y4m;

use std::path::PathBuf;

use crate::clock::MonoTime;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PixelFormat {
    /// Planar Y, then U and V at half resolution (4:2:0).
    I420,
}

impl PixelFormat {
    pub fn frame_len(self, width: u32, height: u32) -> usize {
        match self {
            PixelFormat::I420 => {
                let (w, h) = (width as usize, height as usize);
                w * h + 2 * (w.div_ceil(2) * h.div_ceil(2))
            }
        }
    }
}

/// One captured image. The buffer is reused from frame to frame.
#[derive(Clone, Debug)]
pub struct Frame {
    /// Position in the stream, counting from 0; gaps mean frames were dropped upstream.
    pub seq: u64,
    /// Capture time on the monotonic clock (the sensor's time for a real camera). Rules measure
    /// durations on it.
    pub ts: MonoTime,
    /// When the frame became available to the loop: latency is measured from here.
    pub arrived: MonoTime,
    pub width: u32,
    pub height: u32,
    pub format: PixelFormat,
    pub data: Vec<u8>,
}

impl Frame {
    pub fn new(width: u32, height: u32, format: PixelFormat) -> Self {
        Frame {
            seq: 0,
            ts: MonoTime::default(),
            arrived: MonoTime::default(),
            width,
            height,
            format,
            data: vec![0; format.frame_len(width, height)],
        }
    }

    /// The I420 planes: (Y, U, V).
    pub fn planes(&self) -> (&[u8], &[u8], &[u8]) {
        let (w, h) = (self.width as usize, self.height as usize);
        let c = w.div_ceil(2) * h.div_ceil(2);
        let (y, uv) = self.data.split_at(w * h);
        let (u, v) = uv.split_at(c);
        (y, u, &v[..c])
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SourceInfo {
    pub width: u32,
    pub height: u32,
    pub fps: f64,
    pub format: PixelFormat,
}

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("{}: cannot open: {source}", path.display())]
    Open { path: PathBuf, source: std::io::Error },
    #[error("{}: {message}", path.display())]
    Format { path: PathBuf, message: String },
    #[error("{}: read failed at frame {frame}: {source}", path.display())]
    Read { path: PathBuf, frame: u64, source: std::io::Error },
    #[error("{}: clip is {got_w}x{got_h} but the profile says {want_w}x{want_h}", path.display())]
    SizeMismatch { path: PathBuf, got_w: u32, got_h: u32, want_w: u32, want_h: u32 },
    #[error("camera kind `{0}` is not supported by this build yet")]
    Unsupported(String),
}

/// A camera.
pub trait FrameSource: Send {
    fn info(&self) -> SourceInfo;
    /// Fills `frame` with the next image, blocking until one is available.
    /// Returns `Ok(false)` at the end of the stream.
    fn next_frame(&mut self, frame: &mut Frame) -> Result<bool, CaptureError>;
}
