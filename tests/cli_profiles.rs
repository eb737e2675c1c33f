//! `sideline check` and `sideline run` on good and broken board profiles: good ones pass, every
//! broken one fails with the file, line and field in the message, and nothing panics.

mod common;

use std::path::Path;
use std::process::{Command, Output};

fn sideline(args: &[&str], board: &Path) -> Output {
    common::ort_env();
    Command::new(env!("CARGO_BIN_EXE_sideline")).args(args).arg("--board").arg(board).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs `check` on sim.toml edited by `edit`; expects failure naming `line` and `field`.
fn expect_rejected(edit: impl FnOnce(String) -> String, field: &str, message: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let board = common::sim_profile(dir.path(), edit);
    let text = std::fs::read_to_string(&board).unwrap();
    for cmd in [&["check"][..], &["run", "--no-pace", "--max-frames", "1"][..]] {
        let out = sideline(cmd, &board);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{cmd:?} must fail cleanly:\n{err}");
        assert!(!err.contains("panicked"), "{err}");
        let loc = format!("{}:", board.display());
        assert!(err.contains(&loc), "{cmd:?}: no file name in:\n{err}");
        assert!(err.contains(field), "{cmd:?}: no field `{field}` in:\n{err}");
        assert!(err.contains(message), "{cmd:?}: no `{message}` in:\n{err}");
        // The reported line really holds the offending text.
        let line: usize = err
            .lines()
            .find(|l| l.contains(&loc) && l.contains(field))
            .and_then(|l| l.split(&loc).nth(1)?.split(':').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no line number in:\n{err}"));
        let key = field.rsplit(['.', ']']).next().unwrap().trim_start_matches('[');
        let key = if key.is_empty() { field } else { key };
        let src = text.lines().nth(line - 1).unwrap_or("");
        assert!(src.contains(key), "line {line} `{src}` does not hold `{key}` ({err})");
    }
    stderr(&sideline(&["check"], &board))
}

#[test]
fn sim_profile_checks_clean() {
    let out = sideline(&["check"], &common::repo().join("board/sim.toml"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(text.contains("detector:") && text.contains("tower_0/detections"), "{text}");
    assert!(text.contains("pose:") && text.contains("OK: "), "{text}");
}

#[test]
fn jetson_draft_profiles_parse_and_validate() {
    for name in ["jetson-orin-nano.toml", "jetson-agx-orin.toml"] {
        let path = common::repo().join("board").join(name);
        let board = common::load_board(&path);
        assert!(board.cameras.iter().all(|c| c.kind == sideline::config::CameraKind::V4l2), "{name}");
        let out = sideline(&["check"], &path);
        assert!(out.status.success(), "{name}: {}", stderr(&out));
    }
}

#[test]
fn bad_toml_syntax() {
    expect_rejected(|t| t.replace("fps = 10.0", "fps = = 10.0"), "cameras[0].fps", "extra `=`");
}

#[test]
fn unknown_field() {
    let err = expect_rejected(
        |t| t.replace("score_threshold = 0.45", "score_treshold = 0.45"),
        "models.detector.score_treshold",
        "unknown field `score_treshold`",
    );
    assert!(err.contains("score_threshold"), "the message lists the valid names: {err}");
}

#[test]
fn missing_model_file() {
    expect_rejected(
        |t| t.replace("models/centernet.onnx", "models/nope.onnx"),
        "models.detector.path",
        "no such model file",
    );
}

#[test]
fn polygon_with_two_points() {
    expect_rejected(
        |t| {
            t.replace("polygon = [[540, 175], [700, 105], [768, 100], [768, 175], [700, 190], [690, 250], [560, 250]]", "polygon = [[540, 175], [700, 105]]")
        },
        "rules.zone_incursion[0].polygon",
        "at least 3 points",
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let board = common::sim_profile(dir.path(), |t| {
        t.replace("outputs = [\"log\"]\ncooldown_s = 30", "outputs = [\"siren\"]\ncooldown_s = 30")
            .replace("fps = 10.0", "fps = 0.0")
            .replace("input = [512, 384]", "input = [500, 384]")
    });
    let err = stderr(&sideline(&["check"], &board));
    for want in [
        "rules.zone_incursion[0].outputs[0]: no output named `siren`",
        "cameras[0].fps",
        "models.pose.input",
        "3 problems",
    ] {
        assert!(err.contains(want), "missing `{want}` in:\n{err}");
    }
}

#[test]
fn corrupt_model_and_missing_clip_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.onnx");
    std::fs::write(&junk, b"this is not a protobuf").unwrap();
    let board = common::sim_profile(dir.path(), |t| {
        t.replace(&format!("{}/models/centernet.onnx", common::repo().display()), &junk.display().to_string())
    });
    let out = sideline(&["check"], &board);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("junk.onnx") && err.contains("cannot load model"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    // The pose model where the detector belongs: a clear mismatch, not a crash.
    let board = common::sim_profile(dir.path(), |t| {
        t.replacen("models/centernet.onnx", "models/movenet-multipose.onnx", 1)
    });
    let err = stderr(&sideline(&["check"], &board));
    assert!(err.contains("movenet-multipose.onnx: model does not match"), "{err}");

    let board =
        common::sim_profile(dir.path(), |t| t.replace(".cache/media/vtest.y4m", ".cache/media/none.y4m"));
    let err = stderr(&sideline(&["check"], &board));
    assert!(err.contains("cameras[0].source") && err.contains("no such clip"), "{err}");
}

#[test]
fn class_threshold_for_a_class_not_detected() {
    expect_rejected(
        |t| {
            t.replace(
                r#"class_thresholds = { "sports ball" = 0.7 }"#,
                r#"class_thresholds = { "cat" = 0.7 }"#,
            )
        },
        "models.detector.class_thresholds.cat",
        "is not in models.detector.classes",
    );
}

#[test]
fn sync_section_problems_are_named() {
    let err = expect_rejected(
        |t| {
            format!(
                "{t}\n[sync]\nhost = \"broker.example\"\nca = \"/nonexistent/ca.pem\"\ncert = \"/nonexistent/c.pem\"\n\
                 key = \"/nonexistent/k.pem\"\nrulepack_keys = [\"not-a-key\"]\n"
            )
        },
        "sync.cert",
        "no such file",
    );
    assert!(err.contains("sync.rulepack_keys[0]"), "{err}");
}

#[test]
fn sync_with_unreadable_certificates_fails_check() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["ca.pem", "c.pem", "k.pem"] {
        std::fs::write(dir.path().join(f), "not PEM").unwrap();
    }
    let d = dir.path().display().to_string();
    let board = common::sim_profile(dir.path(), |t| {
        format!("{t}\n[sync]\nhost = \"b\"\nca = \"{d}/ca.pem\"\ncert = \"{d}/c.pem\"\nkey = \"{d}/k.pem\"\n")
    });
    let out = sideline(&["check"], &board);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("ca.pem") && err.contains("no PEM certificate"), "{err}");
}
