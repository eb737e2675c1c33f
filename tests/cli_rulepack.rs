//! `sideline rulepack keygen | sign | check` end to end: a pack signed with a fresh key passes
//! `check` against a profile that lists the key, and a tampered, stale or invalid one is refused
//! with exit 1 and a message saying why and where.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const PACK: &str = r#"version = 2
boards = ["sim"]
description = "goal mouth"

[[rules.zone_incursion]]
name = "goal"
polygon = [[10, 10], [100, 10], [100, 100]]
severity = "critical"
outputs = ["log"]
"#;

fn sideline(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_sideline")).args(args).output().unwrap();
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    out
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A fresh key pair under `dir` and sim.toml with a `[sync]` section that trusts it.
fn setup(dir: &Path) -> (PathBuf, PathBuf) {
    let prefix = dir.join("ops");
    let out = sideline(&[&"rulepack", &"keygen", &"--out", &prefix]);
    assert!(out.status.success(), "{}", stderr(&out));
    let public = stdout(&out).trim().to_string();
    assert_eq!(std::fs::read_to_string(dir.join("ops.pub")).unwrap().trim(), public);
    for f in ["ca.pem", "cert.pem", "key.pem"] {
        std::fs::write(dir.join(f), "").unwrap();
    }
    let d = dir.display();
    let board = common::sim_profile(dir, |t| {
        t + &format!(
            "\n[sync]\nhost = \"localhost\"\nca = \"{d}/ca.pem\"\ncert = \"{d}/cert.pem\"\nkey = \"{d}/key.pem\"\n\
             rulepack_keys = [\"{public}\"]\n"
        )
    });
    (dir.join("ops.key"), board)
}

fn sign(dir: &Path, key: &Path, name: &str, text: &str) -> PathBuf {
    let pack = dir.join(format!("{name}.toml"));
    std::fs::write(&pack, text).unwrap();
    let signed = dir.join(format!("{name}.signed"));
    let out = sideline(&[&"rulepack", &"sign", &"--key", &key, &pack, &"--out", &signed]);
    assert!(out.status.success(), "{}", stderr(&out));
    signed
}

fn check(board: &Path, signed: &Path, extra: &[&str]) -> Output {
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"rulepack", &"check", &"--board", &board, &signed];
    args.extend(extra.iter().map(|a| a as &dyn AsRef<std::ffi::OsStr>));
    sideline(&args)
}

fn expect_refused(out: &Output, says: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "must be refused:\n{}{err}", stdout(out));
    for s in says {
        assert!(err.contains(s), "no `{s}` in:\n{err}");
    }
}

#[test]
fn keygen_sign_check_accepts_a_good_pack() {
    let dir = tempfile::tempdir().unwrap();
    let (key, board) = setup(dir.path());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);

    let signed = sign(dir.path(), &key, "good", PACK);
    let out = check(&board, &signed, &["--current-version", "1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let summary = stdout(&out);
    assert!(summary.contains("version 2") && summary.contains("1 zone_incursion"), "{summary}");

    expect_refused(&check(&board, &signed, &["--current-version", "2"]), &["stale", "version"]);
}

#[test]
fn keygen_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = setup(dir.path());
    let before = std::fs::read(&key).unwrap();
    let out = sideline(&[&"rulepack", &"keygen", &"--out", &dir.path().join("ops")]);
    expect_refused(&out, &["already exists"]);
    assert_eq!(std::fs::read(&key).unwrap(), before);
}

#[test]
fn sign_writes_the_envelope_to_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = setup(dir.path());
    let pack = dir.path().join("p.toml");
    std::fs::write(&pack, PACK).unwrap();
    let out = sideline(&[&"rulepack", &"sign", &"--key", &key, &pack]);
    assert!(out.status.success(), "{}", stderr(&out));
    let env: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!((env["format"].as_str(), env["pack"].as_str()), (Some("sideline-rulepack/1"), Some(PACK)));
}

#[test]
fn sign_refuses_a_malformed_pack() {
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = setup(dir.path());
    let pack = dir.path().join("typo.toml");
    std::fs::write(&pack, PACK.replace("severity", "severty")).unwrap();
    let signed = dir.path().join("typo.signed");
    let out = sideline(&[&"rulepack", &"sign", &"--key", &key, &pack, &"--out", &signed]);
    expect_refused(&out, &["typo.toml", "pack:8:1: rules.zone_incursion[0].severty"]);
    assert!(!signed.exists());
}

#[test]
fn tampered_pack_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (key, board) = setup(dir.path());
    let signed = sign(dir.path(), &key, "good", PACK);
    let text = std::fs::read_to_string(&signed).unwrap();
    assert!(text.contains("[100, 100]"));
    std::fs::write(&signed, text.replace("[100, 100]", "[700, 500]")).unwrap();
    expect_refused(&check(&board, &signed, &[]), &["good.signed", "bad signature"]);
}

#[test]
fn pack_from_an_unknown_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_, board) = setup(dir.path());
    let other = tempfile::tempdir().unwrap();
    let (other_key, _) = setup(other.path());
    let signed = sign(dir.path(), &other_key, "good", PACK);
    expect_refused(&check(&board, &signed, &[]), &["bad signature"]);
}

#[test]
fn invalid_zone_is_refused_at_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let (key, board) = setup(dir.path());
    let signed = sign(dir.path(), &key, "bad-zone", &PACK.replace(", [100, 100]]", "]"));
    expect_refused(
        &check(&board, &signed, &[]),
        &["invalid rule pack", "pack:7:1: rules.zone_incursion[0].polygon"],
    );
}
