//! ed25519 key files shared by everything the fleet signs: rule packs (`sideline rulepack`) and
//! update bundles (`sideline update`). One key format and one way to make and read keys, so an
//! operator learns it once and a key made for one can be used for the other.
//!
//! `<prefix>.key` holds the 32-byte secret seed in base64 (mode 0600); `<prefix>.pub` the public
//! key in base64, the string that goes into `sync.rulepack_keys` or `update.keys`.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ed25519_dalek::SigningKey;

use crate::config::rulepack::parse_signing_key;

/// Writes a new key pair to `<prefix>.key` and `<prefix>.pub`; returns the public key.
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

/// Reads a signing key written by [`keygen`].
pub fn read_signing_key(path: &Path) -> anyhow::Result<SigningKey> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_signing_key(&text)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("{}: not an ed25519 signing key", path.display()))
}
