//! Camera pixel formats to I420, the one layout the rest of sideline reads.
//!
//! Cameras hand over YUYV (packed 4:2:2), NV12 (Y plane, then interleaved 4:2:0 chroma) or
//! MJPEG; the loop, preprocessing and the recorder only know I420 in BT.601 limited range (what
//! the sample clip and raw camera formats carry). Each conversion writes into a caller-owned
//! [`Frame`], so a camera recycles the same buffers frame after frame; rows may be padded
//! (V4L2's `bytesperline`). Sizes must be even: 4:2:0 chroma covers 2x2 pixels, and an odd
//! size from a driver means a format we did not ask for.
//!
//! - **YUYV**: luma copied; each 4:2:0 chroma sample is the rounded mean of the two 4:2:2
//!   samples above each other (rows 2k and 2k+1), `(a + b + 1) >> 1`. This is what ffmpeg's
//!   yuyv422 -> yuv420p conversion does: the tests match it exactly.
//! - **NV12**: a reshuffle (chroma de-interleaved), exact.
//! - **MJPEG**: decoded in pure Rust by `zune-jpeg`, straight to YCbCr (no RGB round trip).
//!   The decoder always upsamples chroma to full size; halving it again undoes its triangle
//!   filter (see [`halve`]), so the camera's own 4:2:2 or 4:2:0 chroma comes back (4:2:2 is
//!   then halved down by the two-row mean, as YUYV). JPEG (JFIF) is BT.601 full range; the
//!   result is rescaled to BT.601 limited range (`Y' = 16 + Y*219/255`,
//!   `C' = 128 + (C-128)*224/255`, rounded), so MJPEG frames look like raw ones downstream.
//!   Frames without Huffman tables (usual for MJPEG) get the standard ones. Grey JPEGs get
//!   neutral chroma. Decoding is strict: a truncated or corrupt JPEG is an error, never a
//!   half-grey frame that could hide a player.

use std::fmt;

use zune_jpeg::zune_core::bytestream::ZCursor;
use zune_jpeg::zune_core::colorspace::ColorSpace;
use zune_jpeg::zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;

use super::{Frame, PixelFormat};

/// What a camera delivers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CameraFormat {
    /// Packed 4:2:2, `Y0 U Y1 V` per pixel pair (V4L2 `YUYV`, also called YUY2).
    Yuyv,
    /// Y plane, then one plane of interleaved `U V` at half size, both with the same stride.
    Nv12,
    /// One JPEG per frame (V4L2 `MJPG`; Huffman tables may be left out).
    Mjpeg,
}

impl fmt::Display for CameraFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CameraFormat::Yuyv => "YUYV",
            CameraFormat::Nv12 => "NV12",
            CameraFormat::Mjpeg => "MJPEG",
        })
    }
}

impl CameraFormat {
    /// Bytes one row of pixels takes at least (0 for compressed formats).
    pub fn min_stride(self, width: u32) -> usize {
        match self {
            CameraFormat::Yuyv => 2 * width as usize,
            CameraFormat::Nv12 => width as usize,
            CameraFormat::Mjpeg => 0,
        }
    }

    /// Bytes a frame with rows `stride` apart needs; the last row need not be padded.
    pub fn min_len(self, width: u32, height: u32, stride: usize) -> usize {
        let (w, h) = (width as usize, height as usize);
        let rows = |n: usize, row: usize| if n == 0 { 0 } else { stride * (n - 1) + row };
        match self {
            CameraFormat::Yuyv => rows(h, 2 * w),
            CameraFormat::Nv12 => stride * h + rows(h / 2, w),
            CameraFormat::Mjpeg => 0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("{format} {width}x{height}: width and height must be even (and not zero) for 4:2:0")]
    OddSize { format: CameraFormat, width: u32, height: u32 },
    #[error("{format} {width}x{height}: bytesperline {stride} is less than a row needs ({min})")]
    Stride { format: CameraFormat, width: u32, height: u32, stride: usize, min: usize },
    #[error("{format} {width}x{height}: buffer holds {got} bytes but the frame needs {need} (truncated)")]
    Short { format: CameraFormat, width: u32, height: u32, got: usize, need: usize },
    #[error("MJPEG: picture is {got_w}x{got_h} but the stream was set up for {want_w}x{want_h}")]
    SizeMismatch { got_w: u32, got_h: u32, want_w: u32, want_h: u32 },
    #[error("MJPEG {width}x{height}: corrupt JPEG ({len} bytes): {message}")]
    Jpeg { width: u32, height: u32, len: usize, message: String },
}

/// Converts one camera format at one size into I420 frames; holds the decoder's scratch so
/// steady-state conversion allocates nothing of its own.
#[derive(Debug)]
pub struct Converter {
    format: CameraFormat,
    width: u32,
    height: u32,
    stride: usize,
    jpeg: MjpegDecoder,
}

impl Converter {
    /// `stride` is the driver's `bytesperline` (0: tight rows); it is ignored for MJPEG.
    pub fn new(format: CameraFormat, width: u32, height: u32, stride: usize) -> Result<Self, ConvertError> {
        check_size(format, width, height)?;
        let min = format.min_stride(width);
        let stride = if stride == 0 { min } else { stride };
        if stride < min {
            return Err(ConvertError::Stride { format, width, height, stride, min });
        }
        Ok(Self { format, width, height, stride, jpeg: MjpegDecoder::default() })
    }

    pub fn format(&self) -> CameraFormat {
        self.format
    }

    /// Fills `dst` (its size and format are set here) from one camera buffer.
    pub fn convert(&mut self, src: &[u8], dst: &mut Frame) -> Result<(), ConvertError> {
        let (w, h, stride) = (self.width, self.height, self.stride);
        match self.format {
            CameraFormat::Yuyv => yuyv_to_i420(src, w, h, stride, dst),
            CameraFormat::Nv12 => nv12_to_i420(src, w, h, stride, dst),
            CameraFormat::Mjpeg => self.jpeg.decode(src, w, h, dst),
        }
    }
}

fn check_size(format: CameraFormat, width: u32, height: u32) -> Result<(), ConvertError> {
    if width == 0 || height == 0 || width % 2 != 0 || height % 2 != 0 {
        return Err(ConvertError::OddSize { format, width, height });
    }
    Ok(())
}

/// Checks `src` against the geometry; returns the row stride to use.
fn check_raw(
    format: CameraFormat,
    src: &[u8],
    width: u32,
    height: u32,
    stride: usize,
) -> Result<usize, ConvertError> {
    check_size(format, width, height)?;
    let min = format.min_stride(width);
    let stride = if stride == 0 { min } else { stride };
    if stride < min {
        return Err(ConvertError::Stride { format, width, height, stride, min });
    }
    if src.len() < format.min_len(width, height, stride) {
        return Err(short(format, src, width, height, stride));
    }
    Ok(stride)
}

/// The error for a buffer too short for its frame.
fn short(format: CameraFormat, src: &[u8], width: u32, height: u32, stride: usize) -> ConvertError {
    ConvertError::Short { format, width, height, got: src.len(), need: format.min_len(width, height, stride) }
}

/// Sizes `dst` for an I420 picture and splits it into its planes.
fn i420_planes(dst: &mut Frame, width: u32, height: u32) -> (&mut [u8], &mut [u8], &mut [u8]) {
    dst.width = width;
    dst.height = height;
    dst.format = PixelFormat::I420;
    // Same size as last time: no reallocation.
    dst.data.resize(PixelFormat::I420.frame_len(width, height), 0);
    let luma = width as usize * height as usize;
    let (y, uv) = dst.data.split_at_mut(luma);
    let (u, v) = uv.split_at_mut(luma / 4);
    (y, u, v)
}

/// YUYV (YUY2) to I420; chroma of rows 2k and 2k+1 averaged (see the module doc).
pub fn yuyv_to_i420(
    src: &[u8],
    width: u32,
    height: u32,
    stride: usize,
    dst: &mut Frame,
) -> Result<(), ConvertError> {
    let format = CameraFormat::Yuyv;
    let stride = check_raw(format, src, width, height, stride)?;
    let (w, row) = (width as usize, 2 * width as usize);
    let short = || short(format, src, width, height, stride);
    let mut rows = src.chunks(stride).map(|r| r.get(..row));
    let (y, u, v) = i420_planes(dst, width, height);
    for ((y2, u), v) in
        y.chunks_exact_mut(2 * w).zip(u.chunks_exact_mut(w / 2)).zip(v.chunks_exact_mut(w / 2))
    {
        // Checked above; the `get`s only keep this loop free of panics.
        let (Some(Some(top)), Some(Some(bot))) = (rows.next(), rows.next()) else { return Err(short()) };
        let (y_top, y_bot) = y2.split_at_mut(w);
        let pixels = top.chunks_exact(4).zip(bot.chunks_exact(4));
        let luma = y_top.chunks_exact_mut(2).zip(y_bot.chunks_exact_mut(2));
        let chroma = u.iter_mut().zip(v.iter_mut());
        for (((t, b), (yt, yb)), (u, v)) in pixels.zip(luma).zip(chroma) {
            yt[0] = t[0];
            yt[1] = t[2];
            yb[0] = b[0];
            yb[1] = b[2];
            *u = avg2(t[1], b[1]);
            *v = avg2(t[3], b[3]);
        }
    }
    Ok(())
}

/// Rounded mean of two samples, ties up (as ffmpeg).
#[inline(always)]
fn avg2(a: u8, b: u8) -> u8 {
    ((a as u16 + b as u16 + 1) >> 1) as u8
}

/// NV12 to I420: luma rows copied, chroma de-interleaved. Exact.
pub fn nv12_to_i420(
    src: &[u8],
    width: u32,
    height: u32,
    stride: usize,
    dst: &mut Frame,
) -> Result<(), ConvertError> {
    let format = CameraFormat::Nv12;
    let stride = check_raw(format, src, width, height, stride)?;
    let w = width as usize;
    let short = || short(format, src, width, height, stride);
    let (src_y, src_uv) = src.split_at(stride * height as usize);
    let (y, u, v) = i420_planes(dst, width, height);
    let mut rows = src_y.chunks(stride).map(|r| r.get(..w));
    for out in y.chunks_exact_mut(w) {
        let Some(Some(row)) = rows.next() else { return Err(short()) };
        out.copy_from_slice(row);
    }
    let mut rows = src_uv.chunks(stride).map(|r| r.get(..w));
    for (u, v) in u.chunks_exact_mut(w / 2).zip(v.chunks_exact_mut(w / 2)) {
        let Some(Some(row)) = rows.next() else { return Err(short()) };
        for ((uv, u), v) in row.chunks_exact(2).zip(u.iter_mut()).zip(v.iter_mut()) {
            *u = uv[0];
            *v = uv[1];
        }
    }
    Ok(())
}

/// Full-range (JFIF) luma to BT.601 limited range.
const Y_TO_LIMITED: [u8; 256] = range_lut(219, 16);
/// Full-range chroma to BT.601 limited range (centred on 128).
const C_TO_LIMITED: [u8; 256] = range_lut(224, 128);

/// `out = centre' + (in - centre) * span / 255`, rounded half away from zero; `centre` is 0
/// for luma (offset 16) and 128 for chroma (which stays centred).
const fn range_lut(span: i32, offset: i32) -> [u8; 256] {
    let mut lut = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let centre = if offset == 128 { 128 } else { 0 };
        let n = (i as i32 - centre) * span;
        let q = if n >= 0 { (n + 127) / 255 } else { (n - 127) / 255 };
        lut[i] = (q + offset) as u8;
        i += 1;
    }
    lut
}

/// MJPEG to I420, with the buffers it needs kept from frame to frame.
#[derive(Debug, Default)]
pub struct MjpegDecoder {
    /// The decoded picture: `Y Cb Cr` per pixel (or `Y` alone for grey).
    decoded: Vec<u8>,
    /// One decoded row's Cb, then its Cr.
    row: Vec<u8>,
    /// Chroma at half width and full height: every Cb row, then every Cr row.
    half: Vec<u8>,
    /// A frame without Huffman tables, marked as MJPEG for the decoder.
    patched: Vec<u8>,
}

impl MjpegDecoder {
    /// Decodes one JPEG that must be `width`x`height` into `dst`.
    pub fn decode(
        &mut self,
        jpeg: &[u8],
        width: u32,
        height: u32,
        dst: &mut Frame,
    ) -> Result<(), ConvertError> {
        check_size(CameraFormat::Mjpeg, width, height)?;
        let (w, h) = (width as usize, height as usize);
        let corrupt = |message: String| ConvertError::Jpeg { width, height, len: jpeg.len(), message };
        // The size is checked against the header before anything is decoded or allocated.
        let options =
            DecoderOptions::default().jpeg_set_out_colorspace(ColorSpace::YCbCr).set_strict_mode(true);
        let header = scan_header(jpeg);
        let data = if header.huffman || !jpeg.starts_with(&[0xFF, 0xD8]) {
            jpeg
        } else {
            // Tables left out (UVC cameras do): mark the frame as MJPEG, in a reused buffer.
            self.patched.clear();
            self.patched.extend_from_slice(&jpeg[..2]);
            self.patched.extend_from_slice(&AVI1);
            self.patched.extend_from_slice(&jpeg[2..]);
            &self.patched[..]
        };
        let mut decoder = JpegDecoder::new_with_options(ZCursor::new(data), options);
        decoder.decode_headers().map_err(|e| corrupt(e.to_string()))?;
        let Some(info) = decoder.info() else { return Err(corrupt("no picture header".into())) };
        if (info.width as usize, info.height as usize) != (w, h) {
            return Err(ConvertError::SizeMismatch {
                got_w: info.width.into(),
                got_h: info.height.into(),
                want_w: width,
                want_h: height,
            });
        }
        let grey = match decoder.input_colorspace() {
            Some(ColorSpace::YCbCr) => false,
            Some(ColorSpace::Luma) => {
                decoder.set_options(options.jpeg_set_out_colorspace(ColorSpace::Luma));
                true
            }
            other => return Err(corrupt(format!("colour space {other:?} is not YCbCr or grey"))),
        };
        // Same size as the previous frame: no reallocation.
        self.decoded.resize(w * h * if grey { 1 } else { 3 }, 0);
        decoder.decode_into(&mut self.decoded).map_err(|e| corrupt(e.to_string()))?;

        let (y, u, v) = i420_planes(dst, width, height);
        if grey {
            for (out, &px) in y.iter_mut().zip(self.decoded.iter()) {
                *out = Y_TO_LIMITED[px as usize];
            }
            u.fill(128);
            v.fill(128);
            return Ok(());
        }
        let (across, down) = header.subsampling.unwrap_or((1, 1));
        let cw = w / 2;
        self.row.resize(2 * w, 0);
        self.half.resize(2 * cw * h, 0);
        let (row_cb, row_cr) = self.row.split_at_mut(w);
        let (half_u, half_v) = self.half.split_at_mut(cw * h);
        // Across: luma out, chroma de-interleaved and halved.
        let rows = self.decoded.chunks_exact(3 * w).zip(y.chunks_exact_mut(w));
        for ((px, y), (hu, hv)) in rows.zip(half_u.chunks_exact_mut(cw).zip(half_v.chunks_exact_mut(cw))) {
            let out = y.iter_mut().zip(row_cb.iter_mut().zip(row_cr.iter_mut()));
            for (p, (y, (cb, cr))) in px.chunks_exact(3).zip(out) {
                *y = Y_TO_LIMITED[p[0] as usize];
                *cb = p[1];
                *cr = p[2];
            }
            halve(row_cb, hu, across == 2);
            halve(row_cr, hv, across == 2);
        }
        // Down: pairs of rows, then to limited range.
        halve_rows(half_u, u, cw, down == 2);
        halve_rows(half_v, v, cw, down == 2);
        Ok(())
    }
}

/// Halves `src` (2n chroma samples) into `dst` (n). When the decoder upsampled n samples to
/// make `src` (its "fancy" triangle filter: each output is 3/4 its own sample and 1/4 the
/// neighbour's), `[-1 3 3 -1] / 4` undoes that exactly, up to rounding, and gives back the
/// camera's own chroma, where a plain pair mean would blur it by `[1 6 1] / 8`; the two end
/// samples follow from their inner neighbour ([`unblur_end`]). Otherwise the pair mean.
fn halve(src: &[u8], dst: &mut [u8], upsampled: bool) {
    let n = dst.len();
    if !upsampled || n < 3 || src.len() < 2 * n {
        for (d, p) in dst.iter_mut().zip(src.chunks_exact(2)) {
            *d = avg2(p[0], p[1]);
        }
        return;
    }
    for (d, q) in dst[1..n - 1].iter_mut().zip(src[1..].windows(4).step_by(2)) {
        *d = unblur(q[0], q[1], q[2], q[3]);
    }
    dst[0] = unblur_end(src[1], dst[1]);
    dst[n - 1] = unblur_end(src[2 * n - 2], dst[n - 2]);
}

/// [`halve`] down the rows (`width` samples each) of `src`, then into limited range, in `dst`.
fn halve_rows(src: &[u8], dst: &mut [u8], width: usize, upsampled: bool) {
    let row = |i: usize| src.get(i * width..(i + 1) * width).unwrap_or(&[]);
    let n = dst.len() / width.max(1);
    for (r, out) in dst.chunks_exact_mut(width).enumerate() {
        let (a, b) = (row(2 * r), row(2 * r + 1));
        if upsampled && r > 0 && r + 1 < n {
            let (p, q) = (row(2 * r - 1), row(2 * r + 2));
            for (o, (p, (a, (b, q)))) in out.iter_mut().zip(p.iter().zip(a.iter().zip(b.iter().zip(q)))) {
                *o = unblur(*p, *a, *b, *q);
            }
        } else {
            for (o, (a, b)) in out.iter_mut().zip(a.iter().zip(b)) {
                *o = avg2(*a, *b);
            }
        }
    }
    if upsampled && n >= 3 {
        // The end rows from the next-inner ones, as in `halve`.
        let (first, rest) = dst.split_at_mut(width);
        for (o, (s, inner)) in first.iter_mut().zip(row(1).iter().zip(rest.iter())) {
            *o = unblur_end(*s, *inner);
        }
        let (rest, last) = dst.split_at_mut((n - 1) * width);
        let inner = &rest[(n - 2) * width..];
        for (o, (s, inner)) in last.iter_mut().zip(row(2 * n - 2).iter().zip(inner)) {
            *o = unblur_end(*s, *inner);
        }
    }
    for o in dst.iter_mut() {
        *o = C_TO_LIMITED[*o as usize];
    }
}

/// The sample behind `b, c`, two outputs of triangle upsampling with outer neighbours `a, d`.
#[inline(always)]
fn unblur(a: u8, b: u8, c: u8, d: u8) -> u8 {
    let x = 3 * (b as i32 + c as i32) - (a as i32 + d as i32);
    ((x + 2) >> 2).clamp(0, 255) as u8
}

/// An end sample `c` from the upsampled output next to it, `s = (3c + inner + 2) >> 2`, and
/// its recovered inner neighbour: whatever the decoder did at the picture's edge.
#[inline(always)]
fn unblur_end(s: u8, inner: u8) -> u8 {
    (4 * s as i32 - inner as i32 + 1).div_euclid(3).clamp(0, 255) as u8
}

/// What sideline needs from a JPEG's headers before decoding it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct JpegHeader {
    /// How many luma samples one chroma sample spans (across, down); `None` if there is no
    /// three-component frame header.
    subsampling: Option<(u8, u8)>,
    /// A Huffman table (DHT) comes before the scan; MJPEG frames usually leave it out.
    huffman: bool,
}

/// Walks the marker segments up to the first scan; stops quietly at anything malformed (the
/// decoder then says what is wrong).
fn scan_header(jpeg: &[u8]) -> JpegHeader {
    let mut h = JpegHeader::default();
    let mut i = 2; // after SOI
    loop {
        while jpeg.get(i + 1) == Some(&0xFF) && jpeg.get(i) == Some(&0xFF) {
            i += 1; // fill bytes
        }
        let (Some(0xFF), Some(&marker), Some(&hi), Some(&lo)) =
            (jpeg.get(i), jpeg.get(i + 1), jpeg.get(i + 2), jpeg.get(i + 3))
        else {
            return h;
        };
        let len = u16::from_be_bytes([hi, lo]) as usize;
        match marker {
            0xC4 => h.huffman = true,
            // SOFn (C8 JPG, CC DAC are not frame headers): precision, height, width,
            // component count, then (id, HV, table) per component.
            0xC0..=0xCF if !matches!(marker, 0xC8 | 0xCC) => {
                h.subsampling = jpeg.get(i + 4..i + 2 + len).and_then(frame_subsampling);
            }
            0xDA | 0xD9 => return h, // scan or end: no more tables
            _ => {}
        }
        i += 2 + len;
    }
}

fn frame_subsampling(sof: &[u8]) -> Option<(u8, u8)> {
    if sof.get(5) != Some(&3) {
        return None;
    }
    let hv = |c: usize| sof.get(6 + 3 * c + 1).map(|&b| (b >> 4, b & 15));
    let (luma, cb, cr) = (hv(0)?, hv(1)?, hv(2)?);
    let (hmax, vmax) = (luma.0.max(cb.0).max(cr.0), luma.1.max(cb.1).max(cr.1));
    if cb != cr || cb.0 == 0 || cb.1 == 0 {
        return None;
    }
    Some((hmax / cb.0, vmax / cb.1))
}

/// An APP0 "AVI1" segment: it tells the decoder the stream is MJPEG, so that missing Huffman
/// tables are the standard ones (JPEG Annex K.3), as MJPEG defines.
const AVI1: [u8; 9] = [0xFF, 0xE0, 0x00, 0x07, b'A', b'V', b'I', b'1', 0x00];

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!("{}/tests/fixtures/pixfmt/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e} (see make.sh there)"))
    }

    fn frame() -> Frame {
        Frame::new(2, 2, PixelFormat::I420)
    }

    /// (max, mean) absolute difference per plane: Y, U, V.
    fn diff(got: &Frame, want: &[u8]) -> [(u8, f64); 3] {
        assert_eq!(got.data.len(), want.len(), "I420 sizes differ");
        let (gy, gu, gv) = got.planes();
        let n = gy.len();
        let c = gu.len();
        let planes = [(gy, &want[..n]), (gu, &want[n..n + c]), (gv, &want[n + c..])];
        planes.map(|(a, b)| {
            let d: Vec<u8> = a.iter().zip(b).map(|(x, y)| x.abs_diff(*y)).collect();
            let max = d.iter().copied().max().unwrap_or(0);
            (max, d.iter().map(|&x| x as f64).sum::<f64>() / d.len().max(1) as f64)
        })
    }

    /// Copies tight rows into rows `stride` apart, the padding filled with junk.
    fn restride(src: &[u8], rows: usize, row: usize, stride: usize) -> Vec<u8> {
        let mut out = vec![0xA5; rows * stride];
        for (o, s) in out.chunks_exact_mut(stride).zip(src.chunks_exact(row)) {
            o[..row].copy_from_slice(s);
        }
        out
    }

    #[test]
    fn yuyv_known_values() {
        // 4x2: row 0 `Y0 U Y1 V` x2, row 1 likewise; chroma means round half up.
        #[rustfmt::skip]
        let src = [
            10, 100, 11, 200,   12, 50, 13, 60,
            20, 101, 21, 203,   22, 52, 23, 61,
        ];
        let mut f = frame();
        yuyv_to_i420(&src, 4, 2, 0, &mut f).unwrap();
        assert_eq!((f.width, f.height, f.format), (4, 2, PixelFormat::I420));
        assert_eq!(f.data, [10, 11, 12, 13, 20, 21, 22, 23, 101, 51, 202, 61]);
    }

    #[test]
    fn nv12_known_values() {
        // 4x2, stride 6: two junk bytes at the end of each row.
        let src = [1, 2, 3, 4, 99, 99, 5, 6, 7, 8, 99, 99, 40, 80, 41, 81];
        let mut f = frame();
        nv12_to_i420(&src, 4, 2, 6, &mut f).unwrap();
        assert_eq!(f.data, [1, 2, 3, 4, 5, 6, 7, 8, 40, 41, 80, 81]);
    }

    #[test]
    fn range_luts_hit_the_limited_range_ends() {
        assert_eq!((Y_TO_LIMITED[0], Y_TO_LIMITED[255]), (16, 235));
        assert_eq!((C_TO_LIMITED[0], C_TO_LIMITED[128], C_TO_LIMITED[255]), (16, 128, 240));
        assert!(Y_TO_LIMITED.windows(2).all(|p| p[0] <= p[1]));
        assert!(C_TO_LIMITED.windows(2).all(|p| p[0] <= p[1]));
    }

    #[test]
    fn nv12_matches_ffmpeg_exactly() {
        let mut f = frame();
        nv12_to_i420(&fixture("img64.nv12"), 64, 48, 64, &mut f).unwrap();
        assert_eq!(f.data, fixture("img64_from_nv12.yuv"));
        // Padded rows (ffmpeg's), then an odd stride (junk padding).
        nv12_to_i420(&fixture("pad62.nv12"), 62, 46, 70, &mut f).unwrap();
        let want = fixture("pad62_from_nv12.yuv");
        assert_eq!(f.data, want);
        let odd = restride(&fixture("img64.nv12"), 48 + 24, 64, 67);
        nv12_to_i420(&odd, 64, 48, 67, &mut f).unwrap();
        assert_eq!(f.data, fixture("img64_from_nv12.yuv"));
    }

    /// ffmpeg 5.1 turns yuyv422 into yuv420p by averaging the two rows' chroma with rounding up,
    /// as here: measured max abs difference 0 on every plane, so the test demands it.
    #[test]
    fn yuyv_matches_ffmpeg() {
        let mut f = frame();
        yuyv_to_i420(&fixture("img64.yuyv"), 64, 48, 128, &mut f).unwrap();
        assert_eq!(diff(&f, &fixture("img64_from_yuyv.yuv")), [(0, 0.0); 3]);
        yuyv_to_i420(&fixture("pad62.yuyv"), 62, 46, 140, &mut f).unwrap();
        assert_eq!(diff(&f, &fixture("pad62_from_yuyv.yuv")), [(0, 0.0); 3]);
        let odd = restride(&fixture("img64.yuyv"), 48, 128, 133);
        yuyv_to_i420(&odd, 64, 48, 133, &mut f).unwrap();
        assert_eq!(f.data, fixture("img64_from_yuyv.yuv"));
    }

    /// Two decoders (IDCT rounding, chroma upsampling undone here) and two range conversions
    /// differ a little: the bounds are what was measured, rounded up.
    #[test]
    fn mjpeg_matches_ffmpeg_within_tolerance() {
        let mut conv = Converter::new(CameraFormat::Mjpeg, 64, 48, 0).unwrap();
        let mut f = frame();
        for (jpeg, reference) in
            [("img64.jpg", "img64_from_jpg.yuv"), ("img64_420.jpg", "img64_420_from_jpg.yuv")]
        {
            conv.convert(&fixture(jpeg), &mut f).unwrap();
            let d = diff(&f, &fixture(reference));
            eprintln!("{jpeg} vs ffmpeg, (max, mean) abs difference for Y, U, V: {d:?}");
            let [(ymax, ymean), (umax, umean), (vmax, vmean)] = d;
            assert!(ymax <= MJPEG_MAX_Y && ymean < 0.1, "{jpeg}: {d:?}");
            assert!(umax <= MJPEG_MAX_C && vmax <= MJPEG_MAX_C, "{jpeg}: {d:?}");
            assert!(umean < MJPEG_MEAN_C && vmean < MJPEG_MEAN_C, "{jpeg}: {d:?}");
        }

        // The same frame without its Huffman tables, as UVC cameras send MJPEG.
        let jpeg = fixture("img64.jpg");
        conv.convert(&jpeg, &mut f).unwrap();
        let stripped = strip_dht(&jpeg);
        assert!(stripped.len() < jpeg.len());
        let mut g = frame();
        conv.convert(&stripped, &mut g).unwrap();
        assert_eq!(g.data, f.data);
    }

    // Measured (x86_64, zune-jpeg 0.5.15): Y max 1, mean 0.013; chroma max 2 (4:2:2) and 3
    // (4:2:0), mean 0.37-0.48. The margin is for the decoder's other SIMD paths (NEON, SSE).
    const MJPEG_MAX_Y: u8 = 2;
    const MJPEG_MAX_C: u8 = 4;
    const MJPEG_MEAN_C: f64 = 0.75;

    #[test]
    fn reads_subsampling_and_huffman_tables_from_the_headers() {
        let h = scan_header(&fixture("img64.jpg"));
        assert_eq!(h, JpegHeader { subsampling: Some((2, 1)), huffman: true });
        assert_eq!(scan_header(&fixture("img64_420.jpg")).subsampling, Some((2, 2)));
        assert!(!scan_header(&strip_dht(&fixture("img64.jpg"))).huffman);
        assert_eq!(scan_header(b"\xFF\xD8\xFF"), JpegHeader::default());
        assert_eq!(scan_header(&[]), JpegHeader::default());
    }

    #[test]
    fn undoing_triangle_upsampling_gives_the_samples_back() {
        let samples = [10u8, 200, 30, 40, 250, 0, 128, 64];
        // The decoder's upsampling: 3/4 own sample, 1/4 neighbour, ends copied.
        let mut up = vec![samples[0]];
        for (i, &c) in samples.iter().enumerate() {
            let left = samples[i.saturating_sub(1)];
            let right = samples[(i + 1).min(samples.len() - 1)];
            if i > 0 {
                up.push(((3 * c as u32 + left as u32 + 2) >> 2) as u8);
            }
            if i + 1 < samples.len() {
                up.push(((3 * c as u32 + right as u32 + 2) >> 2) as u8);
            }
        }
        up.push(samples[samples.len() - 1]);
        let mut back = [0u8; 8];
        halve(&up, &mut back, true);
        let inner: Vec<u8> = back[1..7].iter().zip(&samples[1..7]).map(|(a, b)| a.abs_diff(*b)).collect();
        assert!(inner.iter().all(|&d| d <= 1), "{back:?} vs {samples:?}");
        halve(&up, &mut back, false);
        assert_eq!(back[1], avg2(up[2], up[3]), "without upsampling: the pair mean");
    }

    /// Drops every DHT segment (the fixture uses the standard tables, which MJPEG implies).
    fn strip_dht(jpeg: &[u8]) -> Vec<u8> {
        let mut out = jpeg[..2].to_vec();
        let mut i = 2;
        while i + 4 <= jpeg.len() && jpeg[i] == 0xFF {
            let marker = jpeg[i + 1];
            let len = u16::from_be_bytes([jpeg[i + 2], jpeg[i + 3]]) as usize;
            if marker == 0xDA {
                break; // start of scan: the rest is entropy-coded data
            }
            if marker != 0xC4 {
                out.extend_from_slice(&jpeg[i..i + 2 + len]);
            }
            i += 2 + len;
        }
        out.extend_from_slice(&jpeg[i..]);
        out
    }

    #[test]
    fn grey_jpeg_gets_neutral_chroma() {
        let img = image::GrayImage::from_fn(16, 8, |x, _| image::Luma([(x * 16) as u8]));
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 95).encode_image(&img).unwrap();
        let mut f = frame();
        MjpegDecoder::default().decode(&jpeg, 16, 8, &mut f).unwrap();
        let (y, u, v) = f.planes();
        assert!(u.iter().chain(v).all(|&c| c == 128));
        assert!(y[0] <= 18 && y[15] >= 220, "{:?}", &y[..16]);
    }

    #[test]
    fn odd_sizes_and_bad_strides_are_typed_errors() {
        let mut f = frame();
        let e = yuyv_to_i420(&[0; 64], 3, 2, 0, &mut f).unwrap_err();
        assert!(matches!(e, ConvertError::OddSize { width: 3, height: 2, .. }), "{e}");
        let e = nv12_to_i420(&[0; 64], 4, 3, 0, &mut f).unwrap_err();
        assert!(e.to_string().contains("NV12 4x3"), "{e}");
        assert!(Converter::new(CameraFormat::Mjpeg, 0, 2, 0).is_err());
        let e = yuyv_to_i420(&[0; 64], 4, 2, 6, &mut f).unwrap_err();
        assert!(matches!(e, ConvertError::Stride { stride: 6, min: 8, .. }), "{e}");
        assert!(Converter::new(CameraFormat::Nv12, 64, 48, 32).is_err());
    }

    #[test]
    fn truncated_raw_buffers_are_errors_naming_format_and_sizes() {
        let mut f = frame();
        let yuyv = fixture("img64.yuyv");
        let e = yuyv_to_i420(&yuyv[..yuyv.len() - 1], 64, 48, 0, &mut f).unwrap_err();
        assert_eq!(e.to_string(), "YUYV 64x48: buffer holds 6143 bytes but the frame needs 6144 (truncated)");
        let nv12 = fixture("pad62.nv12");
        // The last row need not be padded...
        nv12_to_i420(&nv12[..nv12.len() - 8], 62, 46, 70, &mut f).unwrap();
        // ...but must be whole.
        let e = nv12_to_i420(&nv12[..nv12.len() - 9], 62, 46, 70, &mut f).unwrap_err();
        assert!(e.to_string().starts_with("NV12 62x46: buffer holds 4821 bytes"), "{e}");
        for len in [0, 1, 100, 64 * 48] {
            assert!(nv12_to_i420(&nv12[..len], 62, 46, 70, &mut f).is_err());
            assert!(yuyv_to_i420(&yuyv[..len], 64, 48, 0, &mut f).is_err());
        }
    }

    #[test]
    fn truncated_or_wrong_jpegs_are_errors() {
        let jpeg = fixture("img64.jpg");
        let mut conv = Converter::new(CameraFormat::Mjpeg, 64, 48, 0).unwrap();
        let mut f = frame();
        for cut in [0, 1, 2, 20, jpeg.len() / 2, jpeg.len() - 100] {
            let e = conv.convert(&jpeg[..cut], &mut f).unwrap_err();
            assert!(e.to_string().starts_with(&format!("MJPEG 64x48: corrupt JPEG ({cut} bytes)")), "{e}");
        }
        let e = conv.convert(b"not a jpeg at all", &mut f).unwrap_err();
        assert!(matches!(e, ConvertError::Jpeg { .. }), "{e}");
        let mut small = Converter::new(CameraFormat::Mjpeg, 32, 24, 0).unwrap();
        let e = small.convert(&jpeg, &mut f).unwrap_err();
        assert_eq!(e.to_string(), "MJPEG: picture is 64x48 but the stream was set up for 32x24");
    }

    /// Garbage must come back as an error (or, rarely, a picture), never a panic.
    #[test]
    fn corrupt_jpegs_never_panic() {
        // With tables, without (the MJPEG path), and 4:2:0.
        let jpegs = [fixture("img64.jpg"), strip_dht(&fixture("img64.jpg")), fixture("img64_420.jpg")];
        let mut conv = Converter::new(CameraFormat::Mjpeg, 64, 48, 0).unwrap();
        let mut f = frame();
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for i in 0..3000 {
            let mut bad = jpegs[i % jpegs.len()].clone();
            for _ in 0..1 + next() % 8 {
                let at = (next() as usize) % bad.len();
                bad[at] = next() as u8;
            }
            let cut = bad.len() - (next() as usize % 64);
            let _ = conv.convert(&bad[..cut], &mut f);
        }
    }
}
