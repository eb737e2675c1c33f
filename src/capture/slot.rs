//! The hand-off between the camera thread and the decision loop.
//!
//! A live camera must never build a queue in front of a slow loop (queued frames are latency),
//! so in `Latest` mode the slot holds one frame and a new frame replaces a stale one, which goes
//! back to the camera for reuse. `Lossless` mode is for clips read as fast as possible, where
//! every frame must be seen and results must not depend on timing: the camera reads up to
//! [`LOSSLESS_DEPTH`] frames ahead and then waits, so the loop never waits for a read.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};

use super::Frame;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotMode {
    Latest,
    Lossless,
}

pub enum Put {
    Stored,
    /// The stale frame that was replaced, for reuse.
    Replaced(Frame),
    /// The consumer is gone; the frame comes back.
    Closed(Frame),
}

/// Frames a lossless slot holds ahead of the loop.
pub const LOSSLESS_DEPTH: usize = 2;

struct Inner {
    /// Oldest first; capacity reserved up front, so pushing never allocates.
    frames: VecDeque<Frame>,
    closed: bool,
}

pub struct FrameSlot {
    mode: SlotMode,
    inner: Mutex<Inner>,
    cv: Condvar,
}

impl FrameSlot {
    pub fn new(mode: SlotMode) -> Self {
        let frames = VecDeque::with_capacity(LOSSLESS_DEPTH);
        Self { mode, inner: Mutex::new(Inner { frames, closed: false }), cv: Condvar::new() }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock means the other side panicked; its frame data is still sound.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn put(&self, frame: Frame) -> Put {
        let mut g = self.lock();
        if self.mode == SlotMode::Lossless {
            while g.frames.len() >= LOSSLESS_DEPTH && !g.closed {
                g = self.cv.wait(g).unwrap_or_else(|e| e.into_inner());
            }
        }
        if g.closed {
            return Put::Closed(frame);
        }
        let old = match self.mode {
            SlotMode::Latest => g.frames.pop_front(),
            SlotMode::Lossless => None,
        };
        g.frames.push_back(frame);
        drop(g);
        self.cv.notify_all();
        match old {
            Some(f) => Put::Replaced(f),
            None => Put::Stored,
        }
    }

    /// Waits for the next frame; `None` once closed and drained.
    pub fn take(&self) -> Option<Frame> {
        let mut g = self.lock();
        loop {
            if let Some(f) = g.frames.pop_front() {
                drop(g);
                self.cv.notify_all();
                return Some(f);
            }
            if g.closed {
                return None;
            }
            g = self.cv.wait(g).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// No more frames will be put (producer) or taken (consumer).
    pub fn close(&self) {
        self.lock().closed = true;
        self.cv.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::PixelFormat;
    use std::sync::Arc;

    fn frame(seq: u64) -> Frame {
        let mut f = Frame::new(2, 2, PixelFormat::I420);
        f.seq = seq;
        f
    }

    #[test]
    fn latest_replaces_stale_frames() {
        let s = FrameSlot::new(SlotMode::Latest);
        assert!(matches!(s.put(frame(0)), Put::Stored));
        match s.put(frame(1)) {
            Put::Replaced(f) => assert_eq!(f.seq, 0),
            _ => panic!("expected the stale frame back"),
        }
        assert_eq!(s.take().unwrap().seq, 1);
        s.close();
        assert!(s.take().is_none());
        assert!(matches!(s.put(frame(2)), Put::Closed(_)));
    }

    #[test]
    fn lossless_delivers_every_frame_in_order() {
        let s = Arc::new(FrameSlot::new(SlotMode::Lossless));
        let p = s.clone();
        let producer = std::thread::spawn(move || {
            for i in 0..200 {
                assert!(matches!(p.put(frame(i)), Put::Stored));
            }
            p.close();
        });
        let mut seen = vec![];
        while let Some(f) = s.take() {
            seen.push(f.seq);
        }
        producer.join().unwrap();
        assert_eq!(seen, (0..200).collect::<Vec<_>>());
    }
}
