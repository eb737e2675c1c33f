//! `sideline rulepack`: make a signing key, sign a rule pack, and check a signed pack against a
//! board profile exactly as the device would before it is sent (see [`crate::config::rulepack`]).

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ed25519_dalek::SigningKey;

use crate::config::rulepack::{self, parse_public_key, parse_signing_key};
use crate::config::Board;

/// Writes a new key pair to `<prefix>.key` (secret seed, mode 0600) and `<prefix>.pub`; returns
/// the public key, the string that goes into a profile's `sync.rulepack_keys`.
pub fn keygen(prefix: &Path) -> anyhow::Result<String> {
    let with_ext = |ext: &str| {
        let mut p = prefix.as_os_str().to_owned();
        p.push(ext);
        PathBuf::from(p)
    };
    let (key_file, pub_file) = (with_ext(".key"), with_ext(".pub"));
    // Check both first so a refusal leaves nothing half-written; create_new still guards the key.
    for f in [&key_file, &pub_file] {
        if f.exists() {
            bail!("{} already exists: refusing to overwrite a key", f.display());
        }
    }
    let mut seed = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut r| r.read_exact(&mut seed))
        .context("reading /dev/urandom")?;
    let key = SigningKey::from_bytes(&seed);
    let public = BASE64.encode(key.verifying_key().to_bytes());
    write_new(&key_file, 0o600, &BASE64.encode(seed))?;
    write_new(&pub_file, 0o644, &public)?;
    Ok(public)
}

fn write_new(path: &Path, mode: u32, line: &str) -> anyhow::Result<()> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .and_then(|mut f| writeln!(f, "{line}"))
        .with_context(|| format!("writing {}", path.display()))
}

/// Signs the pack in `pack` with the key in `key`; returns the envelope. The pack is parsed first,
/// so a typo is caught here rather than by every device in the fleet.
pub fn sign(key: &Path, pack: &Path) -> anyhow::Result<Vec<u8>> {
    let key_text = std::fs::read_to_string(key).with_context(|| format!("reading {}", key.display()))?;
    let key = parse_signing_key(&key_text)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("{}: not a rule pack signing key", key.display()))?;
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
