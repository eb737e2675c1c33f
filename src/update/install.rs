//! Installing: a bundle into the inactive slot (`apply`), or a local build into a slot of a new
//! or rebuilt update directory (`seed`, for `sideline update init`).
//!
//! `apply` checks, in order, what costs least and trusts least: the state (nothing pending),
//! the signature, the manifest, the board and the version, all before writing a byte. It then
//! streams each file into the inactive slot checking its length and SHA-256, fsyncs, runs the
//! acceptance check if the manifest names one, and only then completes the slot, records it as
//! pending and switches `current` (see [`super::slots`] for why that order is crash-safe). Any
//! failure leaves the slot incomplete and `current` where it was.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use ed25519_dalek::VerifyingKey;
use sha2::{Digest, Sha256};

use super::bundle::{copy_file, expect_end, read_head};
use super::manifest::{hex, FileEntry, Manifest, Version, FORMAT};
use super::progress::Progress;
use super::slots::{Committed, Outcome, Pending, Slot, SlotDir, State};
use super::{accept, UpdateError};
use crate::config::Board;

pub struct ApplyOptions {
    /// Install even if the version is not above the committed one.
    pub force: bool,
}

/// What `apply` did.
#[derive(Debug)]
pub struct Applied {
    pub slot: Slot,
    pub version: Version,
    pub files: usize,
    pub bytes: u64,
    pub acceptance: Option<accept::Report>,
}

/// Installs the bundle read from `input` on the device described by `board`, whose update
/// directory is `dir` and whose trusted keys are `keys`. A refusal is recorded in the state's
/// history.
pub fn apply(
    dir: &SlotDir,
    board: &Board,
    keys: &[VerifyingKey],
    input: &mut impl BufRead,
    opts: &ApplyOptions,
) -> Result<Applied, UpdateError> {
    if keys.is_empty() {
        return Err(UpdateError::NoKeys);
    }
    let lock = dir.lock(false)?;
    let state = dir.reconcile(&lock)?;
    if let Some(p) = &state.pending {
        return Err(UpdateError::Pending { slot: p.slot, version: p.version.clone() });
    }
    let result = write_bundle(dir, &lock, &state, board, keys, input, opts);
    let mut state = state;
    match &result {
        Ok(a) => {
            let reason = format!("installed into slot {}; waiting for the health gate", a.slot);
            state.pending = Some(Pending { slot: a.slot, version: a.version.clone(), tries: 0 });
            state.record(Outcome::Installed, Some(a.version.clone()), Some(a.slot), reason);
            dir.write_state(&lock, &state)?;
            dir.switch(&lock, a.slot)?;
        }
        Err(e) if e.is_rejection() => {
            state.record(Outcome::Rejected, None, None, e.to_string());
            if let Err(w) = dir.write_state(&lock, &state) {
                tracing::error!("cannot record the rejection: {w}");
            }
        }
        Err(_) => {}
    }
    result
}

fn write_bundle(
    dir: &SlotDir,
    lock: &super::slots::Lock,
    state: &State,
    board: &Board,
    keys: &[VerifyingKey],
    input: &mut impl BufRead,
    opts: &ApplyOptions,
) -> Result<Applied, UpdateError> {
    let head = read_head(input, keys)?;
    let m = &head.manifest;
    if !m.boards.iter().any(|b| b == &board.board.name) {
        return Err(UpdateError::WrongBoard { board: board.board.name.clone(), boards: m.boards.clone() });
    }
    if m.version <= state.committed.version && !opts.force {
        return Err(UpdateError::NotNewer {
            version: m.version.clone(),
            committed: state.committed.version.clone(),
        });
    }
    let target = state.committed.slot.other();
    tracing::info!("installing version {} into slot {target} ({} files)", m.version, m.files.len());
    let mut writer = dir.begin_slot(lock, target)?;
    let mut progress = Progress::new(format!("update {}", m.version), m.total_size());
    for entry in &m.files {
        let (mut file, path) = writer.create(&entry.path, entry.executable)?;
        let mut out = std::io::BufWriter::with_capacity(1 << 16, &mut file);
        copy_file(input, entry, &mut out, &mut progress)?;
        out.flush().map_err(UpdateError::io("writing", &path))?;
        drop(out);
        file.sync_all().map_err(UpdateError::io("syncing", &path))?;
    }
    expect_end(input)?;
    progress.finish();
    let acceptance = match &m.acceptance {
        Some(acc) => {
            tracing::info!("acceptance check: model {} on {}", acc.model, acc.clip);
            let report = accept::check(writer.dir(), acc, board)?;
            tracing::info!("acceptance passed: {report}");
            Some(report)
        }
        None => None,
    };
    writer.finish(&head.manifest_bytes, Some(&head.signature))?;
    Ok(Applied {
        slot: target,
        version: m.version.clone(),
        files: m.files.len(),
        bytes: m.total_size(),
        acceptance,
    })
}

/// Local files for [`seed`]: destination path in the slot, source file.
pub fn collect_files(
    from: Option<&Path>,
    binary: Option<&Path>,
) -> Result<Vec<(String, PathBuf)>, UpdateError> {
    let mut files = Vec::new();
    if let Some(root) = from {
        walk(root, root, &mut files)?;
    }
    if let Some(bin) = binary {
        files.retain(|(dest, _)| dest != super::manifest::BINARY);
        files.push((super::manifest::BINARY.to_string(), bin.to_path_buf()));
    }
    files.sort();
    Ok(files)
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) -> Result<(), UpdateError> {
    let entries = std::fs::read_dir(dir).map_err(UpdateError::io("listing", dir))?;
    for entry in entries {
        let path = entry.map_err(UpdateError::io("listing", dir))?.path();
        // Follows links: a package may link its models from elsewhere.
        let meta = std::fs::metadata(&path).map_err(UpdateError::io("reading", &path))?;
        if meta.is_dir() {
            walk(root, &path, out)?;
        } else if meta.is_file() {
            let rel = path.strip_prefix(root).expect("walked from root");
            let rel = rel.to_str().ok_or_else(|| UpdateError::Corrupt {
                path: path.clone(),
                message: "file name is not UTF-8".into(),
            })?;
            out.push((rel.to_string(), path));
        }
    }
    Ok(())
}

/// Puts local files into a slot and commits it directly (no signature, no gate): the first
/// install of a device, or, with `force`, a rebuild of the inactive slot from the package.
/// Returns the slot written.
pub fn seed(
    dir: &SlotDir,
    files: &[(String, PathBuf)],
    version: Version,
    force: bool,
) -> Result<Slot, UpdateError> {
    if files.is_empty() {
        return Err(UpdateError::Corrupt {
            path: dir.root().to_path_buf(),
            message: "no files to install".into(),
        });
    }
    dir.create()?;
    let lock = dir.lock(false)?;
    let (target, mut state) =
        match dir.read_state()? {
            None => (Slot::A, None),
            Some(_) if !force => return Err(UpdateError::Corrupt {
                path: dir.state_path(),
                message:
                    "already initialized (--force rebuilds the inactive slot from these files and commits it)"
                        .into(),
            }),
            Some(_) => {
                let st = dir.reconcile(&lock)?;
                if let Some(p) = &st.pending {
                    return Err(UpdateError::Pending { slot: p.slot, version: p.version.clone() });
                }
                (st.committed.slot.other(), Some(st))
            }
        };
    let mut writer = dir.begin_slot(&lock, target)?;
    let mut entries = Vec::with_capacity(files.len());
    let total = files.iter().filter_map(|(_, p)| std::fs::metadata(p).ok()).map(|m| m.len()).sum();
    let mut progress = Progress::new(format!("seeding slot {target}"), total);
    for (dest, src) in files {
        let executable = dest == super::manifest::BINARY || is_executable(src);
        let (mut out, path) = writer.create(dest, executable)?;
        let mut input = std::fs::File::open(src).map_err(UpdateError::io("opening", src))?;
        let mut h = HashingWriter { inner: &mut out, hash: Sha256::new(), size: 0 };
        std::io::copy(&mut input, &mut h).map_err(UpdateError::io("copying into", &path))?;
        let (size, sha256) = (h.size, hex(&h.hash.finalize()));
        out.sync_all().map_err(UpdateError::io("syncing", &path))?;
        progress.advance(size);
        progress.file_done(dest, size);
        entries.push(FileEntry { path: dest.clone(), size, sha256, executable });
    }
    progress.finish();
    let manifest = Manifest {
        format: FORMAT.into(),
        version: version.clone(),
        boards: Vec::new(),
        description: "seeded by sideline update init".into(),
        files: entries,
        acceptance: None,
    };
    manifest.validate().map_err(|e| UpdateError::Corrupt { path: dir.root().to_path_buf(), message: e })?;
    let bytes = serde_json::to_vec_pretty(&manifest).expect("manifest serializes");
    writer.finish(&bytes, None)?;
    let mut st =
        state.take().unwrap_or_else(|| State::new(Committed { slot: target, version: version.clone() }));
    st.committed = Committed { slot: target, version: version.clone() };
    st.record(
        Outcome::Seeded,
        Some(version),
        Some(target),
        "seeded from local files by sideline update init".into(),
    );
    dir.write_state(&lock, &st)?;
    dir.switch(&lock, target)?;
    Ok(target)
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.permissions().mode() & 0o111 != 0)
}

struct HashingWriter<'a, W: Write> {
    inner: &'a mut W,
    hash: Sha256,
    size: u64,
}

impl<W: Write> Write for HashingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
