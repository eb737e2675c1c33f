//! CLEAR MOT scoring (Bernardin & Stiefelhagen 2008) with the usual companions (Li et al. 2009):
//! per frame, ground truth is matched to the tracker's output by IoU >= 0.5, keeping last
//! frame's pairs where they still overlap and otherwise maximising total overlap; then
//!
//! - **IDSW**: a ground-truth track matched to a different tracker id than the last id it was
//!   matched to (however long ago);
//! - **FM** (fragmentation): a ground-truth track matched again after one or more frames in
//!   which it was visible but unmatched;
//! - **FN** / **FP**: visible ground truth unmatched / output matching nothing;
//! - **MOTA** = 1 - (FN + FP + IDSW) / ground-truth boxes;
//! - **MT** / **ML**: tracks matched in at least 80% / at most 20% of their visible frames.
//!
//! Ground truth too hidden to be detected is ignored: it counts neither as missed nor, when
//! something matches it, as a false positive. Each such stretch of a track between two matches
//! is an **occlusion**: its length in frames, and whether the id after is the id before.

use std::collections::HashMap;

use sideline::geometry::BBox;
use sideline::track::assign::{Assigner, Association, NONE};

pub const MIN_IOU: f32 = 0.5;

/// One frame: ground truth `(id, box, ignored)`, tracker output `(id, box)`.
pub struct Frame<'a> {
    pub truth: &'a [(u32, BBox, bool)],
    pub out: &'a [(u32, BBox)],
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Counts {
    pub gt_tracks: u32,
    /// Visible ground-truth boxes.
    pub gt: u32,
    pub matches: u32,
    pub idsw: u32,
    pub frag: u32,
    pub fn_: u32,
    pub fp: u32,
    pub mostly_tracked: u32,
    pub mostly_lost: u32,
    /// Per occlusion: frames hidden, and whether the id came back.
    pub occlusions: Vec<(u32, bool)>,
}

impl Counts {
    pub fn mota(&self) -> f32 {
        1.0 - (self.fn_ + self.fp + self.idsw) as f32 / self.gt.max(1) as f32
    }
    pub fn mt_share(&self) -> f32 {
        self.mostly_tracked as f32 / self.gt_tracks.max(1) as f32
    }
    pub fn add(&mut self, o: &Counts) {
        self.gt_tracks += o.gt_tracks;
        self.gt += o.gt;
        self.matches += o.matches;
        self.idsw += o.idsw;
        self.frag += o.frag;
        self.fn_ += o.fn_;
        self.fp += o.fp;
        self.mostly_tracked += o.mostly_tracked;
        self.mostly_lost += o.mostly_lost;
        self.occlusions.extend_from_slice(&o.occlusions);
    }
}

#[derive(Default)]
struct GtState {
    /// Tracker id this track was last matched to.
    last: Option<u32>,
    /// Unmatched while visible since its last match.
    interrupted: bool,
    visible: u32,
    matched: u32,
    /// Frames hidden since the last match, and since the last visible frame.
    hidden: u32,
    hiding: bool,
}

pub fn score<'a>(frames: impl IntoIterator<Item = Frame<'a>>) -> Counts {
    let mut c = Counts::default();
    let mut gts: HashMap<u32, GtState> = HashMap::new();
    let mut prev: HashMap<u32, u32> = HashMap::new(); // gt id -> tracker id, last frame
    let mut assigner = Assigner::default();
    let mut row_match = Vec::new();
    for f in frames {
        let mut gt_taken = vec![false; f.truth.len()];
        let mut out_taken = vec![false; f.out.len()];
        let mut pairs: Vec<(usize, usize)> = Vec::new();
        // Last frame's pairs that still hold.
        for (g, (gid, gb, _)) in f.truth.iter().enumerate() {
            if let Some(&hid) = prev.get(gid) {
                if let Some(h) = f.out.iter().position(|(id, hb)| *id == hid && gb.iou(hb) >= MIN_IOU) {
                    if !out_taken[h] {
                        gt_taken[g] = true;
                        out_taken[h] = true;
                        pairs.push((g, h));
                    }
                }
            }
        }
        // The rest: most total overlap.
        let rows: Vec<usize> = (0..f.truth.len()).filter(|&g| !gt_taken[g]).collect();
        let cols: Vec<usize> = (0..f.out.len()).filter(|&h| !out_taken[h]).collect();
        assigner.solve(
            Association::Optimal,
            rows.len(),
            cols.len(),
            |r, k| f.truth[rows[r]].1.iou(&f.out[cols[k]].1),
            MIN_IOU,
            |r| rows[r],
            |k| cols[k],
            &mut row_match,
        );
        for (r, &k) in row_match.iter().enumerate() {
            if k != NONE {
                pairs.push((rows[r], cols[k]));
                out_taken[cols[k]] = true;
                gt_taken[rows[r]] = true;
            }
        }
        prev.clear();
        for &(g, h) in &pairs {
            let (gid, _, ignored) = f.truth[g];
            let hid = f.out[h].0;
            prev.insert(gid, hid);
            if ignored {
                continue; // neither credit nor blame
            }
            let s = gts.entry(gid).or_default();
            if s.hidden > 0 {
                if let Some(last) = s.last {
                    c.occlusions.push((s.hidden, last == hid));
                }
                s.hidden = 0;
            }
            s.hiding = false;
            s.visible += 1;
            s.matched += 1;
            c.matches += 1;
            if s.last.is_some_and(|l| l != hid) {
                c.idsw += 1;
            }
            if s.interrupted {
                c.frag += 1;
                s.interrupted = false;
            }
            s.last = Some(hid);
        }
        for (g, &(gid, _, ignored)) in f.truth.iter().enumerate() {
            if ignored {
                // A stretch hidden after a match (frames visible but unmatched in between
                // are not part of it).
                if let Some(s) = gts.get_mut(&gid).filter(|s| s.last.is_some()) {
                    if !s.hiding {
                        s.hidden = 0;
                        s.hiding = true;
                    }
                    s.hidden += 1;
                }
                continue;
            }
            let s = gts.entry(gid).or_default();
            s.hiding = false;
            if gt_taken[g] {
                continue;
            }
            s.visible += 1;
            c.fn_ += 1;
            if s.last.is_some() {
                s.interrupted = true;
            }
        }
        c.fp += out_taken.iter().filter(|t| !**t).count() as u32;
        c.gt += f.truth.iter().filter(|t| !t.2).count() as u32;
    }
    for s in gts.values().filter(|s| s.visible > 0) {
        c.gt_tracks += 1;
        let share = s.matched as f32 / s.visible as f32;
        c.mostly_tracked += (share >= 0.8) as u32;
        c.mostly_lost += (share <= 0.2) as u32;
    }
    c
}
