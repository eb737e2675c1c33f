//! Shared test helpers: where the repository, sample media and onnxruntime live, and image
//! conversions for building test frames from real photos.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use sideline::capture::{Frame, PixelFormat};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A file fetched by `scripts/setup`. Missing media is a failure, not a skip: CI runs the set-up
/// first, and a test that silently skips proves nothing.
pub fn media(name: &str) -> PathBuf {
    let p = repo().join(".cache/media").join(name);
    assert!(p.is_file(), "{} is missing: run scripts/setup first", p.display());
    p
}

/// Points ort at the library fetched by `scripts/setup` unless the caller already chose one.
pub fn ort_env() {
    if std::env::var_os("ORT_DYLIB_PATH").is_none() {
        let lib = repo().join(".cache/onnxruntime/libonnxruntime.so");
        assert!(lib.is_file(), "{} is missing: run scripts/setup first", lib.display());
        // Tests in one binary share the process; every caller sets the same value.
        unsafe { std::env::set_var("ORT_DYLIB_PATH", lib) };
    }
}

/// Writes a 16-bit PCM WAV: `samples` interleaved, `channels` to a frame.
pub fn write_wav(path: &Path, rate: u32, channels: u16, samples: impl IntoIterator<Item = i16>) {
    let spec = hound::WavSpec {
        channels,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    for s in samples {
        w.write_sample(s).unwrap();
    }
    w.finalize().unwrap();
}

/// A -1..1 sample as 16-bit PCM.
pub fn pcm16(v: f32) -> i16 {
    (v * 32767.0).round().clamp(-32768.0, 32767.0) as i16
}

pub fn load_board(path: &Path) -> sideline::config::Board {
    sideline::config::Board::load(path).unwrap_or_else(|e| panic!("{e}"))
}

/// RGB (8-bit, packed) to an I420 frame with BT.601 limited-range coefficients, the inverse of
/// what the preprocessor applies.
pub fn rgb_to_frame(rgb: &[u8], w: u32, h: u32) -> Frame {
    assert!(w % 2 == 0 && h % 2 == 0);
    let mut f = Frame::new(w, h, PixelFormat::I420);
    let (wu, hu) = (w as usize, h as usize);
    let (y_plane, uv) = f.data.split_at_mut(wu * hu);
    let (u_plane, v_plane) = uv.split_at_mut(wu / 2 * hu / 2);
    for y in 0..hu {
        for x in 0..wu {
            let p = &rgb[(y * wu + x) * 3..][..3];
            let (r, g, b) = (p[0] as f32, p[1] as f32, p[2] as f32);
            y_plane[y * wu + x] = (16.0 + 0.257 * r + 0.504 * g + 0.098 * b).round().clamp(0.0, 255.0) as u8;
        }
    }
    for y in 0..hu / 2 {
        for x in 0..wu / 2 {
            let (mut r, mut g, mut b) = (0.0, 0.0, 0.0);
            for (dy, dx) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                let p = &rgb[((2 * y + dy) * wu + 2 * x + dx) * 3..][..3];
                r += p[0] as f32 / 4.0;
                g += p[1] as f32 / 4.0;
                b += p[2] as f32 / 4.0;
            }
            let i = y * wu / 2 + x;
            u_plane[i] = (128.0 - 0.148 * r - 0.291 * g + 0.439 * b).round().clamp(0.0, 255.0) as u8;
            v_plane[i] = (128.0 + 0.439 * r - 0.368 * g - 0.071 * b).round().clamp(0.0, 255.0) as u8;
        }
    }
    f
}

/// Reads frames `wanted` (sorted) from a Y4M clip.
pub fn clip_frames(path: &Path, wanted: &[u64]) -> Vec<Frame> {
    use sideline::capture::{y4m::Y4mCamera, FrameSource};
    let mut cam = Y4mCamera::open(path, false, None).unwrap();
    let info = cam.info();
    let mut out = Vec::new();
    let mut f = Frame::new(info.width, info.height, info.format);
    while out.len() < wanted.len() && cam.next_frame(&mut f).unwrap() {
        if wanted.contains(&f.seq) {
            out.push(f.clone());
        }
    }
    assert_eq!(out.len(), wanted.len(), "clip too short");
    out
}

/// board/sim.toml rewritten for a test: absolute paths, state under `dir`, then `edit` applied
/// to the text. Returns the path of the written profile.
pub fn sim_profile(dir: &Path, edit: impl FnOnce(String) -> String) -> PathBuf {
    let repo = repo();
    let text = std::fs::read_to_string(repo.join("board/sim.toml")).unwrap();
    let state = dir.join("state");
    let text = text
        .replace("\"../", &format!("\"{}/", repo.display()))
        .replace(&format!("\"{}/.cache/state/sim\"", repo.display()), &format!("\"{}\"", state.display()));
    assert!(text.contains(&state.display().to_string()), "storage path rewritten");
    let path = dir.join("board.toml");
    std::fs::write(&path, edit(text)).unwrap();
    path
}

/// Profile text without the tables (and arrays of tables) headed by any of `headers`, e.g.
/// `"[[loop.ladder]]"`.
pub fn without_tables(text: &str, headers: &[&str]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut keep = true;
    for line in text.lines() {
        if line.starts_with('[') {
            keep = !headers.contains(&line.trim());
        }
        if keep {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The whistle windows scripts/setup wrote beside field.wav: (start s, end s).
pub fn whistle_windows() -> Vec<(f64, f64)> {
    std::fs::read_to_string(media("field.wav.txt"))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let mut f = l.split_whitespace().map(|v| v.parse::<f64>().unwrap());
            (f.next().unwrap(), f.next().unwrap())
        })
        .collect()
}

/// The detector's findings on each of `frames`, with its own preprocessing and decoding.
pub fn detect_frames(
    cfg: &sideline::config::DetectorModel,
    inference: &sideline::config::Inference,
    frames: &[Frame],
) -> Vec<Vec<sideline::infer::detector::Detection>> {
    let mut det = sideline::infer::detector::Detector::new(cfg, frames[0].width, frames[0].height, inference)
        .unwrap_or_else(|e| panic!("{e}"));
    frames
        .iter()
        .map(|f| {
            let mut out = vec![];
            det.prepare(f);
            det.infer(&mut out).unwrap();
            out
        })
        .collect()
}
