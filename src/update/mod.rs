//! Signed A/B updates of the firmware and its models, committed only after a health gate.
//!
//! A device keeps two slots under `[update] dir`; the `current` link names the one that runs.
//! A bundle ([`bundle`]: a signed [`manifest`] and the files it lists) is verified and written
//! into the other slot ([`install`]), optionally checked on the device ([`accept`]: a model's
//! golden clip), and `current` is switched to it as *pending*. The new version must then run
//! healthy for `gate_s` ([`gate`]) within `gate_timeout_s` and within `max_boot_tries` starts
//! ([`boot`]); otherwise it is rolled back by itself. [`slots`] orders every write so that a
//! crash at any point leaves `current` naming a complete slot. See docs/UPDATE.md.

pub mod accept;
pub mod boot;
pub mod build;
pub mod bundle;
pub mod cli;
pub mod gate;
pub mod install;
pub mod manifest;
pub mod progress;
pub mod slots;

use std::path::PathBuf;

pub use manifest::Version;
pub use slots::Slot;

/// Why an update operation failed. Bundle rejections name what and where
/// (`bundle: file models/x.onnx: sha256 mismatch ...`).
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("{what} {}: {source}", path.display())]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    /// The bundle's bytes: header, manifest, a file's length or hash, trailing data.
    #[error("bundle: {0}")]
    Bundle(String),
    #[error("bundle refused: this device has no update.keys, so it accepts no bundles")]
    NoKeys,
    #[error(
        "bundle: bad signature: the manifest's signature does not verify against any key in update.keys"
    )]
    BadSignature,
    #[error("bundle: manifest: boards {boards:?} does not list this board `{board}`")]
    WrongBoard { board: String, boards: Vec<String> },
    #[error("bundle: manifest: version {version} is not newer than the committed {committed} (--force installs it anyway)")]
    NotNewer { version: Version, committed: Version },
    #[error("version {version} in slot {slot} is pending its health gate; wait for the gate, or run `sideline update commit` or `sideline update rollback`")]
    Pending { slot: Slot, version: Version },
    #[error("{}: no A/B slots here yet (run `sideline update init`)", dir.display())]
    NotInitialized { dir: PathBuf },
    #[error("{}: another update command is running ({holder}); try again when it is done", dir.display())]
    Busy { dir: PathBuf, holder: String },
    /// The on-disk state is not what this build wrote (a corrupt file, a link edited by hand).
    #[error("{}: {message}", path.display())]
    Corrupt { path: PathBuf, message: String },
    /// The model acceptance check on the device failed.
    #[error("acceptance: {0}")]
    Acceptance(String),
    #[error("nothing to roll back to: {0}")]
    NoRollback(String),
    #[error("nothing to commit: no version is pending")]
    NothingPending,
    /// A new version did not prove itself and was rolled back; the process exits so that the
    /// service manager restarts it into the committed slot.
    #[error("version {version} rolled back to the committed slot: {reason}")]
    RolledBack { version: Version, reason: String },
}

impl UpdateError {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| UpdateError::Io { what, path, source }
    }

    /// Whether the error is a verdict on the bundle (recorded in the state's history) rather
    /// than a problem of the device or the command.
    pub fn is_rejection(&self) -> bool {
        matches!(
            self,
            UpdateError::Bundle(_)
                | UpdateError::BadSignature
                | UpdateError::WrongBoard { .. }
                | UpdateError::NotNewer { .. }
                | UpdateError::Acceptance(_)
        )
    }
}
