//! CPU preprocessing (I420 -> letterboxed RGB model input) per frame, at the sizes the bench
//! clip and common cameras deliver. `cargo bench --bench preprocess`.

use std::time::Instant;

use sideline::capture::{Frame, PixelFormat};
use sideline::infer::preprocess::Preprocessor;

fn main() {
    let runs = if std::env::args().any(|a| a == "--bench") { 400 } else { 5 };
    for &(sw, sh, dw, dh) in &[
        (768u32, 576u32, 512u32, 512u32),
        (1280, 720, 512, 288),
        (1920, 1080, 512, 512),
        (640, 360, 512, 384),
    ] {
        let mut frame = Frame::new(sw, sh, PixelFormat::I420);
        for (i, b) in frame.data.iter_mut().enumerate() {
            *b = (i * 31 % 251) as u8;
        }
        let mut p = Preprocessor::new(sw, sh, dw, dh, 0.0);
        let mut out = vec![0f32; p.input_len()];
        // Alternating the two builds run by run, so the host's drift falls on both alike.
        let mut times = [Vec::new(), Vec::new()];
        for i in 0..runs * 2 {
            let simd = i % 2 == 0;
            p.set_simd(simd);
            let t = Instant::now();
            p.run(&frame, &mut out);
            times[simd as usize].push(t.elapsed().as_secs_f64() * 1e3);
        }
        let [portable, simd] = times.map(|mut t| {
            t.sort_by(f64::total_cmp);
            t[t.len() / 2]
        });
        println!(
            "{sw}x{sh} -> {dw}x{dh}: p50 portable {portable:.3} ms, AVX2 build {simd:.3} ms ({:.2}x; {runs} runs each)",
            portable / simd
        );
    }
}
