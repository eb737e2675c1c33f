//! The manifest: what a bundle installs (version, compatible boards, every file with its size
//! and SHA-256) and, for model updates, the acceptance check to run before switching.
//!
//! The manifest is the only signed part of a bundle: the signature covers its exact bytes, and
//! the hashes in it cover every file. It is checked ([`Manifest::validate`]) before anything is
//! written, so a path like `../etc/passwd` or a duplicate never reaches the disk.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The manifest's `format`; a new layout gets a new name rather than a guess.
pub const FORMAT: &str = "sideline-manifest/1";
/// Files the slot itself keeps beside the bundle's files.
pub const MANIFEST_FILE: &str = "manifest.json";
pub const SIGNATURE_FILE: &str = "manifest.sig";
/// Where a slot's binary lives; `sideline run` execs into it.
pub const BINARY: &str = "bin/sideline";

const MAX_FILES: usize = 10_000;
const MAX_PATH: usize = 1024;

/// A firmware version: 1 to 4 dot-separated numbers, compared numerically (`1.10` > `1.9`,
/// `1.2` == `1.2.0`).
#[derive(Clone, Debug)]
pub struct Version {
    text: String,
    parts: Vec<u64>,
}

impl Version {
    pub fn parse(text: &str) -> Result<Self, String> {
        let parts: Vec<&str> = text.split('.').collect();
        if parts.len() > 4 {
            return Err(format!("version `{text}` has more than 4 parts"));
        }
        let parts = parts
            .iter()
            .map(|p| {
                if p.is_empty() || p.len() > 18 || !p.bytes().all(|b| b.is_ascii_digit()) {
                    Err(format!("version `{text}` is not dot-separated numbers (e.g. 1.4.2)"))
                } else {
                    Ok(p.parse::<u64>().expect("at most 18 ASCII digits"))
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { text: text.to_string(), parts })
    }

    /// The numbers without trailing zeros, so `1.2` and `1.2.0` compare equal.
    fn key(&self) -> &[u64] {
        let n = self.parts.iter().rposition(|&p| p != 0).map_or(0, |i| i + 1);
        &self.parts[..n]
    }
}

impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}
impl Eq for Version {}
impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Version {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(other.key())
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for Version {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Version::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub version: Version,
    /// `[board] name`s this bundle may be installed on. Empty only in a slot seeded locally by
    /// `sideline update init`.
    pub boards: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// In the order their bytes follow in the bundle.
    pub files: Vec<FileEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acceptance: Option<Acceptance>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Relative path inside the slot, `/`-separated, e.g. `models/centernet.onnx`.
    pub path: String,
    pub size: u64,
    /// Lowercase hex.
    pub sha256: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub executable: bool,
}

/// A model update's check on the device, before switching: the slot's detector runs the golden
/// clip; its p99 latency must be within `max_p99_ms` and its detections must agree with the
/// expected ones (same class, IoU >= 0.5) for at least `min_agree` of them, both ways.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Acceptance {
    /// Paths of files in this manifest: the detector model (ONNX), the clip (Y4M) and the
    /// expected detections (JSON, as `sideline update golden` writes them).
    pub model: String,
    pub clip: String,
    pub expected: String,
    pub max_p99_ms: f64,
    #[serde(default = "default_min_agree")]
    pub min_agree: f64,
}

pub fn default_min_agree() -> f64 {
    0.9
}

impl Manifest {
    /// Everything about the manifest that does not depend on the device: format, paths, hashes,
    /// acceptance references. Messages name the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.format != FORMAT {
            return Err(format!("format `{}` is not `{FORMAT}`", self.format));
        }
        if self.files.is_empty() {
            return Err("files: empty; a bundle installs at least one file".into());
        }
        if self.files.len() > MAX_FILES {
            return Err(format!("files: {} entries, at most {MAX_FILES}", self.files.len()));
        }
        let mut seen = BTreeSet::new();
        for f in &self.files {
            check_path(&f.path).map_err(|e| format!("files: `{}`: {e}", f.path))?;
            if f.sha256.len() != 64
                || !f.sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return Err(format!(
                    "files: `{}`: sha256 `{}` is not 64 lowercase hex digits",
                    f.path, f.sha256
                ));
            }
            if !seen.insert(f.path.as_str()) {
                return Err(format!("files: `{}` is listed twice", f.path));
            }
        }
        // A file may not also be a directory of another (`models` and `models/x.onnx`).
        for f in &self.files {
            let dir = format!("{}/", f.path);
            if seen.range(dir.as_str()..).next().is_some_and(|p| p.starts_with(&dir)) {
                return Err(format!("files: `{}` is both a file and a directory", f.path));
            }
        }
        if let Some(a) = &self.acceptance {
            for (field, p) in [("model", &a.model), ("clip", &a.clip), ("expected", &a.expected)] {
                if !seen.contains(p.as_str()) {
                    return Err(format!("acceptance.{field}: `{p}` is not a file of this bundle"));
                }
            }
            if !(a.max_p99_ms > 0.0 && a.max_p99_ms.is_finite()) {
                return Err(format!("acceptance.max_p99_ms: {} must be positive", a.max_p99_ms));
            }
            if !(a.min_agree > 0.0 && a.min_agree <= 1.0) {
                return Err(format!("acceptance.min_agree: {} is outside (0, 1]", a.min_agree));
            }
        }
        Ok(())
    }

    pub fn total_size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

/// A safe relative path: no `..`, no absolute path, no empty or hidden-temp components, not one
/// of the slot's own files.
fn check_path(p: &str) -> Result<(), String> {
    if p.is_empty() || p.len() > MAX_PATH {
        return Err(format!("path length {} is outside 1..={MAX_PATH}", p.len()));
    }
    if p.starts_with('/') {
        return Err("absolute path".into());
    }
    for c in p.split('/') {
        if c.is_empty() || c == "." || c == ".." {
            return Err(format!("component `{c}` is not allowed"));
        }
        if c.len() > 255 || c.contains(['\0', '\\']) || c.starts_with(".tmp") {
            return Err(format!("component `{c}` is not a plain file name"));
        }
    }
    if p == MANIFEST_FILE || p == SIGNATURE_FILE {
        return Err("is the slot's own manifest file".into());
    }
    Ok(())
}

/// Lowercase hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    fn manifest(paths: &[&str]) -> Manifest {
        Manifest {
            format: FORMAT.into(),
            version: v("1.0"),
            boards: vec!["sim".into()],
            description: String::new(),
            files: paths
                .iter()
                .map(|p| FileEntry {
                    path: p.to_string(),
                    size: 1,
                    sha256: "0".repeat(64),
                    executable: false,
                })
                .collect(),
            acceptance: None,
        }
    }

    #[test]
    fn versions_compare_numerically() {
        assert!(v("1.10") > v("1.9"));
        assert!(v("2") > v("1.99.99"));
        assert_eq!(v("1.2"), v("1.2.0"));
        assert!(v("0.1.1") > v("0.1"));
        assert_eq!(v("1.2.0").to_string(), "1.2.0");
        for bad in ["", "1.", ".1", "1.x", "v1", "1.2.3.4.5", "-1", "1 .2", "9999999999999999999"] {
            assert!(Version::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn manifest_round_trips_through_json() {
        let m = manifest(&["bin/sideline"]);
        let text = serde_json::to_string(&m).unwrap();
        let back: Manifest = serde_json::from_str(&text).unwrap();
        assert_eq!(back.version, m.version);
        assert_eq!(back.files, m.files);
        assert!(serde_json::from_str::<Manifest>(&text.replace("\"1.0\"", "\"one\"")).is_err());
    }

    #[test]
    fn unsafe_paths_are_refused() {
        for bad in [
            "../x",
            "/etc/passwd",
            "a//b",
            "a/./b",
            "a/../../b",
            "manifest.json",
            "manifest.sig",
            "",
            "a/",
            "a\\b",
            ".tmp-x",
        ] {
            let err = manifest(&[bad]).validate().unwrap_err();
            assert!(err.contains("files:"), "{bad:?}: {err}");
        }
        assert!(manifest(&["bin/sideline", "models/a.onnx", "x"]).validate().is_ok());
    }

    #[test]
    fn duplicates_and_file_directory_clashes_are_refused() {
        assert!(manifest(&["a", "a"]).validate().unwrap_err().contains("twice"));
        assert!(manifest(&["models", "models/x.onnx"]).validate().unwrap_err().contains("both"));
        assert!(manifest(&["models/x.onnx", "models"]).validate().unwrap_err().contains("both"));
        assert!(manifest(&["model", "models/x.onnx"]).validate().is_ok());
    }

    #[test]
    fn acceptance_must_name_bundle_files() {
        let mut m = manifest(&["models/a.onnx", "golden/clip.y4m", "golden/expected.json"]);
        m.acceptance = Some(Acceptance {
            model: "models/a.onnx".into(),
            clip: "golden/clip.y4m".into(),
            expected: "golden/missing.json".into(),
            max_p99_ms: 100.0,
            min_agree: 0.9,
        });
        assert!(m.validate().unwrap_err().contains("acceptance.expected"));
        m.acceptance.as_mut().unwrap().expected = "golden/expected.json".into();
        assert!(m.validate().is_ok());
        m.acceptance.as_mut().unwrap().min_agree = 0.0;
        assert!(m.validate().unwrap_err().contains("min_agree"));
    }

    #[test]
    fn bad_hashes_are_refused() {
        let mut m = manifest(&["a"]);
        m.files[0].sha256 = "AB".repeat(32);
        assert!(m.validate().unwrap_err().contains("sha256"));
    }
}
