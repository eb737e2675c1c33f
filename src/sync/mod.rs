//! Store-and-forward to upstream: patterns leave the durable store over MQTT (QoS 1, TLS with a
//! client certificate) and are deleted only once the broker has acknowledged them; signed rule
//! packs come back down on a retained topic.
//!
//! [`Forwarder`] holds the policy (priority order, batching, backoff, TTL, rule packs) and is
//! generic over a [`Link`]: [`mqtt::MqttLink`] is the real one. Topics and payloads are
//! specified in docs/SYNC.md and built in [`schema`].

mod forwarder;
pub mod mqtt;
pub mod schema;
pub mod tls;

use std::time::Duration;

pub use forwarder::{Forwarder, ForwarderConfig, RulesSink, SyncStats, PACK_ENVELOPE, PACK_VERSION};

/// Identifies one publish until the broker acknowledges it.
pub type Token = u64;

#[derive(Debug, Clone, PartialEq)]
pub enum LinkEvent {
    Connected,
    /// The connection is gone; in-flight publishes are void and must be sent again.
    Disconnected(String),
    /// The broker has the publish with this token.
    Acked(Token),
    Message {
        topic: String,
        payload: Vec<u8>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("not connected")]
    NotConnected,
    #[error("{0}")]
    Setup(String),
    #[error("publish to `{topic}` refused: {message}")]
    Publish { topic: String, message: String },
}

/// A message link to a broker, with at-least-once delivery.
pub trait Link: Send {
    /// Starts a new connection, discarding any previous one.
    fn connect(&mut self) -> Result<(), LinkError>;
    fn disconnect(&mut self);
    /// Queues a QoS 1 publish; its token comes back in [`LinkEvent::Acked`].
    fn publish(&mut self, topic: &str, payload: Vec<u8>, retain: bool) -> Result<Token, LinkError>;
    fn subscribe(&mut self, filter: &str) -> Result<(), LinkError>;
    /// The next event, waiting at most `timeout`.
    fn poll(&mut self, timeout: Duration) -> Option<LinkEvent>;
}
