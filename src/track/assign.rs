//! One-to-one assignment of tracks to detections by overlap, with scratch space reused across
//! frames.
//!
//! Two methods:
//! - **optimal**: the assignment that maximises the summed overlap above the gate,
//!   `sum(iou - min_iou)` over matched pairs (the Hungarian method, O(n^2 m) for n <= m; a frame
//!   has tens of tracks and detections, so well under a millisecond). A pair below the gate costs
//!   exactly what leaving both unmatched costs, so it is never preferred to a real match; such
//!   pairs are dropped afterwards. This is what `lap.lapjv(cost_limit=...)` does in ByteTrack.
//! - **greedy**: best overlap first (the original SORT-style tracker here). It can take a pair
//!   that blocks two better ones: A-1 at 0.60 beats A-2 at 0.55 and B-1 at 0.50, leaving B
//!   unmatched, where A-2 + B-1 keeps both.

/// How tracks and detections are paired.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Association {
    /// Most total overlap (Hungarian method).
    #[default]
    Optimal,
    /// Best overlap first.
    Greedy,
}

/// Reusable scratch for [`Assigner::solve`]; grows to the largest problem seen, then stays.
#[derive(Default)]
pub struct Assigner {
    score: Vec<f32>,
    pairs: Vec<(f32, usize, usize)>,
    row_taken: Vec<bool>,
    col_taken: Vec<bool>,
    // Hungarian method, 1-based as in the textbook formulation.
    u: Vec<f64>,
    v: Vec<f64>,
    p: Vec<usize>,
    way: Vec<usize>,
    minv: Vec<f64>,
    used: Vec<bool>,
}

/// No match.
pub const NONE: usize = usize::MAX;

impl Assigner {
    /// Scratch sized for `rows` x `cols` without growing.
    pub fn with_capacity(rows: usize, cols: usize) -> Self {
        let n = rows.max(cols) + 1;
        Self {
            score: Vec::with_capacity(rows * cols),
            pairs: Vec::with_capacity(rows * cols),
            row_taken: Vec::with_capacity(rows),
            col_taken: Vec::with_capacity(cols),
            u: Vec::with_capacity(n),
            v: Vec::with_capacity(n),
            p: Vec::with_capacity(n),
            way: Vec::with_capacity(n),
            minv: Vec::with_capacity(n),
            used: Vec::with_capacity(n),
        }
    }

    /// Pairs `rows` with `cols` by `score(r, c)` (an overlap in 0..=1), keeping only pairs scoring
    /// at least `min`. `row_match[r]` becomes the matched column or [`NONE`]; `row_key`/`col_key`
    /// break ties between equal scores (lower first), so results do not depend on float noise
    /// in the order of evaluation.
    #[allow(clippy::too_many_arguments)]
    pub fn solve(
        &mut self,
        method: Association,
        rows: usize,
        cols: usize,
        score: impl Fn(usize, usize) -> f32,
        min: f32,
        row_key: impl Fn(usize) -> usize,
        col_key: impl Fn(usize) -> usize,
        row_match: &mut Vec<usize>,
    ) {
        row_match.clear();
        row_match.resize(rows, NONE);
        if rows == 0 || cols == 0 {
            return;
        }
        self.score.clear();
        let mut any = false;
        for r in 0..rows {
            for c in 0..cols {
                let s = score(r, c);
                let s = if s >= min { s } else { f32::NEG_INFINITY };
                any |= s.is_finite();
                self.score.push(s);
            }
        }
        if !any {
            return;
        }
        match method {
            Association::Greedy => self.greedy(rows, cols, &row_key, &col_key, row_match),
            Association::Optimal => self.hungarian(rows, cols, min, row_match),
        }
    }

    fn greedy(
        &mut self,
        rows: usize,
        cols: usize,
        row_key: &dyn Fn(usize) -> usize,
        col_key: &dyn Fn(usize) -> usize,
        row_match: &mut [usize],
    ) {
        self.pairs.clear();
        for r in 0..rows {
            for c in 0..cols {
                let s = self.score[r * cols + c];
                if s.is_finite() {
                    self.pairs.push((s, r, c));
                }
            }
        }
        self.pairs.sort_unstable_by(|a, b| {
            b.0.total_cmp(&a.0).then(row_key(a.1).cmp(&row_key(b.1))).then(col_key(a.2).cmp(&col_key(b.2)))
        });
        self.row_taken.clear();
        self.row_taken.resize(rows, false);
        self.col_taken.clear();
        self.col_taken.resize(cols, false);
        for &(_, r, c) in &self.pairs {
            if !self.row_taken[r] && !self.col_taken[c] {
                self.row_taken[r] = true;
                self.col_taken[c] = true;
                row_match[r] = c;
            }
        }
    }

    /// Minimum-cost assignment with cost `1 - score` for a pair above the gate and `1 - min`
    /// (what leaving both unmatched costs) below it.
    fn hungarian(&mut self, rows: usize, cols: usize, min: f32, row_match: &mut [usize]) {
        // The method wants n <= m: transpose when there are more rows than columns.
        let transposed = rows > cols;
        let (n, m) = if transposed { (cols, rows) } else { (rows, cols) };
        let gate = 1.0 - min as f64;
        let score = &self.score;
        let cost = |i: usize, j: usize| -> f64 {
            let s =
                if transposed { score[(j - 1) * cols + (i - 1)] } else { score[(i - 1) * cols + (j - 1)] };
            if s.is_finite() {
                1.0 - s as f64
            } else {
                gate
            }
        };
        for buf in [&mut self.u, &mut self.v, &mut self.minv] {
            buf.clear();
            buf.resize(m + 1, 0.0);
        }
        for buf in [&mut self.p, &mut self.way] {
            buf.clear();
            buf.resize(m + 1, 0);
        }
        let (u, v, p, way, minv, used) =
            (&mut self.u, &mut self.v, &mut self.p, &mut self.way, &mut self.minv, &mut self.used);
        for i in 1..=n {
            p[0] = i;
            let mut j0 = 0;
            minv.iter_mut().for_each(|x| *x = f64::INFINITY);
            used.clear();
            used.resize(m + 1, false);
            loop {
                used[j0] = true;
                let i0 = p[j0];
                let mut delta = f64::INFINITY;
                let mut j1 = 0;
                for j in 1..=m {
                    if !used[j] {
                        let cur = cost(i0, j) - u[i0] - v[j];
                        if cur < minv[j] {
                            minv[j] = cur;
                            way[j] = j0;
                        }
                        if minv[j] < delta {
                            delta = minv[j];
                            j1 = j;
                        }
                    }
                }
                for j in 0..=m {
                    if used[j] {
                        u[p[j]] += delta;
                        v[j] -= delta;
                    } else {
                        minv[j] -= delta;
                    }
                }
                j0 = j1;
                if p[j0] == 0 {
                    break;
                }
            }
            loop {
                let j1 = way[j0];
                p[j0] = p[j1];
                j0 = j1;
                if j0 == 0 {
                    break;
                }
            }
        }
        for (j, &i) in p.iter().enumerate().skip(1) {
            if i == 0 {
                continue;
            }
            let (r, c) = if transposed { (j - 1, i - 1) } else { (i - 1, j - 1) };
            if score[r * cols + c].is_finite() {
                row_match[r] = c;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(method: Association, m: &[&[f32]], min: f32) -> Vec<usize> {
        let (rows, cols) = (m.len(), m[0].len());
        let mut a = Assigner::default();
        let mut out = vec![];
        a.solve(method, rows, cols, |r, c| m[r][c], min, |r| r, |c| c, &mut out);
        out
    }

    #[test]
    fn optimal_keeps_both_where_greedy_blocks_one() {
        let m: &[&[f32]] = &[&[0.60, 0.55], &[0.50, 0.0]];
        assert_eq!(run(Association::Greedy, m, 0.2), vec![0, NONE]);
        assert_eq!(run(Association::Optimal, m, 0.2), vec![1, 0]);
    }

    #[test]
    fn pairs_below_the_gate_never_match_and_shapes_may_be_rectangular() {
        // More rows than columns (transposed internally), one row with nothing above the gate.
        let m: &[&[f32]] = &[&[0.1, 0.0], &[0.9, 0.3], &[0.0, 0.4]];
        assert_eq!(run(Association::Optimal, m, 0.2), vec![NONE, 0, 1]);
        assert_eq!(run(Association::Greedy, m, 0.2), vec![NONE, 0, 1]);
        let m: &[&[f32]] = &[&[0.0, 0.3, 0.25, 0.0]];
        assert_eq!(run(Association::Optimal, m, 0.2), vec![1]);
        let m: &[&[f32]] = &[&[0.1, 0.1]];
        assert_eq!(run(Association::Optimal, m, 0.2), vec![NONE]);
    }

    #[test]
    fn optimal_matches_brute_force_on_random_matrices() {
        // Small xorshift: deterministic, no dependency.
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32
        };
        let mut a = Assigner::default();
        let mut out = vec![];
        for case in 0..300 {
            let rows = 1 + case % 5;
            let cols = 1 + (case / 5) % 5;
            let m: Vec<f32> = (0..rows * cols).map(|_| if next() < 0.4 { 0.0 } else { next() }).collect();
            let min = 0.2;
            a.solve(Association::Optimal, rows, cols, |r, c| m[r * cols + c], min, |r| r, |c| c, &mut out);
            let got: f32 = out
                .iter()
                .enumerate()
                .filter(|(_, &c)| c != NONE)
                .map(|(r, &c)| {
                    assert!(m[r * cols + c] >= min);
                    m[r * cols + c] - min
                })
                .sum();
            // Brute force over every partial injection of rows into columns.
            fn best(r: usize, rows: usize, cols: usize, m: &[f32], min: f32, taken: &mut [bool]) -> f32 {
                if r == rows {
                    return 0.0;
                }
                let mut b = best(r + 1, rows, cols, m, min, taken);
                for c in 0..cols {
                    let s = m[r * cols + c];
                    if !taken[c] && s >= min {
                        taken[c] = true;
                        b = b.max(s - min + best(r + 1, rows, cols, m, min, taken));
                        taken[c] = false;
                    }
                }
                b
            }
            let want = best(0, rows, cols, &m, min, &mut vec![false; cols]);
            assert!((got - want).abs() < 1e-4, "case {case}: {got} vs {want} on {m:?}");
        }
    }
}
