//! Model selection by budget, end to end: `sideline bench --variants-only` measures every
//! detector variant and saves the latency profile; `sideline run` then starts on the most
//! accurate variant whose measured p99 fits the detect budget, and says which and why.
//!
//! The run tests write the profile themselves (through the library's own types and keys), so
//! which variant wins is decided by the figures in the test, not by this machine's mood.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use sideline::config::{Accelerator, Backend};
use sideline::infer::select::{LatencyProfile, Measurement, VariantKey, PROFILE_FILE, PROFILE_SCHEMA};

/// The INT8 detector is the cheaper variant of the fp32 one.
fn int8() -> PathBuf {
    let p = common::repo().join("models/centernet.int8.onnx");
    assert!(p.is_file(), "{} is missing (models/MODELS.md says how it is made)", p.display());
    p
}

/// board/sim.toml with an INT8 variant and the given detect budget; pose off (not needed).
fn board(dir: &Path, detect_ms: u32) -> PathBuf {
    common::sim_profile(dir, |text| {
        let budgets = "stage_budget_ms = { preprocess = 10, detect = 50, pose = 40, rules = 2, output = 1 }";
        assert!(text.contains(budgets), "board/sim.toml's budgets changed");
        let text = text.replace(
            budgets,
            &format!("stage_budget_ms = {{ preprocess = 10, detect = {detect_ms}, pose = 40, rules = 2, output = 1 }}"),
        );
        let anchor = "class_thresholds = { \"sports ball\" = 0.7 }\n";
        assert!(text.contains(anchor));
        text.replace(
            anchor,
            &format!("{anchor}\n[[models.detector.variants]]\nname = \"int8\"\npath = \"{}\"\ninput = [512, 512]\n", int8().display()),
        )
    })
}

fn sideline(args: &[&str]) -> (bool, String, String) {
    common::ort_env();
    let out = Command::new(env!("CARGO_BIN_EXE_sideline")).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn key(path: &Path) -> VariantKey {
    VariantKey::of(path, [512, 512], Backend::Ort, Accelerator::Cpu).unwrap()
}

/// The variant line `sideline run` logs at start.
fn chosen(board: &Path) -> String {
    let (ok, out, err) =
        sideline(&["run", "--board", board.to_str().unwrap(), "--no-pace", "--max-frames", "3"]);
    assert!(ok, "{out}{err}");
    err.lines()
        .find(|l| l.contains("detector variant"))
        .unwrap_or_else(|| panic!("no variant line: {err}"))
        .to_string()
}

#[test]
fn bench_measures_every_variant_and_saves_the_profile() {
    let dir = tempfile::tempdir().unwrap();
    let b = board(dir.path(), 50);
    let (ok, out, err) = sideline(&["bench", "--board", b.to_str().unwrap(), "--variants-only"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("primary") && out.contains("int8"), "{out}");
    let saved =
        LatencyProfile::load(&dir.path().join("state").join(PROFILE_FILE)).unwrap().expect("profile saved");
    assert_eq!(saved.detector.iter().map(|m| m.variant.as_str()).collect::<Vec<_>>(), ["primary", "int8"]);
    assert_eq!(saved.detector[0].key, key(&common::repo().join("models/centernet.onnx")));
    assert_eq!(saved.detector[1].key, key(&int8()));
    for m in &saved.detector {
        assert!(m.runs >= 50 && m.p99_ms >= m.p50_ms && m.p50_ms > 0.0, "{m:?}");
    }
    // The run right after picks from these figures, whichever they are.
    let line = chosen(&b);
    assert!(line.contains("fits the 50.0 ms budget") || line.contains("no variant fits"), "{line}");
}

#[test]
fn different_budgets_start_different_variants() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let m = |variant: &str, path: &Path, p99: f64| Measurement {
        variant: variant.into(),
        key: key(path),
        p50_ms: p99 * 0.8,
        p99_ms: p99,
        runs: 60,
    };
    let profile = LatencyProfile {
        schema: PROFILE_SCHEMA.into(),
        machine: "test figures".into(),
        detector: vec![
            m("primary", &common::repo().join("models/centernet.onnx"), 40.0),
            m("int8", &int8(), 15.0),
        ],
    };
    profile.save(&state.join(PROFILE_FILE)).unwrap();
    for (budget, want) in [
        (50, "`primary`: p99 40.0 ms fits"),
        (20, "`int8`: p99 15.0 ms fits"),
        (5, "no variant fits the 5.0 ms budget: `int8` is the fastest"),
    ] {
        let b = board(dir.path(), budget);
        let line = chosen(&b);
        assert!(line.contains(want), "budget {budget} ms: {line}");
    }

    // Figures for another file are stale: they must not pick anything.
    let mut stale = profile.clone();
    stale.detector[0].key.file_sha = "0000000000000000".into();
    stale.detector[1].key.file_sha = "1111111111111111".into();
    stale.save(&state.join(PROFILE_FILE)).unwrap();
    let line = chosen(&board(dir.path(), 20));
    assert!(line.contains("measured none of these variants"), "{line}");
}
