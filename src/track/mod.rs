//! Tracking: stable identities across frames, so rules reason about *a person* over time
//! rather than about unrelated boxes.
//!
//! A ByteTrack-style tracker ("ByteTrack: Multi-Object Tracking by Associating Every Detection
//! Box", Zhang et al. 2022), one per class:
//!
//! 1. every track's box is predicted one frame ahead: a Kalman filter on centre, aspect and
//!    height with constant velocities, as in SORT (or the original smoothed-velocity model);
//! 2. **high-score** detections (at or above the detector's threshold: what the rules see) are
//!    matched to the confirmed tracks, including ones lost for up to `max_misses` frames;
//! 3. **low-score** detections (from `low_score` up to that threshold: a person half hidden or
//!    blurred, whose score dips) are matched to the confirmed tracks still unmatched, with a
//!    stricter overlap; they keep a track alive and on course but are never reported and never
//!    start a track. Unlike ByteTrack, lost tracks take part: someone coming out from behind a
//!    post is a low-score sliver for a frame or two, and at 10 fps those frames are much of a
//!    short occlusion;
//! 4. tentative tracks (fewer than `min_hits` hits) get the high-score detections left over;
//! 5. high-score detections still unmatched start tracks. A tentative track that misses a frame
//!    is dropped at once; a confirmed one coasts on its prediction for `max_misses` frames.
//!
//! Overlap is the IoU of the predicted box and the detection, matched optimally (Hungarian) or
//! greedily; see [`assign`]. With the Kalman filter, a detection much narrower (or shorter) than
//! the prediction but as tall (or wide) is taken as a partial view: it is compared with the
//! prediction completed to the track's size from its side that agrees with the prediction, and
//! it updates the filter only in the direction it is whole, so an occluder's edge does not drag
//! the track's centre and velocity.
//!
//! Every high-score detection gets an id from the frame it appears (tentative tracks included),
//! so rules see exactly the objects they would see without tracking, only with steadier ids.
//! All scratch space is reused: nothing is allocated per frame once the buffers have grown to
//! the busiest frame (preallocated for 128 tracks and detections).

pub mod assign;
mod kalman;

use serde::{Deserialize, Serialize};

pub use assign::Association;
use assign::{Assigner, NONE};
use kalman::Kalman;

use crate::geometry::BBox;

/// How a track's box is carried from one frame to the next.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Motion {
    /// Kalman filter on (cx, cy, w/h, h) and their velocities, noise scaled by the box height.
    #[default]
    Kalman,
    /// The box moved by its centre's per-frame motion, smoothed 50/50 (the original tracker).
    Velocity,
}

#[derive(Clone, Debug)]
pub struct Track {
    pub id: u32,
    /// The matched detection's box, or the prediction while the track coasts.
    pub bbox: BBox,
    /// Score of the last matched detection.
    pub score: f32,
    /// Frames with a matching detection (high or low score).
    pub hits: u32,
    /// Consecutive frames without one.
    pub misses: u32,
    /// Seen `min_hits` times: coasts through misses instead of being dropped at the first one.
    pub confirmed: bool,
    /// Predicted box for the frame being associated.
    pred: BBox,
    /// Velocity model: per-frame motion of the box centre, smoothed.
    vx: f32,
    vy: f32,
    kf: Kalman,
}

impl Track {
    /// Matched to a detection in the last update.
    pub fn seen(&self) -> bool {
        self.misses == 0
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TrackerConfig {
    /// Minimum IoU between a predicted track box and a high-score detection to associate them.
    pub min_iou: f32,
    /// Frames a confirmed track may go unseen before it is dropped.
    pub max_misses: u32,
    /// Detections scoring at least this are high-score: they are reported and start tracks.
    /// Set to the detector's threshold for the class (0 when every detection given is reported).
    pub high_score: f32,
    /// Detections from this score up to `high_score` only extend tracks (second stage). At or
    /// above `high_score` there is no second stage.
    pub low_score: f32,
    /// Minimum IoU for a low-score detection (stricter: low scores include background).
    pub low_min_iou: f32,
    /// Hits before a track is confirmed (1: at once, as the original tracker).
    pub min_hits: u32,
    pub motion: Motion,
    pub association: Association,
}

impl Default for TrackerConfig {
    /// A profile's defaults, every detection given reported.
    fn default() -> Self {
        Self::from_profile(&crate::config::Tracking::default(), 0.0)
    }
}

impl TrackerConfig {
    /// The original SORT-style tracker: one greedy stage, smoothed-velocity motion, every track
    /// confirmed at birth, no low-score stage. In a profile: `[tracking] low_score = 1,
    /// max_misses = 5, motion = "velocity", association = "greedy"`.
    pub fn legacy() -> Self {
        Self {
            min_iou: 0.2,
            max_misses: 5,
            high_score: 0.0,
            low_score: 1.0,
            low_min_iou: 0.5,
            min_hits: 1,
            motion: Motion::Velocity,
            association: Association::Greedy,
        }
    }

    /// A profile's `[tracking]` for a class whose detections are reported from `high_score`.
    pub fn from_profile(t: &crate::config::Tracking, high_score: f32) -> Self {
        Self {
            min_iou: t.min_iou,
            max_misses: t.max_misses,
            high_score,
            low_score: t.low_score,
            low_min_iou: t.low_min_iou,
            min_hits: t.min_hits,
            motion: t.motion,
            association: t.association,
        }
    }

    fn is_high(&self, score: f32) -> bool {
        score >= self.high_score
    }

    fn is_low(&self, score: f32) -> bool {
        score >= self.low_score && score < self.high_score
    }
}

/// A detection much narrower (or shorter) than its track's prediction while as tall (or as
/// wide) shows part of the person, the rest behind a post or someone nearer.
const PARTIAL: f32 = 0.7;

/// Whether the detection's horizontal and vertical extents are whole, judged against the
/// prediction (see [`PARTIAL`]). Both false: a smaller object, not a partial view.
fn whole(pred: &BBox, det: &BBox) -> (bool, bool) {
    let (wr, hr) = (det.width() / pred.width().max(1e-3), det.height() / pred.height().max(1e-3));
    let full = |r: f32| (PARTIAL..=1.0 / PARTIAL).contains(&r);
    match (wr < PARTIAL && full(hr), hr < PARTIAL && full(wr)) {
        (true, _) => (false, true),
        (_, true) => (true, false),
        _ => (true, true),
    }
}

/// A partial detection completed to the predicted size from its side that agrees with the
/// prediction: what it is compared with when associating. Its overlap with the full predicted
/// box would otherwise be about the share visible, and a person half behind a post would fall
/// under any useful IoU gate, or be taken for a new person as they come out.
fn completed(pred: &BBox, det: &BBox) -> BBox {
    let (pw, ph) = (pred.width(), pred.height());
    let mut b = *det;
    match whole(pred, det) {
        (false, _) => {
            if (det.x1 - pred.x1).abs() <= (det.x2 - pred.x2).abs() {
                b.x2 = det.x1 + pw;
            } else {
                b.x1 = det.x2 - pw;
            }
        }
        (_, false) => {
            if (det.y1 - pred.y1).abs() <= (det.y2 - pred.y2).abs() {
                b.y2 = det.y1 + ph;
            } else {
                b.y1 = det.y2 - ph;
            }
        }
        _ => {}
    }
    b
}

/// Which tracks and detections take part in one association stage.
#[derive(Clone, Copy)]
enum Stage {
    /// Confirmed tracks, high-score detections.
    High,
    /// Confirmed tracks seen last frame and still unmatched, low-score detections.
    Low,
    /// Tentative tracks, high-score detections still unmatched.
    Tentative,
}

pub struct Tracker {
    cfg: TrackerConfig,
    tracks: Vec<Track>,
    next_id: u32,
    assigner: Assigner,
    /// Per track: the matched detection index, or NONE.
    track_det: Vec<usize>,
    /// Per detection: the matched track index, or NONE.
    det_track: Vec<usize>,
    /// Per detection: the id of the track a low-score detection carries, else 0.
    carried: Vec<u32>,
    /// One stage's candidates (indices into tracks / detections) and its result.
    rows: Vec<usize>,
    cols: Vec<usize>,
    row_match: Vec<usize>,
}

const CAPACITY: usize = 128;
/// Misses through which a confirmed track still counts as followed ([`Tracker::coasting`]).
pub const COAST_FRAMES: u32 = 2;

impl Tracker {
    pub fn new(cfg: TrackerConfig) -> Self {
        Self {
            cfg,
            tracks: Vec::with_capacity(CAPACITY),
            next_id: 1,
            assigner: Assigner::with_capacity(CAPACITY, CAPACITY),
            track_det: Vec::with_capacity(CAPACITY),
            det_track: Vec::with_capacity(CAPACITY),
            carried: Vec::with_capacity(CAPACITY),
            rows: Vec::with_capacity(CAPACITY),
            cols: Vec::with_capacity(CAPACITY),
            row_match: Vec::with_capacity(CAPACITY),
        }
    }

    pub fn config(&self) -> &TrackerConfig {
        &self.cfg
    }

    /// Live tracks, including tentative ones and ones coasting through a miss.
    pub fn tracks(&self) -> &[Track] {
        &self.tracks
    }

    /// Per detection of the last [`Tracker::update`]: the id of the confirmed track a low-score
    /// detection carries (a person half hidden, say behind another at a clash), else 0. These
    /// are not reported; a rule about contact between people may still want to see them.
    pub fn carried(&self) -> &[u32] {
        &self.carried
    }

    /// Confirmed tracks that found no detection in the last update, for at most
    /// [`COAST_FRAMES`] frames in a row; their box is the prediction. A player wholly hidden
    /// behind another at a clash, for a frame or two: not reported, but followed.
    pub fn coasting(&self) -> impl Iterator<Item = &Track> + '_ {
        self.tracks.iter().filter(|t| t.confirmed && (1..=COAST_FRAMES).contains(&t.misses))
    }

    /// Associates this frame's detections, `(box, score)`, with tracks. `ids[i]` is the track id
    /// to report for `dets[i]`: non-zero for every high-score detection, 0 for every low-score one
    /// (matched or not) and for anything below `low_score`.
    pub fn update(&mut self, dets: &[(BBox, f32)], ids: &mut Vec<u32>) {
        let cfg = self.cfg;
        for t in &mut self.tracks {
            t.pred = match cfg.motion {
                Motion::Velocity => BBox {
                    x1: t.bbox.x1 + t.vx,
                    y1: t.bbox.y1 + t.vy,
                    x2: t.bbox.x2 + t.vx,
                    y2: t.bbox.y2 + t.vy,
                },
                Motion::Kalman => {
                    t.kf.predict(!t.seen());
                    t.kf.bbox()
                }
            };
        }
        self.track_det.clear();
        self.track_det.resize(self.tracks.len(), NONE);
        self.det_track.clear();
        self.det_track.resize(dets.len(), NONE);
        self.associate(Stage::High, dets);
        if cfg.low_score < cfg.high_score {
            self.associate(Stage::Low, dets);
        }
        self.associate(Stage::Tentative, dets);

        ids.clear();
        ids.resize(dets.len(), 0);
        self.carried.clear();
        self.carried.resize(dets.len(), 0);
        for (ti, t) in self.tracks.iter_mut().enumerate() {
            match self.track_det[ti] {
                NONE => {
                    t.misses += 1;
                    t.bbox = t.pred;
                }
                di => {
                    let (b, score) = dets[di];
                    match cfg.motion {
                        Motion::Velocity => {
                            let (old, new) = (t.bbox.center(), b.center());
                            t.vx = 0.5 * t.vx + 0.5 * (new.x - old.x);
                            t.vy = 0.5 * t.vy + 0.5 * (new.y - old.y);
                        }
                        Motion::Kalman => {
                            let (x, y) = whole(&t.pred, &b);
                            t.kf.update(&b, x, y);
                        }
                    }
                    t.bbox = b;
                    t.score = score;
                    t.hits += 1;
                    t.misses = 0;
                    t.confirmed |= t.hits >= cfg.min_hits;
                    if cfg.is_high(score) {
                        ids[di] = t.id;
                    } else {
                        self.carried[di] = t.id;
                    }
                }
            }
        }
        // Dropped: confirmed tracks unseen too long, tentative ones at their first miss.
        self.tracks.retain(|t| t.misses == 0 || (t.confirmed && t.misses <= cfg.max_misses));
        // Born: high-score detections nobody took.
        for (di, &(b, score)) in dets.iter().enumerate() {
            if !cfg.is_high(score) || self.det_track[di] != NONE {
                continue;
            }
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1).max(1);
            self.tracks.push(Track {
                id,
                bbox: b,
                score,
                hits: 1,
                misses: 0,
                confirmed: cfg.min_hits <= 1,
                pred: b,
                vx: 0.0,
                vy: 0.0,
                kf: Kalman::new(&b),
            });
            ids[di] = id;
        }
    }

    fn associate(&mut self, stage: Stage, dets: &[(BBox, f32)]) {
        let cfg = self.cfg;
        // The filtered box keeps the person's whole size through partial views; the smoothed
        // velocity model's box is the last detection, partial or not.
        let complete = cfg.motion == Motion::Kalman;
        self.rows.clear();
        for (ti, t) in self.tracks.iter().enumerate() {
            let eligible = match stage {
                Stage::High => t.confirmed,
                Stage::Low => t.confirmed,
                Stage::Tentative => !t.confirmed,
            };
            if eligible && self.track_det[ti] == NONE {
                self.rows.push(ti);
            }
        }
        self.cols.clear();
        for (di, &(_, score)) in dets.iter().enumerate() {
            let eligible = match stage {
                Stage::High | Stage::Tentative => cfg.is_high(score),
                Stage::Low => cfg.is_low(score),
            };
            if eligible && self.det_track[di] == NONE {
                self.cols.push(di);
            }
        }
        let min = match stage {
            Stage::Low => cfg.low_min_iou,
            _ => cfg.min_iou,
        };
        let (tracks, rows, cols) = (&self.tracks, &self.rows, &self.cols);
        self.assigner.solve(
            cfg.association,
            rows.len(),
            cols.len(),
            |r, c| {
                let p = &tracks[rows[r]].pred;
                if complete {
                    p.iou(&completed(p, &dets[cols[c]].0))
                } else {
                    p.iou(&dets[cols[c]].0)
                }
            },
            min,
            |r| rows[r],
            |c| cols[c],
            &mut self.row_match,
        );
        for (r, &c) in self.row_match.iter().enumerate() {
            if c != NONE {
                self.track_det[self.rows[r]] = self.cols[c];
                self.det_track[self.cols[c]] = self.rows[r];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bx(x: f32, y: f32) -> BBox {
        BBox { x1: x, y1: y, x2: x + 20.0, y2: y + 50.0 }
    }

    fn hi(b: BBox) -> (BBox, f32) {
        (b, 0.9)
    }

    #[test]
    fn the_original_tracker_is_a_profile_away() {
        let t: crate::config::Tracking =
            toml::from_str("low_score = 1\nmax_misses = 5\nmotion = \"velocity\"\nassociation = \"greedy\"")
                .unwrap();
        assert_eq!(TrackerConfig::from_profile(&t, 0.0), TrackerConfig::legacy());
    }

    #[test]
    fn keeps_ids_for_crossing_walkers_and_coasts_through_a_miss() {
        for cfg in [TrackerConfig::default(), TrackerConfig::legacy()] {
            let mut t = Tracker::new(cfg);
            let mut ids = vec![];
            t.update(&[hi(bx(0.0, 0.0)), hi(bx(200.0, 0.0))], &mut ids);
            let (a, b) = (ids[0], ids[1]);
            assert_ne!(a, b);
            for step in 1..10 {
                let s = step as f32 * 8.0;
                // Reverse the detection order: ids must follow the boxes, not the order.
                t.update(&[hi(bx(200.0 - s, 0.0)), hi(bx(s, 0.0))], &mut ids);
                assert_eq!(ids, vec![b, a], "step {step} {cfg:?}");
            }
            // One frame without `a`: it coasts, then is re-found where its motion predicts.
            t.update(&[hi(bx(200.0 - 80.0, 0.0))], &mut ids);
            assert_eq!(ids, vec![b]);
            assert_eq!(t.tracks().len(), 2);
            t.update(&[hi(bx(200.0 - 88.0, 0.0)), hi(bx(88.0, 0.0))], &mut ids);
            assert_eq!(ids, vec![b, a], "{cfg:?}");
        }
    }

    #[test]
    fn drops_tracks_after_max_misses() {
        let mut t = Tracker::new(TrackerConfig { max_misses: 2, ..TrackerConfig::default() });
        let mut ids = vec![];
        t.update(&[hi(bx(0.0, 0.0))], &mut ids);
        t.update(&[hi(bx(0.0, 0.0))], &mut ids);
        let first = ids[0];
        for _ in 0..2 {
            t.update(&[], &mut ids);
            assert_eq!(t.tracks().len(), 1, "coasting");
        }
        t.update(&[], &mut ids);
        assert!(t.tracks().is_empty());
        t.update(&[hi(bx(0.0, 0.0))], &mut ids);
        assert_ne!(ids[0], first, "a new person after the old track expired");
    }

    #[test]
    fn a_tentative_track_is_reported_but_dropped_at_its_first_miss() {
        let mut t = Tracker::new(TrackerConfig { min_hits: 2, ..TrackerConfig::default() });
        let mut ids = vec![];
        t.update(&[hi(bx(0.0, 0.0))], &mut ids);
        assert_ne!(ids[0], 0, "reported from its first frame");
        assert!(!t.tracks()[0].confirmed);
        t.update(&[], &mut ids);
        assert!(t.tracks().is_empty(), "a one-frame blip does not coast");
        // Two hits confirm it; then it coasts.
        t.update(&[hi(bx(0.0, 0.0))], &mut ids);
        t.update(&[hi(bx(1.0, 0.0))], &mut ids);
        assert!(t.tracks()[0].confirmed);
        t.update(&[], &mut ids);
        assert_eq!(t.tracks().len(), 1);
    }

    #[test]
    fn a_confirmed_track_coasts_through_a_few_misses_a_tentative_one_not_at_all() {
        let mut t = Tracker::new(TrackerConfig { min_hits: 2, ..TrackerConfig::default() });
        let mut ids = vec![];
        t.update(&[hi(bx(0.0, 0.0))], &mut ids);
        t.update(&[hi(bx(2.0, 0.0)), hi(bx(300.0, 0.0))], &mut ids);
        let id = ids[0];
        t.update(&[], &mut ids);
        let coasting: Vec<u32> = t.coasting().map(|k| k.id).collect();
        assert_eq!(coasting, vec![id], "the tentative track is dropped, not coasting");
        assert!(t.coasting().all(|k| k.bbox.x1 > 2.0), "on its prediction");
        t.update(&[], &mut ids);
        assert_eq!(t.coasting().count(), 1);
        t.update(&[], &mut ids);
        assert_eq!(t.coasting().count(), 0, "past COAST_FRAMES: kept, but no longer followed");
        assert_eq!(t.tracks().len(), 1);
    }

    #[test]
    fn low_score_detections_carry_a_track_but_are_never_reported_nor_start_one() {
        let cfg =
            TrackerConfig { high_score: 0.45, low_score: 0.1, max_misses: 5, ..TrackerConfig::default() };
        let mut t = Tracker::new(cfg);
        let mut ids = vec![];
        for step in 0..4 {
            t.update(&[(bx(step as f32 * 5.0, 0.0), 0.8)], &mut ids);
        }
        let id = ids[0];
        // Half hidden for longer than max_misses: the score dips to 0.3, the box is still there.
        for step in 4..12 {
            let far_low = (bx(400.0, 300.0), 0.3); // background: matches nothing, starts nothing
            let too_low = (bx(600.0, 300.0), 0.05);
            t.update(&[far_low, (bx(step as f32 * 5.0, 0.0), 0.3), too_low], &mut ids);
            assert_eq!(ids, vec![0, 0, 0], "low-score boxes are not reported");
            assert_eq!(t.carried(), &[0, id, 0], "only the box that carries the track names it");
            assert_eq!(t.coasting().count(), 0, "carried is not coasting");
            assert_eq!(t.tracks().len(), 1, "and start no track");
            assert!(t.tracks()[0].seen(), "the track is carried by the low-score box");
        }
        t.update(&[(bx(60.0, 0.0), 0.7)], &mut ids);
        assert_eq!(ids, vec![id], "same id after the dip");
        // Without the second stage the dip loses the track.
        let mut t = Tracker::new(TrackerConfig { low_score: 0.45, ..cfg });
        for step in 0..4 {
            t.update(&[(bx(step as f32 * 5.0, 0.0), 0.8)], &mut ids);
        }
        for step in 4..12 {
            t.update(&[(bx(step as f32 * 5.0, 0.0), 0.3)], &mut ids);
        }
        assert!(t.tracks().is_empty());
    }

    #[test]
    fn a_partial_low_score_box_where_a_lost_track_is_predicted_carries_it() {
        let cfg = TrackerConfig { high_score: 0.45, ..TrackerConfig::default() };
        let mut t = Tracker::new(cfg);
        let mut ids = vec![];
        // Walking right at 4 px a frame, then behind a post for three frames.
        for step in 0..6 {
            t.update(&[(bx(step as f32 * 4.0, 0.0), 0.8)], &mut ids);
        }
        let id = ids[0];
        for _ in 6..9 {
            t.update(&[], &mut ids);
        }
        // Coming out: the right third of the person shows, scored low; elsewhere, clutter.
        let sliver = BBox { x1: 9.0 * 4.0 + 13.0, y1: 0.0, x2: 9.0 * 4.0 + 20.0, y2: 50.0 };
        t.update(&[(sliver, 0.25), (bx(300.0, 0.0), 0.3)], &mut ids);
        assert_eq!(ids, vec![0, 0]);
        assert!(t.tracks()[0].seen(), "the sliver is the lost person");
        assert_eq!(t.tracks().len(), 1, "clutter starts nothing");
        t.update(&[(bx(10.0 * 4.0, 0.0), 0.7)], &mut ids);
        assert_eq!(ids, vec![id]);
    }

    #[test]
    fn partial_views_are_recognised_and_completed_from_the_side_that_agrees() {
        let pred = BBox { x1: 100.0, y1: 100.0, x2: 120.0, y2: 150.0 };
        let left_half = BBox { x1: 101.0, y1: 100.0, x2: 110.0, y2: 149.0 };
        assert_eq!(whole(&pred, &left_half), (false, true));
        assert_eq!(completed(&pred, &left_half), BBox { x1: 101.0, y1: 100.0, x2: 121.0, y2: 149.0 });
        let top = BBox { x1: 100.0, y1: 101.0, x2: 119.0, y2: 125.0 };
        assert_eq!(whole(&pred, &top), (true, false));
        assert_eq!(completed(&pred, &top).y2, 151.0);
        // Smaller both ways: someone farther away, not a partial view.
        let small = BBox { x1: 104.0, y1: 110.0, x2: 112.0, y2: 130.0 };
        assert_eq!(whole(&pred, &small), (true, true));
        assert_eq!(completed(&pred, &small), small);
    }

    #[test]
    fn no_allocation_once_grown() {
        let mut t = Tracker::new(TrackerConfig::default());
        let mut ids = Vec::with_capacity(CAPACITY);
        let dets: Vec<(BBox, f32)> = (0..40).map(|i| hi(bx(i as f32 * 25.0, 0.0))).collect();
        t.update(&dets, &mut ids);
        let caps = |t: &Tracker| (t.tracks.capacity(), t.rows.capacity(), t.track_det.capacity());
        let before = caps(&t);
        for step in 0..50 {
            let moved: Vec<(BBox, f32)> =
                dets.iter().map(|&(b, s)| (bx(b.x1 + step as f32, (step % 3) as f32), s)).collect();
            t.update(&moved, &mut ids);
        }
        assert_eq!(caps(&t), before);
    }
}
