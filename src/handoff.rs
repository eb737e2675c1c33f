//! The one way the decision loop hands work to another thread: a bounded queue that never
//! blocks the sender. A full queue drops the item and counts it; the count is reported, so an
//! overwhelmed consumer is visible instead of silently stalling the loop.
//!
//! The last `reserve` places are kept for urgent items (alerts): a flood of routine events can
//! fill the queue, but not the room an alert needs.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvError, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;

struct Shared {
    len: AtomicUsize,
    dropped: AtomicU64,
    dropped_urgent: AtomicU64,
}

pub struct Handoff<T> {
    tx: SyncSender<T>,
    shared: Arc<Shared>,
    /// Places routine items may use.
    routine: usize,
}

impl<T> Clone for Handoff<T> {
    fn clone(&self) -> Self {
        Self { tx: self.tx.clone(), shared: self.shared.clone(), routine: self.routine }
    }
}

/// The receiving end; keeps the queue's length in step.
pub struct HandoffRx<T> {
    rx: Receiver<T>,
    shared: Arc<Shared>,
}

/// A queue of `capacity` items, allocated once.
pub fn handoff<T>(capacity: usize) -> (Handoff<T>, HandoffRx<T>) {
    handoff_with_reserve(capacity, 0)
}

/// A queue of `capacity` items of which the last `reserve` only take urgent ones.
pub fn handoff_with_reserve<T>(capacity: usize, reserve: usize) -> (Handoff<T>, HandoffRx<T>) {
    let (tx, rx) = sync_channel(capacity);
    let shared = Arc::new(Shared {
        len: AtomicUsize::new(0),
        dropped: AtomicU64::new(0),
        dropped_urgent: AtomicU64::new(0),
    });
    let routine = capacity.saturating_sub(reserve);
    (Handoff { tx, shared: shared.clone(), routine }, HandoffRx { rx, shared })
}

impl<T> Handoff<T> {
    /// Hands `item` over without waiting; drops and counts it when the routine places are full
    /// or the receiver is gone.
    pub fn send(&self, item: T) {
        if self.shared.len.load(Ordering::Acquire) >= self.routine || !self.try_send(item) {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Like [`send`](Self::send), but may use the reserved places too.
    pub fn send_urgent(&self, item: T) {
        if !self.try_send(item) {
            self.shared.dropped_urgent.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn try_send(&self, item: T) -> bool {
        // Counted before sending so the receiver can never take the count below zero.
        self.shared.len.fetch_add(1, Ordering::AcqRel);
        match self.tx.try_send(item) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.shared.len.fetch_sub(1, Ordering::AcqRel);
                false
            }
        }
    }

    /// Waits for room: for the end of a run, when nothing is on a deadline any more.
    pub fn send_blocking(&self, item: T) {
        self.shared.len.fetch_add(1, Ordering::AcqRel);
        if self.tx.send(item).is_err() {
            self.shared.len.fetch_sub(1, Ordering::AcqRel);
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Routine items dropped.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Urgent items dropped: the queue was completely full.
    pub fn dropped_urgent(&self) -> u64 {
        self.shared.dropped_urgent.load(Ordering::Relaxed)
    }
}

impl<T> HandoffRx<T> {
    pub fn recv(&self) -> Result<T, RecvError> {
        let item = self.rx.recv()?;
        self.shared.len.fetch_sub(1, Ordering::AcqRel);
        Ok(item)
    }

    pub fn recv_timeout(&self, timeout: std::time::Duration) -> Result<T, std::sync::mpsc::RecvTimeoutError> {
        let item = self.rx.recv_timeout(timeout)?;
        self.shared.len.fetch_sub(1, Ordering::AcqRel);
        Ok(item)
    }

    pub fn try_recv(&self) -> Result<T, TryRecvError> {
        let item = self.rx.try_recv()?;
        self.shared.len.fetch_sub(1, Ordering::AcqRel);
        Ok(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_queue_drops_and_counts() {
        let (tx, rx) = handoff(2);
        for i in 0..5 {
            tx.send(i);
        }
        assert_eq!(tx.dropped(), 3);
        assert_eq!(rx.try_recv(), Ok(0));
        assert_eq!(rx.try_recv(), Ok(1));
        assert!(rx.try_recv().is_err());
        drop(rx);
        tx.send(9);
        assert_eq!(tx.dropped(), 4);
    }

    #[test]
    fn reserve_keeps_room_for_urgent_items() {
        let (tx, rx) = handoff_with_reserve(4, 2);
        for i in 0..10 {
            tx.send(i);
        }
        assert_eq!(tx.dropped(), 8, "routine items use only 2 of 4 places");
        tx.send_urgent(100);
        tx.send_urgent(101);
        tx.send_urgent(102);
        assert_eq!(tx.dropped_urgent(), 1);
        let got: Vec<i32> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(got, vec![0, 1, 100, 101]);
        // Drained: routine items fit again.
        tx.send(7);
        assert_eq!(rx.try_recv(), Ok(7));
    }
}
