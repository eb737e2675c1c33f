//! The GPU configuration path on a machine without a GPU: a board that asks for TensorRT or
//! CUDA must refuse to start with a clear error (never run on the CPU instead), and
//! `sideline models build` must say why it cannot build engines. The CPU-only onnxruntime that
//! scripts/setup installs is exactly the library a misconfigured device would load.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn board(dir: &Path, accelerator: &str) -> PathBuf {
    let cache = dir.join("engines");
    common::sim_profile(dir, |text| {
        let text = text.replace("[inference]\n", &format!("[inference]\naccelerator = \"{accelerator}\"\n"));
        assert!(text.contains("accelerator"), "board/sim.toml has an [inference] table");
        format!("{text}\n[inference.tensorrt]\ncache_dir = \"{}\"\nprecision = \"int8\"\n", cache.display())
    })
}

fn sideline(args: &[&str]) -> (bool, String, String) {
    common::ort_env();
    let out = Command::new(env!("CARGO_BIN_EXE_sideline")).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_tensorrt_board_refuses_to_start_on_a_cpu_only_onnxruntime() {
    let dir = tempfile::tempdir().unwrap();
    let b = board(dir.path(), "tensorrt");
    // `check` loads the models as the device would, so it catches this before a deployment.
    let (ok, _, err) = sideline(&["check", "--board", b.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("accelerator tensorrt") && err.contains("TensorrtExecutionProvider"), "{err}");

    let (ok, out, err) = sideline(&["run", "--board", b.to_str().unwrap(), "--no-pace", "--max-frames", "5"]);
    assert!(!ok, "must not run: {out}{err}");
    assert!(err.contains("TensorrtExecutionProvider"), "names the missing provider: {err}");
    assert!(err.contains("libonnxruntime"), "names the library it loaded: {err}");
    assert!(err.contains("centernet.onnx"), "names the model: {err}");
    assert!(!err.contains("frames decided") && !out.contains("frames decided"), "no frame ran: {err}");

    let (ok, _, err) = sideline(&["models", "build", "--board", b.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("building engines") && err.contains("TensorrtExecutionProvider"), "{err}");
    // Nothing was built, so nothing can be mistaken for an engine later.
    let cache = dir.path().join("engines");
    let built = std::fs::read_dir(&cache).map(|d| d.flatten().count()).unwrap_or(0);
    assert_eq!(built, 0, "empty engine cache {}", cache.display());
}

#[test]
fn a_cuda_board_refuses_to_start_on_a_cpu_only_onnxruntime() {
    let dir = tempfile::tempdir().unwrap();
    let b = board(dir.path(), "cuda");
    let (ok, out, err) = sideline(&["run", "--board", b.to_str().unwrap(), "--no-pace", "--max-frames", "5"]);
    assert!(!ok, "must not run: {out}{err}");
    assert!(err.contains("CUDAExecutionProvider") && err.contains("accelerator = \"cpu\""), "{err}");
}

#[test]
fn models_build_on_a_cpu_board_says_there_is_nothing_to_build() {
    let dir = tempfile::tempdir().unwrap();
    let b = board(dir.path(), "cpu");
    let (ok, _, err) = sideline(&["models", "build", "--board", b.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("on the CPU") && err.contains("no engines to build"), "{err}");
}

#[test]
fn a_gpu_board_with_a_tract_model_is_rejected_by_check() {
    let dir = tempfile::tempdir().unwrap();
    let b = board(dir.path(), "tensorrt");
    let text = std::fs::read_to_string(&b).unwrap();
    let text = text.replacen("backend = \"ort\"", "backend = \"tract\"", 1);
    std::fs::write(&b, text).unwrap();
    let (ok, _, err) = sideline(&["check", "--board", b.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("models.detector.backend") && err.contains("CPU only"), "{err}");
}
