//! The bundle: one stream that can be piped over ssh (`sideline update apply - < bundle`).
//!
//! ```text
//! sideline-bundle/1\n
//! <manifest length in bytes, decimal>\n
//! <manifest JSON>\n
//! <ed25519 signature over the manifest bytes, base64>\n
//! <file 1 bytes><file 2 bytes>...      in manifest order, each exactly `size` bytes
//! ```
//!
//! Nothing follows the last file. The reader never trusts a length before the signature holds
//! (the manifest length is capped), and reads files in bounded chunks, so hostile bytes cost at
//! most a refused update.

use std::io::{BufRead, Read, Write};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use super::manifest::{hex, FileEntry, Manifest};
use super::progress::Progress;
use super::UpdateError;

pub const MAGIC: &str = "sideline-bundle/1";
/// Far above any real manifest; bounds what is read before the signature is checked.
pub const MAX_MANIFEST: usize = 1 << 20;
const CHUNK: usize = 1 << 16;

/// The verified head of a bundle; the files follow in the stream.
pub struct Head {
    /// The exact signed bytes, kept in the slot.
    pub manifest_bytes: Vec<u8>,
    pub manifest: Manifest,
    /// Base64, as in the bundle.
    pub signature: String,
}

fn bad(message: impl Into<String>) -> UpdateError {
    UpdateError::Bundle(message.into())
}

/// Reads one `\n`-terminated line of at most `max` bytes.
fn read_line(r: &mut impl BufRead, max: usize, what: &str) -> Result<String, UpdateError> {
    let mut line = Vec::new();
    r.take(max as u64 + 1)
        .read_until(b'\n', &mut line)
        .map_err(|e| bad(format!("{what}: read failed: {e}")))?;
    if line.is_empty() {
        return Err(bad(format!("{what}: missing (empty or truncated input)")));
    }
    if line.last() != Some(&b'\n') {
        return Err(bad(if line.len() > max {
            format!("{what}: longer than {max} bytes")
        } else {
            format!("{what}: truncated")
        }));
    }
    line.pop();
    String::from_utf8(line).map_err(|_| bad(format!("{what}: not text")))
}

/// Reads the header, checks the signature against `keys`, then parses and validates the
/// manifest. Nothing in the manifest is looked at before the signature holds.
pub fn read_head(r: &mut impl BufRead, keys: &[VerifyingKey]) -> Result<Head, UpdateError> {
    let magic = read_line(r, 64, "header")?;
    if magic != MAGIC {
        return Err(bad(format!("header: `{}` is not `{MAGIC}`", magic.escape_default())));
    }
    let len = read_line(r, 20, "header: manifest length")?;
    let len: usize = len.parse().ok().filter(|&n| n > 0 && n <= MAX_MANIFEST).ok_or_else(|| {
        bad(format!("header: manifest length `{}` is not in 1..={MAX_MANIFEST}", len.escape_default()))
    })?;
    let mut manifest_bytes = vec![0u8; len];
    r.read_exact(&mut manifest_bytes)
        .map_err(|_| bad(format!("manifest: truncated (expected {len} bytes)")))?;
    let mut nl = [0u8; 1];
    if r.read_exact(&mut nl).is_err() || nl[0] != b'\n' {
        return Err(bad("manifest: not followed by a newline (length wrong or input truncated)"));
    }
    let signature = read_line(r, 128, "signature")?;
    let sig = BASE64.decode(signature.trim()).map_err(|e| bad(format!("signature: not base64: {e}")))?;
    let sig = Signature::from_slice(&sig)
        .map_err(|_| bad(format!("signature: {} bytes, an ed25519 signature has 64", sig.len())))?;
    if keys.is_empty() {
        return Err(UpdateError::NoKeys);
    }
    // Strict: refuses malleable signatures and weak keys, which plain `verify` lets through.
    if !keys.iter().any(|k| k.verify_strict(&manifest_bytes, &sig).is_ok()) {
        return Err(UpdateError::BadSignature);
    }
    let manifest: Manifest =
        serde_json::from_slice(&manifest_bytes).map_err(|e| bad(format!("manifest: {e}")))?;
    manifest.validate().map_err(|e| bad(format!("manifest: {e}")))?;
    Ok(Head { manifest_bytes, manifest, signature })
}

/// Copies one file's bytes from the bundle to `out`, checking length and SHA-256.
pub fn copy_file(
    r: &mut impl Read,
    entry: &FileEntry,
    out: &mut impl Write,
    progress: &mut Progress,
) -> Result<(), UpdateError> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut left = entry.size;
    while left > 0 {
        let want = (left.min(CHUNK as u64)) as usize;
        let n = match r.read(&mut buf[..want]) {
            Ok(0) => {
                return Err(bad(format!(
                    "file {}: truncated after {} of {} bytes",
                    entry.path,
                    entry.size - left,
                    entry.size
                )))
            }
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(bad(format!("file {}: read failed: {e}", entry.path))),
        };
        h.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(|e| bad(format!("file {}: write failed: {e}", entry.path)))?;
        left -= n as u64;
        progress.advance(n as u64);
    }
    let got = hex(&h.finalize());
    if got != entry.sha256 {
        return Err(bad(format!(
            "file {}: sha256 mismatch (manifest {}, bundle {got})",
            entry.path, entry.sha256
        )));
    }
    progress.file_done(&entry.path, entry.size);
    Ok(())
}

/// After the last file: the stream must end.
pub fn expect_end(r: &mut impl Read) -> Result<(), UpdateError> {
    let mut buf = [0u8; 4096];
    let mut extra = 0usize;
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                extra += n;
                if extra >= 1 << 20 {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(bad(format!("after the last file: read failed: {e}"))),
        }
    }
    if extra > 0 {
        return Err(bad(format!(
            "{extra}{} bytes after the last file",
            if extra >= 1 << 20 { "+" } else { "" }
        )));
    }
    Ok(())
}

/// Writes the head of a bundle: magic, manifest, signature. The files follow.
pub fn write_head(w: &mut impl Write, manifest_bytes: &[u8], key: &SigningKey) -> std::io::Result<()> {
    use ed25519_dalek::Signer as _;
    let sig = BASE64.encode(key.sign(manifest_bytes).to_bytes());
    write!(w, "{MAGIC}\n{}\n", manifest_bytes.len())?;
    w.write_all(manifest_bytes)?;
    write!(w, "\n{sig}\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::update::manifest::{Version, FORMAT};

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn bundle(files: &[(&str, &[u8])], signer: &SigningKey) -> Vec<u8> {
        let m = Manifest {
            format: FORMAT.into(),
            version: Version::parse("2").unwrap(),
            boards: vec!["sim".into()],
            description: String::new(),
            files: files
                .iter()
                .map(|(p, b)| FileEntry {
                    path: p.to_string(),
                    size: b.len() as u64,
                    sha256: hex(&Sha256::digest(b)),
                    executable: false,
                })
                .collect(),
            acceptance: None,
        };
        let mut out = Vec::new();
        write_head(&mut out, &serde_json::to_vec(&m).unwrap(), signer).unwrap();
        for (_, b) in files {
            out.extend_from_slice(b);
        }
        out
    }

    /// Reads a whole bundle into memory: Ok(files) or the rejection.
    fn read(bytes: &[u8], keys: &[VerifyingKey]) -> Result<Vec<Vec<u8>>, UpdateError> {
        let mut r = std::io::BufReader::new(bytes);
        let head = read_head(&mut r, keys)?;
        let mut p = Progress::quiet();
        let files = head
            .manifest
            .files
            .iter()
            .map(|f| {
                let mut out = Vec::new();
                copy_file(&mut r, f, &mut out, &mut p).map(|_| out)
            })
            .collect::<Result<Vec<_>, _>>()?;
        expect_end(&mut r)?;
        Ok(files)
    }

    const FILES: &[(&str, &[u8])] = &[("bin/sideline", b"\x7fELF..."), ("models/a.onnx", b"onnx bytes")];

    #[test]
    fn a_good_bundle_reads_back() {
        let b = bundle(FILES, &key(1));
        let files = read(&b, &[key(1).verifying_key()]).unwrap();
        assert_eq!(files[1], b"onnx bytes");
        // Any of several keys may have signed it.
        read(&b, &[key(9).verifying_key(), key(1).verifying_key()]).unwrap();
    }

    #[test]
    fn wrong_key_and_no_key_are_refused() {
        let b = bundle(FILES, &key(2));
        assert!(matches!(read(&b, &[key(1).verifying_key()]), Err(UpdateError::BadSignature)));
        assert!(matches!(read(&b, &[]), Err(UpdateError::NoKeys)));
    }

    #[test]
    fn every_truncation_is_refused_and_named() {
        let b = bundle(FILES, &key(1));
        let keys = [key(1).verifying_key()];
        for cut in 0..b.len() {
            let err = read(&b[..cut], &keys).expect_err("truncated bundle accepted");
            assert!(matches!(err, UpdateError::Bundle(_)), "cut {cut}: {err}");
        }
        let err = read(&b[..b.len() - 3], &keys).unwrap_err().to_string();
        assert!(err.contains("file models/a.onnx: truncated after 7 of 10 bytes"), "{err}");
    }

    #[test]
    fn tampered_bytes_are_refused() {
        let b = bundle(FILES, &key(1));
        let keys = [key(1).verifying_key()];
        // A flipped bit in a file: its hash.
        let mut t = b.clone();
        *t.last_mut().unwrap() ^= 1;
        let err = read(&t, &keys).unwrap_err().to_string();
        assert!(err.contains("file models/a.onnx: sha256 mismatch"), "{err}");
        // In the manifest: the signature.
        let mut t = b.clone();
        let at = t.windows(6).position(|w| w == b"models").unwrap();
        t[at] = b'n';
        assert!(matches!(read(&t, &keys), Err(UpdateError::BadSignature)));
        // Extra bytes at the end.
        let mut t = b.clone();
        t.extend_from_slice(b"xx");
        assert!(read(&t, &keys).unwrap_err().to_string().contains("2 bytes after the last file"));
    }

    #[test]
    fn garbage_never_panics() {
        let keys = [key(1).verifying_key()];
        let mut x = 0x9e3779b97f4a7c15u64;
        for len in [0usize, 1, 17, 100, 5000] {
            let junk: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            assert!(read(&junk, &keys).is_err());
            let mut framed = format!("{MAGIC}\n{len}\n").into_bytes();
            framed.extend_from_slice(&junk);
            assert!(read(&framed, &keys).is_err());
        }
        for head in ["sideline-bundle/1\n99999999999999999999999\n", "sideline-bundle/1\n-4\n", "nope\n"] {
            let err = read(head.as_bytes(), &keys).unwrap_err().to_string();
            assert!(err.starts_with("bundle: header"), "{err}");
        }
    }

    #[test]
    fn a_signed_but_unsafe_manifest_is_refused() {
        let b = bundle(&[("../etc/passwd", b"x")], &key(1));
        let err = read(&b, &[key(1).verifying_key()]).unwrap_err().to_string();
        assert!(err.contains("manifest: files: `../etc/passwd`"), "{err}");
    }
}
