//! Signed rule packs: new `[rules]` sent down to a running device.
//!
//! Rules change more often than hardware (a new pitch layout, a tighter player-down time), and a
//! device at the field must not need a person with a laptop for that. A pack carries only
//! `[rules]`; the device accepts it only if it is signed by a key in its own profile
//! (`sync.rulepack_keys`), meant for its board, newer than what it runs, and passes exactly the
//! checks `sideline check` applies to a profile. A rejected pack leaves the running rules alone
//! and its [`PackError`] says what is wrong and where, for the fleet console.
//!
//! Envelope (JSON): `{"format":"sideline-rulepack/1","pack":"<TOML>","signature":"<base64>"}`,
//! the ed25519 signature being over the UTF-8 bytes of `pack`. The pack text travels verbatim so
//! the signed bytes are exactly the bytes parsed, and problems can be located in it.

use std::num::NonZeroU64;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use super::locate::{self, DocIndex};
use super::{Board, Problem, Rules};

/// The envelope's `format`; a new layout gets a new name rather than a guess.
pub const FORMAT: &str = "sideline-rulepack/1";

/// A verified, parsed rule pack.
#[derive(Debug, Clone)]
pub struct RulePack {
    /// Monotonic: a device accepts only a version above the one it runs.
    pub version: u64,
    pub description: String,
    pub rules: Rules,
    /// The signed pack text, as received.
    pub text: String,
}

/// Why a pack was refused. [`PackError::kind`] names the case for the rejection report; the
/// message says what is wrong and where (`pack:line:column: field: ...` inside the pack text).
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    /// The envelope is not the expected JSON, or the pack text does not parse against the schema.
    #[error("malformed rule pack: {0}")]
    Malformed(String),
    #[error("rule pack refused: this device has no sync.rulepack_keys, so it accepts no packs")]
    NoKeys,
    #[error(
        "bad signature: the envelope's `signature` does not verify against any key in sync.rulepack_keys"
    )]
    BadSignature,
    #[error("wrong board: pack:{line}:{column}: boards: {boards:?} does not list this board `{board}`")]
    WrongBoard { board: String, boards: Vec<String>, line: usize, column: usize },
    #[error("stale rule pack: pack:{line}:{column}: version: {version} is not newer than the running version {current}")]
    Stale { version: u64, current: u64, line: usize, column: usize },
    #[error("{}", render_invalid(problems))]
    Invalid { problems: Vec<Problem> },
}

impl PackError {
    /// Stable name of the case, for the rejection report sent upstream.
    pub fn kind(&self) -> &'static str {
        match self {
            PackError::Malformed(_) => "malformed",
            PackError::NoKeys => "no_keys",
            PackError::BadSignature => "bad_signature",
            PackError::WrongBoard { .. } => "wrong_board",
            PackError::Stale { .. } => "stale",
            PackError::Invalid { .. } => "invalid",
        }
    }
}

fn located(p: &Problem) -> String {
    format!("pack:{}:{}: {}: {}", p.line, p.column, p.field, p.message)
}

fn render_invalid(problems: &[Problem]) -> String {
    let s = if problems.len() == 1 { "" } else { "s" };
    let mut out = format!("invalid rule pack ({} problem{s})", problems.len());
    for p in problems {
        out.push_str("\n  ");
        out.push_str(&located(p));
    }
    out
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    format: String,
    pack: String,
    signature: String,
}

/// The pack text's schema.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PackToml {
    version: NonZeroU64,
    #[serde(default)]
    boards: Option<Vec<String>>,
    #[serde(default)]
    description: String,
    rules: Rules,
}

/// Signs `pack_text` and returns the envelope (JSON bytes).
pub fn sign(pack_text: &str, key: &SigningKey) -> Vec<u8> {
    let signature = BASE64.encode(key.sign(pack_text.as_bytes()).to_bytes());
    let envelope = Envelope { format: FORMAT.to_string(), pack: pack_text.to_string(), signature };
    serde_json::to_vec(&envelope).expect("three strings always serialize")
}

/// Parses pack text against the schema only (no signature, board or validation), so a pack can
/// be checked before it is signed.
pub fn parse(pack_text: &str) -> Result<RulePack, PackError> {
    parse_text(pack_text).map(|(pack, _, _)| pack)
}

/// Verifies, parses and validates; returns the pack and a copy of `board` with its rules replaced.
///
/// Checks run cheapest-to-trust first: nothing in the pack text is looked at before the
/// signature holds. `current_version` is the version of the pack now running, if any.
pub fn open(
    bytes: &[u8],
    keys: &[VerifyingKey],
    board: &Board,
    current_version: Option<u64>,
) -> Result<(RulePack, Board), PackError> {
    let malformed = PackError::Malformed;
    let env: Envelope =
        serde_json::from_slice(bytes).map_err(|e| malformed(format!("envelope is not valid JSON: {e}")))?;
    if env.format != FORMAT {
        return Err(malformed(format!("envelope format `{}` is not `{FORMAT}`", env.format)));
    }
    if keys.is_empty() {
        return Err(PackError::NoKeys);
    }
    let sig = BASE64
        .decode(env.signature.trim())
        .map_err(|e| malformed(format!("envelope signature is not base64: {e}")))?;
    let sig = Signature::from_slice(&sig).map_err(|_| {
        malformed(format!("envelope signature is {} bytes, an ed25519 one has 64", sig.len()))
    })?;
    // Strict: refuses malleable signatures and weak keys, which plain `verify` lets through.
    if !keys.iter().any(|k| k.verify_strict(env.pack.as_bytes(), &sig).is_ok()) {
        return Err(PackError::BadSignature);
    }

    let text = env.pack;
    let (pack, boards, index) = parse_text(&text)?;
    let at = |field: &str| {
        let p = index.problem_at(&text, field, String::new());
        (p.line, p.column)
    };
    if let Some(boards) = boards {
        if !boards.contains(&board.board.name) {
            let (line, column) = at("boards");
            return Err(PackError::WrongBoard { board: board.board.name.clone(), boards, line, column });
        }
    }
    if let Some(current) = current_version.filter(|&c| pack.version <= c) {
        let (line, column) = at("version");
        return Err(PackError::Stale { version: pack.version, current, line, column });
    }

    // The same checks as `sideline check`, on the board as it would run; the rest of the profile
    // is the device's business, so only findings about the rules count against the pack.
    let mut updated = board.clone();
    updated.rules = pack.rules.clone();
    let problems: Vec<Problem> = super::validate::check(&updated)
        .into_iter()
        .filter(|(field, _)| field == "rules" || field.starts_with("rules.") || field.starts_with("rules["))
        .map(|(field, message)| index.problem_at(&text, &field, message))
        .collect();
    if !problems.is_empty() {
        return Err(PackError::Invalid { problems });
    }
    Ok((pack, updated))
}

/// Parses pack text; also returns its `boards` and its index, to locate later findings.
fn parse_text(text: &str) -> Result<(RulePack, Option<Vec<String>>, DocIndex), PackError> {
    let index = DocIndex::parse(text);
    let malformed = |p: Problem| PackError::Malformed(located(&p));
    let de =
        toml::Deserializer::parse(text).map_err(|e| malformed(index.problem_from_toml(text, &e, None)))?;
    let raw: PackToml = serde_path_to_error::deserialize(de).map_err(|e| {
        let field = locate::dotted(e.path());
        malformed(index.problem_from_toml(text, e.inner(), Some(field)))
    })?;
    let pack = RulePack {
        version: raw.version.get(),
        description: raw.description,
        rules: raw.rules,
        text: text.to_string(),
    };
    Ok((pack, raw.boards, index))
}

/// Parses a base64 ed25519 public key, as written in `sync.rulepack_keys`.
pub fn parse_public_key(text: &str) -> Result<ed25519_dalek::VerifyingKey, String> {
    let bytes = BASE64.decode(text.trim()).map_err(|e| format!("not base64: {e}"))?;
    let bytes: [u8; 32] =
        bytes.try_into().map_err(|b: Vec<u8>| format!("{} bytes, an ed25519 public key has 32", b.len()))?;
    ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|e| format!("not an ed25519 public key: {e}"))
}

/// Parses a base64 ed25519 signing key: the 32-byte seed, as `sideline rulepack keygen` writes it.
pub fn parse_signing_key(text: &str) -> Result<SigningKey, String> {
    let bytes = BASE64.decode(text.trim()).map_err(|e| format!("not base64: {e}"))?;
    let seed: [u8; 32] =
        bytes.try_into().map_err(|b: Vec<u8>| format!("{} bytes, an ed25519 signing key has 32", b.len()))?;
    Ok(SigningKey::from_bytes(&seed))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const GOOD: &str = r#"version = 2
boards = ["sim"]
description = "goal mouth"

[[rules.zone_incursion]]
name = "goal"
polygon = [[10, 10], [100, 10], [100, 100]]
severity = "critical"
outputs = ["log"]
"#;

    fn board() -> Board {
        Board::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("board/sim.toml"))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7; 32])
    }

    fn open_text(text: &str, current: Option<u64>) -> Result<(RulePack, Board), PackError> {
        open(&sign(text, &key()), &[key().verifying_key()], &board(), current)
    }

    fn err(r: Result<(RulePack, Board), PackError>, kind: &str) -> PackError {
        match r {
            Ok((p, _)) => panic!("accepted version {}, expected {kind}", p.version),
            Err(e) => {
                assert_eq!(e.kind(), kind, "{e}");
                e
            }
        }
    }

    /// 1-based line of the first line of `text` containing `needle`.
    fn line_of(text: &str, needle: &str) -> usize {
        text.lines().position(|l| l.contains(needle)).expect("needle in text") + 1
    }

    #[test]
    fn accepts_good_pack_and_replaces_rules() {
        let (pack, updated) = open_text(GOOD, Some(1)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((pack.version, pack.description.as_str(), pack.text.as_str()), (2, "goal mouth", GOOD));
        let zones = &updated.rules.zone_incursion;
        assert_eq!(zones.len(), 1);
        assert_eq!((zones[0].name.as_str(), zones[0].polygon[2]), ("goal", [100.0, 100.0]));
        assert!(updated.rules.player_down.is_empty() && updated.rules.whistle.is_empty());
        // Everything else is the device's own.
        assert_eq!(updated.board.name, "sim");
        assert_eq!(updated.cameras.len(), board().cameras.len());
        // No running version: any version is new.
        assert!(open_text(GOOD, None).is_ok());
    }

    #[test]
    fn any_listed_key_verifies() {
        let other = SigningKey::from_bytes(&[9; 32]);
        let keys = [other.verifying_key(), key().verifying_key()];
        assert!(open(&sign(GOOD, &key()), &keys, &board(), None).is_ok());
    }

    #[test]
    fn signing_key_round_trips() {
        let text = BASE64.encode(key().to_bytes());
        assert_eq!(parse_signing_key(&format!("{text}\n")).unwrap().to_bytes(), key().to_bytes());
        let public = BASE64.encode(key().verifying_key().to_bytes());
        assert_eq!(parse_public_key(&public).unwrap(), key().verifying_key());
        assert!(parse_signing_key("c2hvcnQ=").unwrap_err().contains("5 bytes"));
        assert!(parse_signing_key("not base64!").is_err());
    }

    #[test]
    fn tampered_pack_is_bad_signature() {
        let mut env: serde_json::Value = serde_json::from_slice(&sign(GOOD, &key())).unwrap();
        env["pack"] = GOOD.replace("[100, 100]", "[700, 500]").into();
        let bytes = serde_json::to_vec(&env).unwrap();
        let e = err(open(&bytes, &[key().verifying_key()], &board(), None), "bad_signature");
        assert!(e.to_string().contains("signature"), "{e}");
    }

    #[test]
    fn other_key_is_bad_signature() {
        let other = SigningKey::from_bytes(&[9; 32]);
        err(open(&sign(GOOD, &other), &[key().verifying_key()], &board(), None), "bad_signature");
    }

    #[test]
    fn same_or_older_version_is_stale() {
        for current in [2, 3, u64::MAX] {
            let e = err(open_text(GOOD, Some(current)), "stale");
            assert!(matches!(e, PackError::Stale { version: 2, line: 1, .. }), "{e:?}");
            assert!(e.to_string().contains("pack:1:1: version"), "{e}");
        }
    }

    #[test]
    fn malformed_envelopes() {
        let keys = [key().verifying_key()];
        let b = board();
        let sig = BASE64.encode([0u8; 64]);
        let cases: [(Vec<u8>, &str); 5] = [
            (b"{\"format\": ".to_vec(), "not valid JSON"),
            (
                serde_json::to_vec(&serde_json::json!({"format": "x/2", "pack": GOOD, "signature": sig}))
                    .unwrap(),
                "x/2",
            ),
            (
                serde_json::to_vec(&serde_json::json!({"format": FORMAT, "pack": GOOD, "signature": "%%"}))
                    .unwrap(),
                "not base64",
            ),
            (
                serde_json::to_vec(&serde_json::json!({"format": FORMAT, "pack": GOOD, "signature": "AAAA"}))
                    .unwrap(),
                "3 bytes",
            ),
            (
                serde_json::to_vec(
                    &serde_json::json!({"format": FORMAT, "pack": GOOD, "signature": sig, "x": 1}),
                )
                .unwrap(),
                "unknown field `x`",
            ),
        ];
        for (bytes, says) in cases {
            let e = err(open(&bytes, &keys, &b, None), "malformed");
            assert!(e.to_string().contains(says), "{e}");
        }
    }

    #[test]
    fn toml_syntax_error_is_malformed_with_line() {
        let text = GOOD.replace("severity = \"critical\"", "severity = = \"critical\"");
        let e = err(open_text(&text, None), "malformed");
        let line = line_of(&text, "severity");
        assert!(e.to_string().contains(&format!("pack:{line}:")), "{e}");
    }

    #[test]
    fn unknown_field_is_malformed_naming_it() {
        let text = GOOD.replace("polygon =", "polgon =");
        let e = err(open_text(&text, None), "malformed");
        let line = line_of(&text, "polgon");
        let msg = e.to_string();
        assert!(msg.contains(&format!("pack:{line}:")), "{msg}");
        assert!(
            msg.contains("rules.zone_incursion[0].polgon") && msg.contains("unknown field `polgon`"),
            "{msg}"
        );
    }

    #[test]
    fn version_zero_is_malformed() {
        let e = err(open_text(&GOOD.replace("version = 2", "version = 0"), None), "malformed");
        assert!(e.to_string().contains("pack:1:") && e.to_string().contains("version"), "{e}");
    }

    #[test]
    fn two_point_polygon_is_invalid_at_its_line() {
        let text = GOOD.replace("[[10, 10], [100, 10], [100, 100]]", "[[10, 10], [100, 10]]");
        let PackError::Invalid { problems } = err(open_text(&text, None), "invalid") else { unreachable!() };
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].field, "rules.zone_incursion[0].polygon");
        assert_eq!(problems[0].line, line_of(&text, "polygon"));
        let msg = PackError::Invalid { problems }.to_string();
        assert!(
            msg.contains(&format!("pack:{}:1: rules.zone_incursion[0].polygon", line_of(&text, "polygon")))
        );
    }

    #[test]
    fn validation_sees_the_board() {
        // `siren` is no output of sim's, and a point off its 768x576 frame.
        let text = GOOD.replace("[\"log\"]", "[\"siren\"]").replace("[100, 100]", "[900, 100]");
        let PackError::Invalid { problems } = err(open_text(&text, None), "invalid") else { unreachable!() };
        let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["rules.zone_incursion[0].outputs[0]", "rules.zone_incursion[0].polygon[2]"]);
    }

    #[test]
    fn other_board_is_wrong_board() {
        let e = err(open_text(&GOOD.replace("[\"sim\"]", "[\"other\"]"), None), "wrong_board");
        assert!(e.to_string().contains("pack:2:1: boards") && e.to_string().contains("`sim`"), "{e}");
        // Without `boards` the pack fits any board.
        assert!(open_text(&GOOD.replace("boards = [\"sim\"]\n", ""), None).is_ok());
    }

    #[test]
    fn no_keys_refuses() {
        err(open(&sign(GOOD, &key()), &[], &board(), None), "no_keys");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let keys = [key().verifying_key()];
        let b = board();
        let mut cases: Vec<Vec<u8>> = vec![
            vec![],
            vec![0xff, 0xfe, 0x00, 0x80],
            b"null".to_vec(),
            b"[]".to_vec(),
            b"{\"pack\":1}".to_vec(),
        ];
        // Deterministic pseudo-random bytes, and each prefix of a real envelope.
        let mut x: u32 = 0x9e37_79b9;
        cases.push(
            (0..4096)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect(),
        );
        let good = sign(GOOD, &key());
        cases.extend((0..good.len()).step_by(7).map(|n| good[..n].to_vec()));
        for bytes in cases {
            assert!(open(&bytes, &keys, &b, None).is_err(), "{:?}", String::from_utf8_lossy(&bytes));
        }
        // Signed garbage gets past the signature and must still be refused cleanly.
        for text in ["", "\u{0}", "[rules", "version = 1\nrules = 3", "version = -1\n[rules]"] {
            err(open_text(text, None), "malformed");
        }
    }
}
