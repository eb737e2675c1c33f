//! The uplink: how patterns leave the device. An [`Uplink`] publishes a payload on a topic and
//! says whether the link is up; the simulated one keeps what it was given, so the rest of the
//! system (and tests) can be exercised without a broker. MQTT over TLS plugs in behind it.

#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    #[error("uplink is offline")]
    Offline,
    #[error("publish to `{topic}` failed: {message}")]
    Publish { topic: String, message: String },
}

pub trait Uplink: Send {
    fn is_connected(&self) -> bool;
    /// Publishes and returns once the far side has acknowledged.
    fn publish(&mut self, topic: &str, payload: &[u8]) -> Result<(), UplinkError>;
}

/// Keeps published messages in memory; can be switched off to simulate a dead link.
#[derive(Debug, Default)]
pub struct SimUplink {
    pub online: bool,
    pub sent: Vec<(String, Vec<u8>)>,
}

impl SimUplink {
    pub fn new(online: bool) -> Self {
        Self { online, sent: Vec::new() }
    }
}

impl Uplink for SimUplink {
    fn is_connected(&self) -> bool {
        self.online
    }

    fn publish(&mut self, topic: &str, payload: &[u8]) -> Result<(), UplinkError> {
        if !self.online {
            return Err(UplinkError::Offline);
        }
        self.sent.push((topic.to_string(), payload.to_vec()));
        Ok(())
    }
}

/// Topic for a device's patterns.
pub fn pattern_topic(device_id: &str) -> String {
    format!("sideline/v1/{device_id}/patterns")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offline_uplink_refuses() {
        let mut u = SimUplink::new(false);
        assert!(matches!(u.publish("t", b"x"), Err(UplinkError::Offline)));
        u.online = true;
        u.publish(&pattern_topic("dev1"), b"x").unwrap();
        assert_eq!(u.sent[0].0, "sideline/v1/dev1/patterns");
    }
}
