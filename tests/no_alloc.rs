//! Steady state allocates nothing per frame on the decision thread: the real models (detector
//! and pose on onnxruntime), tracking, rules and event hand-off, on 400 frames of the sample clip,
//! counted by a global allocator that counts per thread.

mod common;

use std::sync::atomic::AtomicBool;

use sideline::pipeline::{self, RunOptions};
use sideline::recorder::EventsDest;
use sideline::telemetry::alloc::{self, CountingAlloc};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

static STOP: AtomicBool = AtomicBool::new(false);

#[test]
fn no_allocation_per_frame_after_warm_up() {
    common::ort_env();
    // The counter counts: this thread's own allocation shows up.
    let before = alloc::thread_allocs();
    let v = std::hint::black_box(vec![1u8; 64]);
    assert!(alloc::installed() && alloc::thread_allocs() > before, "counting allocator not active");
    drop(v);

    let dir = tempfile::tempdir().unwrap();
    let board = common::load_board(&common::sim_profile(dir.path(), |t| t));
    // With an events file, so every detection crosses the hand-off to the recorder too.
    let events = EventsDest::File(dir.path().join("events.jsonl"));
    let opts = RunOptions { max_frames: Some(400), events: Some(events), ..RunOptions::default() };
    let summary = pipeline::run(&board, &opts, &STOP).unwrap();
    assert_eq!(summary.frames, 400);
    assert!(summary.alerts_raised > 0, "the run went through alerts too");
    assert_eq!(summary.allocs_per_frame, Some(0.0), "allocations per frame over 350 frames after warm-up");
    let written = std::fs::read_to_string(dir.path().join("events.jsonl")).unwrap();
    assert!(written.lines().filter(|l| l.contains("\"type\":\"detection\"")).count() > 1000);
}
