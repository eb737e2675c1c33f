//! The alert audit log: every alert raise and clear the outputs were driven for, one JSON line
//! each, in a hash chain, so a changed, deleted or reordered line is found by
//! [`verify`] (`sideline audit verify`).
//!
//! A line is `{"seq":N,"prev":"<hex>",...,"hash":"<hex>"}`. Its *content* is the exact bytes
//! before `,"hash":"`; `hash = SHA-256(prev hash bytes || content)`, and `prev` is the previous
//! line's hash (64 zeros on the first line). Hashing the bytes as written, rather than a
//! re-serialisation, leaves nothing to canonicalise: any changed byte breaks the line.
//!
//! Appends survive restarts: [`AuditLog::open`] verifies what is there and continues the chain
//! from the last line. A crash can leave the last line incomplete (*torn*): it is a strict
//! prefix of a line, without a complete `"hash"` field. [`verify`] reports it as torn, not as
//! tampering, and the next open cuts it off and records that in the chain (a `torn_tail`
//! entry), so the repair is itself on the record. A log that fails verification is moved aside
//! (`<name>.broken-<unix ms>`, kept as evidence) and a new chain starts with a `chain_restarted`
//! entry naming it; the device keeps running either way.
//!
//! Limits: a chain alone cannot show that lines were cut off its end (nothing follows them to
//! break); the alerts are also in the pattern store and upstream to compare with. Anyone who
//! can rewrite the whole file can rebuild a valid chain; anchoring the head hash elsewhere
//! (upstream) would close that and is not done here.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::config::Board;
use crate::event::AlertEvent;

const HASH_FIELD: &[u8] = br#","hash":""#;
/// `,"hash":"` + 64 hex digits + `"}`.
const SUFFIX_LEN: usize = HASH_FIELD.len() + 64 + 2;
const GENESIS: [u8; 32] = [0; 32];

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("audit log {} is in use by another sideline process", path.display())]
    Locked { path: PathBuf },
    #[error("audit log {}: line {line}: {reason}", path.display())]
    Broken { path: PathBuf, line: usize, reason: String },
}

/// The audit log of a profile: `[telemetry] audit_log`, else `audit.log` in the storage dir.
pub fn path_for(board: &Board) -> PathBuf {
    board
        .telemetry
        .as_ref()
        .and_then(|t| t.audit_log.clone())
        .unwrap_or_else(|| board.storage.path.join("audit.log"))
}

#[derive(Serialize)]
struct Head<'a> {
    seq: u64,
    prev: &'a str,
    /// Wall-clock time of the append, Unix ms.
    time_ms: i64,
    device: &'a str,
    #[serde(flatten)]
    body: Body<'a>,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Body<'a> {
    Alert {
        alert: &'a AlertEvent,
    },
    /// An incomplete last line (a crash mid-write) was cut off at open.
    TornTail {
        line: usize,
        bytes: usize,
    },
    /// The previous log failed verification and was moved aside.
    ChainRestarted {
        reason: &'a str,
        previous: &'a str,
    },
}

/// The open log, appending on the recorder thread.
pub struct AuditLog {
    path: PathBuf,
    file: File,
    device: String,
    seq: u64,
    head: [u8; 32],
    /// Lines appended since the last [`sync`](Self::sync).
    pending: Vec<u8>,
}

impl AuditLog {
    /// Opens (creating) the log, locks it against a second writer, checks it and positions the
    /// chain after its last line (see the module docs for torn and broken logs).
    pub fn open(path: &Path, device: &str) -> Result<Self, AuditError> {
        let io = |source| AuditError::Io { path: path.to_path_buf(), source };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut file = OpenOptions::new().read(true).append(true).create(true).open(path).map_err(io)?;
        lock(&file, path)?;
        let mut text = Vec::new();
        file.read_to_end(&mut text).map_err(io)?;
        let mut log = Self {
            path: path.to_path_buf(),
            file,
            device: device.into(),
            seq: 0,
            head: GENESIS,
            pending: Vec::new(),
        };
        match check(&text) {
            Ok(v) => {
                log.seq = v.entries;
                log.head = v.head;
                if let Some(torn) = v.torn {
                    // Cut the torn bytes off; the chain records that it happened.
                    log.file.set_len((text.len() - torn.bytes) as u64).map_err(io)?;
                    log.file.seek(SeekFrom::End(0)).map_err(io)?;
                    tracing::warn!(
                        "audit log {}: line {} was torn by a crash ({} bytes); cut off",
                        path.display(),
                        torn.line,
                        torn.bytes
                    );
                    log.append(Body::TornTail { line: torn.line, bytes: torn.bytes })?;
                    log.sync()?;
                }
            }
            Err((line, reason)) => {
                let aside = path.with_file_name(format!(
                    "{}.broken-{}",
                    path.file_name().map_or("audit.log".into(), |n| n.to_string_lossy()),
                    crate::store::now_ms()
                ));
                tracing::error!(
                    "audit log {}: line {line}: {reason}; moved to {} and a new chain started",
                    path.display(),
                    aside.display()
                );
                std::fs::rename(path, &aside).map_err(io)?;
                let file = OpenOptions::new().read(true).append(true).create(true).open(path).map_err(io)?;
                lock(&file, path)?;
                log.file = file;
                let reason = format!("line {line}: {reason}");
                log.append(Body::ChainRestarted { reason: &reason, previous: &aside.to_string_lossy() })?;
                log.sync()?;
            }
        }
        Ok(log)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Entries in the chain so far.
    pub fn entries(&self) -> u64 {
        self.seq
    }

    /// Queues the alert's line; it is on disk after the next [`sync`](Self::sync).
    pub fn append_alert(&mut self, alert: &AlertEvent) -> Result<(), AuditError> {
        self.append(Body::Alert { alert })
    }

    fn append(&mut self, body: Body<'_>) -> Result<(), AuditError> {
        let prev = hex(&self.head);
        let head = Head {
            seq: self.seq + 1,
            prev: &prev,
            time_ms: crate::store::now_ms(),
            device: &self.device,
            body,
        };
        let start = self.pending.len();
        serde_json::to_writer(&mut self.pending, &head)
            .map_err(|e| AuditError::Io { path: self.path.clone(), source: e.into() })?;
        // Drop the closing brace: the content ends where the hash field starts.
        self.pending.pop();
        let hash = chain(&self.head, &self.pending[start..]);
        self.pending.extend_from_slice(HASH_FIELD);
        self.pending.extend_from_slice(hex(&hash).as_bytes());
        self.pending.extend_from_slice(b"\"}\n");
        self.seq += 1;
        self.head = hash;
        Ok(())
    }

    /// Writes the queued lines in one go and waits for the disk (one fsync per recorder batch).
    pub fn sync(&mut self) -> Result<(), AuditError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let io = |source| AuditError::Io { path: self.path.clone(), source };
        self.file.write_all(&self.pending).map_err(io)?;
        self.file.sync_data().map_err(io)?;
        self.pending.clear();
        Ok(())
    }
}

/// Only one writer: a second chain appended to the same file would break both.
fn lock(file: &File, path: &Path) -> Result<(), AuditError> {
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Err(AuditError::Locked { path: path.to_path_buf() })
    } else {
        Err(AuditError::Io { path: path.to_path_buf(), source: e })
    }
}

fn chain(prev: &[u8; 32], content: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(content);
    h.finalize().into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// An incomplete last line left by a crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Torn {
    /// Its line number (1-based).
    pub line: usize,
    pub bytes: usize,
}

/// A log that verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    pub entries: u64,
    /// Hash of the last entry (the chain's head).
    pub head: [u8; 32],
    pub torn: Option<Torn>,
}

impl Verified {
    pub fn head_hex(&self) -> String {
        hex(&self.head)
    }
}

/// Checks a log file: every line's hash, sequence and link to the line before.
pub fn verify(path: &Path) -> Result<Verified, AuditError> {
    let text = std::fs::read(path).map_err(|source| AuditError::Io { path: path.to_path_buf(), source })?;
    check(&text).map_err(|(line, reason)| AuditError::Broken { path: path.to_path_buf(), line, reason })
}

/// [`verify`] on the bytes; a failure is (line, reason).
fn check(text: &[u8]) -> Result<Verified, (usize, String)> {
    let mut head = GENESIS;
    let mut seq = 0u64;
    let mut rest = text;
    let mut line_no = 0;
    while !rest.is_empty() {
        line_no += 1;
        let (line, complete) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => (&rest[..i], true),
            None => (rest, false),
        };
        rest = &rest[(line.len() + 1).min(rest.len())..];
        if !complete && !has_hash_field(line) {
            // No complete hash field and nothing after it: a write cut short, not an edit.
            return Ok(Verified {
                entries: seq,
                head,
                torn: Some(Torn { line: line_no, bytes: line.len() }),
            });
        }
        let hash = check_line(line, &head, seq + 1).map_err(|reason| (line_no, reason))?;
        head = hash;
        seq += 1;
    }
    Ok(Verified { entries: seq, head, torn: None })
}

/// Whether `line` ends in a complete `"hash"` field (a torn line cannot).
fn has_hash_field(line: &[u8]) -> bool {
    line.len() >= SUFFIX_LEN
        && line[line.len() - SUFFIX_LEN..].starts_with(HASH_FIELD)
        && line.ends_with(b"\"}")
}

/// Checks one line against the chain so far; returns its hash.
fn check_line(line: &[u8], prev: &[u8; 32], want_seq: u64) -> Result<[u8; 32], String> {
    if line.is_empty() {
        return Err("empty line".into());
    }
    if !has_hash_field(line) {
        return Err("not an audit entry: it does not end in a \"hash\" field".into());
    }
    let (content, suffix) = line.split_at(line.len() - SUFFIX_LEN);
    let stated = std::str::from_utf8(&suffix[HASH_FIELD.len()..HASH_FIELD.len() + 64])
        .ok()
        .and_then(unhex)
        .ok_or("the hash is not 64 lowercase hex digits")?;
    let mut whole = content.to_vec();
    whole.push(b'}');
    let fields: serde_json::Value =
        serde_json::from_slice(&whole).map_err(|e| format!("not an audit entry: {e}"))?;
    let seq = fields["seq"].as_u64().ok_or("not an audit entry: no seq")?;
    let stated_prev = fields["prev"].as_str().and_then(unhex).ok_or("not an audit entry: no prev hash")?;
    // In this order, so the reason names what happened: the line itself changed, lines around
    // it went missing or moved, or the line before it was changed (its hash rewritten to hide it).
    if chain(&stated_prev, content) != stated {
        return Err("its hash does not match its content: the line was changed".into());
    }
    if seq != want_seq {
        return Err(if seq > want_seq {
            format!("seq {seq} where {want_seq} was expected: entries before it are missing")
        } else {
            format!("seq {seq} where {want_seq} was expected: entries are out of order or repeated")
        });
    }
    if stated_prev != *prev {
        return Err("its prev does not match the hash of the line before: that line was changed".into());
    }
    Ok(stated)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Severity;
    use crate::rules::{AlertState, RuleKind};

    fn alert(rule: &str, frame: u64) -> AlertEvent {
        AlertEvent {
            rule: rule.into(),
            kind: RuleKind::ZoneIncursion,
            severity: Severity::Warning,
            state: AlertState::Raised,
            track: 3,
            frame,
            capture_us: 1_000 * frame,
            decision_us: 1_000 * frame + 40,
            latency_us: 55,
            outputs: vec!["log".into()],
            at: Default::default(),
            same_as: None,
        }
    }

    /// A log of `n` alerts.
    fn log_of(dir: &Path, n: u64) -> PathBuf {
        let path = dir.join("audit.log");
        let mut log = AuditLog::open(&path, "dev-1").unwrap();
        for i in 1..=n {
            log.append_alert(&alert("road", i)).unwrap();
        }
        log.sync().unwrap();
        path
    }

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path).unwrap().lines().map(str::to_string).collect()
    }

    fn write_lines(path: &Path, lines: &[String]) {
        std::fs::write(path, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    }

    fn broken_at(path: &Path) -> (usize, String) {
        match verify(path) {
            Err(AuditError::Broken { line, reason, .. }) => (line, reason),
            other => panic!("expected a broken chain, got {other:?}"),
        }
    }

    #[test]
    fn a_fresh_log_verifies_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = log_of(dir.path(), 3);
        let v = verify(&path).unwrap();
        assert_eq!((v.entries, v.torn), (3, None));
        // A second run continues the chain.
        let mut log = AuditLog::open(&path, "dev-1").unwrap();
        assert_eq!(log.entries(), 3);
        log.append_alert(&alert("whistle", 9)).unwrap();
        log.sync().unwrap();
        drop(log);
        assert_eq!(verify(&path).unwrap().entries, 4);
        let last: serde_json::Value = serde_json::from_str(&lines(&path)[3]).unwrap();
        assert_eq!(last["seq"], 4);
        assert_eq!(last["alert"]["rule"], "whistle");
        assert_eq!(last["type"], "alert");
    }

    #[test]
    fn a_second_writer_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let _first = AuditLog::open(&path, "dev-1").unwrap();
        assert!(matches!(AuditLog::open(&path, "dev-1"), Err(AuditError::Locked { .. })));
    }

    #[test]
    fn an_edited_field_is_found_on_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = log_of(dir.path(), 5);
        let mut l = lines(&path);
        l[2] = l[2].replace(r#""track":3"#, r#""track":4"#);
        write_lines(&path, &l);
        let (line, reason) = broken_at(&path);
        assert_eq!(line, 3);
        assert!(reason.contains("the line was changed"), "{reason}");
    }

    #[test]
    fn an_edit_with_its_hash_recomputed_is_found_on_the_next_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = log_of(dir.path(), 5);
        let mut l = lines(&path);
        let edited = l[1].replace(r#""frame":2"#, r#""frame":7"#);
        let content = &edited.as_bytes()[..edited.len() - SUFFIX_LEN];
        let prev = unhex(serde_json::from_str::<serde_json::Value>(&l[1]).unwrap()["prev"].as_str().unwrap())
            .unwrap();
        l[1] = format!(
            "{}{}{}\"}}",
            String::from_utf8_lossy(content),
            ",\"hash\":\"",
            hex(&chain(&prev, content))
        );
        write_lines(&path, &l);
        let (line, reason) = broken_at(&path);
        assert_eq!(line, 3, "line 2 is self-consistent; line 3 no longer links to it: {reason}");
        assert!(reason.contains("the line before"), "{reason}");
    }

    #[test]
    fn a_deleted_line_is_found_where_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let path = log_of(dir.path(), 5);
        let mut l = lines(&path);
        l.remove(3);
        write_lines(&path, &l);
        assert_eq!(broken_at(&path).0, 4);
        // The first line too.
        let path = log_of(&dir.path().join("b"), 3);
        let mut l = lines(&path);
        l.remove(0);
        write_lines(&path, &l);
        assert_eq!(broken_at(&path).0, 1);
    }

    #[test]
    fn reordered_lines_are_found_at_the_first_moved() {
        let dir = tempfile::tempdir().unwrap();
        let path = log_of(dir.path(), 5);
        let mut l = lines(&path);
        l.swap(1, 3);
        write_lines(&path, &l);
        assert_eq!(broken_at(&path).0, 2);
    }

    #[test]
    fn a_torn_last_line_is_a_crash_not_tampering_and_is_repaired_on_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = log_of(dir.path(), 3);
        let whole = std::fs::read(&path).unwrap();
        // A crash in the middle of writing line 3.
        let cut = whole.len() - 30;
        std::fs::write(&path, &whole[..cut]).unwrap();
        let v = verify(&path).unwrap();
        assert_eq!(v.entries, 2);
        let line3_len = lines(&path)[2].len();
        assert_eq!(v.torn, Some(Torn { line: 3, bytes: line3_len }));
        // Only the newline lost: the line is whole and counts.
        std::fs::write(&path, &whole[..whole.len() - 1]).unwrap();
        assert_eq!(verify(&path).unwrap(), Verified { entries: 3, head: verify_head(&whole), torn: None });
        // A complete hash field that does not match is an edit, even on the last line.
        let mut edited = whole[..whole.len() - 1].to_vec();
        let at = edited.len() - 10;
        edited[at] = if edited[at] == b'0' { b'1' } else { b'0' };
        std::fs::write(&path, &edited).unwrap();
        assert_eq!(broken_at(&path).0, 3);

        // The next open cuts the torn line off and says so in the chain.
        std::fs::write(&path, &whole[..cut]).unwrap();
        let mut log = AuditLog::open(&path, "dev-1").unwrap();
        log.append_alert(&alert("road", 9)).unwrap();
        log.sync().unwrap();
        drop(log);
        let v = verify(&path).unwrap();
        assert_eq!((v.entries, v.torn), (4, None));
        let l = lines(&path);
        let note: serde_json::Value = serde_json::from_str(&l[2]).unwrap();
        assert_eq!(note["type"], "torn_tail");
        assert_eq!(note["line"], 3);
    }

    fn verify_head(text: &[u8]) -> [u8; 32] {
        check(text).unwrap().head
    }

    #[test]
    fn a_broken_log_is_moved_aside_and_a_new_chain_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = log_of(dir.path(), 3);
        let mut l = lines(&path);
        l.remove(1);
        write_lines(&path, &l);
        let log = AuditLog::open(&path, "dev-1").unwrap();
        assert_eq!(log.entries(), 1);
        drop(log);
        assert_eq!(verify(&path).unwrap().entries, 1);
        let first: serde_json::Value = serde_json::from_str(&lines(&path)[0]).unwrap();
        assert_eq!(first["type"], "chain_restarted");
        let aside = PathBuf::from(first["previous"].as_str().unwrap());
        assert!(first["reason"].as_str().unwrap().starts_with("line 2:"), "{first}");
        assert_eq!(broken_at(&aside).0, 2, "the evidence is kept as it was");
    }
}
