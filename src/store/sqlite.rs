//! The durable store: SQLite in WAL mode with full sync, so a pattern that [`Store::append`]
//! returned for survives a killed process and a power cut.
//!
//! Sequence numbers come from `AUTOINCREMENT`, so they never repeat, even after deletes. Size is
//! accounted per row (payload plus a fixed overhead) against the disk budget; eviction removes
//! the lowest priority, oldest patterns first, and a safety pattern only when nothing else is
//! left. Patterns leave the store when the broker acknowledged them ([`Store::ack`]), when they
//! expire ([`Store::purge_expired`]), or by eviction; the last two are counted.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};

use super::pattern::{NewPattern, Priority, Stored};

/// Bookkeeping cost of a row beyond its payload, for the budget.
const ROW_OVERHEAD: i64 = 64;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("pattern store {}: {source}", path.display())]
    Sql { path: PathBuf, source: rusqlite::Error },
    #[error("pattern store {}: integrity check failed: {message}", path.display())]
    Corrupt { path: PathBuf, message: String },
}

#[derive(Clone, Copy, Debug)]
pub struct StoreConfig {
    pub budget_bytes: i64,
    /// Time to live per priority class, indexed by `Priority as usize`.
    pub ttl: [Duration; 3],
}

impl StoreConfig {
    pub fn from_board(s: &crate::config::Storage) -> Self {
        Self {
            budget_bytes: (s.budget_mb * 1_000_000.0) as i64,
            ttl: [s.ttl_s.safety, s.ttl_s.event, s.ttl_s.telemetry].map(Duration::from_secs_f64),
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self::from_board(&crate::config::Storage {
            path: PathBuf::new(),
            budget_mb: 256.0,
            ttl_s: Default::default(),
        })
    }
}

/// Patterns that left without reaching upstream, per class (persisted).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Losses {
    pub evicted: [u64; 3],
    pub expired: [u64; 3],
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Backlog {
    pub count: [u64; 3],
    pub bytes: i64,
}

pub struct Store {
    path: PathBuf,
    db: Connection,
    cfg: StoreConfig,
    generation: String,
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS patterns (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    class      INTEGER NOT NULL,
    kind       TEXT NOT NULL,
    capture_us INTEGER NOT NULL,
    stored_ms  INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    size       INTEGER NOT NULL,
    body       TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS patterns_class_seq ON patterns (class, seq);
CREATE INDEX IF NOT EXISTS patterns_expires ON patterns (expires_ms);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
-- Accounted bytes, kept by triggers so every connection (recorder, uplink) sees one truth.
CREATE TABLE IF NOT EXISTS totals (id INTEGER PRIMARY KEY CHECK (id = 1), bytes INTEGER NOT NULL);
INSERT OR IGNORE INTO totals (id, bytes) VALUES (1, 0);
CREATE TRIGGER IF NOT EXISTS patterns_add AFTER INSERT ON patterns
    BEGIN UPDATE totals SET bytes = bytes + NEW.size WHERE id = 1; END;
CREATE TRIGGER IF NOT EXISTS patterns_del AFTER DELETE ON patterns
    BEGIN UPDATE totals SET bytes = bytes - OLD.size WHERE id = 1; END;
";

impl Store {
    /// Opens (creating) `dir/patterns.db`. A file that is not a sound database is an error, not
    /// something to paper over: the caller decides (the run refuses to start and names it).
    pub fn open(dir: &Path, cfg: StoreConfig) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Io { path: dir.into(), source })?;
        let path = dir.join("patterns.db");
        let sql = |source| StoreError::Sql { path: path.clone(), source };
        let db = Connection::open(&path).map_err(sql)?;
        db.busy_timeout(Duration::from_secs(5)).map_err(sql)?;
        // FULL: a commit is on disk before append returns, in WAL mode too.
        db.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;").map_err(sql)?;
        let check: String = db.query_row("PRAGMA quick_check", [], |r| r.get(0)).map_err(sql)?;
        if check != "ok" {
            return Err(StoreError::Corrupt { path, message: check });
        }
        db.execute_batch(SCHEMA).map_err(sql)?;
        // OR IGNORE: the first connection to create the store decides; the rest read it.
        db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('generation', ?1)", [new_generation()])
            .map_err(sql)?;
        let generation = meta_get(&db, "generation").map_err(sql)?.unwrap_or_default();
        Ok(Self { path, db, cfg, generation })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Random per store file: part of every idempotency key.
    pub fn generation(&self) -> &str {
        &self.generation
    }

    fn sql(&self) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        move |source| StoreError::Sql { path: self.path.clone(), source }
    }

    /// Stores a batch in one transaction, evicting to stay within budget; returns the first and
    /// last sequence numbers given. Durable when it returns.
    pub fn append(&mut self, batch: &[NewPattern]) -> Result<Option<(i64, i64)>, StoreError> {
        if batch.is_empty() {
            return Ok(None);
        }
        let now = now_ms();
        let path = self.path.clone();
        let sql = |source| StoreError::Sql { path: path.clone(), source };
        let tx = immediate(&mut self.db).map_err(sql)?;
        let mut first = None;
        let mut last = 0;
        {
            let mut ins = tx
                .prepare_cached(
                    "INSERT INTO patterns (class, kind, capture_us, stored_ms, expires_ms, size, body)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .map_err(sql)?;
            for p in batch {
                let ttl = self.cfg.ttl[p.priority as usize].as_millis() as i64;
                let size = p.body.len() as i64 + p.kind.len() as i64 + ROW_OVERHEAD;
                ins.execute(params![
                    p.priority as i64,
                    p.kind,
                    p.capture_us as i64,
                    now,
                    now.saturating_add(ttl),
                    size,
                    p.body
                ])
                .map_err(sql)?;
                let seq = tx.last_insert_rowid();
                first.get_or_insert(seq);
                last = seq;
            }
        }
        let evicted = evict(&tx, self.cfg.budget_bytes).map_err(sql)?;
        if evicted.iter().any(|&n| n > 0) {
            add_counters(&tx, "evicted", &evicted).map_err(sql)?;
        }
        tx.commit().map_err(sql)?;
        Ok(first.map(|f| (f, last)))
    }

    /// Up to `limit` unexpired patterns of one class after `after_seq`, oldest first.
    pub fn next_batch(
        &self,
        class: Priority,
        after_seq: i64,
        limit: usize,
        now_ms: i64,
        out: &mut Vec<Stored>,
    ) -> Result<(), StoreError> {
        let mut q = self
            .db
            .prepare_cached(
                "SELECT seq, kind, capture_us, stored_ms, expires_ms, body FROM patterns
                 WHERE class = ?1 AND seq > ?2 AND expires_ms > ?3 ORDER BY seq LIMIT ?4",
            )
            .map_err(self.sql())?;
        let rows = q
            .query_map(params![class as i64, after_seq, now_ms, limit as i64], |r| {
                Ok(Stored {
                    seq: r.get(0)?,
                    priority: class,
                    kind: r.get(1)?,
                    capture_us: r.get::<_, i64>(2)? as u64,
                    stored_ms: r.get(3)?,
                    expires_ms: r.get(4)?,
                    body: r.get(5)?,
                })
            })
            .map_err(self.sql())?;
        for row in rows {
            out.push(row.map_err(self.sql())?);
        }
        Ok(())
    }

    /// Deletes patterns upstream has acknowledged; returns how many were still here.
    pub fn ack(&mut self, seqs: &[i64]) -> Result<usize, StoreError> {
        let path = self.path.clone();
        let sql = |source| StoreError::Sql { path: path.clone(), source };
        let tx = immediate(&mut self.db).map_err(sql)?;
        let mut removed = 0;
        {
            let mut del = tx.prepare_cached("DELETE FROM patterns WHERE seq = ?1").map_err(sql)?;
            for &s in seqs {
                removed += del.execute([s]).map_err(sql)?;
            }
        }
        tx.commit().map_err(sql)?;
        Ok(removed)
    }

    /// Deletes what is past its time to live, counting it per class.
    pub fn purge_expired(&mut self, now_ms: i64) -> Result<[u64; 3], StoreError> {
        let path = self.path.clone();
        let sql = |source| StoreError::Sql { path: path.clone(), source };
        let tx = immediate(&mut self.db).map_err(sql)?;
        let mut counts = [0u64; 3];
        {
            let mut del = tx
                .prepare_cached("DELETE FROM patterns WHERE expires_ms <= ?1 RETURNING class")
                .map_err(sql)?;
            let mut rows = del.query([now_ms]).map_err(sql)?;
            while let Some(r) = rows.next().map_err(sql)? {
                let class: i64 = r.get(0).map_err(sql)?;
                if let Some(p) = Priority::from_db(class) {
                    counts[p as usize] += 1;
                }
            }
        }
        if counts.iter().any(|&n| n > 0) {
            add_counters(&tx, "expired", &counts).map_err(sql)?;
        }
        tx.commit().map_err(sql)?;
        Ok(counts)
    }

    pub fn backlog(&self) -> Result<Backlog, StoreError> {
        let bytes = self.db.query_row("SELECT bytes FROM totals", [], |r| r.get(0)).map_err(self.sql())?;
        let mut b = Backlog { bytes, ..Default::default() };
        let mut q = self
            .db
            .prepare_cached("SELECT class, COUNT(*) FROM patterns GROUP BY class")
            .map_err(self.sql())?;
        let mut rows = q.query([]).map_err(self.sql())?;
        while let Some(r) = rows.next().map_err(self.sql())? {
            if let Some(p) = Priority::from_db(r.get(0).map_err(self.sql())?) {
                b.count[p as usize] = r.get::<_, i64>(1).map_err(self.sql())? as u64;
            }
        }
        Ok(b)
    }

    pub fn losses(&self) -> Result<Losses, StoreError> {
        let read = |name: &str| -> Result<[u64; 3], StoreError> {
            let mut out = [0; 3];
            for p in Priority::ALL {
                let v = meta_get(&self.db, &format!("{name}.{}", p.name())).map_err(self.sql())?;
                out[p as usize] = v.and_then(|v| v.parse().ok()).unwrap_or(0);
            }
            Ok(out)
        };
        Ok(Losses { evicted: read("evicted")?, expired: read("expired")? })
    }

    /// Every sequence number present, in order (tests and the soak check).
    pub fn all_seqs(&self) -> Result<Vec<i64>, StoreError> {
        let mut q = self.db.prepare_cached("SELECT seq FROM patterns ORDER BY seq").map_err(self.sql())?;
        let rows = q.query_map([], |r| r.get(0)).map_err(self.sql())?;
        rows.collect::<Result<_, _>>().map_err(self.sql())
    }

    /// A small durable key-value slot (e.g. the running rule pack).
    pub fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        meta_get(&self.db, key).map_err(self.sql())
    }

    pub fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        meta_set(&self.db, key, value).map_err(self.sql())
    }

    pub fn forget_meta(&self, key: &str) -> Result<(), StoreError> {
        self.db.execute("DELETE FROM meta WHERE key = ?1", [key]).map(drop).map_err(self.sql())
    }
}

/// Removes patterns until `bytes` fits `budget`: telemetry, then events, then safety, oldest
/// first within a class.
fn evict(tx: &rusqlite::Transaction<'_>, budget: i64) -> rusqlite::Result<[u64; 3]> {
    let mut evicted = [0u64; 3];
    let mut bytes: i64 = tx.query_row("SELECT bytes FROM totals", [], |r| r.get(0))?;
    if bytes <= budget {
        return Ok(evicted);
    }
    let mut pick =
        tx.prepare_cached("SELECT seq, size FROM patterns WHERE class = ?1 ORDER BY seq LIMIT 256")?;
    let mut del = tx.prepare_cached("DELETE FROM patterns WHERE seq = ?1")?;
    for class in [Priority::Telemetry, Priority::Event, Priority::Safety] {
        while bytes > budget {
            let victims: Vec<(i64, i64)> =
                pick.query_map([class as i64], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()?;
            if victims.is_empty() {
                break;
            }
            for (seq, size) in victims {
                if bytes <= budget {
                    break;
                }
                del.execute([seq])?;
                bytes -= size;
                evicted[class as usize] += 1;
            }
        }
    }
    Ok(evicted)
}

/// A write transaction that takes the lock up front: the budget read inside it stays true.
fn immediate(db: &mut Connection) -> rusqlite::Result<rusqlite::Transaction<'_>> {
    db.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
}

fn add_counters(tx: &rusqlite::Transaction<'_>, name: &str, counts: &[u64; 3]) -> rusqlite::Result<()> {
    for p in Priority::ALL {
        let n = counts[p as usize];
        if n > 0 {
            tx.execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = CAST(value AS INTEGER) + CAST(?2 AS INTEGER)",
                params![format!("{name}.{}", p.name()), n.to_string()],
            )?;
        }
    }
    Ok(())
}

fn meta_get(db: &Connection, key: &str) -> rusqlite::Result<Option<String>> {
    db.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0)).optional()
}

fn meta_set(db: &Connection, key: &str, value: &str) -> rusqlite::Result<()> {
    db.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = ?2",
        params![key, value],
    )?;
    Ok(())
}

/// 8 hex digits from the kernel's random source (the time as a fallback).
fn new_generation() -> String {
    use std::io::Read;
    let mut b = [0u8; 4];
    let random = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)).is_ok();
    if !random {
        b = (now_ms() as u32).to_le_bytes();
    }
    format!("{:08x}", u32::from_le_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(priority: Priority, n: u64, size: usize) -> NewPattern {
        NewPattern {
            priority,
            kind: "t",
            capture_us: n,
            body: format!("{{\"n\":{n},\"pad\":\"{}\"}}", "x".repeat(size)),
        }
    }

    fn classes(store: &Store) -> Vec<(i64, Priority)> {
        let mut out = Vec::new();
        for c in Priority::ALL {
            let mut b = Vec::new();
            store.next_batch(c, 0, 10_000, 0, &mut b).unwrap();
            out.extend(b.iter().map(|s| (s.seq, s.priority)));
        }
        out.sort();
        out
    }

    #[test]
    fn survives_reopen_and_never_reuses_a_sequence_number() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path(), StoreConfig::default()).unwrap();
        let gen = s.generation().to_string();
        assert_eq!(gen.len(), 8);
        assert_eq!(s.append(&[p(Priority::Safety, 1, 10), p(Priority::Event, 2, 10)]).unwrap(), Some((1, 2)));
        assert_eq!(s.ack(&[1, 2]).unwrap(), 2);
        drop(s);
        let mut s = Store::open(dir.path(), StoreConfig::default()).unwrap();
        assert_eq!(s.generation(), gen);
        assert_eq!(s.append(&[p(Priority::Telemetry, 3, 10)]).unwrap(), Some((3, 3)), "3, not 1 again");
        assert_eq!(s.all_seqs().unwrap(), vec![3]);
        assert_eq!(s.backlog().unwrap().count, [0, 0, 1]);
    }

    #[test]
    fn eviction_takes_telemetry_then_events_then_oldest_safety() {
        let dir = tempfile::tempdir().unwrap();
        // Each row is about 1100 accounted bytes; room for 10.
        let cfg = StoreConfig { budget_bytes: 11_500, ..StoreConfig::default() };
        let mut s = Store::open(dir.path(), cfg).unwrap();
        let mut n = 0;
        let mut add = |s: &mut Store, c: Priority| {
            n += 1;
            s.append(&[p(c, n, 1000)]).unwrap().unwrap().0
        };
        let safety: Vec<i64> = (0..4).map(|_| add(&mut s, Priority::Safety)).collect();
        let events: Vec<i64> = (0..3).map(|_| add(&mut s, Priority::Event)).collect();
        let telemetry: Vec<i64> = (0..3).map(|_| add(&mut s, Priority::Telemetry)).collect();
        assert_eq!(s.losses().unwrap(), Losses::default(), "10 rows fit");
        // Two more safety patterns: the two oldest telemetry ones go.
        let new_safety: Vec<i64> = (0..2).map(|_| add(&mut s, Priority::Safety)).collect();
        let left: Vec<i64> = classes(&s).iter().map(|c| c.0).collect();
        let mut want = [&safety[..], &events[..], &telemetry[2..], &new_safety[..]].concat();
        want.sort();
        assert_eq!(left, want);
        // A new telemetry pattern: the older telemetry one makes room for it.
        let t = add(&mut s, Priority::Telemetry);
        assert!(classes(&s).iter().any(|c| c.0 == t));
        assert!(!classes(&s).iter().any(|c| c.0 == telemetry[2]));
        // Four more safety: every telemetry and event pattern goes before any safety one.
        for _ in 0..4 {
            add(&mut s, Priority::Safety);
        }
        let left = classes(&s);
        assert!(left.iter().all(|c| c.1 == Priority::Safety), "{left:?}");
        assert!(left.iter().any(|c| c.0 == safety[0]), "no safety pattern evicted while others remained");
        // Only safety is left: now the oldest safety pattern goes.
        add(&mut s, Priority::Safety);
        assert!(!classes(&s).iter().any(|c| c.0 == safety[0]));
        let losses = s.losses().unwrap();
        assert_eq!(losses.evicted, [1, 3, 4]);
        assert!(s.backlog().unwrap().bytes <= 11_500);
    }

    #[test]
    fn expired_patterns_are_not_offered_and_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig {
            ttl: [Duration::from_secs(60), Duration::from_millis(1), Duration::from_secs(60)],
            ..StoreConfig::default()
        };
        let mut s = Store::open(dir.path(), cfg).unwrap();
        s.append(&[p(Priority::Safety, 1, 1), p(Priority::Event, 2, 1), p(Priority::Event, 3, 1)]).unwrap();
        let later = now_ms() + 10;
        let mut b = Vec::new();
        s.next_batch(Priority::Event, 0, 10, later, &mut b).unwrap();
        assert!(b.is_empty(), "expired events are not sent");
        assert_eq!(s.purge_expired(later).unwrap(), [0, 2, 0]);
        assert_eq!(s.losses().unwrap().expired, [0, 2, 0]);
        assert_eq!(s.backlog().unwrap().count, [1, 0, 0]);
    }

    #[test]
    fn two_connections_share_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig { budget_bytes: 5_000, ..StoreConfig::default() };
        let mut writer = Store::open(dir.path(), cfg).unwrap();
        let mut sender = Store::open(dir.path(), cfg).unwrap();
        for n in 0..4 {
            writer.append(&[p(Priority::Event, n, 1000)]).unwrap();
        }
        // The other connection acknowledges everything: the writer sees the room at once.
        assert_eq!(sender.ack(&writer.all_seqs().unwrap()).unwrap(), 4);
        for n in 0..4 {
            writer.append(&[p(Priority::Event, n, 1000)]).unwrap();
        }
        assert_eq!(writer.losses().unwrap().evicted, [0, 0, 0]);
    }

    #[test]
    fn a_file_that_is_not_a_database_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("patterns.db"), vec![0x42u8; 8192]).unwrap();
        let err = Store::open(dir.path(), StoreConfig::default()).err().expect("must fail").to_string();
        assert!(err.contains("patterns.db"), "{err}");
    }
}
