//! The spoken-keyword rule end to end: the real binary (`sideline run`) on the sim-audio board,
//! its microphone a WAV that says "Player down near the north goal. We need a medic on the pitch
//! now." (espeak-ng, made by scripts/setup) between stretches of silence. (The help sentence,
//! speech-help, is cut by the voice rule into "Help!" and the rest, which Moonshine tiny heard as
//! "Oh." and "Somebody tell me ..." alone: the speech thread now also hears such pieces joined,
//! see src/audio/speech.rs and the scenario set's help-over-crowd.) The voice rule cuts the segment, the speech
//! thread transcribes it, and `help` is raised with its latency, then cleared 5 s later.
//!
//! Without the model files the test skips, saying why, unless `CI` is set (as tests/stt.rs).

mod common;

use std::process::Command;

use serde_json::Value;

#[test]
fn a_spoken_call_for_help_raises_the_keyword_alert_then_clears_it() {
    let model = common::repo().join(".cache/models/moonshine-tiny-en");
    if !sideline::audio::stt::MODEL_FILES.iter().all(|f| model.join(f).is_file()) {
        let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
        assert!(!ci, "CI is set and the speech model is missing ({}): run scripts/setup", model.display());
        eprintln!("skipped: no speech model in {} (run scripts/setup)", model.display());
        return;
    }
    common::ort_env();
    let tmp = tempfile::tempdir().unwrap();
    let repo = common::repo();

    // 1 s of silence, the sentence, 9 s of silence (the 5 s hold runs out inside the run).
    let speech = sideline::audio::wav::load_mono(&common::media("sounds/speech-medic.wav"), 16_000).unwrap();
    let wav = tmp.path().join("mic.wav");
    let speech_from = 1.0;
    let speech_to = speech_from + speech.len() as f64 / 16_000.0;
    let silence = |s: usize| std::iter::repeat_n(0i16, s);
    let samples = silence(16_000).chain(speech.iter().map(|&v| common::pcm16(v))).chain(silence(16_000 * 9));
    common::write_wav(&wav, 16_000, 1, samples);

    let text = std::fs::read_to_string(repo.join("board/sim-audio.toml")).unwrap();
    let text = text
        .replace("\"../.cache/media/field.wav\"", &format!("\"{}\"", wav.display()))
        .replace("\"../.cache/state/sim-audio\"", &format!("\"{}\"", tmp.path().join("state").display()))
        .replace("\"../", &format!("\"{}/", repo.display()));
    assert!(text.contains(&wav.display().to_string()), "microphone rewritten");
    let board = tmp.path().join("board.toml");
    std::fs::write(&board, text).unwrap();

    // 130 frames at the clip's 10 fps: 13 s, the WAV's length.
    let out = Command::new(env!("CARGO_BIN_EXE_sideline"))
        .args(["run", "--board"])
        .arg(&board)
        .args(["--events", "-", "--max-frames", "130"])
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "sideline run failed:\n{stderr}");

    let help: Vec<Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["type"] == "alert" && e["rule"] == "help")
        .collect();
    assert_eq!(help.len(), 2, "one raise and one clear of `help`:\n{stdout}\n{stderr}");
    let (raised, cleared) = (&help[0], &help[1]);
    assert_eq!(raised["state"], "raised", "{raised}");
    assert_eq!(raised["kind"], "keyword", "{raised}");
    assert_eq!(raised["severity"], "critical", "{raised}");
    assert_eq!(cleared["state"], "cleared", "{cleared}");
    let latency_us = raised["latency_us"].as_u64().unwrap_or_else(|| panic!("no latency_us: {raised}"));
    let capture = raised["capture_us"].as_u64().unwrap();
    let decision = raised["decision_us"].as_u64().unwrap();
    let hold_us = cleared["capture_us"].as_u64().unwrap().saturating_sub(capture);
    assert!((4_900_000..=5_100_000).contains(&hold_us), "cleared {hold_us} µs after the hit, not 5 s");
    assert!(latency_us < 2_000_000, "speech-to-text took {latency_us} µs");
    assert!(decision >= capture);
    eprintln!(
        "help: speech {speech_from:.2}-{speech_to:.2} s in the WAV; end of utterance (segment end) -> alert \
         decided {:.1} ms; latency_us (segment handed over -> alert out) {:.1} ms; cleared {:.2} s later",
        (decision - capture) as f64 / 1000.0,
        latency_us as f64 / 1000.0,
        hold_us as f64 / 1e6
    );
    let transcript = stderr.lines().find(|l| l.contains("transcript") && l.contains("medic"));
    assert!(transcript.is_some(), "the transcript is logged:\n{stderr}");
    eprintln!("{}", transcript.unwrap_or_default());
}
