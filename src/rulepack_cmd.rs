//! `sideline rulepack`: make a signing key, sign a rule pack, and check a signed pack against a
//! board profile exactly as the device would before it is sent (see [`crate::config::rulepack`]).

use std::path::Path;

use anyhow::Context;

use crate::config::rulepack::{self, parse_public_key};
use crate::config::Board;

/// Writes a new key pair to `<prefix>.key` (secret seed, mode 0600) and `<prefix>.pub`; returns
/// the public key, the string that goes into a profile's `sync.rulepack_keys`.
pub fn keygen(prefix: &Path) -> anyhow::Result<String> {
    crate::signing::keygen(prefix)
}

/// Signs the pack in `pack` with the key in `key`; returns the envelope. The pack is parsed first,
/// so a typo is caught here rather than by every device in the fleet.
pub fn sign(key: &Path, pack: &Path) -> anyhow::Result<Vec<u8>> {
    let key = crate::signing::read_signing_key(key)?;
    let text = std::fs::read_to_string(pack).with_context(|| format!("reading {}", pack.display()))?;
    rulepack::parse(&text).with_context(|| format!("{}", pack.display()))?;
    Ok(rulepack::sign(&text, &key))
}

/// Opens the signed pack in `signed` as the device described by `board` would; returns a
/// one-line summary.
pub fn check(board: &Path, signed: &Path, current_version: Option<u64>) -> anyhow::Result<String> {
    let profile = Board::load(board)?;
    let keys = profile
        .sync
        .iter()
        .flat_map(|s| &s.rulepack_keys)
        .map(|k| parse_public_key(k).map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()
        .with_context(|| format!("{}: sync.rulepack_keys", board.display()))?;
    let bytes = std::fs::read(signed).with_context(|| format!("reading {}", signed.display()))?;
    let (pack, _) = rulepack::open(&bytes, &keys, &profile, current_version)
        .with_context(|| format!("{}: rejected for {}", signed.display(), board.display()))?;
    let r = &pack.rules;
    Ok(format!(
        "OK: {}: rule pack version {} for board `{}`: {} zone_incursion, {} player_down, {} whistle{}",
        signed.display(),
        pack.version,
        profile.board.name,
        r.zone_incursion.len(),
        r.player_down.len(),
        r.whistle.len(),
        if pack.description.is_empty() { String::new() } else { format!(" ({})", pack.description) },
    ))
}
