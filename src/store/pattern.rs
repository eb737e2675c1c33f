//! What the store keeps: a pattern is one event worth sending upstream, with the priority that
//! decides what goes first and what is evicted last.

use serde::{Deserialize, Serialize};

/// Priority class. Lower value = more important: sent first, evicted last.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// Alerts: never evicted while anything else remains.
    Safety = 0,
    /// Audio events, detections worth keeping.
    Event = 1,
    /// Health and deadline statistics.
    Telemetry = 2,
}

impl Priority {
    pub const ALL: [Priority; 3] = [Priority::Safety, Priority::Event, Priority::Telemetry];

    pub fn name(self) -> &'static str {
        match self {
            Priority::Safety => "safety",
            Priority::Event => "event",
            Priority::Telemetry => "telemetry",
        }
    }

    pub(crate) fn from_db(v: i64) -> Option<Self> {
        Self::ALL.get(usize::try_from(v).ok()?).copied()
    }
}

/// A pattern on its way into the store.
#[derive(Clone, Debug, PartialEq)]
pub struct NewPattern {
    pub priority: Priority,
    /// What it is: `alert`, `ladder`, `summary`, ...
    pub kind: &'static str,
    /// Capture time on the monotonic clock, in microseconds.
    pub capture_us: u64,
    /// The event itself, as JSON.
    pub body: String,
}

/// A pattern as stored: with its sequence number, which with the device id and the store's
/// generation makes its idempotency key.
#[derive(Clone, Debug, PartialEq)]
pub struct Stored {
    pub seq: i64,
    pub priority: Priority,
    pub kind: String,
    pub capture_us: u64,
    /// Wall-clock time it was stored, and until when it is worth sending (Unix ms).
    pub stored_ms: i64,
    pub expires_ms: i64,
    pub body: String,
}

/// `device:generation:seq`: unique for every pattern this device ever stores, also across a
/// store that had to be recreated (a new generation), so upstream can drop duplicates by key.
pub fn idempotency_key(device: &str, generation: &str, seq: i64) -> String {
    format!("{device}:{generation}:{seq}")
}
