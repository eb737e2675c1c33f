//! Staged people, for what the footage here never shows: a player falling, two players
//! colliding. A person cut from a real photo is pasted into the footage along a scripted path, upright or turned to lying; the
//! detector, pose model, trackers and rules see the real pixels of a real person, and only the
//! motion is scripted. Two actors can meet: each cut along the person's `outline`, the one
//! pasted later is in front, and the one behind shows round him as a real player would.
//!
//! ```toml
//! [[actor]]
//! photo = "basketball1"      # <clips>/<photo>.png
//! crop = [190, 76, 318, 290] # the person in the photo: x0, y0, x1, y1 in its pixels
//! scale = 0.8                # pasted size / size in the photo
//! mirror = false             # flipped left to right (another player from the same photo)
//! outline = [[81, 92], [73, 98], [46, 148]] # optional, photo pixels: only what lies inside
//! path = [                   # on screen from the first keyframe to the last; linear between
//!   { t_s = 1.0, x = 230, y = 420 },              # the person's centre, in frame pixels
//!   { t_s = 4.0, x = 230, y = 420 },
//!   { t_s = 4.5, x = 240, y = 440, angle = -90 }, # degrees: -90 lies the person down
//!   { t_s = 12.0, x = 240, y = 440, angle = -90 },
//! ]
//! ```

use std::path::Path;

use anyhow::Context;
use serde::Deserialize;

use crate::capture::Frame;
use crate::geometry::{Point, Polygon};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Actor {
    /// `<clips>/<photo>.png`.
    pub photo: String,
    /// `[x0, y0, x1, y1]` of the person in the photo.
    pub crop: [u32; 4],
    pub scale: f32,
    #[serde(default)]
    pub mirror: bool,
    /// The person's outline in the photo, `[[x, y], ...]` in its pixels: only what lies inside
    /// is pasted. Without it the whole crop is, background and all, which is fine for one
    /// person alone, but two players in contact would each cover the other with a rectangle of
    /// the photo's wall.
    #[serde(default)]
    pub outline: Option<Vec<[f32; 2]>>,
    pub path: Vec<Key>,
}

/// Where the actor is at `t_s`: centre in frame pixels, turned `angle` degrees clockwise.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Key {
    pub t_s: f32,
    pub x: f32,
    pub y: f32,
    #[serde(default)]
    pub angle: f32,
}

/// Checks an actor's fields; each problem names its field.
pub fn check(i: usize, a: &Actor, length_s: f32) -> Vec<String> {
    let mut p = Vec::new();
    if a.photo.is_empty() || a.photo.contains(['/', '\\']) {
        p.push(format!("actor[{i}].photo: `{}` is not a photo name", a.photo));
    }
    let [x0, y0, x1, y1] = a.crop;
    if x0 >= x1 || y0 >= y1 {
        p.push(format!("actor[{i}].crop: {:?} is not x0 < x1, y0 < y1", a.crop));
    }
    if !(a.scale > 0.0 && a.scale <= 4.0) {
        p.push(format!("actor[{i}].scale: {} is outside (0, 4]", a.scale));
    }
    if let Some(Err(e)) = a.outline.as_deref().map(Polygon::new) {
        p.push(format!("actor[{i}].outline: {e}"));
    }
    if a.path.is_empty() {
        p.push(format!("actor[{i}].path: needs at least one keyframe"));
    }
    let mut last = f32::NEG_INFINITY;
    for (j, k) in a.path.iter().enumerate() {
        if !(k.t_s >= 0.0 && k.t_s <= length_s && k.t_s > last) {
            p.push(format!(
                "actor[{i}].path[{j}].t_s: {} must be within the scenario and after the keyframe before",
                k.t_s
            ));
        }
        if ![k.x, k.y, k.angle].iter().all(|v| v.is_finite()) {
            p.push(format!("actor[{i}].path[{j}]: x, y and angle must be numbers"));
        }
        last = k.t_s;
    }
    p
}

/// The person cut out of the photo, in the frame's colour space (BT.601 limited range, as the
/// clip and cameras deliver), one Y, U and V per photo pixel; `None` outside the outline.
struct Sprite {
    w: u32,
    h: u32,
    yuv: Vec<Option<[u8; 3]>>,
}

impl Sprite {
    fn load(path: &Path, crop: [u32; 4], outline: Option<&Polygon>) -> anyhow::Result<Self> {
        let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
        decoder.set_transformations(png::Transformations::normalize_to_color8());
        let mut reader = decoder.read_info().with_context(|| format!("reading {}", path.display()))?;
        let size = reader.output_buffer_size().context("the image is too large")?;
        let mut buf = vec![0u8; size];
        let info = reader.next_frame(&mut buf).with_context(|| format!("decoding {}", path.display()))?;
        let channels = info.color_type.samples();
        let [x0, y0, x1, y1] = crop;
        anyhow::ensure!(
            x1 <= info.width && y1 <= info.height,
            "crop {crop:?} reaches outside {} ({}x{})",
            path.display(),
            info.width,
            info.height
        );
        let mut yuv = Vec::with_capacity(((x1 - x0) * (y1 - y0)) as usize);
        for y in y0..y1 {
            for x in x0..x1 {
                let px = &buf[y as usize * info.line_size + x as usize * channels..][..channels];
                let (r, g, b) = match channels {
                    1 | 2 => (px[0], px[0], px[0]),
                    _ => (px[0], px[1], px[2]),
                };
                let centre = Point { x: x as f32 + 0.5, y: y as f32 + 0.5 };
                let inside = outline.is_none_or(|o| o.contains(centre));
                yuv.push(inside.then(|| to_yuv(r as f32, g as f32, b as f32)));
            }
        }
        Ok(Self { w: x1 - x0, h: y1 - y0, yuv })
    }
}

fn to_yuv(r: f32, g: f32, b: f32) -> [u8; 3] {
    let q = |v: f32| v.round().clamp(0.0, 255.0) as u8;
    [
        q(16.0 + 0.257 * r + 0.504 * g + 0.098 * b),
        q(128.0 - 0.148 * r - 0.291 * g + 0.439 * b),
        q(128.0 + 0.439 * r - 0.368 * g - 0.071 * b),
    ]
}

/// An actor ready to paste: its sprite and path.
pub struct Staged {
    sprite: Sprite,
    scale: f32,
    mirror: bool,
    path: Vec<Key>,
}

impl Staged {
    pub fn load(clips: &Path, a: &Actor) -> anyhow::Result<Self> {
        let path = clips.join(format!("{}.png", a.photo));
        let outline = a.outline.as_deref().map(Polygon::new).transpose().context("outline")?;
        let sprite = Sprite::load(&path, a.crop, outline.as_ref())?;
        Ok(Self { sprite, scale: a.scale, mirror: a.mirror, path: a.path.clone() })
    }

    /// Where the actor is at `t`, if on screen.
    fn at(&self, t: f32) -> Option<Key> {
        let (first, last) = (self.path.first()?, self.path.last()?);
        if t < first.t_s || t > last.t_s {
            return None;
        }
        let i = self.path.iter().rposition(|k| k.t_s <= t)?;
        let Some(b) = self.path.get(i + 1) else { return Some(*last) };
        let a = self.path[i];
        let f = (t - a.t_s) / (b.t_s - a.t_s);
        let mix = |u: f32, v: f32| u + (v - u) * f;
        Some(Key { t_s: t, x: mix(a.x, b.x), y: mix(a.y, b.y), angle: mix(a.angle, b.angle) })
    }

    /// Pastes the actor into an I420 `frame` as it is at `t` seconds.
    pub fn paste(&self, frame: &mut Frame, t: f32) {
        let Some(k) = self.at(t) else { return };
        let (fw, fh) = (frame.width as i32, frame.height as i32);
        // I420: chroma planes of ceil(w/2) x ceil(h/2).
        let (cw, ch) = ((fw + 1) / 2, (fh + 1) / 2);
        let (luma, chroma) = frame.data.split_at_mut((fw * fh) as usize);
        let (u_plane, v_plane) = chroma.split_at_mut((cw * ch) as usize);
        let (s, c) = k.angle.to_radians().sin_cos();
        let (hw, hh) = (self.sprite.w as f32 * self.scale / 2.0, self.sprite.h as f32 * self.scale / 2.0);
        // Which sprite pixel lands on frame point (px, py): the rotation undone about the centre.
        let source = |px: f32, py: f32| -> Option<[u8; 3]> {
            let (dx, dy) = (px - k.x, py - k.y);
            let (ux, uy) = (c * dx + s * dy, -s * dx + c * dy);
            let (sx, sy) = ((ux + hw) / self.scale, (uy + hh) / self.scale);
            if sx < 0.0 || sy < 0.0 || sx >= self.sprite.w as f32 || sy >= self.sprite.h as f32 {
                return None;
            }
            let sx = if self.mirror { self.sprite.w - 1 - sx as u32 } else { sx as u32 };
            self.sprite.yuv[(sy as u32 * self.sprite.w + sx) as usize]
        };
        let r = (hw * hw + hh * hh).sqrt().ceil() as i32 + 1;
        let (cx, cy) = (k.x.round() as i32, k.y.round() as i32);
        for y in (cy - r).max(0)..(cy + r).min(fh) {
            for x in (cx - r).max(0)..(cx + r).min(fw) {
                if let Some(p) = source(x as f32, y as f32) {
                    luma[(y * fw + x) as usize] = p[0];
                }
            }
        }
        // Chroma at the centre of each 2x2 block it covers.
        for y in ((cy - r) / 2).max(0)..((cy + r) / 2 + 1).min(ch) {
            for x in ((cx - r) / 2).max(0)..((cx + r) / 2 + 1).min(cw) {
                if let Some(p) = source(2.0 * x as f32 + 0.5, 2.0 * y as f32 + 0.5) {
                    u_plane[(y * cw + x) as usize] = p[1];
                    v_plane[(y * cw + x) as usize] = p[2];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::PixelFormat;

    fn staged(w: u32, h: u32, path: Vec<Key>) -> Staged {
        let yuv = (0..w * h).map(|i| Some([(i % 200) as u8 + 16, 90, 240])).collect();
        Staged { sprite: Sprite { w, h, yuv }, scale: 1.0, mirror: false, path }
    }

    fn key(t_s: f32, x: f32, y: f32, angle: f32) -> Key {
        Key { t_s, x, y, angle }
    }

    #[test]
    fn the_path_is_interpolated_and_the_actor_is_on_screen_only_within_it() {
        let a = staged(2, 2, vec![key(1.0, 10.0, 20.0, 0.0), key(3.0, 30.0, 20.0, -90.0)]);
        assert!(a.at(0.9).is_none() && a.at(3.1).is_none());
        let k = a.at(2.0).unwrap();
        assert_eq!((k.x, k.y, k.angle), (20.0, 20.0, -45.0));
        let k = a.at(3.0).unwrap();
        assert_eq!((k.x, k.angle), (30.0, -90.0));
    }

    #[test]
    fn a_pasted_sprite_lands_where_its_path_says_and_turned_lies_on_its_side() {
        // A 4 wide, 10 tall sprite: upright it covers 4x10 pixels, turned 90 degrees 10x4.
        let mut f = Frame::new(40, 40, PixelFormat::I420);
        f.data.fill(0);
        staged(4, 10, vec![key(0.0, 20.0, 20.0, 0.0)]).paste(&mut f, 0.0);
        let covered = |f: &Frame| -> (u32, u32) {
            let (mut xs, mut ys) = (vec![], vec![]);
            for y in 0..40u32 {
                for x in 0..40u32 {
                    if f.data[(y * 40 + x) as usize] != 0 {
                        xs.push(x);
                        ys.push(y);
                    }
                }
            }
            let span = |v: &[u32]| v.iter().max().unwrap() - v.iter().min().unwrap() + 1;
            (span(&xs), span(&ys))
        };
        assert_eq!(covered(&f), (4, 10));
        // Chroma is painted too, where the sprite is.
        assert_eq!(f.data[1600 + 10 * 20 + 10], 90);
        assert_eq!(f.data[1600 + 400 + 10 * 20 + 10], 240);

        let mut f = Frame::new(40, 40, PixelFormat::I420);
        f.data.fill(0);
        staged(4, 10, vec![key(0.0, 20.0, 20.0, -90.0)]).paste(&mut f, 0.0);
        let (w, h) = covered(&f);
        assert!((9..=11).contains(&w) && (3..=5).contains(&h), "{w}x{h}");
    }

    #[test]
    fn odd_frames_and_edges_are_pasted_within_the_planes() {
        // 41x41 I420: chroma planes of 21x21. An actor over the bottom-right corner reaches the
        // last chroma row and column and nothing past them.
        let mut f = Frame::new(41, 41, PixelFormat::I420);
        f.data.fill(0);
        staged(6, 6, vec![key(0.0, 40.0, 40.0, 30.0)]).paste(&mut f, 0.0);
        let (luma, chroma) = (41 * 41, 21 * 21);
        assert_eq!(f.data.len(), luma + 2 * chroma);
        assert_ne!(f.data[luma - 1], 0, "last luma pixel");
        assert_eq!(f.data[luma + chroma - 1], 90, "last U");
        assert_eq!(f.data[luma + 2 * chroma - 1], 240, "last V");
        assert_eq!(f.data[luma + chroma], 0, "V's first pixel, far from the actor");
    }

    #[test]
    fn only_what_lies_inside_the_outline_is_pasted() {
        // A diamond inside a 10x10 sprite: its corners stay as the frame was.
        let diamond = Polygon::new(&[[5.0, 0.0], [10.0, 5.0], [5.0, 10.0], [0.0, 5.0]]).unwrap();
        let inside = |x: f32, y: f32| diamond.contains(Point { x, y });
        assert!(inside(5.0, 5.0) && inside(2.5, 5.5));
        assert!(!inside(0.5, 0.5) && !inside(9.5, 9.5) && !inside(11.0, 5.0));
        let yuv = (0..100)
            .map(|i| inside((i % 10) as f32 + 0.5, (i / 10) as f32 + 0.5).then_some([200, 90, 240]))
            .collect();
        let a = Staged {
            sprite: Sprite { w: 10, h: 10, yuv },
            scale: 1.0,
            mirror: false,
            path: vec![key(0.0, 5.0, 5.0, 0.0)],
        };
        let mut f = Frame::new(10, 10, PixelFormat::I420);
        f.data.fill(16);
        a.paste(&mut f, 0.0);
        assert_eq!((f.data[0], f.data[99]), (16, 16), "corners untouched");
        assert_eq!(f.data[5 * 10 + 5], 200, "centre pasted");
        let pasted = f.data[..100].iter().filter(|&&v| v == 200).count();
        assert!((40..=60).contains(&pasted), "about half the square: {pasted}");
    }

    #[test]
    fn bad_actor_fields_are_named() {
        let a = Actor {
            photo: "../x".into(),
            crop: [5, 0, 5, 10],
            scale: 0.0,
            mirror: false,
            outline: Some(vec![[0.0, 0.0], [1.0, f32::INFINITY]]),
            path: vec![key(2.0, 0.0, 0.0, 0.0), key(1.0, 0.0, 0.0, f32::NAN)],
        };
        let p = check(3, &a, 10.0).join("\n");
        for field in [
            "actor[3].photo",
            "actor[3].crop",
            "actor[3].scale",
            "actor[3].outline",
            "actor[3].path[1].t_s",
            "actor[3].path[1]:",
        ] {
            assert!(p.contains(field), "{field} not named in:\n{p}");
        }
        let ok = Actor {
            photo: "p".into(),
            crop: [0, 0, 2, 2],
            scale: 1.0,
            mirror: true,
            outline: Some(vec![[0.0, 0.0], [2.0, 0.0], [1.0, 2.0]]),
            path: vec![key(0.0, 1.0, 1.0, 0.0)],
        };
        assert!(check(0, &ok, 10.0).is_empty());
        let empty = Actor { path: vec![], ..ok };
        assert!(check(0, &empty, 10.0)[0].contains("actor[0].path"));
    }
}
