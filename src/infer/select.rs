//! Model selection by budget: which detector variant a device starts with.
//!
//! A profile lists the detector and cheaper variants of it (INT8, smaller inputs, smaller
//! models), most accurate first. How fast each one is depends on the machine, so `sideline
//! bench` measures them here and writes a latency profile; at start the loop takes the most
//! accurate variant whose measured p99 fits the detect stage's budget. A measurement only
//! counts for the exact file, input size, backend and accelerator it was taken with: a model
//! update or a different board makes it stale, and a stale or missing profile falls back to the
//! configured order with a warning rather than guessing.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{Accelerator, Backend};

pub const PROFILE_SCHEMA: &str = "sideline.latency-profile/1";
/// The profile's file name inside the board's storage directory.
pub const PROFILE_FILE: &str = "latency-profile.json";

/// What a latency measurement is valid for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VariantKey {
    /// First 16 hex digits of the model file's SHA-256.
    pub file_sha: String,
    pub input: [u32; 2],
    pub backend: Backend,
    pub accelerator: Accelerator,
}

impl VariantKey {
    pub fn of(
        path: &Path,
        input: [u32; 2],
        backend: Backend,
        accelerator: Accelerator,
    ) -> std::io::Result<Self> {
        let digest = Sha256::digest(std::fs::read(path)?);
        let file_sha = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        Ok(Self { file_sha, input, backend, accelerator })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    pub variant: String,
    pub key: VariantKey,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub runs: u64,
}

/// Bare detector latency per variant on one machine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LatencyProfile {
    pub schema: String,
    /// Where it was measured (CPU, cores, GPU), for people reading the file.
    pub machine: String,
    pub detector: Vec<Measurement>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: not a latency profile: {message}")]
    Invalid { path: String, message: String },
}

impl LatencyProfile {
    /// `Ok(None)` when the file does not exist (the device was never benchmarked).
    pub fn load(path: &Path) -> Result<Option<Self>, ProfileError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(ProfileError::Io { path: path.display().to_string(), source }),
        };
        let invalid = |message: String| ProfileError::Invalid { path: path.display().to_string(), message };
        let profile: Self = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        if profile.schema != PROFILE_SCHEMA {
            return Err(invalid(format!("schema `{}`, expected `{PROFILE_SCHEMA}`", profile.schema)));
        }
        Ok(Some(profile))
    }

    /// Written whole to a temporary file and renamed, so a crash never leaves half a profile.
    pub fn save(&self, path: &Path) -> Result<(), ProfileError> {
        let io = |source| ProfileError::Io { path: path.display().to_string(), source };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self).map_err(|e| io(std::io::Error::other(e)))?;
        std::fs::write(&tmp, text).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    fn p99(&self, key: &VariantKey) -> Option<f64> {
        self.detector.iter().find(|m| &m.key == key).map(|m| m.p99_ms)
    }
}

/// The variant to start with, and why (logged at start).
#[derive(Clone, Debug, PartialEq)]
pub struct Choice {
    pub index: usize,
    pub reason: String,
}

/// `variants`: `(name, key)`, most accurate first.
pub fn choose(variants: &[(&str, VariantKey)], profile: Option<&LatencyProfile>, budget: Duration) -> Choice {
    let budget_ms = budget.as_secs_f64() * 1e3;
    let Some(profile) = profile else {
        return Choice {
            index: 0,
            reason: "no latency profile on this device (run `sideline bench`): using the first variant"
                .into(),
        };
    };
    let measured: Vec<(usize, f64)> =
        variants.iter().enumerate().filter_map(|(i, (_, k))| profile.p99(k).map(|p| (i, p))).collect();
    if let Some(&(i, p99)) = measured.iter().find(|(_, p99)| *p99 <= budget_ms) {
        return Choice {
            index: i,
            reason: format!("`{}`: p99 {p99:.1} ms fits the {budget_ms:.1} ms budget", variants[i].0),
        };
    }
    match measured.iter().min_by(|a, b| a.1.total_cmp(&b.1)) {
        Some(&(i, p99)) => Choice {
            index: i,
            reason: format!(
                "no variant fits the {budget_ms:.1} ms budget: `{}` is the fastest (p99 {p99:.1} ms)",
                variants[i].0
            ),
        },
        None => Choice {
            index: 0,
            reason: "the latency profile measured none of these variants (models changed? run `sideline \
                     bench`): using the first variant"
                .into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(sha: &str, input: u32) -> VariantKey {
        VariantKey {
            file_sha: sha.into(),
            input: [input, input],
            backend: Backend::Ort,
            accelerator: Accelerator::Cpu,
        }
    }

    fn profile(entries: &[(&str, VariantKey, f64)]) -> LatencyProfile {
        LatencyProfile {
            schema: PROFILE_SCHEMA.into(),
            machine: "test".into(),
            detector: entries
                .iter()
                .map(|(n, k, p99)| Measurement {
                    variant: n.to_string(),
                    key: k.clone(),
                    p50_ms: p99 * 0.8,
                    p99_ms: *p99,
                    runs: 50,
                })
                .collect(),
        }
    }

    fn variants() -> Vec<(&'static str, VariantKey)> {
        vec![("fp32-512", key("aa", 512)), ("int8-512", key("bb", 512)), ("int8-384", key("bb", 384))]
    }

    #[test]
    fn the_most_accurate_variant_that_fits_the_budget_wins() {
        let v = variants();
        let p = profile(&[
            ("fp32-512", key("aa", 512), 40.0),
            ("int8-512", key("bb", 512), 22.0),
            ("int8-384", key("bb", 384), 12.0),
        ]);
        let pick = |ms| choose(&v, Some(&p), Duration::from_millis(ms)).index;
        assert_eq!(pick(50), 0);
        assert_eq!(pick(40), 0, "p99 equal to the budget fits");
        assert_eq!(pick(33), 1);
        assert_eq!(pick(15), 2);
        let c = choose(&v, Some(&p), Duration::from_millis(5));
        assert_eq!(c.index, 2, "nothing fits: the fastest");
        assert!(c.reason.contains("no variant fits"), "{}", c.reason);
    }

    #[test]
    fn stale_or_missing_measurements_do_not_count() {
        let v = variants();
        // The fp32 file changed since it was measured: its old fast figure must not select it.
        let p = profile(&[("fp32-512", key("old", 512), 5.0), ("int8-512", key("bb", 512), 22.0)]);
        assert_eq!(choose(&v, Some(&p), Duration::from_millis(33)).index, 1);
        let none = profile(&[("x", key("zz", 512), 1.0)]);
        let c = choose(&v, Some(&none), Duration::from_millis(33));
        assert_eq!(c.index, 0);
        assert!(c.reason.contains("measured none"), "{}", c.reason);
        let c = choose(&v, None, Duration::from_millis(33));
        assert_eq!(c.index, 0);
        assert!(c.reason.contains("sideline bench"), "{}", c.reason);
    }

    #[test]
    fn a_profile_round_trips_and_a_bad_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(PROFILE_FILE);
        assert!(LatencyProfile::load(&path).unwrap().is_none());
        let p = profile(&[("int8-384", key("bb", 384), 12.5)]);
        p.save(&path).unwrap();
        assert_eq!(LatencyProfile::load(&path).unwrap(), Some(p));
        std::fs::write(&path, "{\"schema\": 3").unwrap();
        let e = LatencyProfile::load(&path).unwrap_err().to_string();
        assert!(e.contains(PROFILE_FILE) && e.contains("not a latency profile"), "{e}");
    }

    #[test]
    fn the_key_follows_the_file_contents() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("m.onnx");
        std::fs::write(&f, b"one").unwrap();
        let a = VariantKey::of(&f, [512, 512], Backend::Ort, Accelerator::Cpu).unwrap();
        std::fs::write(&f, b"two").unwrap();
        let b = VariantKey::of(&f, [512, 512], Backend::Ort, Accelerator::Cpu).unwrap();
        assert_ne!(a, b);
        assert_eq!(a.file_sha.len(), 16);
    }
}
