//! Building and signing a bundle on the developer machine (`sideline update build`).
//!
//! Files are read twice: once to hash them for the manifest (which precedes them in the
//! stream), once to copy them into the bundle. The copy is hashed again, so a file that changed
//! in between fails the build here instead of every device in the fleet.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use sha2::{Digest, Sha256};

use super::bundle::write_head;
use super::manifest::{hex, Acceptance, FileEntry, Manifest, Version, FORMAT};
use super::progress::Progress;
use super::slots::hash_file;
use super::UpdateError;

pub struct BuildSpec {
    pub version: Version,
    pub boards: Vec<String>,
    pub description: String,
    /// Destination in the slot, source file.
    pub files: Vec<(String, PathBuf)>,
    pub acceptance: Option<Acceptance>,
}

/// Writes the signed bundle for `spec` to `out`; returns its manifest.
pub fn build(spec: &BuildSpec, key: &SigningKey, out: &mut impl Write) -> Result<Manifest, UpdateError> {
    if spec.boards.is_empty() {
        return Err(UpdateError::Bundle("manifest: boards: name at least one board (--board-compat)".into()));
    }
    let mut files = Vec::with_capacity(spec.files.len());
    for (dest, src) in &spec.files {
        let (size, sha256) = hash_file(src).map_err(UpdateError::io("reading", src))?;
        files.push(FileEntry { path: dest.clone(), size, sha256, executable: is_executable(dest, src) });
    }
    let manifest = Manifest {
        format: FORMAT.into(),
        version: spec.version.clone(),
        boards: spec.boards.clone(),
        description: spec.description.clone(),
        files,
        acceptance: spec.acceptance.clone(),
    };
    manifest.validate().map_err(|e| UpdateError::Bundle(format!("manifest: {e}")))?;
    let bytes = serde_json::to_vec_pretty(&manifest).expect("manifest serializes");
    let io = |e| UpdateError::Io { what: "writing", path: PathBuf::from("the bundle"), source: e };
    write_head(out, &bytes, key).map_err(io)?;
    let mut progress = Progress::new(format!("bundle {}", spec.version), manifest.total_size());
    let mut buf = vec![0u8; 1 << 16];
    for ((_, src), entry) in spec.files.iter().zip(&manifest.files) {
        let mut f = File::open(src).map_err(UpdateError::io("opening", src))?;
        let mut h = Sha256::new();
        let mut left = entry.size;
        while left > 0 {
            let want = left.min(buf.len() as u64) as usize;
            let n = f.read(&mut buf[..want]).map_err(UpdateError::io("reading", src))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(io)?;
            left -= n as u64;
            progress.advance(n as u64);
        }
        if left > 0
            || f.read(&mut buf[..1]).map_err(UpdateError::io("reading", src))? > 0
            || hex(&h.finalize()) != entry.sha256
        {
            return Err(UpdateError::Bundle(format!(
                "file {}: {} changed while the bundle was built",
                entry.path,
                src.display()
            )));
        }
        progress.file_done(&entry.path, entry.size);
    }
    out.flush().map_err(io)?;
    progress.finish();
    Ok(manifest)
}

/// The slot's binary is always executable; other files keep their source's execute bit.
fn is_executable(dest: &str, src: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    dest == super::manifest::BINARY
        || std::fs::metadata(src).is_ok_and(|m| m.permissions().mode() & 0o111 != 0)
}

/// Parses `DEST=SRC` (`bin/sideline=target/release/sideline`).
pub fn parse_file_arg(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((dest, src)) if !dest.is_empty() && !src.is_empty() => {
            Ok((dest.to_string(), PathBuf::from(src)))
        }
        _ => Err(format!("`{s}` is not DEST=SRC (e.g. bin/sideline=target/release/sideline)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::update::bundle::{copy_file, expect_end, read_head};

    #[test]
    fn a_built_bundle_reads_back_and_keeps_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let (bin, model) = (tmp.path().join("sideline"), tmp.path().join("m.onnx"));
        std::fs::write(&bin, vec![7u8; 200_000]).unwrap();
        std::fs::write(&model, b"model").unwrap();
        let spec = BuildSpec {
            version: Version::parse("3.1").unwrap(),
            boards: vec!["sim".into()],
            description: "test".into(),
            files: vec![("bin/sideline".into(), bin), ("models/m.onnx".into(), model)],
            acceptance: None,
        };
        let key = SigningKey::from_bytes(&[3; 32]);
        let mut out = Vec::new();
        let m = build(&spec, &key, &mut out).unwrap();
        assert!(m.files[0].executable && !m.files[1].executable);
        let mut r = std::io::BufReader::new(&out[..]);
        let head = read_head(&mut r, &[key.verifying_key()]).unwrap();
        let mut p = Progress::quiet();
        for f in &head.manifest.files {
            copy_file(&mut r, f, &mut std::io::sink(), &mut p).unwrap();
        }
        expect_end(&mut r).unwrap();
    }

    #[test]
    fn file_arguments_and_empty_boards() {
        assert_eq!(parse_file_arg("a/b=c=d").unwrap(), ("a/b".into(), PathBuf::from("c=d")));
        assert!(parse_file_arg("nodest").is_err());
        assert!(parse_file_arg("=src").is_err());
        let spec = BuildSpec {
            version: Version::parse("1").unwrap(),
            boards: vec![],
            description: String::new(),
            files: vec![],
            acceptance: None,
        };
        let err = build(&spec, &SigningKey::from_bytes(&[3; 32]), &mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("--board-compat"), "{err}");
    }
}
