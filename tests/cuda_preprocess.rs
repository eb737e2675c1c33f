//! The GPU preprocessing kernel against the CPU reference ([`Preprocessor`]) on random frames:
//! every output element written, values within rounding of the CPU's. Needs the `cuda`
//! feature; without an NVIDIA driver it says so and checks only that the probe reports the
//! missing library instead of panicking (cudarc itself would panic).
#![cfg(feature = "cuda")]

use sideline::capture::{Frame, PixelFormat};
use sideline::infer::cuda_pre::{probe, CudaError, CudaPreprocessor};
use sideline::infer::preprocess::Preprocessor;

/// A deterministic pseudo-random I420 frame (xorshift), so a failure reproduces.
fn random_frame(w: u32, h: u32, seed: u64) -> Frame {
    let mut f = Frame::new(w, h, PixelFormat::I420);
    let mut x = seed | 1;
    for b in f.data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = (x >> 24) as u8;
    }
    f
}

fn gpu() -> Option<()> {
    match probe() {
        Ok(()) => Some(()),
        Err(e) => {
            assert!(matches!(e, CudaError::Unavailable(_)), "{e}");
            eprintln!("skipped: no GPU here ({e}); run scripts/gpu-check on a machine with one");
            None
        }
    }
}

#[test]
fn the_kernel_matches_the_cpu_on_random_frames() {
    if gpu().is_none() {
        return;
    }
    // Letterbox both ways, odd sizes, and the sizes the boards use.
    for (i, &(sw, sh, dw, dh)) in
        [(768, 576, 512, 512), (1280, 720, 512, 288), (640, 480, 256, 256), (322, 242, 96, 160)]
            .iter()
            .enumerate()
    {
        let frame = random_frame(sw, sh, 0x5eed + i as u64);
        let mut cpu = Preprocessor::new(sw, sh, dw, dh, 0.0);
        let mut want = vec![0f32; cpu.input_len()];
        cpu.run(&frame, &mut want);
        let mut gpu = CudaPreprocessor::new(sw, sh, dw, dh, 0.0).unwrap();
        let mut got = vec![f32::NAN; gpu.input_len()];
        gpu.run(&frame, &mut got, false).unwrap();
        let unwritten = got.iter().filter(|v| v.is_nan()).count();
        assert_eq!(unwritten, 0, "{sw}x{sh} -> {dw}x{dh}: every element written");
        let worst = want.iter().zip(&got).map(|(a, b)| (a - b).abs() / a.abs().max(1.0)).fold(0f32, f32::max);
        assert!(worst < 1e-3, "{sw}x{sh} -> {dw}x{dh}: worst relative error {worst}");
        eprintln!("{sw}x{sh} -> {dw}x{dh}: worst relative error {worst:.2e}");
    }
}

#[test]
fn a_frame_of_the_wrong_size_is_an_error() {
    if gpu().is_none() {
        return;
    }
    let mut gpu = CudaPreprocessor::new(64, 48, 32, 32, 0.0).unwrap();
    let mut out = vec![0f32; gpu.input_len()];
    let e = gpu.run(&random_frame(32, 32, 1), &mut out, false).unwrap_err();
    assert!(e.to_string().contains("built for 64x48"), "{e}");
}

#[test]
fn without_a_driver_the_probe_reports_instead_of_panicking() {
    // On a machine with a GPU both libraries load; elsewhere the error names the missing one.
    match probe() {
        Ok(()) => {}
        Err(e) => assert!(e.to_string().contains("libcuda") || e.to_string().contains("libnvrtc"), "{e}"),
    }
    if probe().is_err() {
        let e = CudaPreprocessor::new(64, 48, 32, 32, 0.0).err().expect("no GPU: construction fails cleanly");
        assert!(matches!(e, CudaError::Unavailable(_)), "{e}");
    }
}
