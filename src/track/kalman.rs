//! The box motion model of SORT and ByteTrack: a Kalman filter on (centre x, centre y, aspect
//! w/h, height) with a constant velocity for each, noise proportional to the box height.
//!
//! With a diagonal process and measurement noise and no coupling between the four coordinates,
//! the 8-state filter is exactly four independent (position, velocity) filters; each keeps its
//! 2x2 covariance, so a predict or an update is a few dozen flops and nothing is allocated.

use crate::geometry::BBox;

/// Noise per pixel of box height. ByteTrack's `std_weight_position` is 1/20 and its
/// `std_weight_velocity` 1/160 per frame at 30 fps; velocity changes about three times as much
/// over a 10 fps frame, hence 1/60 (on tests/tracking's sequences 1/160 and 1/20 both do worse).
const POS: f32 = 1.0 / 20.0;
const VEL: f32 = 1.0 / 60.0;
/// The aspect ratio barely changes and is unitless.
const ASPECT_POS: f32 = 1e-2;
const ASPECT_VEL: f32 = 1e-5;
const ASPECT_MEAS: f32 = 1e-1;

#[derive(Clone, Copy, Debug, Default)]
struct Axis {
    x: f32,
    v: f32,
    /// Covariance [[p00, p01], [p01, p11]].
    p00: f32,
    p01: f32,
    p11: f32,
}

impl Axis {
    fn new(x: f32, pos_std: f32, vel_std: f32) -> Self {
        Self { x, v: 0.0, p00: pos_std * pos_std, p01: 0.0, p11: vel_std * vel_std }
    }

    fn predict(&mut self, pos_std: f32, vel_std: f32) {
        self.x += self.v;
        self.p00 += 2.0 * self.p01 + self.p11 + pos_std * pos_std;
        self.p01 += self.p11;
        self.p11 += vel_std * vel_std;
    }

    fn update(&mut self, z: f32, meas_std: f32) {
        let s = self.p00 + meas_std * meas_std;
        let (k0, k1) = (self.p00 / s, self.p01 / s);
        let y = z - self.x;
        self.x += k0 * y;
        self.v += k1 * y;
        let (p00, p01) = (self.p00, self.p01);
        self.p00 = (1.0 - k0) * p00;
        self.p01 = (1.0 - k0) * p01;
        self.p11 -= k1 * p01;
    }
}

/// State of one track: centre x, centre y, aspect, height.
#[derive(Clone, Copy, Debug, Default)]
pub struct Kalman {
    axes: [Axis; 4],
}

fn measure(b: &BBox) -> [f32; 4] {
    let c = b.center();
    let h = b.height().max(1.0);
    [c.x, c.y, b.width() / h, h]
}

impl Kalman {
    pub fn new(b: &BBox) -> Self {
        let z = measure(b);
        let h = z[3];
        let (p, v) = (2.0 * POS * h, 10.0 * VEL * h);
        Self {
            axes: [
                Axis::new(z[0], p, v),
                Axis::new(z[1], p, v),
                Axis::new(z[2], ASPECT_POS, ASPECT_VEL),
                Axis::new(z[3], p, v),
            ],
        }
    }

    /// One frame ahead. A track that has gone unseen stops growing or shrinking (as ByteTrack
    /// does), so a long coast does not blow its box up or away.
    pub fn predict(&mut self, unseen: bool) {
        if unseen {
            self.axes[3].v = 0.0;
        }
        let h = self.axes[3].x.max(1.0);
        let (p, v) = (POS * h, VEL * h);
        for (i, a) in self.axes.iter_mut().enumerate() {
            if i == 2 {
                a.predict(ASPECT_POS, ASPECT_VEL);
            } else {
                a.predict(p, v);
            }
        }
    }

    /// An update from a detection whose horizontal (`x`) and vertical (`y`) extents are whole,
    /// or not (cut off by an occluder): only what is whole is used.
    pub fn update(&mut self, b: &BBox, x: bool, y: bool) {
        let z = measure(b);
        let r = POS * self.axes[3].x.max(1.0);
        let used = [x, y, x && y, y];
        for (i, a) in self.axes.iter_mut().enumerate() {
            if used[i] {
                a.update(z[i], if i == 2 { ASPECT_MEAS } else { r });
            }
        }
    }

    /// The state as a box.
    pub fn bbox(&self) -> BBox {
        let [cx, cy, a, h] = self.axes.map(|a| a.x);
        let h = h.max(1.0);
        let w = (a * h).max(1.0);
        BBox { x1: cx - w / 2.0, y1: cy - h / 2.0, x2: cx + w / 2.0, y2: cy + h / 2.0 }
    }

    /// Centre velocity, pixels per frame.
    #[cfg(test)]
    pub fn velocity(&self) -> (f32, f32) {
        (self.axes[0].v, self.axes[1].v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_a_constant_velocity_and_predicts_through_a_gap() {
        let at = |t: f32| BBox {
            x1: 100.0 + 6.0 * t,
            y1: 50.0 - 2.0 * t,
            x2: 120.0 + 6.0 * t,
            y2: 100.0 - 2.0 * t,
        };
        let mut k = Kalman::new(&at(0.0));
        for t in 1..12 {
            k.predict(false);
            k.update(&at(t as f32), true, true);
        }
        let (vx, vy) = k.velocity();
        assert!((vx - 6.0).abs() < 0.3 && (vy + 2.0).abs() < 0.3, "{vx} {vy}");
        // Four frames unseen: the prediction stays on the walker.
        for _ in 0..4 {
            k.predict(true);
        }
        assert!(k.bbox().iou(&at(15.0)) > 0.8, "{:?} vs {:?}", k.bbox(), at(15.0));
    }
}
