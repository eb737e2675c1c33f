//! What `sideline run` does about updates before it opens anything.
//!
//! `/usr/bin/sideline` is the stable entry point the service manager starts; the firmware that
//! runs is the current slot's `bin/sideline`. So the entry point first makes the slots
//! consistent, counts a start of a pending version (persisted before anything can crash, so a
//! slot binary that dies at once uses up its tries too) and rolls it back once more than
//! `max_boot_tries` starts have not reached the gate's decision; then it exec(2)s into the
//! current slot's binary with the same arguments (the PID stays, which `Type=notify` needs;
//! `SIDELINE_SLOT_EXEC=1` tells that binary not to count or exec again).
//!
//! Problems with the update state never stop the loop: they are logged, and the device runs
//! the binary it was started as, without a gate.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use super::manifest::BINARY;
use super::slots::SlotDir;
use super::UpdateError;
use crate::config::Update;

/// Set in the environment of the exec'd slot binary.
pub const EXEC_GUARD: &str = "SIDELINE_SLOT_EXEC";

/// Runs before the loop. Returns `Err` only when this start used up the pending version's boot
/// tries and it was rolled back: the process must exit non-zero so that it is started again,
/// into the committed slot.
///
/// Reads only the profile's `[update]` table: the slot's binary may know profile fields this
/// entry point does not, and loads the whole profile itself. A profile that cannot be read is
/// left to the full load that follows to report.
pub fn start(profile: &Path) -> Result<(), UpdateError> {
    let cfg = match update_table(profile) {
        Ok(Some(cfg)) => cfg,
        Ok(None) | Err(_) => return Ok(()),
    };
    let dir = SlotDir::new(&cfg.dir);
    match prepare(&dir) {
        Ok(true) => {}
        Ok(false) => return Ok(()),
        Err(e) => {
            tracing::error!("update: {e}; running this binary without a health gate");
            return Ok(());
        }
    }
    if std::env::var_os(EXEC_GUARD).is_some() {
        // The entry point that exec'd this binary has counted this start already.
        if let Some(target) = exec_target(&dir) {
            tracing::warn!(
                "update: running {}, not the current slot's binary {}",
                exe().display(),
                target.display()
            );
        }
        return Ok(());
    }
    // Counted before the exec: a slot binary that crashes at once must use up its tries too.
    count_boot_try(&dir, cfg.max_boot_tries.max(1))?;
    if let Some(target) = exec_target(&dir) {
        tracing::info!("update: starting the current slot's binary {}", target.display());
        let err = std::process::Command::new(&target)
            .arg0(&target)
            .args(std::env::args_os().skip(1))
            .env(EXEC_GUARD, "1")
            .exec();
        tracing::error!("update: cannot exec {}: {err}; running this binary instead", target.display());
    }
    Ok(())
}

/// Brings the slots in line after an interrupted operation (only if they disagree, so that a
/// long `apply` holding the lock does not hold up a start). Returns whether the directory is
/// initialized.
fn prepare(dir: &SlotDir) -> Result<bool, UpdateError> {
    let Some(state) = dir.read_state()? else {
        tracing::warn!("update: {} is not initialized; running without A/B slots", dir.root().display());
        return Ok(false);
    };
    if dir.current()? != Some(state.running()) {
        let lock = dir.lock(true)?;
        dir.reconcile(&lock)?;
    }
    Ok(true)
}

fn exe() -> PathBuf {
    std::env::current_exe().and_then(|p| p.canonicalize()).unwrap_or_default()
}

/// The current slot's binary, if it has one and it is not this process's.
fn exec_target(dir: &SlotDir) -> Option<PathBuf> {
    let target = dir.current_path().join(BINARY).canonicalize().ok()?;
    (target != exe() && is_file(&target)).then_some(target)
}

fn is_file(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file())
}

fn count_boot_try(dir: &SlotDir, max: u32) -> Result<(), UpdateError> {
    let result = (|| {
        let state = dir.state()?;
        let Some(p) = &state.pending else { return Ok(None) };
        let lock = dir.lock(true)?;
        let mut state = dir.reconcile(&lock)?;
        let Some(p) = state.pending.as_mut().filter(|q| q.version == p.version) else { return Ok(None) };
        p.tries += 1;
        let (tries, version, slot) = (p.tries, p.version.clone(), p.slot);
        dir.write_state(&lock, &state)?;
        if tries <= max {
            tracing::info!("update: start {tries} of {max} of pending version {version} (slot {slot})");
            return Ok(None);
        }
        let reason =
            format!("{} starts ended before the health gate decided (max_boot_tries = {max})", tries - 1);
        let st = dir.roll_back(&lock, reason.clone(), false)?;
        tracing::error!(
            "update: rolled back version {version} to {} in slot {}: {reason}",
            st.committed.version,
            st.committed.slot
        );
        Ok(Some(UpdateError::RolledBack { version, reason }))
    })();
    match result {
        Ok(None) => Ok(()),
        Ok(Some(rolled_back)) => Err(rolled_back),
        Err::<_, UpdateError>(e) => {
            tracing::error!("update: cannot count this start: {e}");
            Ok(())
        }
    }
}

/// The `[update]` table of a profile, its `dir` resolved against the profile's directory as
/// the full load does; `None` if the profile has none.
pub fn update_table(path: &Path) -> Result<Option<Update>, UpdateError> {
    let text = std::fs::read_to_string(path).map_err(UpdateError::io("reading", path))?;
    let corrupt = |message: String| UpdateError::Corrupt { path: path.to_path_buf(), message };
    let mut doc: toml::Table = toml::from_str(&text).map_err(|e| corrupt(format!("not TOML: {e}")))?;
    let Some(table) = doc.remove("update") else { return Ok(None) };
    let mut update: Update = table.try_into().map_err(|e| corrupt(format!("[update]: {e}")))?;
    if update.dir.is_relative() {
        update.dir = path.parent().unwrap_or(Path::new(".")).join(&update.dir);
    }
    Ok(Some(update))
}
