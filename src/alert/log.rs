//! The simulated alert output: a log line per signal. It stands where a GPIO line or a serial
//! receiver will, and goes through the same trait.

use super::{AlertError, AlertOutput, Signal};

pub struct LogOutput {
    name: String,
}

impl LogOutput {
    pub fn new(name: &str) -> Self {
        Self { name: name.to_string() }
    }
}

impl AlertOutput for LogOutput {
    fn name(&self) -> &str {
        &self.name
    }

    fn drive(&mut self, s: &Signal<'_>) -> Result<(), AlertError> {
        tracing::warn!(
            target: "sideline::alert",
            output = %self.name,
            rule = %s.rule.name,
            severity = ?s.rule.severity,
            state = ?s.state,
            track = s.track,
            frame = s.frame,
            "ALERT"
        );
        Ok(())
    }

    fn heartbeat(&mut self, level: bool) -> Result<(), AlertError> {
        tracing::trace!(target: "sideline::alert", output = %self.name, level, "heartbeat");
        Ok(())
    }
}
