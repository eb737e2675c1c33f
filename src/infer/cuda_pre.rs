//! GPU preprocessing (cargo feature `cuda`): I420 camera frames to the letterboxed, RGB,
//! NHWC model input, as an NVRTC kernel, so that on the Jetson the CPU cores stay free for the
//! rest of the loop.
//!
//! The kernel computes exactly what [`super::preprocess::Preprocessor`] computes on the CPU
//! (same pixel-centre mapping, bilinear taps, BT.601 limited-range matrix and clamping); the
//! CPU version is the reference it is tested against. cudarc panics when the CUDA libraries
//! are missing, so [`probe`] opens them with `dlopen` first and every caller falls back to the
//! CPU path with a log line when they are not there.

use std::ffi::CString;
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg};

use super::letterbox::Letterbox;
use crate::capture::{Frame, PixelFormat};

/// The kernel: one thread per output pixel. Source indices are clamped exactly as the CPU
/// `taps` clamps them, so both read the same source pixels.
const KERNEL: &str = r#"
__device__ __forceinline__ void tap(int o, int src, float scale, int* i0, int* i1, float* w1) {
    float s = ((float)o + 0.5f) * scale - 0.5f;
    s = fminf(fmaxf(s, 0.0f), (float)(src - 1));
    int a = (int)floorf(s);
    *i0 = a;
    *i1 = min(a + 1, src - 1);
    *w1 = s - (float)a;
}

__device__ __forceinline__ float bilinear(const unsigned char* p, int stride, int x0, int x1, float wx,
                                          int y0, int y1, float wy) {
    float a0 = p[y0 * stride + x0], b0 = p[y1 * stride + x0];
    float a1 = p[y0 * stride + x1], b1 = p[y1 * stride + x1];
    // Rows first, then along the row: the CPU's order, so rounding matches closely.
    float c0 = a0 + (b0 - a0) * wy;
    float c1 = a1 + (b1 - a1) * wy;
    return c0 + (c1 - c0) * wx;
}

extern "C" __global__ void i420_letterbox_rgb(
    const unsigned char* frame, int src_w, int src_h,
    float* out, int dst_w, int dst_h,
    int pad_x, int pad_y, int content_w, int content_h,
    float pad, int round_to_int)
{
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= dst_w || y >= dst_h) return;
    float* px = out + ((size_t)y * dst_w + x) * 3;
    int cx = x - pad_x, cy = y - pad_y;
    if (cx < 0 || cy < 0 || cx >= content_w || cy >= content_h) {
        px[0] = pad; px[1] = pad; px[2] = pad;
        return;
    }
    int cw = (src_w + 1) / 2, ch = (src_h + 1) / 2;
    float sx = (float)src_w / (float)content_w, sy = (float)src_h / (float)content_h;
    int lx0, lx1, ly0, ly1, ux0, ux1, uy0, uy1;
    float lwx, lwy, uwx, uwy;
    tap(cx, src_w, sx, &lx0, &lx1, &lwx);
    tap(cy, src_h, sy, &ly0, &ly1, &lwy);
    tap(cx, cw, sx / 2.0f, &ux0, &ux1, &uwx);
    tap(cy, ch, sy / 2.0f, &uy0, &uy1, &uwy);
    const unsigned char* yp = frame;
    const unsigned char* up = frame + (size_t)src_w * src_h;
    const unsigned char* vp = up + (size_t)cw * ch;
    float Y = bilinear(yp, src_w, lx0, lx1, lwx, ly0, ly1, lwy);
    float U = bilinear(up, cw, ux0, ux1, uwx, uy0, uy1, uwy) - 128.0f;
    float V = bilinear(vp, cw, ux0, ux1, uwx, uy0, uy1, uwy) - 128.0f;
    float c = 1.164f * (Y - 16.0f);
    float r = fminf(fmaxf(c + 1.596f * V, 0.0f), 255.0f);
    float g = fminf(fmaxf(c - 0.392f * U - 0.813f * V, 0.0f), 255.0f);
    float b = fminf(fmaxf(c + 2.017f * U, 0.0f), 255.0f);
    if (round_to_int) { r = rintf(r); g = rintf(g); b = rintf(b); }
    px[0] = r; px[1] = g; px[2] = b;
}
"#;

#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    #[error("CUDA is not usable here: {0}")]
    Unavailable(String),
    #[error("compiling the preprocessing kernel: {0}")]
    Compile(String),
    #[error("CUDA: {0}")]
    Driver(#[from] cudarc::driver::DriverError),
    #[error("frame {got_w}x{got_h} {format:?}, the preprocessor was built for {want_w}x{want_h} I420")]
    Frame { got_w: u32, got_h: u32, format: PixelFormat, want_w: u32, want_h: u32 },
}

/// Whether the CUDA driver and NVRTC libraries can be loaded; `Err` says which is missing.
/// Loads and unloads them with `dlopen`, which (unlike cudarc) reports instead of panicking.
pub fn probe() -> Result<(), CudaError> {
    let open = |names: &[&str]| -> Result<(), String> {
        for name in names {
            let c = CString::new(*name).expect("library names have no NUL");
            // SAFETY: dlopen with a valid C string; the handle is closed right away.
            let h = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_LAZY | libc::RTLD_LOCAL) };
            if !h.is_null() {
                // SAFETY: `h` is a live handle from dlopen.
                unsafe { libc::dlclose(h) };
                return Ok(());
            }
        }
        Err(names.join(" or "))
    };
    open(&["libcuda.so.1", "libcuda.so"])
        .map_err(|n| CudaError::Unavailable(format!("no {n} (NVIDIA driver)")))?;
    open(&["libnvrtc.so", "libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so.11.2"])
        .map_err(|n| CudaError::Unavailable(format!("no {n} (CUDA toolkit's NVRTC)")))?;
    Ok(())
}

/// Converts frames of one size into one model input size on the GPU. Device buffers are
/// allocated once; each frame is one upload, one launch and one download.
pub struct CudaPreprocessor {
    pub letterbox: Letterbox,
    pad: f32,
    stream: Arc<CudaStream>,
    kernel: CudaFunction,
    frame: CudaSlice<u8>,
    out: CudaSlice<f32>,
}

impl CudaPreprocessor {
    pub fn new(src_w: u32, src_h: u32, dst_w: u32, dst_h: u32, pad: f32) -> Result<Self, CudaError> {
        probe()?;
        let ptx = cudarc::nvrtc::compile_ptx(KERNEL).map_err(|e| CudaError::Compile(e.to_string()))?;
        let ctx = CudaContext::new(0)?;
        let stream = ctx.default_stream();
        let module = ctx.load_module(ptx)?;
        let kernel = module.load_function("i420_letterbox_rgb")?;
        let letterbox = Letterbox::new(src_w, src_h, dst_w, dst_h);
        let frame_len = Frame::new(src_w, src_h, PixelFormat::I420).data.len();
        let frame = stream.alloc_zeros::<u8>(frame_len)?;
        let out = stream.alloc_zeros::<f32>(dst_w as usize * dst_h as usize * 3)?;
        Ok(Self { letterbox, pad, stream, kernel, frame, out })
    }

    pub fn input_len(&self) -> usize {
        self.letterbox.dst_w as usize * self.letterbox.dst_h as usize * 3
    }

    /// Writes `frame` as RGB 0..255 into `out` (NHWC, batch 1); `round` rounds each value as
    /// an integer input (movenet) wants.
    pub fn run(&mut self, frame: &Frame, out: &mut [f32], round: bool) -> Result<(), CudaError> {
        let lb = self.letterbox;
        if (frame.width, frame.height, frame.format) != (lb.src_w, lb.src_h, PixelFormat::I420) {
            return Err(CudaError::Frame {
                got_w: frame.width,
                got_h: frame.height,
                format: frame.format,
                want_w: lb.src_w,
                want_h: lb.src_h,
            });
        }
        assert_eq!(out.len(), self.input_len(), "output sized by CudaPreprocessor::input_len");
        self.stream.memcpy_htod(&frame.data[..], &mut self.frame)?;
        let block = (16u32, 16u32, 1u32);
        let cfg = LaunchConfig {
            grid_dim: (lb.dst_w.div_ceil(block.0), lb.dst_h.div_ceil(block.1), 1),
            block_dim: block,
            shared_mem_bytes: 0,
        };
        let i = |v: u32| v as i32;
        let (sw, sh, dw, dh) = (i(lb.src_w), i(lb.src_h), i(lb.dst_w), i(lb.dst_h));
        let (px, py, cw, ch) = (i(lb.pad_x), i(lb.pad_y), i(lb.content_w), i(lb.content_h));
        let round = round as i32;
        let mut launch = self.stream.launch_builder(&self.kernel);
        launch.arg(&self.frame).arg(&sw).arg(&sh).arg(&mut self.out).arg(&dw).arg(&dh);
        launch.arg(&px).arg(&py).arg(&cw).arg(&ch).arg(&self.pad).arg(&round);
        // SAFETY: the argument list matches the kernel's signature in order and type; both
        // buffers were allocated for exactly these frame and input sizes.
        unsafe { launch.launch(cfg) }?;
        self.stream.memcpy_dtoh(&self.out, out)?;
        Ok(())
    }
}
