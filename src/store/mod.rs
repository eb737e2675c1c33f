//! The durable pattern log: every alert, appended and synced to disk before it counts as kept,
//! so a power cut loses nothing that was reported. (The SQLite store with priorities, TTL and
//! eviction replaces this file format behind the same calls.)

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct StoreError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

pub struct PatternLog {
    path: PathBuf,
    file: File,
    line: Vec<u8>,
}

impl PatternLog {
    /// Opens (creating) `dir/patterns.jsonl` for appending.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError { path, source }
        };
        std::fs::create_dir_all(dir).map_err(err(dir))?;
        let path = dir.join("patterns.jsonl");
        let file = OpenOptions::new().create(true).append(true).open(&path).map_err(err(&path))?;
        Ok(Self { path, file, line: Vec::with_capacity(512) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record and waits until it is on disk.
    pub fn append<T: serde::Serialize>(&mut self, record: &T) -> Result<(), StoreError> {
        self.line.clear();
        serde_json::to_writer(&mut self.line, record)
            .map_err(|e| StoreError { path: self.path.clone(), source: e.into() })?;
        self.line.push(b'\n');
        let err = |source| StoreError { path: self.path.clone(), source };
        self.file.write_all(&self.line).map_err(err)?;
        self.file.sync_data().map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = PatternLog::open(&dir.path().join("state")).unwrap();
        log.append(&serde_json::json!({"n": 1})).unwrap();
        drop(log);
        let mut log = PatternLog::open(&dir.path().join("state")).unwrap();
        log.append(&serde_json::json!({"n": 2})).unwrap();
        let text = std::fs::read_to_string(log.path()).unwrap();
        assert_eq!(text, "{\"n\":1}\n{\"n\":2}\n");
    }
}
