//! Player down, driven by the real pose model on real people.
//!
//! No clip of a player falling is available, so the sequences are built from real photos: the
//! person in OpenCV's basketball1.png is cut out (where the detector finds them), scaled, and
//! pasted onto the sample clip's lawn either upright or rotated to lying (90 degrees), with a little jitter
//! from frame to frame. The pose model, the tracker and the rule from board/sim.toml then run on
//! each frame exactly as in the loop.

mod common;

use std::time::Duration;

use sideline::capture::Frame;
use sideline::clock::MonoTime;
use sideline::config::Board;
use sideline::infer::detector::Detector;
use sideline::infer::pose::PoseEstimator;
use sideline::infer::preprocess::Preprocessor;
use sideline::rules::{AlertState, RuleSet, Scene, TrackedPose};
use sideline::track::{Tracker, TrackerConfig};

struct Rgb {
    w: u32,
    h: u32,
    px: Vec<u8>,
}

impl Rgb {
    fn get(&self, x: u32, y: u32) -> [u8; 3] {
        let i = ((y * self.w + x) * 3) as usize;
        [self.px[i], self.px[i + 1], self.px[i + 2]]
    }
}

fn load_png(path: &std::path::Path) -> Rgb {
    let img = image::open(path).unwrap().to_rgb8();
    Rgb { w: img.width(), h: img.height(), px: img.into_raw() }
}

/// The clip's first frame as RGB: the background the people are pasted onto.
fn background() -> Rgb {
    let f = &common::clip_frames(&common::media("vtest.y4m"), &[0])[0];
    let mut pre = Preprocessor::new(f.width, f.height, f.width, f.height, 0.0);
    let mut out = vec![0f32; pre.input_len()];
    pre.run(f, &mut out);
    Rgb { w: f.width, h: f.height, px: out.iter().map(|&v| v.round() as u8).collect() }
}

/// Cuts out the highest-scoring person the detector finds in `photo`.
fn person_crop(board: &Board, photo: &Rgb) -> Rgb {
    let frame = common::rgb_to_frame(&photo.px, photo.w, photo.h);
    let mut det = Detector::new(&board.models.detector, photo.w, photo.h, &board.inference).unwrap();
    let mut dets = vec![];
    det.prepare(&frame);
    det.infer(&mut dets).unwrap();
    let best = dets
        .iter()
        .filter(|d| d.class == 0)
        .max_by(|a, b| a.score.total_cmp(&b.score))
        .expect("the detector finds the person in basketball1.png");
    let b = best.bbox;
    let (x0, y0) = (b.x1.max(0.0) as u32, b.y1.max(0.0) as u32);
    let (x1, y1) = ((b.x2 as u32).min(photo.w), (b.y2 as u32).min(photo.h));
    let (w, h) = (x1 - x0, y1 - y0);
    let mut px = Vec::with_capacity((w * h * 3) as usize);
    for y in y0..y1 {
        for x in x0..x1 {
            px.extend_from_slice(&photo.get(x, y));
        }
    }
    Rgb { w, h, px }
}

/// Pastes `src` scaled by `scale` and rotated by `angle_deg` (clockwise, about its centre)
/// centred at (cx, cy).
fn composite(bg: &Rgb, src: &Rgb, scale: f32, angle_deg: f32, cx: f32, cy: f32) -> Frame {
    let mut out = bg.px.clone();
    let (s, c) = angle_deg.to_radians().sin_cos();
    let (hw, hh) = (src.w as f32 * scale / 2.0, src.h as f32 * scale / 2.0);
    let r = (hw * hw + hh * hh).sqrt().ceil() as i32;
    for dy in -r..=r {
        for dx in -r..=r {
            // Inverse rotation: which source point lands on (dx, dy)?
            let (fx, fy) = (dx as f32, dy as f32);
            let (ux, uy) = (c * fx + s * fy, -s * fx + c * fy);
            let (sx, sy) = ((ux + hw) / scale, (uy + hh) / scale);
            if sx < 0.0 || sy < 0.0 || sx >= src.w as f32 || sy >= src.h as f32 {
                continue;
            }
            let (x, y) = (cx as i32 + dx, cy as i32 + dy);
            if x >= 0 && y >= 0 && (x as u32) < bg.w && (y as u32) < bg.h {
                let i = ((y as u32 * bg.w + x as u32) * 3) as usize;
                out[i..i + 3].copy_from_slice(&src.get(sx as u32, sy as u32));
            }
        }
    }
    common::rgb_to_frame(&out, bg.w, bg.h)
}

struct Rig {
    board: Board,
    bg: Rgb,
    person: Rgb,
    pose: PoseEstimator,
}

impl Rig {
    fn new() -> Self {
        common::ort_env();
        let board = common::load_board(&common::repo().join("board/sim.toml"));
        let bg = background();
        let person = person_crop(&board, &load_png(&common::media("basketball1.png")));
        let pose =
            PoseEstimator::new(board.models.pose.as_ref().unwrap(), bg.w, bg.h, &board.inference).unwrap();
        Self { board, bg, person, pose }
    }

    /// Plays `lying(t)` at 10 fps for `secs` through pose, tracking and the shipped rules;
    /// returns (seconds, state) of each player-down alert and how many frames had a pose.
    fn play(&mut self, secs: f32, lying: impl Fn(f32) -> bool) -> (Vec<(f32, AlertState)>, usize) {
        let mut rules = RuleSet::new(&self.board).unwrap();
        let mut tracker = Tracker::new(TrackerConfig::default());
        let (mut poses, mut ids, mut alerts, mut out) = (vec![], vec![], vec![], vec![]);
        let mut seen = 0;
        let frames = (secs * 10.0) as u32;
        for i in 0..frames {
            let t = i as f32 / 10.0;
            // Small jitter, as a real detector and a breathing player would give.
            let (jx, jy) = ((i % 3) as i32 - 1, (i % 2) as i32);
            let frame = composite(
                &self.bg,
                &self.person,
                0.8,
                if lying(t) { -90.0 } else { 0.0 },
                230.0 + jx as f32,
                420.0 + jy as f32,
            );
            poses.clear();
            self.pose.prepare(&frame);
            self.pose.infer(&mut poses).unwrap();
            let boxes: Vec<_> = poses.iter().map(|p| (p.bbox, p.score)).collect();
            tracker.update(&boxes, &mut ids);
            // Only the pasted person: the clip's walkers in frame 0 are far from the lawn spot.
            let tracked: Vec<TrackedPose> = poses
                .iter()
                .zip(&ids)
                .filter(|(p, _)| p.bbox.center().y > 320.0)
                .map(|(p, &track)| TrackedPose { track, pose: *p })
                .collect();
            seen += usize::from(!tracked.is_empty());
            alerts.clear();
            let ts = MonoTime::from_nanos(1_000_000_000).plus(Duration::from_millis(i as u64 * 100));
            rules.evaluate(
                &Scene {
                    seq: i as u64,
                    ts,
                    objects: &[],
                    carried: &[],
                    coasting: &[],
                    poses: Some(&tracked),
                    luma: None,
                },
                &mut alerts,
            );
            out.extend(alerts.iter().map(|a| (t, a.state)));
        }
        (out, seen)
    }
}

#[test]
fn player_down_fires_for_a_lying_player_and_not_for_standing_or_brief_falls() {
    let mut rig = Rig::new();
    let min_down = rig.board.rules.player_down[0].min_down_s;

    // Lying still for 6 s: one alert, once min_down_s has passed.
    let (alerts, seen) = rig.play(6.0, |_| true);
    assert!(seen >= 50, "the pose model must find the lying player in most frames ({seen}/60)");
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0].1, AlertState::Raised);
    assert!(alerts[0].0 >= min_down && alerts[0].0 <= min_down + 1.5, "{alerts:?}");

    // Standing for 6 s: nothing.
    let (alerts, seen) = rig.play(6.0, |_| false);
    assert!(seen >= 50, "the pose model must find the standing player ({seen}/60)");
    assert!(alerts.is_empty(), "{alerts:?}");

    // Down for 2 s (shorter than min_down_s), then up: nothing.
    let (alerts, _) = rig.play(6.0, |t| t < 2.0);
    assert!(alerts.is_empty(), "{alerts:?}");

    // Down 5 s, then gets up: raised, then cleared.
    let (alerts, _) = rig.play(7.0, |t| t < 5.0);
    let states: Vec<_> = alerts.iter().map(|a| a.1).collect();
    assert_eq!(states, vec![AlertState::Raised, AlertState::Cleared], "{alerts:?}");
    assert!(alerts[1].0 >= 5.0, "{alerts:?}");
}
