//! The one way the decision loop hands work to another thread: a bounded queue that never
//! blocks the sender. A full queue drops the item and counts it; the count is reported, so an
//! overwhelmed consumer is visible instead of silently stalling the loop.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;

pub struct Handoff<T> {
    tx: SyncSender<T>,
    dropped: Arc<AtomicU64>,
}

impl<T> Clone for Handoff<T> {
    fn clone(&self) -> Self {
        Self { tx: self.tx.clone(), dropped: self.dropped.clone() }
    }
}

/// A queue of `capacity` items, allocated once.
pub fn handoff<T>(capacity: usize) -> (Handoff<T>, Receiver<T>) {
    let (tx, rx) = sync_channel(capacity);
    (Handoff { tx, dropped: Arc::new(AtomicU64::new(0)) }, rx)
}

impl<T> Handoff<T> {
    /// Hands `item` over without waiting; drops and counts it when the queue is full or gone.
    pub fn send(&self, item: T) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.tx.try_send(item) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Waits for room: for the end of a run, when nothing is on a deadline any more.
    pub fn send_blocking(&self, item: T) {
        if self.tx.send(item).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
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
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), vec![0, 1]);
        drop(rx);
        tx.send(9);
        assert_eq!(tx.dropped(), 4);
    }
}
