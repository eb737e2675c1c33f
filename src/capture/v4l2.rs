//! V4L2 camera: a USB (UVC) or CSI camera through the kernel's video capture API.
//!
//! `linuxvideo` opens the node, reads its capabilities and formats, and negotiates format and
//! frame rate. Streaming (mmap buffers, `VIDIOC_DQBUF`) is done here with a few raw ioctls,
//! because `linuxvideo`'s stream hides the buffer's timestamp, flags and sequence number and
//! blocks without a timeout; sideline needs the capture time, the drop count, and a way out of
//! a wait on a camera that went quiet.
//!
//! Format: NV12, then YUYV, then MJPEG at exactly the profile's size (converted to I420 by
//! [`super::convert`]); anything else fails at start with what the device offers. When several
//! frames are ready the newest is taken and the older ones go straight back to the driver:
//! a queued frame is latency. Gaps in the driver's sequence numbers show up as gaps in
//! [`Frame::seq`], so the loop counts them as dropped.
//!
//! Losing the camera (unplugged, `ENODEV`/`EIO`, or no usable frame for [`stall_timeout`])
//! does not end the run: [`FrameSource::next_frame`] keeps waiting while it reopens the node
//! with exponential backoff (100 ms doubling to 2 s), so the supervisor raises camera-blind,
//! and frames resume, and the alarm clears, when the device is back. Only a stop flag
//! ([`V4l2Camera::with_stop`]) ends that wait. Point the profile at a stable name
//! (`/dev/v4l/by-id/...`): a re-plugged camera may come back as another `/dev/videoN`.
//!
//! Frames carry the driver's capture time when the buffer says it is `CLOCK_MONOTONIC` (UVC
//! and vivid do), else the time they were dequeued ([`frame_time`]).

use std::ffi::c_void;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use linuxvideo::format::{FrameSizes, PixFormat, PixelFormat as Fourcc};
use linuxvideo::{BufType, CapabilityFlags, Device, Fract, VideoCaptureDevice};

use super::convert::{CameraFormat, ConvertError, Converter};
use super::{CaptureError, Frame, FrameSource, PixelFormat, SourceInfo};
use crate::clock::MonoTime;

/// Buffers asked of the driver: one being filled, one being converted, two spare for jitter.
const BUFFERS: u32 = 4;
/// Longest single wait, so a stop request or a reopen is never far away.
const SLICE: Duration = Duration::from_millis(100);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum V4l2Error {
    #[error("{}: cannot open the camera: {source}", path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error("{}: not a V4L2 device (VIDIOC_QUERYCAP: {source})", path.display())]
    NotV4l2 { path: PathBuf, source: io::Error },
    #[error("{}: not a single-planar streaming capture device (capabilities: {caps})", path.display())]
    NotCapture { path: PathBuf, caps: String },
    #[error(
        "{}: no format sideline can use at {width}x{height} (it takes NV12, YUYV or MJPEG); \
         the device offers: {offered}",
        path.display()
    )]
    NoFormat { path: PathBuf, width: u32, height: u32, offered: String },
    #[error("{}: {op} failed: {source}", path.display())]
    Ioctl { path: PathBuf, op: &'static str, source: io::Error },
    /// The stream broke: unplugged (`ENODEV`), a bus error (`EIO`), or the driver gave up.
    #[error("{}: device lost ({op}: {source})", path.display())]
    Lost { path: PathBuf, op: &'static str, source: io::Error },
    #[error("{}: no usable frame for {:.1} s", path.display(), after.as_secs_f64())]
    Stalled { path: PathBuf, after: Duration },
    #[error("{}: the driver flagged frame {sequence} as corrupt", path.display())]
    BadBuffer { path: PathBuf, sequence: u32 },
    #[error("{}: {source}", path.display())]
    Convert { path: PathBuf, source: ConvertError },
}

impl V4l2Error {
    /// One bad frame (skipped), as opposed to a broken stream (reopened).
    pub fn is_frame_error(&self) -> bool {
        matches!(self, V4l2Error::BadBuffer { .. } | V4l2Error::Convert { .. })
    }
}

/// What the profile asks of the camera.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Want {
    width: u32,
    height: u32,
    fps: f64,
}

/// A V4L2 capture device delivering I420 frames; see the module doc for format, timing and
/// reconnection.
pub struct V4l2Camera {
    path: PathBuf,
    want: Want,
    info: SourceInfo,
    /// `None` while the device is lost.
    stream: Option<Stream>,
    backoff: Backoff,
    retry_at: MonoTime,
    /// Last frame delivered: the stall timer runs from here (from the first empty wait after
    /// a (re)open, so time spent before the first `next_frame` does not count).
    waiting_since: Option<MonoTime>,
    stall_after: Duration,
    /// Since when, and why, the camera is lost.
    lost: Option<(MonoTime, String)>,
    last_error: Option<String>,
    reopen_attempts: u64,
    seq: Option<u64>,
    kernel_seq: Option<u32>,
    skipped: u64,
    warned_clock: bool,
    stop: Option<&'static AtomicBool>,
}

impl V4l2Camera {
    /// Opens `path`, negotiates `width`x`height` (NV12, YUYV, MJPEG, in that order) and asks
    /// for `fps`. Fails with the reason (missing node, not a camera, no usable format) rather
    /// than waiting: at start a wrong profile should be said at once.
    pub fn open(path: &Path, width: u32, height: u32, fps: f64) -> Result<Self, V4l2Error> {
        let want = Want { width, height, fps };
        let stream = Stream::open(path, want)?;
        let fps = stream.fps;
        tracing::info!(
            "{}: {} {width}x{height} at {fps:.2} fps, {} buffers",
            path.display(),
            stream.conv.format(),
            stream.maps.len()
        );
        Ok(Self {
            path: path.to_path_buf(),
            want,
            info: SourceInfo { width, height, fps, format: PixelFormat::I420 },
            stream: Some(stream),
            backoff: Backoff::new(BACKOFF_MIN, BACKOFF_MAX),
            retry_at: MonoTime::now(),
            waiting_since: None,
            stall_after: stall_timeout(fps),
            lost: None,
            last_error: None,
            reopen_attempts: 0,
            seq: None,
            kernel_seq: None,
            skipped: 0,
            warned_clock: false,
            stop: None,
        })
    }

    /// Makes [`FrameSource::next_frame`] return end-of-stream once `stop` is set, even while the
    /// camera is lost or silent (otherwise it waits for the camera to come back).
    pub fn with_stop(mut self, stop: &'static AtomicBool) -> Self {
        self.stop = Some(stop);
        self
    }

    /// The format the camera is delivering now (`None` while it is lost).
    pub fn camera_format(&self) -> Option<CameraFormat> {
        self.stream.as_ref().map(|s| s.conv.format())
    }

    /// Frames dropped because the driver flagged them or they did not convert.
    pub fn skipped_frames(&self) -> u64 {
        self.skipped
    }

    fn stopping(&self) -> bool {
        self.stop.is_some_and(|s| s.load(Ordering::Relaxed))
    }

    fn lose(&mut self, e: V4l2Error) {
        let now = MonoTime::now();
        tracing::warn!("{e}; reopening (backoff up to {:.0} s)", BACKOFF_MAX.as_secs_f64());
        self.stream = None; // stops streaming, unmaps, closes
        self.lost = Some((now, e.to_string()));
        self.last_error = None;
        self.retry_at = now.plus(self.backoff.next_delay());
    }

    /// One step of reconnection: wait a slice towards the next attempt, or make it.
    fn reopen_step(&mut self) {
        let now = MonoTime::now();
        if now < self.retry_at {
            std::thread::sleep(self.retry_at.since(now).min(SLICE));
            return;
        }
        self.reopen_attempts += 1;
        match Stream::open(&self.path, self.want) {
            Ok(stream) => {
                let down = self.lost.take().map(|(since, _)| now.since(since)).unwrap_or_default();
                tracing::info!(
                    "{}: camera back after {:.1} s ({} attempts): {} at {:.2} fps",
                    self.path.display(),
                    down.as_secs_f64(),
                    self.reopen_attempts,
                    stream.conv.format(),
                    stream.fps
                );
                self.stream = Some(stream);
                self.reopen_attempts = 0;
                self.kernel_seq = None;
                self.waiting_since = None;
            }
            Err(e) => {
                // Say each new reason once; repeating the same one every 2 s is noise.
                let msg = e.to_string();
                if self.last_error.as_deref() != Some(msg.as_str()) {
                    tracing::warn!("{msg}; still retrying");
                } else {
                    tracing::debug!("{msg}; still retrying");
                }
                self.last_error = Some(msg);
                self.retry_at = now.plus(self.backoff.next_delay());
            }
        }
    }

    fn deliver(&mut self, frame: &mut Frame, got: Dequeued) {
        frame.seq = next_seq(self.seq, self.kernel_seq, got.sequence);
        self.seq = Some(frame.seq);
        self.kernel_seq = Some(got.sequence);
        let (ts, from_kernel) = frame_time(got.flags, got.timestamp, got.dequeued);
        if !from_kernel && !self.warned_clock {
            self.warned_clock = true;
            tracing::warn!(
                "{}: buffer timestamps are not CLOCK_MONOTONIC (flags {:#x}); stamping at dequeue",
                self.path.display(),
                got.flags
            );
        }
        frame.ts = ts;
        frame.arrived = MonoTime::now();
        self.waiting_since = Some(frame.arrived);
        // Only a frame proves the camera is back: one that reopens and fails again at once
        // keeps backing off.
        self.backoff.reset();
    }
}

impl FrameSource for V4l2Camera {
    fn info(&self) -> SourceInfo {
        self.info
    }

    /// Blocks until a frame is converted. While the camera is lost it keeps reopening (see the
    /// module doc) and returns only with a frame, or `Ok(false)` once the stop flag is set.
    fn next_frame(&mut self, frame: &mut Frame) -> Result<bool, CaptureError> {
        loop {
            if self.stopping() {
                return Ok(false);
            }
            let Some(stream) = self.stream.as_mut() else {
                self.reopen_step();
                continue;
            };
            match stream.next(frame, SLICE) {
                Ok(Some(got)) => {
                    self.deliver(frame, got);
                    return Ok(true);
                }
                Ok(None) => {}
                Err(e) if e.is_frame_error() => {
                    self.skipped += 1;
                    if self.skipped.is_power_of_two() {
                        tracing::warn!("{e}; frame skipped ({} so far)", self.skipped);
                    }
                }
                Err(e) => {
                    self.lose(e);
                    continue;
                }
            }
            // Silence, or only bad frames, for too long: reopening often revives a stuck camera.
            let now = MonoTime::now();
            let waited = now.since(*self.waiting_since.get_or_insert(now));
            if waited >= self.stall_after {
                self.lose(V4l2Error::Stalled { path: self.path.clone(), after: waited });
            }
        }
    }
}

/// How long without a frame before the stream counts as dead and is reopened: 2 s, or ten
/// frame intervals for a slow camera (auto-exposure can drop a UVC camera's rate in the dark).
pub fn stall_timeout(fps: f64) -> Duration {
    let ten_frames = if fps > 0.0 && fps.is_finite() { 10.0 / fps } else { 0.0 };
    Duration::from_secs_f64(ten_frames.min(60.0)).max(Duration::from_secs(2))
}

/// Exponential backoff between reopen attempts: `min`, doubling, capped at `max`.
#[derive(Clone, Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self { min, max, next: min }
    }

    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// How far after the dequeue a kernel timestamp may lie and still count (then clamped to it).
const FUTURE_SLACK_NS: u64 = 100_000_000;

/// A buffer's capture time on [`MonoTime`]: the kernel's timestamp when the buffer says it is
/// `CLOCK_MONOTONIC` (and it is plausible: set, and not after the dequeue), else the dequeue
/// time. The bool says which.
pub fn frame_time(flags: u32, timestamp: libc::timeval, dequeued: MonoTime) -> (MonoTime, bool) {
    if flags & raw::BUF_FLAG_TIMESTAMP_MASK != raw::BUF_FLAG_TIMESTAMP_MONOTONIC {
        return (dequeued, false);
    }
    let ns = u64::try_from(timestamp.tv_sec)
        .ok()
        .zip(u64::try_from(timestamp.tv_usec).ok().filter(|&u| u < 1_000_000))
        .and_then(|(s, u)| s.checked_mul(1_000_000_000)?.checked_add(u * 1_000));
    // Some drivers (vivid) stamp the end of the frame period, which can lie a little after the
    // dequeue; a stamp further ahead than that is not a capture time.
    match ns {
        Some(ns) if ns > 0 && ns <= dequeued.as_nanos() + FUTURE_SLACK_NS => {
            (MonoTime::from_nanos(ns.min(dequeued.as_nanos())), true)
        }
        _ => (dequeued, false),
    }
}

/// Our sequence number for a frame: consecutive from the previous one, plus the frames the
/// driver's own counter says it dropped in between (a new stream starts a new count).
pub fn next_seq(prev: Option<u64>, prev_kernel: Option<u32>, kernel: u32) -> u64 {
    let Some(prev) = prev else { return 0 };
    let step = match prev_kernel {
        // A counter that went backwards or leapt is a driver quirk, not a million drops.
        Some(k) => match kernel.wrapping_sub(k) {
            gap @ 1..=10_000 => gap as u64,
            _ => 1,
        },
        None => 1,
    };
    prev + step
}

/// Frame sizes a device offers for one format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sizes {
    Discrete(Vec<(u32, u32)>),
    /// Any size from `min` to `max` in steps of `step` (continuous: step 1).
    Range {
        min: (u32, u32),
        max: (u32, u32),
        step: (u32, u32),
    },
    /// The driver does not enumerate sizes; only trying tells.
    Unknown,
}

impl Sizes {
    fn allows(&self, width: u32, height: u32) -> bool {
        let fits =
            |v: u32, min: u32, max: u32, step: u32| (min..=max).contains(&v) && (v - min) % step.max(1) == 0;
        match self {
            Sizes::Discrete(list) => list.contains(&(width, height)),
            Sizes::Range { min, max, step } => {
                fits(width, min.0, max.0, step.0) && fits(height, min.1, max.1, step.1)
            }
            Sizes::Unknown => true,
        }
    }
}

/// One pixel format a device offers (its fourcc, as V4L2 spells it) and its sizes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Offer {
    pub fourcc: [u8; 4],
    pub sizes: Sizes,
}

/// A format to ask for: ours, and the fourcc that carries it on this device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub format: CameraFormat,
    pub fourcc: [u8; 4],
}

/// The formats worth asking for at `width`x`height`, best first: NV12 (a copy), YUYV (a copy
/// and an average), MJPEG (a decode; `MJPG` or `JPEG`). Empty when nothing fits.
pub fn candidates(offered: &[Offer], width: u32, height: u32) -> Vec<Candidate> {
    const PREFERENCE: [(CameraFormat, &[u8; 4]); 4] = [
        (CameraFormat::Nv12, b"NV12"),
        (CameraFormat::Yuyv, b"YUYV"),
        (CameraFormat::Mjpeg, b"MJPG"),
        (CameraFormat::Mjpeg, b"JPEG"),
    ];
    let mut out: Vec<Candidate> = Vec::new();
    for (format, fourcc) in PREFERENCE {
        let fits = offered.iter().any(|o| &o.fourcc == fourcc && o.sizes.allows(width, height));
        if fits && !out.iter().any(|c| c.format == format) {
            out.push(Candidate { format, fourcc: *fourcc });
        }
    }
    out
}

/// What a device offers, for an error message: `YUYV 640x480 1280x720, MJPG 160x120..1920x1080`.
pub fn describe(offered: &[Offer]) -> String {
    if offered.is_empty() {
        return "no capture formats".into();
    }
    let list: Vec<String> = offered
        .iter()
        .map(|o| {
            let name: String =
                o.fourcc.iter().map(|&b| if b.is_ascii_graphic() { b as char } else { '?' }).collect();
            match &o.sizes {
                Sizes::Discrete(sizes) => {
                    let sizes: Vec<String> = sizes.iter().map(|(w, h)| format!("{w}x{h}")).collect();
                    format!("{name} {}", sizes.join(" "))
                }
                Sizes::Range { min, max, .. } => format!("{name} {}x{}..{}x{}", min.0, min.1, max.0, max.1),
                Sizes::Unknown => format!("{name} (sizes not listed)"),
            }
        })
        .collect();
    list.join(", ")
}

fn open_device(path: &Path) -> Result<Device, V4l2Error> {
    // `Device::open` opens the node, then asks VIDIOC_QUERYCAP: ENOTTY means "not V4L2".
    Device::open(path).map_err(|source| {
        if source.raw_os_error() == Some(libc::ENOTTY) {
            V4l2Error::NotV4l2 { path: path.to_path_buf(), source }
        } else {
            V4l2Error::Open { path: path.to_path_buf(), source }
        }
    })
}

fn offers(dev: &Device) -> Vec<Offer> {
    let mut out = Vec::new();
    // An enumeration error ends the list: what was read so far still helps the message.
    for desc in dev.formats(BufType::VIDEO_CAPTURE).map_while(Result::ok) {
        let fourcc = desc.pixel_format();
        let sizes = match dev.frame_sizes(fourcc) {
            Ok(FrameSizes::Discrete(list)) => {
                Sizes::Discrete(list.iter().map(|s| (s.width(), s.height())).collect())
            }
            Ok(FrameSizes::Stepwise(s)) => Sizes::Range {
                min: (s.min_width(), s.min_height()),
                max: (s.max_width(), s.max_height()),
                step: (s.step_width(), s.step_height()),
            },
            Ok(FrameSizes::Continuous(s)) => Sizes::Range {
                min: (s.min_width(), s.min_height()),
                max: (s.max_width(), s.max_height()),
                step: (1, 1),
            },
            Err(_) => Sizes::Unknown,
        };
        out.push(Offer { fourcc: fourcc.as_fourcc(), sizes });
    }
    out
}

/// One mmap'ed driver buffer.
struct Mapping {
    ptr: *mut c_void,
    len: usize,
}

/// What came with a dequeued, converted buffer.
#[derive(Clone, Copy, Debug)]
struct Dequeued {
    sequence: u32,
    flags: u32,
    timestamp: libc::timeval,
    dequeued: MonoTime,
}

/// An open, streaming device: the fd (owned by `dev`), the mapped buffers, the converter.
struct Stream {
    path: PathBuf,
    dev: VideoCaptureDevice,
    maps: Vec<Mapping>,
    conv: Converter,
    fps: f64,
    streaming: bool,
}

// SAFETY: the mappings are owned by this struct alone and only touched through `&mut self`;
// moving the whole stream to another thread (the camera thread) is sound.
unsafe impl Send for Stream {}

impl Stream {
    fn open(path: &Path, want: Want) -> Result<Self, V4l2Error> {
        let err = |op, source| V4l2Error::Ioctl { path: path.to_path_buf(), op, source };
        let dev = open_device(path)?;
        let caps = dev.capabilities().map_err(|e| err("VIDIOC_QUERYCAP", e))?.device_capabilities();
        if !caps.contains(CapabilityFlags::VIDEO_CAPTURE | CapabilityFlags::STREAMING) {
            return Err(V4l2Error::NotCapture { path: path.to_path_buf(), caps: format!("{caps:?}") });
        }
        let offered = offers(&dev);
        let (w, h) = (want.width, want.height);
        let mut refused = Vec::new();
        let mut dev = Some(dev);
        for c in candidates(&offered, w, h) {
            // `video_capture` consumes the device; a refused format needs a fresh open.
            let d = match dev.take() {
                Some(d) => d,
                None => open_device(path)?,
            };
            let fourcc = Fourcc::from_fourcc(c.fourcc);
            let cap = match d.video_capture(PixFormat::new(w, h, fourcc)) {
                Ok(cap) => cap,
                // Some drivers refuse instead of substituting: try the next candidate.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    refused.push(format!("asked {fourcc} {w}x{h}, driver refused"));
                    continue;
                }
                Err(e) => return Err(err("VIDIOC_S_FMT", e)),
            };
            let got = cap.format();
            if (got.width(), got.height(), got.pixel_format()) == (w, h, fourcc) {
                return Self::start(path, cap, c.format, want);
            }
            // The driver substituted something else: the next candidate may fit.
            refused.push(format!(
                "asked {fourcc} {w}x{h}, driver set {} {}x{}",
                got.pixel_format(),
                got.width(),
                got.height()
            ));
        }
        let mut offered = describe(&offered);
        if !refused.is_empty() {
            offered = format!("{offered} ({})", refused.join("; "));
        }
        Err(V4l2Error::NoFormat { path: path.to_path_buf(), width: w, height: h, offered })
    }

    fn start(
        path: &Path,
        dev: VideoCaptureDevice,
        format: CameraFormat,
        want: Want,
    ) -> Result<Self, V4l2Error> {
        let fd = dev.as_raw_fd();
        let err = |op, source| V4l2Error::Ioctl { path: path.to_path_buf(), op, source };
        let fps = set_rate(path, &dev, want.fps);
        let stride = dev.format().bytes_per_line() as usize;
        let conv = Converter::new(format, want.width, want.height, stride)
            .map_err(|source| V4l2Error::Convert { path: path.to_path_buf(), source })?;
        // Non-blocking, so a DQBUF after poll() drains what is ready and never hangs.
        // SAFETY: plain fcntl on an fd we own.
        let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        if fl < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) } < 0 {
            return Err(err("fcntl(O_NONBLOCK)", io::Error::last_os_error()));
        }
        // From here on, Drop undoes whatever part of the set-up succeeded.
        let mut s = Stream { path: path.to_path_buf(), dev, maps: Vec::new(), conv, fps, streaming: false };
        let mut req = raw::RequestBuffers {
            count: BUFFERS,
            type_: raw::BUF_TYPE_VIDEO_CAPTURE,
            memory: raw::MEMORY_MMAP,
            ..Default::default()
        };
        // SAFETY: `req` is a valid v4l2_requestbuffers for VIDIOC_REQBUFS.
        unsafe { raw::ioctl(fd, raw::VIDIOC_REQBUFS, &mut req) }.map_err(|e| err("VIDIOC_REQBUFS", e))?;
        if req.count < 2 {
            let e = io::Error::other(format!("driver granted {} buffers", req.count));
            return Err(err("VIDIOC_REQBUFS", e));
        }
        for index in 0..req.count {
            let mut buf = raw::Buffer::new(index);
            // SAFETY: `buf` is a valid v4l2_buffer for VIDIOC_QUERYBUF.
            unsafe { raw::ioctl(fd, raw::VIDIOC_QUERYBUF, &mut buf) }
                .map_err(|e| err("VIDIOC_QUERYBUF", e))?;
            let len = buf.length as usize;
            // SAFETY: for MMAP buffers QUERYBUF fills `m.offset`.
            let offset = unsafe { buf.m.offset };
            // SAFETY: maps the buffer the driver just described (offset, length) on our fd; the
            // result is checked, and unmapped in Drop.
            let ptr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ,
                    libc::MAP_SHARED,
                    fd,
                    offset as libc::off_t,
                )
            };
            if ptr == libc::MAP_FAILED {
                return Err(err("mmap", io::Error::last_os_error()));
            }
            s.maps.push(Mapping { ptr, len });
        }
        for index in 0..req.count {
            s.queue(index).map_err(|e| err("VIDIOC_QBUF", e))?;
        }
        let mut ty = raw::BUF_TYPE_VIDEO_CAPTURE as libc::c_int;
        // SAFETY: VIDIOC_STREAMON takes a pointer to the buffer type.
        unsafe { raw::ioctl(fd, raw::VIDIOC_STREAMON, &mut ty) }.map_err(|e| err("VIDIOC_STREAMON", e))?;
        s.streaming = true;
        Ok(s)
    }

    fn fd(&self) -> RawFd {
        self.dev.as_raw_fd()
    }

    fn queue(&mut self, index: u32) -> io::Result<()> {
        let mut buf = raw::Buffer::new(index);
        // SAFETY: `buf` is a valid v4l2_buffer naming one of our mmap buffers.
        unsafe { raw::ioctl(self.fd(), raw::VIDIOC_QBUF, &mut buf) }
    }

    fn dequeue(&mut self) -> io::Result<raw::Buffer> {
        let mut buf = raw::Buffer::new(0);
        // SAFETY: `buf` is a valid v4l2_buffer for the driver to fill.
        unsafe { raw::ioctl(self.fd(), raw::VIDIOC_DQBUF, &mut buf) }?;
        Ok(buf)
    }

    /// Waits up to `timeout`; converts the newest ready frame into `frame`. `Ok(None)`: nothing
    /// came in time.
    fn next(&mut self, frame: &mut Frame, timeout: Duration) -> Result<Option<Dequeued>, V4l2Error> {
        let lost = |path: &Path, op, source| V4l2Error::Lost { path: path.to_path_buf(), op, source };
        let mut pfd = libc::pollfd { fd: self.fd(), events: libc::POLLIN, revents: 0 };
        let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(None)
            } else {
                Err(lost(&self.path, "poll", e))
            };
        }
        if n == 0 {
            return Ok(None);
        }
        // Take everything that is ready, keep the newest, hand the rest straight back.
        let mut newest: Option<raw::Buffer> = None;
        loop {
            match self.dequeue() {
                Ok(buf) => {
                    if let Some(old) = newest.replace(buf) {
                        self.queue(old.index).map_err(|e| lost(&self.path, "VIDIOC_QBUF", e))?;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(lost(&self.path, "VIDIOC_DQBUF", e)),
            }
        }
        let dequeued = MonoTime::now();
        let Some(buf) = newest else {
            if pfd.revents & (libc::POLLERR | libc::POLLHUP) != 0 {
                let e = io::Error::other("the driver reports an error on the stream");
                return Err(lost(&self.path, "poll", e));
            }
            return Ok(None); // spurious wake-up
        };
        let converted = match self.maps.get(buf.index as usize) {
            _ if buf.flags & raw::BUF_FLAG_ERROR != 0 => {
                Err(V4l2Error::BadBuffer { path: self.path.clone(), sequence: buf.sequence })
            }
            Some(map) => {
                // Some drivers leave bytesused at 0 for raw formats: then the whole buffer counts.
                let used = match buf.bytesused as usize {
                    0 => map.len,
                    n => n.min(map.len),
                };
                // SAFETY: `map` is a live PROT_READ mapping of `len` bytes; the driver does not
                // write a dequeued buffer until we queue it again, below.
                let data = unsafe { std::slice::from_raw_parts(map.ptr as *const u8, used) };
                self.conv
                    .convert(data, frame)
                    .map_err(|source| V4l2Error::Convert { path: self.path.clone(), source })
            }
            None => {
                let e =
                    io::Error::other(format!("driver returned buffer {} of {}", buf.index, self.maps.len()));
                return Err(lost(&self.path, "VIDIOC_DQBUF", e));
            }
        };
        self.queue(buf.index).map_err(|e| lost(&self.path, "VIDIOC_QBUF", e))?;
        converted?;
        Ok(Some(Dequeued { sequence: buf.sequence, flags: buf.flags, timestamp: buf.timestamp, dequeued }))
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if self.streaming {
            let mut ty = raw::BUF_TYPE_VIDEO_CAPTURE as libc::c_int;
            // SAFETY: VIDIOC_STREAMOFF takes a pointer to the buffer type. It fails on a device
            // that is gone, which is fine: closing the fd releases everything anyway.
            let _ = unsafe { raw::ioctl(self.fd(), raw::VIDIOC_STREAMOFF, &mut ty) };
        }
        for m in &self.maps {
            // SAFETY: each mapping came from mmap with this length and is unmapped once.
            unsafe { libc::munmap(m.ptr, m.len) };
        }
        // The fd closes when `dev` drops, after the unmapping.
    }
}

/// Asks for `fps`; returns the rate the driver set (or `fps` when it cannot set one).
fn set_rate(path: &Path, dev: &VideoCaptureDevice, fps: f64) -> f64 {
    if !(fps > 0.0 && fps <= 1000.0) {
        return fps;
    }
    // The interval in milliseconds-per-thousand-frames keeps 29.97 exact enough.
    let interval = Fract::new(1000, (fps * 1000.0).round().max(1.0) as u32);
    match dev.set_frame_interval(interval) {
        Ok(got) if got.numerator() > 0 && got.denominator() > 0 => {
            let set = got.denominator() as f64 / got.numerator() as f64;
            if (set - fps).abs() > 0.01 * fps {
                tracing::warn!("{}: asked for {fps} fps, the driver set {set:.2}", path.display());
            }
            set
        }
        Ok(_) => fps,
        Err(e) => {
            tracing::warn!("{}: cannot set the frame rate ({e}); assuming {fps} fps", path.display());
            fps
        }
    }
}

/// The few `videodev2.h` definitions streaming needs (layout for 64-bit Linux, the targets:
/// x86_64 and aarch64, where the ioctl number encoding below also holds).
mod raw {
    use std::io;
    use std::os::fd::RawFd;

    pub const BUF_TYPE_VIDEO_CAPTURE: u32 = 1;
    pub const MEMORY_MMAP: u32 = 1;
    pub const BUF_FLAG_ERROR: u32 = 0x0040;
    pub const BUF_FLAG_TIMESTAMP_MASK: u32 = 0xe000;
    pub const BUF_FLAG_TIMESTAMP_MONOTONIC: u32 = 0x2000;

    /// `v4l2_requestbuffers`
    #[repr(C)]
    #[derive(Default)]
    pub struct RequestBuffers {
        pub count: u32,
        pub type_: u32,
        pub memory: u32,
        pub capabilities: u32,
        pub flags: u8,
        pub reserved: [u8; 3],
    }

    /// `v4l2_timecode`
    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct Timecode {
        pub type_: u32,
        pub flags: u32,
        pub frames: u8,
        pub seconds: u8,
        pub minutes: u8,
        pub hours: u8,
        pub userbits: [u8; 4],
    }

    /// `v4l2_buffer.m`
    #[repr(C)]
    #[derive(Clone, Copy)]
    pub union BufferM {
        pub offset: u32,
        pub userptr: libc::c_ulong,
        pub fd: i32,
    }

    /// `v4l2_buffer`
    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct Buffer {
        pub index: u32,
        pub type_: u32,
        pub bytesused: u32,
        pub flags: u32,
        pub field: u32,
        pub timestamp: libc::timeval,
        pub timecode: Timecode,
        pub sequence: u32,
        pub memory: u32,
        pub m: BufferM,
        pub length: u32,
        pub reserved2: u32,
        pub request_fd: i32,
    }

    impl Buffer {
        /// An mmap capture buffer request for `index`, everything else zero.
        pub fn new(index: u32) -> Self {
            Buffer {
                index,
                type_: BUF_TYPE_VIDEO_CAPTURE,
                bytesused: 0,
                flags: 0,
                field: 0,
                timestamp: libc::timeval { tv_sec: 0, tv_usec: 0 },
                timecode: Timecode {
                    type_: 0,
                    flags: 0,
                    frames: 0,
                    seconds: 0,
                    minutes: 0,
                    hours: 0,
                    userbits: [0; 4],
                },
                sequence: 0,
                memory: MEMORY_MMAP,
                m: BufferM { userptr: 0 },
                length: 0,
                reserved2: 0,
                request_fd: 0,
            }
        }
    }

    #[cfg(target_pointer_width = "64")]
    const _: () = assert!(size_of::<Buffer>() == 88 && size_of::<RequestBuffers>() == 20);

    const fn ioc(dir: u32, nr: u32, size: usize) -> libc::c_ulong {
        ((dir << 30) | ((size as u32) << 16) | ((b'V' as u32) << 8) | nr) as libc::c_ulong
    }
    const WRITE: u32 = 1;
    const READ_WRITE: u32 = 3;

    pub const VIDIOC_REQBUFS: libc::c_ulong = ioc(READ_WRITE, 8, size_of::<RequestBuffers>());
    pub const VIDIOC_QUERYBUF: libc::c_ulong = ioc(READ_WRITE, 9, size_of::<Buffer>());
    pub const VIDIOC_QBUF: libc::c_ulong = ioc(READ_WRITE, 15, size_of::<Buffer>());
    pub const VIDIOC_DQBUF: libc::c_ulong = ioc(READ_WRITE, 17, size_of::<Buffer>());
    pub const VIDIOC_STREAMON: libc::c_ulong = ioc(WRITE, 18, size_of::<libc::c_int>());
    pub const VIDIOC_STREAMOFF: libc::c_ulong = ioc(WRITE, 19, size_of::<libc::c_int>());

    /// `ioctl(2)`, retried on EINTR.
    ///
    /// # Safety
    /// `arg` must point to the structure `request` expects, valid for reads and writes.
    pub unsafe fn ioctl<T>(fd: RawFd, request: libc::c_ulong, arg: *mut T) -> io::Result<()> {
        loop {
            // SAFETY: upheld by the caller.
            if unsafe { libc::ioctl(fd, request as _, arg) } != -1 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(fourcc: &[u8; 4], sizes: Sizes) -> Offer {
        Offer { fourcc: *fourcc, sizes }
    }

    fn formats(c: &[Candidate]) -> Vec<CameraFormat> {
        c.iter().map(|c| c.format).collect()
    }

    #[test]
    fn negotiation_prefers_nv12_then_yuyv_then_mjpeg_at_the_profile_size() {
        use CameraFormat::*;
        let uvc = [
            offer(b"MJPG", Sizes::Discrete(vec![(1920, 1080), (1280, 720), (640, 480)])),
            offer(b"YUYV", Sizes::Discrete(vec![(640, 480), (1280, 720)])),
            offer(b"H264", Sizes::Discrete(vec![(1920, 1080)])),
        ];
        assert_eq!(formats(&candidates(&uvc, 640, 480)), [Yuyv, Mjpeg]);
        assert_eq!(formats(&candidates(&uvc, 1920, 1080)), [Mjpeg]);
        assert_eq!(candidates(&uvc, 1920, 1080)[0].fourcc, *b"MJPG");
        assert!(candidates(&uvc, 800, 600).is_empty());

        let vivid = [
            offer(b"YUYV", Sizes::Range { min: (16, 16), max: (1920, 1080), step: (2, 2) }),
            offer(b"NV12", Sizes::Range { min: (16, 16), max: (1920, 1080), step: (2, 2) }),
            offer(b"JPEG", Sizes::Unknown),
        ];
        assert_eq!(formats(&candidates(&vivid, 1280, 720)), [Nv12, Yuyv, Mjpeg]);
        assert_eq!(candidates(&vivid, 1280, 720)[2].fourcc, *b"JPEG");
        // Off the step grid, or out of range: only the format that does not list sizes.
        assert_eq!(formats(&candidates(&vivid, 1281, 720)), [Mjpeg]);
        assert_eq!(formats(&candidates(&vivid, 4096, 2160)), [Mjpeg]);
        assert!(candidates(&[offer(b"RGB3", Sizes::Unknown)], 640, 480).is_empty());
    }

    #[test]
    fn offers_are_described_for_the_error_message() {
        let offered = [
            offer(b"H264", Sizes::Discrete(vec![(1920, 1080), (1280, 720)])),
            offer(b"RGB3", Sizes::Range { min: (16, 16), max: (640, 480), step: (1, 1) }),
            offer(b"GREY", Sizes::Unknown),
        ];
        assert_eq!(
            describe(&offered),
            "H264 1920x1080 1280x720, RGB3 16x16..640x480, GREY (sizes not listed)"
        );
        assert_eq!(describe(&[]), "no capture formats");
        let e = V4l2Error::NoFormat {
            path: "/dev/video0".into(),
            width: 640,
            height: 480,
            offered: describe(&offered),
        };
        let e = e.to_string();
        assert!(e.starts_with("/dev/video0: no format sideline can use at 640x480"), "{e}");
        assert!(e.contains("offers: H264 1920x1080"), "{e}");
    }

    #[test]
    fn monotonic_kernel_timestamps_are_used_others_fall_back_to_dequeue_time() {
        let tv = |tv_sec, tv_usec| libc::timeval { tv_sec, tv_usec };
        let dq = MonoTime::from_nanos(5_000_000_000);
        let mono = raw::BUF_FLAG_TIMESTAMP_MONOTONIC | raw::BUF_FLAG_ERROR;
        assert_eq!(frame_time(mono, tv(4, 987_654), dq), (MonoTime::from_nanos(4_987_654_000), true));
        // Start-of-exposure source bit set: still the monotonic clock.
        assert_eq!(frame_time(mono | 0x10000, tv(4, 0), dq), (MonoTime::from_nanos(4_000_000_000), true));
        let copy = 0x4000; // TIMESTAMP_COPY: the application's own time, not a capture time.
        assert_eq!(frame_time(copy, tv(4, 0), dq), (dq, false));
        assert_eq!(frame_time(0, tv(4, 0), dq), (dq, false), "unknown clock");
        assert_eq!(frame_time(mono, tv(0, 0), dq), (dq, false), "never set");
        assert_eq!(frame_time(mono, tv(6, 0), dq), (dq, false), "well after the dequeue");
        assert_eq!(frame_time(mono, tv(5, 50_000), dq), (dq, true), "just after: clamped");
        assert_eq!(frame_time(mono, tv(-1, 0), dq), (dq, false));
        assert_eq!(frame_time(mono, tv(4, 1_000_000), dq), (dq, false));
    }

    #[test]
    fn sequence_numbers_carry_driver_drops_and_survive_a_reopen() {
        assert_eq!(next_seq(None, None, 17), 0);
        assert_eq!(next_seq(Some(0), Some(17), 18), 1);
        assert_eq!(next_seq(Some(1), Some(18), 21), 4, "two dropped by the driver");
        assert_eq!(next_seq(Some(4), Some(u32::MAX), 0), 5, "counter wraps");
        assert_eq!(next_seq(Some(5), Some(30), 30), 6, "repeated number");
        assert_eq!(next_seq(Some(6), Some(30), 3), 7, "went backwards");
        assert_eq!(next_seq(Some(7), None, 0), 8, "new stream after a reopen");
    }

    #[test]
    fn backoff_doubles_to_two_seconds_and_resets() {
        let mut b = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
        let ms: Vec<u128> = (0..7).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1600, 2000, 2000]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }

    #[test]
    fn stall_timeout_is_two_seconds_or_ten_frames() {
        assert_eq!(stall_timeout(30.0), Duration::from_secs(2));
        assert_eq!(stall_timeout(2.0), Duration::from_secs(5));
        assert_eq!(stall_timeout(0.0), Duration::from_secs(2));
        assert_eq!(stall_timeout(f64::NAN), Duration::from_secs(2));
    }

    #[cfg(target_pointer_width = "64")]
    #[test]
    fn ioctl_numbers_match_videodev2_h() {
        assert_eq!(raw::VIDIOC_REQBUFS, 0xC014_5608);
        assert_eq!(raw::VIDIOC_QUERYBUF, 0xC058_5609);
        assert_eq!(raw::VIDIOC_QBUF, 0xC058_560F);
        assert_eq!(raw::VIDIOC_DQBUF, 0xC058_5611);
        assert_eq!(raw::VIDIOC_STREAMON, 0x4004_5612);
        assert_eq!(raw::VIDIOC_STREAMOFF, 0x4004_5613);
    }

    #[test]
    fn opening_a_missing_node_or_a_non_camera_says_which() {
        let e = V4l2Camera::open(Path::new("/dev/video-sideline-missing"), 640, 480, 30.0).err().unwrap();
        assert!(matches!(e, V4l2Error::Open { .. }), "{e}");
        let e = e.to_string();
        assert!(e.starts_with("/dev/video-sideline-missing: cannot open the camera: "), "{e}");
        assert!(e.contains("No such file"), "{e}");

        let e = V4l2Camera::open(Path::new("/dev/null"), 640, 480, 30.0).err().unwrap();
        assert!(e.to_string().starts_with("/dev/null: not a V4L2 device"), "{e}");
        let file = tempfile::NamedTempFile::new().unwrap();
        let e = V4l2Camera::open(file.path(), 640, 480, 30.0).err().unwrap();
        assert!(matches!(e, V4l2Error::NotV4l2 { .. }), "{e}");
    }

    /// A camera whose device is gone: `next_frame` keeps retrying with backoff and leaves only
    /// when told to stop.
    #[test]
    fn a_lost_camera_retries_with_backoff_until_stopped() {
        static STOP: AtomicBool = AtomicBool::new(false);
        let now = MonoTime::now();
        let mut cam = V4l2Camera {
            path: "/dev/video-sideline-unplugged".into(),
            want: Want { width: 64, height: 48, fps: 30.0 },
            info: SourceInfo { width: 64, height: 48, fps: 30.0, format: PixelFormat::I420 },
            stream: None,
            backoff: Backoff::new(BACKOFF_MIN, BACKOFF_MAX),
            retry_at: now,
            waiting_since: None,
            stall_after: stall_timeout(30.0),
            lost: Some((now, "unplugged".into())),
            last_error: None,
            reopen_attempts: 0,
            seq: Some(41),
            kernel_seq: Some(7),
            skipped: 0,
            warned_clock: false,
            stop: None,
        }
        .with_stop(&STOP);
        let stopper = std::thread::spawn(|| {
            std::thread::sleep(Duration::from_millis(1000));
            STOP.store(true, Ordering::Relaxed);
            MonoTime::now()
        });
        let mut frame = Frame::new(64, 48, PixelFormat::I420);
        assert!(!cam.next_frame(&mut frame).unwrap(), "stop means end of stream");
        let returned = MonoTime::now();
        let stopped = stopper.join().unwrap();
        assert!(
            returned.since(stopped) < Duration::from_millis(300),
            "left {:?} after stop",
            returned.since(stopped)
        );
        // Attempts at 0, 0.1, 0.3, 0.7 s (then 1.5 s): backoff, not a busy loop.
        assert!((3..=5).contains(&cam.reopen_attempts), "{} attempts", cam.reopen_attempts);
        assert!(cam.last_error.as_deref().is_some_and(|e| e.contains("video-sideline-unplugged")));
        assert!(cam.stream.is_none() && cam.camera_format().is_none());
    }
}
