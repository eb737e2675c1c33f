//! The tracker as it was before the ByteTrack-style one (git history: src/track/mod.rs), kept
//! verbatim but for visibility, as the reference that `TrackerConfig::legacy()` must reproduce.
#![allow(dead_code)]

use sideline::geometry::BBox;

#[derive(Clone, Debug)]
pub struct Track {
    pub id: u32,
    pub bbox: BBox,
    /// Per-frame motion of the box centre, smoothed.
    vx: f32,
    vy: f32,
    /// Frames with a matching detection.
    pub hits: u32,
    /// Consecutive frames without one.
    pub misses: u32,
}

impl Track {
    fn predicted(&self) -> BBox {
        BBox {
            x1: self.bbox.x1 + self.vx,
            y1: self.bbox.y1 + self.vy,
            x2: self.bbox.x2 + self.vx,
            y2: self.bbox.y2 + self.vy,
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct TrackerConfig {
    /// Minimum IoU between a predicted track box and a detection to associate them.
    pub min_iou: f32,
    /// Frames a track may go unseen before it is dropped.
    pub max_misses: u32,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        Self { min_iou: 0.2, max_misses: 5 }
    }
}

pub struct Tracker {
    cfg: TrackerConfig,
    tracks: Vec<Track>,
    next_id: u32,
    pairs: Vec<(f32, usize, usize)>,
    det_taken: Vec<bool>,
    track_taken: Vec<bool>,
}

impl Tracker {
    pub fn new(cfg: TrackerConfig) -> Self {
        Self {
            cfg,
            tracks: Vec::with_capacity(64),
            next_id: 1,
            pairs: Vec::with_capacity(1024),
            det_taken: Vec::with_capacity(64),
            track_taken: Vec::with_capacity(64),
        }
    }

    /// Live tracks, including ones coasting through a miss.
    pub fn tracks(&self) -> &[Track] {
        &self.tracks
    }

    /// Associates this frame's `boxes` with tracks; `ids[i]` is the track id of `boxes[i]`.
    pub fn update(&mut self, boxes: &[BBox], ids: &mut Vec<u32>) {
        self.pairs.clear();
        for (ti, t) in self.tracks.iter().enumerate() {
            let p = t.predicted();
            for (di, b) in boxes.iter().enumerate() {
                let iou = p.iou(b);
                if iou >= self.cfg.min_iou {
                    self.pairs.push((iou, ti, di));
                }
            }
        }
        // Best overlaps first; ties broken by index so results are deterministic.
        self.pairs.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        self.det_taken.clear();
        self.det_taken.resize(boxes.len(), false);
        self.track_taken.clear();
        self.track_taken.resize(self.tracks.len(), false);
        ids.clear();
        ids.resize(boxes.len(), 0);
        for &(_, ti, di) in &self.pairs {
            if self.track_taken[ti] || self.det_taken[di] {
                continue;
            }
            self.track_taken[ti] = true;
            self.det_taken[di] = true;
            let t = &mut self.tracks[ti];
            let (old, new) = (t.bbox.center(), boxes[di].center());
            t.vx = 0.5 * t.vx + 0.5 * (new.x - old.x);
            t.vy = 0.5 * t.vy + 0.5 * (new.y - old.y);
            t.bbox = boxes[di];
            t.hits += 1;
            t.misses = 0;
            ids[di] = t.id;
        }
        for (t, &taken) in self.tracks.iter_mut().zip(&self.track_taken) {
            if !taken {
                t.misses += 1;
                t.bbox = t.predicted();
            }
        }
        let max_misses = self.cfg.max_misses;
        self.tracks.retain(|t| t.misses <= max_misses);
        for (di, b) in boxes.iter().enumerate() {
            if !self.det_taken[di] {
                let id = self.next_id;
                self.next_id = self.next_id.wrapping_add(1).max(1);
                self.tracks.push(Track { id, bbox: *b, vx: 0.0, vy: 0.0, hits: 1, misses: 0 });
                ids[di] = id;
            }
        }
    }
}
