//! The A/B slots on disk and the state that says which one is good.
//!
//! ```text
//! <dir>/slots/a/, <dir>/slots/b/   manifest.json (written last), manifest.sig, the files
//! <dir>/current -> slots/a|b        switched with a temporary link and rename(2)
//! <dir>/state.json                  committed slot, pending slot and boot tries, history
//! <dir>/lock                        flock(2): one writer at a time
//! ```
//!
//! Crash safety rests on three rules. A slot is complete only once its `manifest.json` exists,
//! written after every file is fsync'd, and removed before anything else in the slot is touched;
//! `current` only ever names a complete slot. `state.json` is written before `current` is
//! switched, so after a crash the link lags the state by at most one switch, and
//! [`SlotDir::reconcile`] (run by every writer, under the lock) finishes it. Every file and
//! link is written to a temporary name, fsync'd, renamed, and its directory fsync'd.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::manifest::{hex, Manifest, Version, MANIFEST_FILE, SIGNATURE_FILE};
use super::UpdateError;

pub const STATE_FORMAT: &str = "sideline-update-state/1";
const HISTORY: usize = 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }

    /// The `current` link's target.
    fn link(self) -> &'static str {
        match self {
            Slot::A => "slots/a",
            Slot::B => "slots/b",
        }
    }
}

impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Committed {
    pub slot: Slot,
    pub version: Version,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pending {
    pub slot: Slot,
    pub version: Version,
    /// Starts of this version so far.
    pub tries: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// `sideline update init` put a local build into a slot.
    Seeded,
    /// A bundle was written and switched to; it is pending.
    Installed,
    Committed,
    RolledBack,
    /// A bundle was refused; nothing changed.
    Rejected,
}

impl Outcome {
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Seeded => "seeded",
            Outcome::Installed => "installed",
            Outcome::Committed => "committed",
            Outcome::RolledBack => "rolled_back",
            Outcome::Rejected => "rejected",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    pub result: Outcome,
    #[serde(default)]
    pub version: Option<Version>,
    #[serde(default)]
    pub slot: Option<Slot>,
    pub reason: String,
    /// Unix time, seconds.
    pub at: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    pub format: String,
    pub committed: Committed,
    pub pending: Option<Pending>,
    pub last: Option<Event>,
    /// The last few events, oldest first (the last one is `last`).
    #[serde(default)]
    pub history: Vec<Event>,
}

impl State {
    pub fn new(committed: Committed) -> Self {
        Self { format: STATE_FORMAT.into(), committed, pending: None, last: None, history: Vec::new() }
    }

    /// The slot `current` must name.
    pub fn running(&self) -> Slot {
        self.pending.as_ref().map_or(self.committed.slot, |p| p.slot)
    }

    pub fn record(&mut self, result: Outcome, version: Option<Version>, slot: Option<Slot>, reason: String) {
        let at =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let event = Event { result, version, slot, reason, at };
        self.history.push(event.clone());
        let excess = self.history.len().saturating_sub(HISTORY);
        self.history.drain(..excess);
        self.last = Some(event);
    }
}

/// What a slot holds.
#[derive(Clone, Debug)]
pub enum SlotInfo {
    Missing,
    /// Being written, or a write was interrupted or refused: never run.
    Incomplete,
    /// `manifest.json` exists but does not parse (never written by this build).
    Corrupt(String),
    Complete {
        manifest: Box<Manifest>,
        /// The manifest came in a signed bundle (not seeded by `init`).
        signed: bool,
    },
}

impl SlotInfo {
    pub fn complete_version(&self) -> Option<&Version> {
        match self {
            SlotInfo::Complete { manifest, .. } => Some(&manifest.version),
            _ => None,
        }
    }
}

/// The exclusive right to change the slots, held until dropped (flock(2), so a killed holder
/// releases it).
pub struct Lock {
    _file: File,
}

/// One update directory.
#[derive(Clone, Debug)]
pub struct SlotDir {
    root: PathBuf,
}

impl SlotDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn slot_path(&self, slot: Slot) -> PathBuf {
        self.root.join("slots").join(slot.name())
    }

    pub fn state_path(&self) -> PathBuf {
        self.root.join("state.json")
    }

    pub fn current_path(&self) -> PathBuf {
        self.root.join("current")
    }

    /// Creates the directory and `slots/` (for `init`).
    pub fn create(&self) -> Result<(), UpdateError> {
        let slots = self.root.join("slots");
        std::fs::create_dir_all(&slots).map_err(UpdateError::io("creating", &slots))?;
        fsync_dir(&self.root)
    }

    /// Takes the lock; `wait`: block until it is free (the run's own short updates), else fail
    /// at once with [`UpdateError::Busy`] (commands).
    pub fn lock(&self, wait: bool) -> Result<Lock, UpdateError> {
        let path = self.root.join("lock");
        // flock(2) works on a read-only descriptor too: the service's user can lock a file
        // root created (`apply` over ssh), it just cannot write its pid into it.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(&path)
            .or_else(|e| match e.kind() {
                std::io::ErrorKind::PermissionDenied => File::open(&path),
                _ => Err(e),
            })
            .map_err(UpdateError::io("opening", &path))?;
        let op = if wait { libc::LOCK_EX } else { libc::LOCK_EX | libc::LOCK_NB };
        loop {
            // SAFETY: flock on a descriptor we own.
            if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
                break;
            }
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EWOULDBLOCK) => {
                    let mut holder = String::new();
                    let _ = file.read_to_string(&mut holder);
                    let holder = match holder.trim() {
                        "" => "unknown process".to_string(),
                        pid => format!("pid {pid}"),
                    };
                    return Err(UpdateError::Busy { dir: self.root.clone(), holder });
                }
                _ => return Err(UpdateError::Io { what: "locking", path, source: e }),
            }
        }
        // Who holds it, for the next one's message; best effort.
        let _ = file.set_len(0).and_then(|_| file.write_all(std::process::id().to_string().as_bytes()));
        Ok(Lock { _file: file })
    }

    /// The state, or `None` before `init`.
    pub fn read_state(&self) -> Result<Option<State>, UpdateError> {
        let path = self.state_path();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(UpdateError::Io { what: "reading", path, source: e }),
        };
        let state: State = serde_json::from_slice(&bytes).map_err(|e| UpdateError::Corrupt {
            path: path.clone(),
            message: format!("not an update state: {e}"),
        })?;
        if state.format != STATE_FORMAT {
            return Err(UpdateError::Corrupt {
                path,
                message: format!("format `{}` is not `{STATE_FORMAT}`", state.format),
            });
        }
        Ok(Some(state))
    }

    /// The state, or [`UpdateError::NotInitialized`].
    pub fn state(&self) -> Result<State, UpdateError> {
        self.read_state()?.ok_or_else(|| UpdateError::NotInitialized { dir: self.root.clone() })
    }

    pub fn write_state(&self, _lock: &Lock, state: &State) -> Result<(), UpdateError> {
        let bytes = serde_json::to_vec_pretty(state).expect("the state always serializes");
        write_atomic(&self.state_path(), &bytes)
    }

    /// The slot `current` names; `None` if the link does not exist.
    pub fn current(&self) -> Result<Option<Slot>, UpdateError> {
        let path = self.current_path();
        let target = match std::fs::read_link(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(UpdateError::Io { what: "reading link", path, source: e }),
        };
        [Slot::A, Slot::B].into_iter().find(|s| Path::new(s.link()) == target).map(Some).ok_or_else(|| {
            UpdateError::Corrupt {
                path,
                message: format!("points at {}, not slots/a or slots/b", target.display()),
            }
        })
    }

    /// Points `current` at `slot`, atomically.
    pub fn switch(&self, _lock: &Lock, slot: Slot) -> Result<(), UpdateError> {
        let tmp = self.root.join(".current.tmp");
        match std::fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(UpdateError::Io { what: "removing", path: tmp, source: e }),
        }
        std::os::unix::fs::symlink(slot.link(), &tmp).map_err(UpdateError::io("creating link", &tmp))?;
        let current = self.current_path();
        std::fs::rename(&tmp, &current).map_err(UpdateError::io("switching", &current))?;
        fsync_dir(&self.root)
    }

    pub fn slot_info(&self, slot: Slot) -> Result<SlotInfo, UpdateError> {
        let dir = self.slot_path(slot);
        if !dir.is_dir() {
            return Ok(SlotInfo::Missing);
        }
        let path = dir.join(MANIFEST_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(SlotInfo::Incomplete),
            Err(e) => return Err(UpdateError::Io { what: "reading", path, source: e }),
        };
        match serde_json::from_slice::<Manifest>(&bytes) {
            Ok(manifest) => Ok(SlotInfo::Complete {
                manifest: Box::new(manifest),
                signed: dir.join(SIGNATURE_FILE).is_file(),
            }),
            Err(e) => Ok(SlotInfo::Corrupt(format!("{}: {e}", path.display()))),
        }
    }

    /// Re-hashes every file of a complete slot; returns the problems found (empty: intact).
    pub fn verify_slot(&self, slot: Slot) -> Result<Vec<String>, UpdateError> {
        let SlotInfo::Complete { manifest, .. } = self.slot_info(slot)? else {
            return Ok(vec![format!("slot {slot} is not complete")]);
        };
        let dir = self.slot_path(slot);
        let mut problems = Vec::new();
        for f in &manifest.files {
            let path = dir.join(&f.path);
            match hash_file(&path) {
                Ok((size, _)) if size != f.size => {
                    problems.push(format!("{}: {size} bytes, manifest says {}", f.path, f.size))
                }
                Ok((_, sha)) if sha != f.sha256 => problems.push(format!("{}: sha256 mismatch", f.path)),
                Ok(_) => {}
                Err(e) => problems.push(format!("{}: {e}", f.path)),
            }
        }
        Ok(problems)
    }

    /// Brings `current` in line with the state after an interrupted operation, and returns the
    /// state. The state is the truth, except that a pending version whose slot is not complete
    /// (which no finished install leaves) is dropped.
    pub fn reconcile(&self, lock: &Lock) -> Result<State, UpdateError> {
        let mut state = self.state()?;
        let current = self.current()?;
        if let Some(p) = state.pending.clone() {
            if current == Some(p.slot) {
                return Ok(state);
            }
            if self.slot_info(p.slot)?.complete_version() == Some(&p.version) {
                tracing::warn!("finishing an interrupted switch to slot {} (version {})", p.slot, p.version);
                self.switch(lock, p.slot)?;
                return Ok(state);
            }
            state.pending = None;
            let reason = format!("slot {} was not complete after an interrupted install", p.slot);
            state.record(Outcome::RolledBack, Some(p.version), Some(p.slot), reason);
            self.write_state(lock, &state)?;
        }
        if self.current()? != Some(state.committed.slot) {
            if self.slot_info(state.committed.slot)?.complete_version().is_none() {
                return Err(UpdateError::Corrupt {
                    path: self.slot_path(state.committed.slot),
                    message: "the committed slot is not complete (run `sideline update init --force`)".into(),
                });
            }
            tracing::warn!("pointing current back at the committed slot {}", state.committed.slot);
            self.switch(lock, state.committed.slot)?;
        }
        Ok(state)
    }

    /// Makes the pending version the committed one (the gate passed, or an operator said so).
    pub fn commit(&self, lock: &Lock, reason: String) -> Result<State, UpdateError> {
        let mut state = self.reconcile(lock)?;
        let p = state.pending.take().ok_or(UpdateError::NothingPending)?;
        state.committed = Committed { slot: p.slot, version: p.version.clone() };
        state.record(Outcome::Committed, Some(p.version), Some(p.slot), reason);
        self.write_state(lock, &state)?;
        Ok(state)
    }

    /// Abandons the pending version, or, with none pending and `allow_committed`, goes back to
    /// the other slot if it is complete. State first, then the link.
    pub fn roll_back(
        &self,
        lock: &Lock,
        reason: String,
        allow_committed: bool,
    ) -> Result<State, UpdateError> {
        let mut state = self.reconcile(lock)?;
        if let Some(p) = state.pending.take() {
            state.record(Outcome::RolledBack, Some(p.version), Some(p.slot), reason);
        } else if allow_committed {
            let other = state.committed.slot.other();
            let SlotInfo::Complete { manifest, .. } = self.slot_info(other)? else {
                return Err(UpdateError::NoRollback(format!("slot {other} holds no complete version")));
            };
            let from = state.committed.version.clone();
            state.committed = Committed { slot: other, version: manifest.version.clone() };
            let reason = format!("{reason} (from {from} in slot {})", other.other());
            state.record(Outcome::RolledBack, Some(manifest.version), Some(other), reason);
        } else {
            return Err(UpdateError::NothingPending);
        }
        self.write_state(lock, &state)?;
        self.switch(lock, state.committed.slot)?;
        Ok(state)
    }

    /// Empties `slot` for writing, first marking it incomplete. Refuses the slot `current`
    /// names: the running version is never touched.
    pub fn begin_slot(&self, _lock: &Lock, slot: Slot) -> Result<SlotWriter, UpdateError> {
        if self.current()? == Some(slot) {
            return Err(UpdateError::Corrupt {
                path: self.current_path(),
                message: format!("refusing to write into slot {slot}: it is the running one"),
            });
        }
        let dir = self.slot_path(slot);
        if dir.exists() {
            let manifest = dir.join(MANIFEST_FILE);
            match std::fs::remove_file(&manifest) {
                Ok(()) => fsync_dir(&dir)?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(UpdateError::Io { what: "removing", path: manifest, source: e }),
            }
            std::fs::remove_dir_all(&dir).map_err(UpdateError::io("emptying", &dir))?;
        }
        std::fs::create_dir_all(&dir).map_err(UpdateError::io("creating", &dir))?;
        fsync_dir(&self.root.join("slots"))?;
        Ok(SlotWriter { dir: dir.clone(), dirs: vec![dir] })
    }
}

/// Writes one slot's files; [`SlotWriter::finish`] makes it complete.
pub struct SlotWriter {
    dir: PathBuf,
    /// Directories created, to fsync at the end.
    dirs: Vec<PathBuf>,
}

impl SlotWriter {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Creates the file at `rel` (a path [`Manifest::validate`] accepted).
    pub fn create(&mut self, rel: &str, executable: bool) -> Result<(File, PathBuf), UpdateError> {
        let path = self.dir.join(rel);
        if let Some(parent) = path.parent() {
            if !parent.is_dir() {
                std::fs::create_dir_all(parent).map_err(UpdateError::io("creating", parent))?;
                let mut p = parent;
                while p != self.dir && !self.dirs.iter().any(|d| d == p) {
                    self.dirs.push(p.to_path_buf());
                    p = p.parent().unwrap_or(&self.dir);
                }
            }
        }
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(if executable { 0o755 } else { 0o644 })
            .open(&path)
            .map_err(UpdateError::io("creating", &path))?;
        Ok((file, path))
    }

    /// Flushes the directories, then writes the signature and, last, the manifest: from here
    /// on the slot is complete. `manifest` is stored byte for byte (the signed bytes).
    pub fn finish(self, manifest: &[u8], signature: Option<&str>) -> Result<(), UpdateError> {
        for d in self.dirs.iter().rev() {
            fsync_dir(d)?;
        }
        if let Some(sig) = signature {
            write_atomic(&self.dir.join(SIGNATURE_FILE), format!("{sig}\n").as_bytes())?;
        }
        write_atomic(&self.dir.join(MANIFEST_FILE), manifest)
    }
}

/// Writes `bytes` to `path` through a temporary file, fsync, rename and a directory fsync.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), UpdateError> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".tmp-{name}"));
    // A leftover from a killed writer may belong to another user: replace it, do not reuse it.
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(UpdateError::Io { what: "removing", path: tmp, source: e }),
    }
    let mut f = File::create(&tmp).map_err(UpdateError::io("creating", &tmp))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(UpdateError::io("writing", &tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(UpdateError::io("renaming into", path))?;
    fsync_dir(path.parent().unwrap_or(Path::new(".")))
}

pub fn fsync_dir(dir: &Path) -> Result<(), UpdateError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(UpdateError::io("syncing", dir))
}

/// Size and SHA-256 (hex) of a file.
pub fn hash_file(path: &Path) -> std::io::Result<(u64, String)> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, hex(&h.finalize())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::update::manifest::{FileEntry, FORMAT};

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    /// Writes a complete slot holding one file.
    fn seed(dir: &SlotDir, lock: &Lock, slot: Slot, version: &str) {
        let mut w = dir.begin_slot(lock, slot).unwrap();
        let (mut f, _) = w.create("bin/sideline", true).unwrap();
        f.write_all(version.as_bytes()).unwrap();
        let sha = hex(&Sha256::digest(version.as_bytes()));
        let m = Manifest {
            format: FORMAT.into(),
            version: v(version),
            boards: vec![],
            description: String::new(),
            files: vec![FileEntry {
                path: "bin/sideline".into(),
                size: version.len() as u64,
                sha256: sha,
                executable: true,
            }],
            acceptance: None,
        };
        w.finish(&serde_json::to_vec(&m).unwrap(), None).unwrap();
    }

    fn setup() -> (tempfile::TempDir, SlotDir, Lock) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = SlotDir::new(tmp.path().join("u"));
        dir.create().unwrap();
        let lock = dir.lock(false).unwrap();
        seed(&dir, &lock, Slot::A, "1");
        dir.write_state(&lock, &State::new(Committed { slot: Slot::A, version: v("1") })).unwrap();
        dir.switch(&lock, Slot::A).unwrap();
        (tmp, dir, lock)
    }

    #[test]
    fn the_lock_is_exclusive() {
        let (_tmp, dir, lock) = setup();
        let err = dir.lock(false).err().unwrap();
        assert!(matches!(err, UpdateError::Busy { .. }), "{err}");
        assert!(err.to_string().contains(&format!("pid {}", std::process::id())), "{err}");
        drop(lock);
        dir.lock(false).unwrap();
    }

    #[test]
    fn the_running_slot_is_never_written() {
        let (_tmp, dir, lock) = setup();
        assert!(dir.begin_slot(&lock, Slot::A).is_err());
        assert!(dir.verify_slot(Slot::A).unwrap().is_empty());
    }

    #[test]
    fn a_slot_is_incomplete_until_its_manifest_is_written() {
        let (_tmp, dir, lock) = setup();
        let mut w = dir.begin_slot(&lock, Slot::B).unwrap();
        w.create("models/x.onnx", false).unwrap();
        assert!(matches!(dir.slot_info(Slot::B).unwrap(), SlotInfo::Incomplete));
        drop(w);
        seed(&dir, &lock, Slot::B, "2");
        assert_eq!(dir.slot_info(Slot::B).unwrap().complete_version(), Some(&v("2")));
        // Rewriting marks it incomplete before anything else changes.
        let _w = dir.begin_slot(&lock, Slot::B).unwrap();
        assert!(matches!(dir.slot_info(Slot::B).unwrap(), SlotInfo::Incomplete));
    }

    #[test]
    fn reconcile_finishes_an_interrupted_switch() {
        let (_tmp, dir, lock) = setup();
        seed(&dir, &lock, Slot::B, "2");
        let mut st = dir.state().unwrap();
        st.pending = Some(Pending { slot: Slot::B, version: v("2"), tries: 0 });
        dir.write_state(&lock, &st).unwrap();
        // Crash here: state says pending b, link still on a.
        assert_eq!(dir.current().unwrap(), Some(Slot::A));
        dir.reconcile(&lock).unwrap();
        assert_eq!(dir.current().unwrap(), Some(Slot::B));
    }

    #[test]
    fn reconcile_drops_a_pending_slot_that_is_not_complete() {
        let (_tmp, dir, lock) = setup();
        let mut st = dir.state().unwrap();
        st.pending = Some(Pending { slot: Slot::B, version: v("2"), tries: 0 });
        dir.write_state(&lock, &st).unwrap();
        let st = dir.reconcile(&lock).unwrap();
        assert_eq!(st.pending, None);
        assert_eq!(st.last.unwrap().result, Outcome::RolledBack);
        assert_eq!(dir.current().unwrap(), Some(Slot::A));
    }

    #[test]
    fn reconcile_points_current_back_after_an_interrupted_rollback() {
        let (_tmp, dir, lock) = setup();
        seed(&dir, &lock, Slot::B, "2");
        dir.switch(&lock, Slot::B).unwrap(); // state: committed a, no pending
        assert_eq!(dir.reconcile(&lock).unwrap().committed.slot, Slot::A);
        assert_eq!(dir.current().unwrap(), Some(Slot::A));
    }

    #[test]
    fn commit_and_roll_back() {
        let (_tmp, dir, lock) = setup();
        assert!(matches!(dir.commit(&lock, "x".into()), Err(UpdateError::NothingPending)));
        assert!(matches!(dir.roll_back(&lock, "x".into(), true), Err(UpdateError::NoRollback(_))));
        seed(&dir, &lock, Slot::B, "2");
        let mut st = dir.state().unwrap();
        st.pending = Some(Pending { slot: Slot::B, version: v("2"), tries: 1 });
        dir.write_state(&lock, &st).unwrap();
        dir.switch(&lock, Slot::B).unwrap();
        let st = dir.roll_back(&lock, "gate".into(), false).unwrap();
        assert_eq!((st.committed.slot, st.pending), (Slot::A, None));
        assert_eq!(dir.current().unwrap(), Some(Slot::A));
        // With nothing pending, a manual rollback goes to the other complete slot.
        let st = dir.roll_back(&lock, "operator".into(), true).unwrap();
        assert_eq!(st.committed, Committed { slot: Slot::B, version: v("2") });
        assert_eq!(dir.current().unwrap(), Some(Slot::B));
        assert!(st.last.unwrap().reason.contains("operator"));
        assert_eq!(st.history.len(), 2);
    }

    #[test]
    fn a_corrupt_state_or_link_is_reported_not_guessed() {
        let (_tmp, dir, lock) = setup();
        std::fs::write(dir.state_path(), b"{\"format\":").unwrap();
        assert!(matches!(dir.read_state(), Err(UpdateError::Corrupt { .. })));
        drop(lock);
        std::fs::remove_file(dir.current_path()).unwrap();
        std::os::unix::fs::symlink("/etc", dir.current_path()).unwrap();
        let err = dir.current().unwrap_err().to_string();
        assert!(err.contains("not slots/a or slots/b"), "{err}");
    }

    #[test]
    fn history_is_bounded() {
        let mut st = State::new(Committed { slot: Slot::A, version: v("1") });
        for i in 0..50 {
            st.record(Outcome::Rejected, None, None, format!("r{i}"));
        }
        assert_eq!(st.history.len(), HISTORY);
        assert_eq!(st.last.unwrap().reason, "r49");
    }
}
