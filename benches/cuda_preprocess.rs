//! GPU preprocessing speed next to what bounds it: the card's host<->device copy bandwidth.
//! `cargo bench --features cuda --bench cuda_preprocess` (scripts/gpu-check runs it).

use std::time::Instant;

use sideline::capture::{Frame, PixelFormat};
use sideline::infer::cuda_pre::{probe, CudaPreprocessor};
use sideline::infer::preprocess::Preprocessor;

fn main() {
    if let Err(e) = probe() {
        println!("skipped: {e}");
        return;
    }
    let runs = 300;
    for &(sw, sh, dw, dh) in
        &[(768u32, 576u32, 512u32, 512u32), (1280, 720, 512, 288), (1920, 1080, 512, 512)]
    {
        let mut frame = Frame::new(sw, sh, PixelFormat::I420);
        for (i, b) in frame.data.iter_mut().enumerate() {
            *b = (i * 31 % 251) as u8;
        }
        let mut gpu = CudaPreprocessor::new(sw, sh, dw, dh, 0.0).expect("GPU preprocessor");
        let mut out = vec![0f32; gpu.input_len()];
        for _ in 0..10 {
            gpu.run(&frame, &mut out, false).unwrap();
        }
        let t = Instant::now();
        for _ in 0..runs {
            gpu.run(&frame, &mut out, false).unwrap();
        }
        let per = t.elapsed().as_secs_f64() / runs as f64;
        let bytes = frame.data.len() + out.len() * 4;
        let mut cpu = Preprocessor::new(sw, sh, dw, dh, 0.0);
        let t = Instant::now();
        for _ in 0..runs / 10 {
            cpu.run(&frame, &mut out);
        }
        let cpu_per = t.elapsed().as_secs_f64() / (runs / 10) as f64;
        println!(
            "{sw}x{sh} -> {dw}x{dh}: GPU {:.3} ms per frame (upload + kernel + download, {:.1} MB moved: {:.1} GB/s \
             effective); CPU {:.3} ms; CPU/GPU {:.1}x",
            per * 1e3,
            bytes as f64 / 1e6,
            bytes as f64 / per / 1e9,
            cpu_per * 1e3,
            cpu_per / per
        );
    }
    // The bound: a plain copy of the same bytes each way.
    let n = 64 << 20;
    let ctx = cudarc::driver::CudaContext::new(0).unwrap();
    let stream = ctx.default_stream();
    let host = vec![1u8; n];
    let mut dev = stream.alloc_zeros::<u8>(n).unwrap();
    let mut back = vec![0u8; n];
    let t = Instant::now();
    for _ in 0..10 {
        stream.memcpy_htod(&host[..], &mut dev).unwrap();
    }
    stream.synchronize().unwrap();
    let h2d = 10.0 * n as f64 / t.elapsed().as_secs_f64() / 1e9;
    let t = Instant::now();
    for _ in 0..10 {
        stream.memcpy_dtoh(&dev, &mut back[..]).unwrap();
    }
    let d2h = 10.0 * n as f64 / t.elapsed().as_secs_f64() / 1e9;
    println!("copy bandwidth (pageable host memory, 64 MiB): host->device {h2d:.1} GB/s, device->host {d2h:.1} GB/s");
}
