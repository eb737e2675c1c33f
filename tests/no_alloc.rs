//! Steady state allocates nothing per frame on the decision thread: the real models (detector
//! and pose on onnxruntime), tracking, rules and event hand-off, on 400 frames of the sample clip,
//! counted by a global allocator that counts per thread. Likewise the voice detector per audio
//! chunk.

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

/// The voice detector (src/audio/vad.rs) re-frames chunks, runs earshot and the pitch FFTs, and
/// hands segments over from its own buffer: nothing is allocated per chunk, segments and the
/// buffer's compaction included.
#[test]
fn voice_detector_allocates_nothing_per_chunk() {
    use sideline::audio::vad::{VoiceDetector, VoiceEvent};
    use sideline::audio::{wav, AudioChunk};
    let path = common::repo().join(".cache/media/sounds/speech-medic.wav");
    let speech: Vec<i16> =
        wav::load_mono(&path, 16_000).unwrap().into_iter().map(|v| (v * 32767.0) as i16).collect();
    // Speech and silence, 5 times: 1 s segments, so the buffer fills and is compacted.
    let mut samples = Vec::new();
    for _ in 0..5 {
        samples.extend_from_slice(&speech);
        samples.extend(std::iter::repeat_n(0i16, 16_000));
    }
    let cfg: sideline::config::Voice =
        toml::from_str("name = \"voice\"\noutputs = [\"log\"]\nmax_segment_s = 1.0\n").unwrap();
    let mut det = VoiceDetector::new(&cfg, 16_000);
    assert!(alloc::installed(), "counting allocator not active");
    let mut chunk = AudioChunk { samples: Vec::with_capacity(512), ..Default::default() };
    let (mut segments, mut raised, mut heard) = (0, 0, 0i64);
    let mut allocs = 0;
    for (i, part) in samples.chunks(512).enumerate() {
        chunk.samples.clear();
        chunk.samples.extend_from_slice(part);
        chunk.ts = sideline::clock::MonoTime::from_nanos(i as u64 * 32_000_000);
        let before = alloc::thread_allocs();
        let event = det.push(&chunk, |s| {
            segments += 1;
            heard += s.samples.len() as i64;
        });
        // The first chunks warm up (tracing's first call, lazily made FFT twiddles, if any).
        if i >= 4 {
            allocs += alloc::thread_allocs() - before;
        }
        raised += matches!(event, Some(VoiceEvent::Started { .. })) as u32;
    }
    assert!(segments >= 10 && raised >= 5 && heard > 0, "{segments} segments, {raised} raised");
    assert_eq!(allocs, 0, "allocations while pushing {} chunks", samples.len() / 512);
}
