//! Topics and payloads, version 1 (docs/SYNC.md is the reference for fleet backends).

use serde::Serialize;
use serde_json::value::RawValue;

use crate::store::{idempotency_key, Priority, Stored};

pub const PATTERNS_SCHEMA: &str = "sideline.patterns/1";
pub const STATUS_SCHEMA: &str = "sideline.status/1";
pub const RULEPACK_RESULT_SCHEMA: &str = "sideline.rulepack-result/1";

/// Topic names of one device.
#[derive(Clone, Debug)]
pub struct Topics {
    base: String,
    fleet_rulepack: String,
}

impl Topics {
    pub fn new(prefix: &str, device: &str) -> Self {
        Self { base: format!("{prefix}/v1/{device}"), fleet_rulepack: format!("{prefix}/v1/fleet/rulepack") }
    }

    /// Batches of patterns of one priority class.
    pub fn patterns(&self, class: Priority) -> String {
        format!("{}/patterns/{}", self.base, class.name())
    }

    /// Retained: `online` while connected, `offline` as the broker's last will.
    pub fn status(&self) -> String {
        format!("{}/status", self.base)
    }

    /// Retained rule packs for this device, and for the whole fleet.
    pub fn rulepack(&self) -> String {
        format!("{}/rulepack", self.base)
    }

    pub fn fleet_rulepack(&self) -> &str {
        &self.fleet_rulepack
    }

    /// Retained: the outcome of the last rule pack received.
    pub fn rulepack_result(&self) -> String {
        format!("{}/rulepack/result", self.base)
    }
}

#[derive(Serialize)]
struct PatternOut<'a> {
    key: String,
    seq: i64,
    kind: &'a str,
    capture_us: u64,
    stored_ms: i64,
    expires_ms: i64,
    body: &'a RawValue,
}

#[derive(Serialize)]
struct Batch<'a> {
    schema: &'static str,
    device: &'a str,
    generation: &'a str,
    class: &'static str,
    patterns: Vec<PatternOut<'a>>,
}

/// One message carrying `patterns` (all of one class).
pub fn encode_batch(device: &str, generation: &str, patterns: &[Stored]) -> Vec<u8> {
    // A body that is not JSON (it always is, from the recorder) is carried as a JSON string.
    let fallback: Vec<Box<RawValue>> = patterns
        .iter()
        .map(|p| {
            serde_json::from_str::<Box<RawValue>>(&p.body).unwrap_or_else(|_| {
                RawValue::from_string(serde_json::to_string(&p.body).unwrap_or_else(|_| "null".into()))
                    .unwrap_or_else(|_| RawValue::NULL.to_owned())
            })
        })
        .collect();
    let batch = Batch {
        schema: PATTERNS_SCHEMA,
        device,
        generation,
        class: patterns.first().map_or("safety", |p| p.priority.name()),
        patterns: patterns
            .iter()
            .zip(&fallback)
            .map(|(p, body)| PatternOut {
                key: idempotency_key(device, generation, p.seq),
                seq: p.seq,
                kind: &p.kind,
                capture_us: p.capture_us,
                stored_ms: p.stored_ms,
                expires_ms: p.expires_ms,
                body,
            })
            .collect(),
    };
    serde_json::to_vec(&batch).unwrap_or_default()
}

#[derive(Serialize)]
pub struct Status<'a> {
    pub schema: &'static str,
    pub state: &'a str,
    pub device: &'a str,
    pub generation: &'a str,
    pub rulepack_version: Option<u64>,
}

#[derive(Serialize)]
pub struct RulepackResult<'a> {
    pub schema: &'static str,
    pub device: &'a str,
    pub accepted: bool,
    /// The version running after this pack was handled.
    pub running_version: Option<u64>,
    /// Why it was rejected: `bad_signature`, `stale`, `invalid`, ...
    pub reason: Option<&'a str>,
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_carries_keys_and_raw_bodies() {
        let p = |seq, body: &str| Stored {
            seq,
            priority: Priority::Event,
            kind: "alert".into(),
            capture_us: 5,
            stored_ms: 6,
            expires_ms: 7,
            body: body.into(),
        };
        let bytes = encode_batch("dev", "0badf00d", &[p(3, r#"{"a":1}"#), p(4, "not json")]);
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["schema"], PATTERNS_SCHEMA);
        assert_eq!(v["class"], "event");
        assert_eq!(v["patterns"][0]["key"], "dev:0badf00d:3");
        assert_eq!(v["patterns"][0]["body"]["a"], 1);
        assert_eq!(v["patterns"][1]["body"], "not json");
        let t = Topics::new("sideline", "dev");
        assert_eq!(t.patterns(Priority::Safety), "sideline/v1/dev/patterns/safety");
        assert_eq!(t.rulepack_result(), "sideline/v1/dev/rulepack/result");
    }
}
