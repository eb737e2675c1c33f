//! The durable pattern store: every event worth sending upstream ("pattern") is kept on disk
//! until the broker acknowledged it, so power cuts and dead links lose nothing.
//!
//! [`Store`] is SQLite in WAL mode with priorities, time to live and a disk budget;
//! [`cache::RecentAlerts`] answers the rules' "did this just fire?" from memory.

pub mod cache;
mod pattern;
pub mod soak;
mod sqlite;

pub use pattern::{idempotency_key, NewPattern, Priority, Stored};
pub use sqlite::{now_ms, Backlog, Losses, Store, StoreConfig, StoreError};
