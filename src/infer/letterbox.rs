//! Aspect-preserving resize into a model's fixed input, and the inverse mapping of model
//! coordinates back to frame pixels.

use crate::geometry::{BBox, Point};

/// Frame `src` scaled by `scale` and placed at `(pad_x, pad_y)` inside the `dst` input.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Letterbox {
    pub src_w: u32,
    pub src_h: u32,
    pub dst_w: u32,
    pub dst_h: u32,
    pub scale: f32,
    /// Scaled content size, in input pixels.
    pub content_w: u32,
    pub content_h: u32,
    pub pad_x: u32,
    pub pad_y: u32,
}

impl Letterbox {
    pub fn new(src_w: u32, src_h: u32, dst_w: u32, dst_h: u32) -> Self {
        let scale = (dst_w as f32 / src_w as f32).min(dst_h as f32 / src_h as f32);
        let content_w = ((src_w as f32 * scale).round() as u32).clamp(1, dst_w);
        let content_h = ((src_h as f32 * scale).round() as u32).clamp(1, dst_h);
        Self {
            src_w,
            src_h,
            dst_w,
            dst_h,
            scale,
            content_w,
            content_h,
            pad_x: (dst_w - content_w) / 2,
            pad_y: (dst_h - content_h) / 2,
        }
    }

    /// Input pixel -> frame pixel, clamped to the frame.
    pub fn to_frame(&self, x: f32, y: f32) -> Point {
        // Map through the content rectangle exactly, so rounding of the content size does not
        // drift boxes at the far edge.
        let sx = self.src_w as f32 / self.content_w as f32;
        let sy = self.src_h as f32 / self.content_h as f32;
        Point {
            x: ((x - self.pad_x as f32) * sx).clamp(0.0, self.src_w as f32),
            y: ((y - self.pad_y as f32) * sy).clamp(0.0, self.src_h as f32),
        }
    }

    pub fn box_to_frame(&self, b: BBox) -> BBox {
        let a = self.to_frame(b.x1, b.y1);
        let c = self.to_frame(b.x2, b.y2);
        BBox { x1: a.x, y1: a.y, x2: c.x, y2: c.y }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wide_frame_pads_top_and_bottom() {
        let lb = Letterbox::new(768, 576, 512, 512);
        assert_eq!((lb.content_w, lb.content_h, lb.pad_x, lb.pad_y), (512, 384, 0, 64));
        assert_eq!(lb.to_frame(0.0, 64.0), Point { x: 0.0, y: 0.0 });
        assert_eq!(lb.to_frame(512.0, 448.0), Point { x: 768.0, y: 576.0 });
        assert_eq!(lb.to_frame(256.0, 256.0), Point { x: 384.0, y: 288.0 });
        // Padding maps onto the frame edge, never outside it.
        assert_eq!(lb.to_frame(10.0, 0.0), Point { x: 15.0, y: 0.0 });
    }

    #[test]
    fn odd_tall_frame_pads_left_and_right() {
        // 333x517 into 256x256: scale 256/517, content 165x256, pad_x 45.
        let lb = Letterbox::new(333, 517, 256, 256);
        assert_eq!((lb.content_w, lb.content_h, lb.pad_x, lb.pad_y), (165, 256, 45, 0));
        let p = lb.to_frame(45.0 + 165.0, 256.0);
        assert_eq!((p.x, p.y), (333.0, 517.0));
        let p = lb.to_frame(45.0 + 82.5, 128.0);
        assert!((p.x - 166.5).abs() < 1e-3 && (p.y - 258.5).abs() < 1e-3, "{p:?}");
    }
}
