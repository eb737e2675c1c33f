//! Referee whistles on real audio: tuxfootball's whistles mixed over its crowd (field.wav, made
//! by scripts/setup with the whistle times recorded beside it), crowd recordings alone, and
//! speech from alsa-utils.

mod common;

use std::path::Path;

use sideline::audio::wav::WavMic;
use sideline::audio::whistle::{WhistleDetector, WhistleEvent};
use sideline::audio::{AudioChunk, AudioSource};
use sideline::config::Whistle;

fn rule() -> Whistle {
    toml::from_str("name = \"whistle\"\nseverity = \"info\"\noutputs = [\"log\"]\n").unwrap()
}

/// (start s, end s) of each whistle the detector hears in `path`.
fn whistles(path: &Path) -> Vec<(f32, f32)> {
    let mut mic = WavMic::open(path, 16_000, 32, false).unwrap();
    let mut det = WhistleDetector::new(&rule(), 16_000, 512);
    let mut chunk = AudioChunk::default();
    let mut t0 = None;
    let mut out = vec![];
    let mut start = None;
    let secs = |at: sideline::clock::MonoTime, t0| at.since(t0).as_secs_f32();
    while mic.next_chunk(&mut chunk).unwrap() {
        let t0 = *t0.get_or_insert(chunk.ts);
        match det.push(&chunk) {
            Some(WhistleEvent::Started { at, .. }) => start = Some(secs(at, t0)),
            Some(WhistleEvent::Ended { at }) => out.push((start.take().unwrap(), secs(at, t0))),
            None => {}
        }
    }
    if let Some(s) = start {
        out.push((s, f32::INFINITY));
    }
    out
}

#[test]
fn every_whistle_is_heard_once_it_starts_and_nothing_else() {
    let truth: Vec<(f32, f32)> =
        common::whistle_windows().into_iter().map(|(a, b)| (a as f32, b as f32)).collect();
    assert_eq!(truth.len(), 5, "{truth:?}");
    let heard = whistles(&common::media("field.wav"));
    for (start, end) in &truth {
        assert!(
            heard.iter().any(|(s, _)| *s >= *start && *s <= start + 0.5),
            "whistle at {start}..{end} s not heard within 0.5 s: {heard:?}"
        );
    }
    for (s, _) in &heard {
        assert!(
            truth.iter().any(|(a, b)| s >= a && s <= b),
            "whistle heard at {s} s over the crowd: {heard:?}"
        );
    }
}

#[test]
fn crowd_speech_and_noise_are_not_whistles() {
    let sounds = Path::new("/usr/share/games/tuxfootball/sound");
    let speech = Path::new("/usr/share/sounds/alsa");
    for path in [
        sounds.join("crowdcheer.wav"),
        sounds.join("crowdboo.wav"),
        sounds.join("crowdooh.wav"),
        speech.join("Front_Center.wav"),
        speech.join("Rear_Left.wav"),
        speech.join("Noise.wav"),
    ] {
        assert!(path.is_file(), "{} missing: run scripts/setup", path.display());
        let heard = whistles(&path);
        assert!(heard.is_empty(), "{}: {heard:?}", path.display());
    }
    // And the whistles alone are heard.
    assert_eq!(whistles(&sounds.join("refwhistleshort.wav")).len(), 1);
}
