//! Speech-to-text latency after the end of an utterance.
//!
//! The device transcribes a voice segment once voice activity detection says it has ended, so
//! the latency from the end of the utterance to its text is the compute time of one
//! `SpeechToText::transcribe` call on the whole segment; nothing else is in the way. This
//! measures that call (p50 and max over several runs) on real clips from 0.5 s to 28.75 s,
//! against the target of a transcript within 300 ms of the end of an utterance.
//!
//! `cargo test --bench stt -- --bench` for the figures in BENCHMARKS.md (the test profile:
//! onnxruntime does the work, in its own optimised library). Under `cargo test` (no `--bench`
//! argument) it runs each clip once as a smoke test, so it cannot rot. Without the model files
//! it says so and exits, unless `CI` is set.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use sideline::audio::stt::{self, SpeechToText};

const TARGET: Duration = Duration::from_millis(300);

struct Clip {
    name: &'static str,
    /// Under `.cache/media/`.
    file: &'static str,
    /// Segment of the file, in seconds.
    from_s: f32,
    to_s: f32,
}

const CLIPS: [Clip; 8] = [
    Clip { name: "pyannote \"Hello.\"", file: "speech/pyannote-sample.wav", from_s: 6.68, to_s: 7.16 },
    Clip { name: "pyannote utterance", file: "speech/pyannote-sample.wav", from_s: 21.935, to_s: 23.978 },
    Clip { name: "speech-medic (espeak)", file: "sounds/speech-medic.wav", from_s: 0.0, to_s: f32::MAX },
    Clip { name: "speech-storm (espeak)", file: "sounds/speech-storm.wav", from_s: 0.0, to_s: f32::MAX },
    Clip {
        name: "speech-keywords (espeak)",
        file: "sounds/speech-keywords.wav",
        from_s: 0.0,
        to_s: f32::MAX,
    },
    Clip { name: "beckett", file: "speech/beckett.wav", from_s: 0.0, to_s: f32::MAX },
    Clip { name: "two_cities, part 2", file: "speech/two_cities.wav", from_s: 28.75, to_s: f32::MAX },
    Clip { name: "two_cities, part 1", file: "speech/two_cities.wav", from_s: 0.0, to_s: 28.75 },
];

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let runs = if full { 10 } else { 1 };
    let dir = common::repo().join(stt::DEFAULT_DIR);
    if !dir.join(stt::DECODER_FILE).is_file() {
        let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
        assert!(!ci, "CI is set and {} is missing: run scripts/setup", dir.display());
        println!("SKIP: {} is missing; scripts/setup makes it", dir.display());
        return;
    }
    common::ort_env();
    let settings = sideline::config::Inference::default();
    let library = sideline::infer::ort_engine::runtime_version(&settings).unwrap_or_else(|e| panic!("{e}"));
    println!(
        "speech-to-text latency ({})",
        if full { "full: 10 runs per clip" } else { "smoke run: 1 run per clip" }
    );
    println!(
        "machine: {}, {} cores, onnxruntime {library}, {} intra-op threads",
        cpu_model(),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        sideline::infer::thread_count(&settings),
    );

    let t = Instant::now();
    let mut model = SpeechToText::open(&dir, None).unwrap_or_else(|e| panic!("{e}"));
    println!("model load: {:.0} ms; load average before: {}", t.elapsed().as_secs_f64() * 1e3, load().trim());

    let segments: Vec<(&Clip, Vec<f32>)> = CLIPS.iter().map(|c| (c, segment(c))).collect();
    // The first call after loading pays onnxruntime's lazy set-up; the device pays it once.
    let first = model.transcribe(&segments[2].1).unwrap_or_else(|e| panic!("{e}"));
    println!("first call after load ({}): {:.0} ms", segments[2].0.name, first.compute.as_secs_f64() * 1e3);

    println!(
        "\n  {:<26} {:>7} {:>7} {:>9} {:>9} {:>9} {:>7}  within {} ms",
        "segment",
        "audio s",
        "tokens",
        "min ms",
        "p50 ms",
        "max ms",
        "RTF",
        TARGET.as_millis()
    );
    for (clip, samples) in &segments {
        let mut times = Vec::with_capacity(runs);
        let mut tokens = 0;
        for _ in 0..runs {
            let t = model.transcribe(samples).unwrap_or_else(|e| panic!("{}: {e}", clip.name));
            tokens = t.tokens;
            times.push(t.compute);
        }
        times.sort();
        let p50 = times[times.len() / 2];
        let max = times[times.len() - 1];
        let audio_s = samples.len() as f32 / stt::SAMPLE_RATE as f32;
        println!(
            "  {:<26} {:>7.2} {:>7} {:>9.0} {:>9.0} {:>9.0} {:>7.3}  {}",
            clip.name,
            audio_s,
            tokens,
            times[0].as_secs_f64() * 1e3,
            p50.as_secs_f64() * 1e3,
            max.as_secs_f64() * 1e3,
            p50.as_secs_f32() / audio_s,
            match (p50 <= TARGET, max <= TARGET) {
                (true, true) => "yes",
                (true, false) => "p50 only",
                _ => "no",
            }
        );
    }
    println!("load average after: {}", load().trim());
}

fn segment(clip: &Clip) -> Vec<f32> {
    let path: PathBuf = common::media(clip.file);
    let x = sideline::audio::wav::load_mono(&path, stt::SAMPLE_RATE).unwrap_or_else(|e| panic!("{e}"));
    let at = |s: f32| ((s as f64 * stt::SAMPLE_RATE as f64) as usize).min(x.len());
    x[at(clip.from_s)..at(clip.to_s)].to_vec()
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name")).map(|l| l.to_string()))
        .and_then(|l| l.split_once(':').map(|(_, v)| v.trim().to_string()))
        .unwrap_or_else(|| "unknown CPU".into())
}

/// The 1, 5 and 15 minute load averages: a busy machine stretches every figure.
fn load() -> String {
    std::fs::read_to_string("/proc/loadavg").unwrap_or_default()
}
