//! Camera pixels to model input: I420 -> RGB, bilinear letterbox resize, NHWC, with no
//! allocation. Sampling tables are computed once per (frame size, input size); each output row
//! first blends its two source rows of each plane, then samples along the blended rows, which
//! halves the arithmetic of a per-pixel 2-D blend.

use super::letterbox::Letterbox;
use super::InputMut;
use crate::capture::Frame;

/// An element of a model input tensor.
pub trait Channel: Copy + Default {
    fn from_value(v: f32) -> Self;
}

impl Channel for f32 {
    #[inline(always)]
    fn from_value(v: f32) -> Self {
        v
    }
}

impl Channel for i32 {
    #[inline(always)]
    fn from_value(v: f32) -> Self {
        v.round() as i32
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Tap {
    i0: u32,
    i1: u32,
    w1: f32,
}

fn taps(out: usize, src: usize, scale: f32) -> Vec<Tap> {
    (0..out)
        .map(|o| {
            // Pixel centres line up: output centre o+0.5 maps to source (o+0.5)*scale.
            let s = ((o as f32 + 0.5) * scale - 0.5).clamp(0.0, (src - 1) as f32);
            let i0 = s.floor() as u32;
            Tap { i0, i1: (i0 + 1).min(src as u32 - 1), w1: s - i0 as f32 }
        })
        .collect()
}

/// Converts frames of one size into one model input size.
pub struct Preprocessor {
    pub letterbox: Letterbox,
    /// Value of the letterbox bars (each of R, G, B).
    pad: f32,
    luma_x: Vec<Tap>,
    luma_y: Vec<Tap>,
    chroma_x: Vec<Tap>,
    chroma_y: Vec<Tap>,
    /// One vertically blended row of Y, U and V.
    row_y: Vec<f32>,
    row_u: Vec<f32>,
    row_v: Vec<f32>,
    /// Whether the CPU path runs its AVX2 + FMA build (checked once, at start).
    simd: bool,
    /// The engine's input buffer (`fill`) already holds the letterbox bars: they never change,
    /// so later frames write only the picture (on a 768x576 frame into 512x512, a quarter of
    /// the input).
    bars_in_place: bool,
    /// The same conversion on the GPU, where one is used (`cuda` feature, GPU accelerator).
    #[cfg(feature = "cuda")]
    gpu: Option<(super::cuda_pre::CudaPreprocessor, Vec<f32>)>,
}

impl Preprocessor {
    pub fn new(src_w: u32, src_h: u32, dst_w: u32, dst_h: u32, pad: f32) -> Self {
        let lb = Letterbox::new(src_w, src_h, dst_w, dst_h);
        let (cw, ch) = (lb.content_w as usize, lb.content_h as usize);
        let sx = src_w as f32 / cw as f32;
        let sy = src_h as f32 / ch as f32;
        Self {
            letterbox: lb,
            pad,
            luma_x: taps(cw, src_w as usize, sx),
            luma_y: taps(ch, src_h as usize, sy),
            chroma_x: taps(cw, src_w.div_ceil(2) as usize, sx / 2.0),
            chroma_y: taps(ch, src_h.div_ceil(2) as usize, sy / 2.0),
            row_y: vec![0.0; src_w as usize],
            row_u: vec![0.0; src_w.div_ceil(2) as usize],
            row_v: vec![0.0; src_w.div_ceil(2) as usize],
            simd: simd_available(),
            bars_in_place: false,
            #[cfg(feature = "cuda")]
            gpu: None,
        }
    }

    /// Moves the conversion to the GPU when the profile runs its models there and this build
    /// and machine can; otherwise stays on the CPU and says why.
    pub fn with_gpu(self, settings: &crate::config::Inference) -> Self {
        if settings.accelerator == crate::config::Accelerator::Cpu {
            return self;
        }
        #[cfg(feature = "cuda")]
        {
            let lb = self.letterbox;
            match super::cuda_pre::CudaPreprocessor::new(lb.src_w, lb.src_h, lb.dst_w, lb.dst_h, self.pad) {
                Ok(g) => {
                    let scratch = vec![0.0; g.input_len()];
                    return Self { gpu: Some((g, scratch)), ..self };
                }
                Err(e) => tracing::warn!("preprocessing stays on the CPU: {e}"),
            }
        }
        #[cfg(not(feature = "cuda"))]
        tracing::info!("preprocessing on the CPU (this build has no `cuda` feature)");
        self
    }

    /// Number of elements of the NHWC input.
    pub fn input_len(&self) -> usize {
        self.letterbox.dst_w as usize * self.letterbox.dst_h as usize * 3
    }

    /// Writes `frame` into an engine's input buffer, whatever its element type. Always the
    /// same engine's: nothing else writes that buffer, so the bars are written once.
    pub fn fill(&mut self, frame: &Frame, input: InputMut<'_>) {
        #[cfg(feature = "cuda")]
        let input = match self.fill_gpu(frame, input) {
            Some(rest) => rest,
            None => {
                self.bars_in_place = true;
                return;
            }
        };
        let bars = !self.bars_in_place;
        match input {
            InputMut::F32(b) => self.convert(frame, b, bars),
            InputMut::I32(b) => self.convert(frame, b, bars),
        }
        self.bars_in_place = true;
    }

    /// The GPU path: `None` when it filled the input, else the input back for the CPU. A GPU
    /// error is logged once and the CPU takes over for good: a frame is never lost to it.
    #[cfg(feature = "cuda")]
    fn fill_gpu<'a>(&mut self, frame: &Frame, mut input: InputMut<'a>) -> Option<InputMut<'a>> {
        let (gpu, scratch) = self.gpu.as_mut()?;
        let done = match input {
            InputMut::F32(ref mut b) => gpu.run(frame, b, false),
            InputMut::I32(ref mut b) => gpu.run(frame, scratch, true).map(|()| {
                for (o, &v) in b.iter_mut().zip(scratch.iter()) {
                    *o = v as i32;
                }
            }),
        };
        match done {
            Ok(()) => None,
            Err(e) => {
                tracing::error!("GPU preprocessing failed, continuing on the CPU: {e}");
                self.gpu = None;
                // It may have left the input half written: the CPU writes it all once more.
                self.bars_in_place = false;
                Some(input)
            }
        }
    }

    /// Turns the AVX2 build of the CPU path off (or back on where the CPU has it): for the
    /// benchmark and the test that compare the two.
    pub fn set_simd(&mut self, on: bool) {
        self.simd = on && simd_available();
    }

    /// Writes `frame` as RGB 0..255 into `out` (NHWC, batch 1), bars included.
    pub fn run<T: Channel>(&mut self, frame: &Frame, out: &mut [T]) {
        self.convert(frame, out, true)
    }

    fn convert<T: Channel>(&mut self, frame: &Frame, out: &mut [T], bars: bool) {
        #[cfg(target_arch = "x86_64")]
        if self.simd {
            // SAFETY: `simd` is set only where the CPU reports AVX2 and FMA.
            return unsafe { self.run_avx2(frame, out, bars) };
        }
        self.run_rows(frame, out, bars)
    }

    /// `run_rows` compiled for AVX2 + FMA, where the compiler vectorizes the row blends and
    /// the colour conversion (a portable x86-64 build stops at SSE2): 1.9x faster. aarch64
    /// builds have NEON always and need no second copy.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run_avx2<T: Channel>(&mut self, frame: &Frame, out: &mut [T], bars: bool) {
        self.run_rows(frame, out, bars)
    }

    /// `bars`: also write the letterbox bars.
    #[inline(always)]
    fn run_rows<T: Channel>(&mut self, frame: &Frame, out: &mut [T], bars: bool) {
        let lb = self.letterbox;
        debug_assert_eq!((frame.width, frame.height), (lb.src_w, lb.src_h));
        assert_eq!(out.len(), self.input_len(), "input buffer sized by Preprocessor::input_len");
        let (yp, up, vp) = frame.planes();
        let w = frame.width as usize;
        let cw = frame.width.div_ceil(2) as usize;
        let pad = T::from_value(self.pad);
        let row_len = lb.dst_w as usize * 3;
        let (px, py) = (lb.pad_x as usize, lb.pad_y as usize);
        for (oy, row) in out.chunks_exact_mut(row_len).enumerate() {
            let Some(&ty) = oy.checked_sub(py).and_then(|y| self.luma_y.get(y)) else {
                if bars {
                    row.fill(pad);
                }
                continue;
            };
            let cy = self.chroma_y[oy - py];
            blend_rows(
                &yp[ty.i0 as usize * w..][..w],
                &yp[ty.i1 as usize * w..][..w],
                ty.w1,
                &mut self.row_y,
            );
            blend_rows(
                &up[cy.i0 as usize * cw..][..cw],
                &up[cy.i1 as usize * cw..][..cw],
                cy.w1,
                &mut self.row_u,
            );
            blend_rows(
                &vp[cy.i0 as usize * cw..][..cw],
                &vp[cy.i1 as usize * cw..][..cw],
                cy.w1,
                &mut self.row_v,
            );
            let (left, rest) = row.split_at_mut(px * 3);
            let (content, right) = rest.split_at_mut(self.luma_x.len() * 3);
            if bars {
                left.fill(pad);
                right.fill(pad);
            }
            let (ry, ru, rv) = (&self.row_y[..], &self.row_u[..], &self.row_v[..]);
            for ((px_out, tx), cx) in content.chunks_exact_mut(3).zip(&self.luma_x).zip(&self.chroma_x) {
                let lerp = |r: &[f32], t: &Tap| {
                    // SAFETY: `taps` clamps every index below the source width it was built
                    // for, and each row buffer has exactly that width.
                    let (a, b) =
                        unsafe { (*r.get_unchecked(t.i0 as usize), *r.get_unchecked(t.i1 as usize)) };
                    a + (b - a) * t.w1
                };
                let y = lerp(ry, tx);
                let u = lerp(ru, cx) - 128.0;
                let v = lerp(rv, cx) - 128.0;
                // BT.601, limited range: what cameras and the sample clip deliver.
                let c = 1.164 * (y - 16.0);
                px_out[0] = T::from_value((c + 1.596 * v).clamp(0.0, 255.0));
                px_out[1] = T::from_value((c - 0.392 * u - 0.813 * v).clamp(0.0, 255.0));
                px_out[2] = T::from_value((c + 2.017 * u).clamp(0.0, 255.0));
            }
        }
    }
}

fn simd_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    return is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// `out[i] = r0[i] + (r1[i] - r0[i]) * w`, over whole rows.
#[inline(always)]
fn blend_rows(r0: &[u8], r1: &[u8], w: f32, out: &mut [f32]) {
    for ((o, &a), &b) in out.iter_mut().zip(r0).zip(r1) {
        let a = a as f32;
        *o = a + (b as f32 - a) * w;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::PixelFormat;

    fn flat_frame(w: u32, h: u32, y: u8, u: u8, v: u8) -> Frame {
        let mut f = Frame::new(w, h, PixelFormat::I420);
        let n = (w * h) as usize;
        let c = (w.div_ceil(2) * h.div_ceil(2)) as usize;
        f.data[..n].fill(y);
        f.data[n..n + c].fill(u);
        f.data[n + c..].fill(v);
        f
    }

    #[test]
    fn grey_frame_with_bars() {
        // 40x20 into 16x16: content 16x8, bars of 4 rows top and bottom.
        let mut p = Preprocessor::new(40, 20, 16, 16, 0.0);
        let mut out = vec![-1.0f32; p.input_len()];
        p.run(&flat_frame(40, 20, 126, 128, 128), &mut out);
        let at = |x: usize, y: usize| &out[(y * 16 + x) * 3..][..3];
        assert_eq!(at(0, 0), [0.0, 0.0, 0.0]);
        assert_eq!(at(15, 15), [0.0, 0.0, 0.0]);
        let g = 1.164 * 110.0;
        for c in at(7, 8) {
            assert!((c - g).abs() < 1e-3);
        }
        assert!(out.iter().all(|&v| v >= 0.0), "every element written");
    }

    #[test]
    fn saturated_red_and_integer_output() {
        let mut p = Preprocessor::new(8, 8, 4, 4, 0.0);
        let mut out = vec![0i32; p.input_len()];
        // Y=81, U=90, V=240 is pure red in BT.601 limited range.
        p.run(&flat_frame(8, 8, 81, 90, 240), &mut out);
        let px = &out[..3];
        assert!(px[0] >= 250 && px[1] <= 5 && px[2] <= 5, "{px:?}");
    }

    #[test]
    fn horizontal_gradient_is_resampled_linearly() {
        let (w, h) = (64u32, 2u32);
        let mut f = flat_frame(w, h, 0, 128, 128);
        for y in 0..h as usize {
            for x in 0..w as usize {
                f.data[y * w as usize + x] = 16 + (x * 3) as u8;
            }
        }
        let mut p = Preprocessor::new(w, h, 32, 1, 0.0);
        let mut out = vec![0f32; p.input_len()];
        p.run(&f, &mut out);
        // Output pixel i samples source x = 2i + 0.5: luma 16 + 3 * (2i + 0.5).
        for i in 0..32 {
            let expect = 1.164 * (3.0 * (2.0 * i as f32 + 0.5)).min(3.0 * 63.0);
            assert!((out[i * 3] - expect).abs() < 0.01, "pixel {i}: {} vs {expect}", out[i * 3]);
        }
    }

    #[test]
    fn the_avx2_build_writes_what_the_portable_one_does() {
        // Odd sizes: rows whose length is no multiple of the vector width, bars on both axes.
        let (w, h) = (203u32, 117u32);
        let mut f = flat_frame(w, h, 0, 0, 0);
        let mut seed = 0x9e37_79b9u32;
        for b in f.data.iter_mut() {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            *b = seed as u8;
        }
        for (dw, dh) in [(96u32, 96u32), (61, 33)] {
            let mut p = Preprocessor::new(w, h, dw, dh, 114.0);
            let (mut a, mut b) = (vec![-1f32; p.input_len()], vec![-2f32; p.input_len()]);
            p.set_simd(false);
            p.run(&f, &mut a);
            p.set_simd(true);
            p.run(&f, &mut b);
            // FMA rounds once where the portable build rounds twice: a few ulps of 255.
            let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            assert!(worst < 1e-3, "{dw}x{dh}: outputs differ by up to {worst}");
            assert!(a.iter().all(|&v| (0.0..=255.0).contains(&v)), "every element written");
        }
    }

    #[test]
    fn an_engine_buffer_gets_its_bars_once_and_every_frame_all_of_its_picture() {
        // Bars on both axes; a second frame of another colour: `fill` leaves the bars alone
        // and must give exactly what a full write into a fresh buffer gives.
        for (w, h) in [(40u32, 20u32), (20, 40)] {
            let mut p = Preprocessor::new(w, h, 16, 16, 114.0);
            let mut engine = vec![-1f32; p.input_len()];
            p.fill(&flat_frame(w, h, 126, 128, 128), InputMut::F32(&mut engine));
            let second = flat_frame(w, h, 81, 90, 240);
            p.fill(&second, InputMut::F32(&mut engine));
            let mut fresh = vec![-2f32; p.input_len()];
            Preprocessor::new(w, h, 16, 16, 114.0).run(&second, &mut fresh);
            assert_eq!(engine, fresh, "{w}x{h}");
            assert!(engine.contains(&114.0), "{w}x{h}: bars present");
        }
    }
}
