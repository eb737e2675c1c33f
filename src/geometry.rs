//! Plane geometry in frame pixels: boxes for detections and tracks, polygons for zones.

use serde::Serialize;

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Point {
    pub x: f32,
    pub y: f32,
}

/// Axis-aligned box, `x1 <= x2`, `y1 <= y2`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BBox {
    pub x1: f32,
    pub y1: f32,
    pub x2: f32,
    pub y2: f32,
}

impl Serialize for BBox {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = |v: f32| (v * 10.0).round() / 10.0;
        [r(self.x1), r(self.y1), r(self.x2), r(self.y2)].serialize(s)
    }
}

impl BBox {
    pub fn width(&self) -> f32 {
        (self.x2 - self.x1).max(0.0)
    }
    pub fn height(&self) -> f32 {
        (self.y2 - self.y1).max(0.0)
    }
    pub fn area(&self) -> f32 {
        self.width() * self.height()
    }
    pub fn center(&self) -> Point {
        Point { x: (self.x1 + self.x2) * 0.5, y: (self.y1 + self.y2) * 0.5 }
    }
    /// Bottom centre: where a standing person touches the ground.
    pub fn foot(&self) -> Point {
        Point { x: (self.x1 + self.x2) * 0.5, y: self.y2 }
    }
    pub fn iou(&self, o: &BBox) -> f32 {
        let iw = (self.x2.min(o.x2) - self.x1.max(o.x1)).max(0.0);
        let ih = (self.y2.min(o.y2) - self.y1.max(o.y1)).max(0.0);
        let inter = iw * ih;
        let union = self.area() + o.area() - inter;
        if union > 0.0 {
            inter / union
        } else {
            0.0
        }
    }
    pub fn clamp(self, w: f32, h: f32) -> BBox {
        BBox {
            x1: self.x1.clamp(0.0, w),
            y1: self.y1.clamp(0.0, h),
            x2: self.x2.clamp(0.0, w),
            y2: self.y2.clamp(0.0, h),
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolygonError {
    #[error("a polygon needs at least 3 points, this one has {0}")]
    TooFewPoints(usize),
    #[error("point {0} is not a finite number")]
    NotFinite(usize),
    #[error("the points are collinear or repeated: the polygon has no area")]
    NoArea,
    #[error("edges {0} and {1} cross: the polygon must not intersect itself")]
    SelfIntersecting(usize, usize),
}

/// A simple (non-self-intersecting) polygon.
#[derive(Clone, Debug, PartialEq)]
pub struct Polygon {
    pts: Vec<Point>,
}

impl Polygon {
    pub fn new(pts: &[[f32; 2]]) -> Result<Self, PolygonError> {
        if pts.len() < 3 {
            return Err(PolygonError::TooFewPoints(pts.len()));
        }
        if let Some(i) = pts.iter().position(|p| !p[0].is_finite() || !p[1].is_finite()) {
            return Err(PolygonError::NotFinite(i));
        }
        let pts: Vec<Point> = pts.iter().map(|p| Point { x: p[0], y: p[1] }).collect();
        let poly = Polygon { pts };
        let n = poly.pts.len();
        for i in 0..n {
            for j in i + 1..n {
                // Adjacent edges share a vertex; that is not a crossing.
                if j == i + 1 || (i == 0 && j == n - 1) {
                    continue;
                }
                if segments_cross(poly.edge(i), poly.edge(j)) {
                    return Err(PolygonError::SelfIntersecting(i, j));
                }
            }
        }
        if poly.area() < 1e-3 {
            return Err(PolygonError::NoArea);
        }
        Ok(poly)
    }

    fn edge(&self, i: usize) -> (Point, Point) {
        (self.pts[i], self.pts[(i + 1) % self.pts.len()])
    }

    pub fn area(&self) -> f32 {
        let n = self.pts.len();
        let twice: f32 = (0..n)
            .map(|i| {
                let (a, b) = self.edge(i);
                a.x * b.y - b.x * a.y
            })
            .sum();
        twice.abs() * 0.5
    }

    /// Even-odd ray casting; points exactly on an edge may fall either way.
    pub fn contains(&self, p: Point) -> bool {
        let mut inside = false;
        let n = self.pts.len();
        let mut j = n - 1;
        for i in 0..n {
            let (a, b) = (self.pts[i], self.pts[j]);
            if (a.y > p.y) != (b.y > p.y) && p.x < (b.x - a.x) * (p.y - a.y) / (b.y - a.y) + a.x {
                inside = !inside;
            }
            j = i;
        }
        inside
    }
}

fn orient(a: Point, b: Point, c: Point) -> f32 {
    (b.x - a.x) * (c.y - a.y) - (b.y - a.y) * (c.x - a.x)
}

fn segments_cross((a, b): (Point, Point), (c, d): (Point, Point)) -> bool {
    let (o1, o2) = (orient(a, b, c), orient(a, b, d));
    let (o3, o4) = (orient(c, d, a), orient(c, d, b));
    (o1 * o2 < 0.0) && (o3 * o4 < 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polygon_validation() {
        assert_eq!(Polygon::new(&[[0., 0.], [1., 1.]]), Err(PolygonError::TooFewPoints(2)));
        assert_eq!(Polygon::new(&[[0., 0.], [1., 1.], [2., 2.]]), Err(PolygonError::NoArea));
        // A bow tie.
        assert_eq!(
            Polygon::new(&[[0., 0.], [10., 10.], [10., 0.], [0., 10.]]),
            Err(PolygonError::SelfIntersecting(0, 2))
        );
        assert!(Polygon::new(&[[0., 0.], [10., 0.], [10., 10.], [0., 10.]]).is_ok());
    }

    #[test]
    fn contains_concave() {
        // An L shape: the notch at the top right is outside.
        let l = Polygon::new(&[[0., 0.], [4., 0.], [4., 2.], [2., 2.], [2., 4.], [0., 4.]]).unwrap();
        assert!(l.contains(Point { x: 1., y: 1. }));
        assert!(l.contains(Point { x: 1., y: 3. }));
        assert!(!l.contains(Point { x: 3., y: 3. }));
        assert!(!l.contains(Point { x: -1., y: 1. }));
        assert_eq!(l.area(), 12.0);
    }

    #[test]
    fn iou() {
        let a = BBox { x1: 0., y1: 0., x2: 10., y2: 10. };
        let b = BBox { x1: 5., y1: 0., x2: 15., y2: 10. };
        assert!((a.iou(&b) - 50. / 150.).abs() < 1e-6);
        assert_eq!(a.iou(&BBox { x1: 20., y1: 20., x2: 30., y2: 30. }), 0.0);
    }
}
