//! Synthetic sequences with known tracks: people walking over a 768x576 picture at 10 fps (the
//! sample clip's camera), each frame's ground truth and what a detector would output for it.
//!
//! People are boxes standing on a ground plane seen from above at an angle: the nearer (lower in
//! the picture), the taller. Each frame a person is occluded by fixed occluders (posts, signs)
//! and by people nearer the camera; the visible share and the visible part of the box decide the
//! detection: none below a quarter visible, otherwise the visible part with jitter, scored by
//! the person's base score times the visible share (half hidden: a low score), with random
//! dips (motion blur, an odd pose), random misses and false positives (mostly low-score).
//! Everything comes from a seeded generator: the same sequence every run.

use sideline::geometry::BBox;

pub const W: f32 = 768.0;
pub const H: f32 = 576.0;
/// Detections below this are not output at all (the tracker's `low_score`).
pub const FLOOR: f32 = 0.1;
/// Below this share visible, a person is neither detected nor counted (ground truth "ignore").
pub const MIN_VISIBLE: f32 = 0.25;

/// splitmix64: small, deterministic, good enough for test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    pub fn u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn f(&mut self) -> f32 {
        (self.u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    pub fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.f()
    }
    pub fn chance(&mut self, p: f32) -> bool {
        self.f() < p
    }
    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f32 {
        let u1 = self.f().max(1e-7);
        let u2 = self.f();
        (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
    }
}

/// One person: where and when they appear, how they move.
#[derive(Clone, Debug)]
pub struct Person {
    pub start: u32,
    /// Foot point at `start`.
    pub x: f32,
    pub y: f32,
    /// Pixels per frame.
    pub vx: f32,
    pub vy: f32,
    /// Heading noise, radians per frame (0: a straight line).
    pub turn: f32,
    /// Chance per frame to stop, or to start again when stopped.
    pub stop: f32,
    /// Detector score when fully visible.
    pub score: f32,
}

#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: &'static str,
    pub seed: u64,
    pub frames: u32,
    pub people: Vec<Person>,
    pub occluders: Vec<BBox>,
    /// Chance a visible person is simply not detected.
    pub miss: f32,
    /// Box edge jitter, as a share of the person's height (standard deviation).
    pub jitter: f32,
    /// Chance per frame and person that a score dip starts, and its longest length in frames.
    pub dip: f32,
    pub dip_len: u32,
    /// Expected false positives per frame (random place, person-sized, scored 0.1..0.6).
    pub false_pos: f32,
}

/// A person as the ground truth has it in one frame.
#[derive(Clone, Copy, Debug)]
pub struct Truth {
    pub id: u32,
    /// The visible part of the person (what a labeller draws).
    pub bbox: BBox,
    pub visible: f32,
}

impl Truth {
    /// Too hidden to count either way.
    pub fn ignored(&self) -> bool {
        self.visible < MIN_VISIBLE
    }
}

#[derive(Clone, Debug, Default)]
pub struct Frame {
    pub truth: Vec<Truth>,
    /// Detector output: box, score (only from [`FLOOR`]).
    pub dets: Vec<(BBox, f32)>,
}

pub struct Sequence {
    pub name: &'static str,
    pub frames: Vec<Frame>,
}

fn height_at(foot_y: f32) -> f32 {
    20.0 + 0.1 * foot_y
}

fn body(x: f32, y: f32) -> BBox {
    let h = height_at(y);
    let w = 0.42 * h;
    BBox { x1: x - w / 2.0, y1: y - h, x2: x + w / 2.0, y2: y }
}

fn inside(b: &BBox, x: f32, y: f32) -> bool {
    x >= b.x1 && x < b.x2 && y >= b.y1 && y < b.y2
}

/// Share of `b` not covered by `covers` (or the picture's edge) and the box around what is
/// visible, sampled on a grid.
fn visible_part(b: &BBox, covers: &[BBox]) -> (f32, BBox) {
    const N: usize = 12;
    let (mut seen, mut vis) = (0usize, BBox { x1: f32::MAX, y1: f32::MAX, x2: f32::MIN, y2: f32::MIN });
    let (dx, dy) = (b.width() / N as f32, b.height() / N as f32);
    for i in 0..N {
        for j in 0..N {
            let (x, y) = (b.x1 + (i as f32 + 0.5) * dx, b.y1 + (j as f32 + 0.5) * dy);
            let on_picture = (0.0..W).contains(&x) && (0.0..H).contains(&y);
            if on_picture && !covers.iter().any(|c| inside(c, x, y)) {
                seen += 1;
                vis.x1 = vis.x1.min(x - dx / 2.0);
                vis.y1 = vis.y1.min(y - dy / 2.0);
                vis.x2 = vis.x2.max(x + dx / 2.0);
                vis.y2 = vis.y2.max(y + dy / 2.0);
            }
        }
    }
    let share = seen as f32 / (N * N) as f32;
    (share, if seen > 0 { vis } else { *b })
}

impl Scenario {
    pub fn generate(&self) -> Sequence {
        let mut rng = Rng::new(self.seed);
        let n = self.people.len();
        // Per person: position, velocity, stopped, dip frames left and its factor.
        let mut pos: Vec<(f32, f32)> = self.people.iter().map(|p| (p.x, p.y)).collect();
        let mut vel: Vec<(f32, f32)> = self.people.iter().map(|p| (p.vx, p.vy)).collect();
        let mut stopped = vec![false; n];
        let mut gone = vec![false; n];
        let mut dip = vec![(0u32, 1.0f32); n];
        let mut frames = Vec::with_capacity(self.frames as usize);
        let mut covers = Vec::new();
        for f in 0..self.frames {
            // Move everyone on the picture.
            let mut here: Vec<(usize, BBox)> = Vec::new();
            for (i, p) in self.people.iter().enumerate() {
                if f < p.start || gone[i] {
                    continue;
                }
                if f > p.start {
                    if p.turn > 0.0 {
                        let a = p.turn * rng.normal();
                        let (s, c) = a.sin_cos();
                        let (vx, vy) = vel[i];
                        vel[i] = (vx * c - vy * s, vx * s + vy * c);
                    }
                    if p.stop > 0.0 && rng.chance(p.stop) {
                        stopped[i] = !stopped[i];
                    }
                    if !stopped[i] {
                        // Perspective: apparent speed scales with apparent size.
                        let k = height_at(pos[i].1) / height_at(p.y);
                        pos[i].0 += vel[i].0 * k;
                        pos[i].1 += vel[i].1 * k;
                    }
                }
                let b = body(pos[i].0, pos[i].1);
                // Off the picture by more than half: gone for good.
                if b.clamp(W, H).area() < 0.5 * b.area() {
                    gone[i] = gone[i] || f > p.start;
                    continue;
                }
                here.push((i, b));
            }
            let mut frame = Frame::default();
            for &(i, b) in &here {
                covers.clear();
                covers.extend(self.occluders.iter().copied());
                // People nearer the camera (feet lower in the picture) hide those behind.
                covers.extend(here.iter().filter(|(j, o)| *j != i && o.y2 > b.y2).map(|(_, o)| *o));
                let (visible, vbox) = visible_part(&b, &covers);
                frame.truth.push(Truth { id: i as u32 + 1, bbox: vbox, visible });
                // Score dips come and go whether or not the person is detected this frame.
                if dip[i].0 > 0 {
                    dip[i].0 -= 1;
                } else if rng.chance(self.dip) {
                    dip[i] = (1 + (rng.u64() % self.dip_len.max(1) as u64) as u32, rng.range(0.25, 0.6));
                }
                let factor = if dip[i].0 > 0 { dip[i].1 } else { 1.0 };
                let missed = rng.chance(self.miss);
                let score =
                    (self.people[i].score * visible.powf(1.2) * factor + 0.04 * rng.normal()).min(0.99);
                if visible < MIN_VISIBLE || missed || score < FLOOR {
                    continue;
                }
                let s = self.jitter * b.height();
                let mut d = BBox {
                    x1: vbox.x1 + s * rng.normal(),
                    y1: vbox.y1 + s * rng.normal(),
                    x2: vbox.x2 + s * rng.normal(),
                    y2: vbox.y2 + s * rng.normal(),
                };
                if d.x2 - d.x1 < 2.0 || d.y2 - d.y1 < 2.0 {
                    d = vbox;
                }
                frame.dets.push((d, score));
            }
            // False positives: about `false_pos` a frame (eight chances).
            for _ in 0..8 {
                if rng.chance(self.false_pos / 8.0) {
                    let (x, y) = (rng.range(20.0, W - 20.0), rng.range(120.0, H - 5.0));
                    let b = body(x, y);
                    let score = rng.range(FLOOR, 0.6);
                    frame.dets.push((b, score));
                }
            }
            // The detector's output order: best first, as after NMS.
            frame.dets.sort_by(|a, b| b.1.total_cmp(&a.1));
            frames.push(frame);
        }
        Sequence { name: self.name, frames }
    }
}

fn walker(rng: &mut Rng, start: u32, speed: (f32, f32), turn: f32) -> Person {
    // Enter from the left or the right edge, or appear somewhere inside (already there).
    let y = rng.range(150.0, 540.0);
    let s = rng.range(speed.0, speed.1);
    let (x, dir) = match rng.u64() % 3 {
        0 => (5.0, 1.0),
        1 => (W - 5.0, -1.0),
        _ => (rng.range(100.0, W - 100.0), if rng.chance(0.5) { 1.0 } else { -1.0 }),
    };
    let a = rng.range(-0.35, 0.35);
    Person {
        start,
        x,
        y,
        vx: dir * s * a.cos(),
        vy: s * a.sin(),
        turn,
        stop: 0.0,
        score: rng.range(0.55, 0.9),
    }
}

/// The sequences the tracker is measured on.
pub fn scenarios() -> Vec<Scenario> {
    let base = |name, seed, frames| Scenario {
        name,
        seed,
        frames,
        people: vec![],
        occluders: vec![],
        miss: 0.05,
        jitter: 0.03,
        dip: 0.01,
        dip_len: 2,
        false_pos: 0.2,
    };
    let mut out = Vec::new();

    // Walkers: straight lines at 1-4 px per frame, light noise.
    let mut s = base("walkers", 11, 300);
    let mut rng = Rng::new(s.seed ^ 0xabc);
    s.people = (0..12).map(|i| walker(&mut rng, i * 20, (1.0, 4.0), 0.0)).collect();
    out.push(s);

    // Crossing: pairs walking toward each other along nearly the same line, so the nearer hides
    // the farther as they pass; some pairs at an angle.
    let mut s = base("crossing", 12, 220);
    let mut rng = Rng::new(s.seed ^ 0xabc);
    for k in 0..8 {
        let y = 170.0 + 45.0 * k as f32;
        let start = k * 12;
        let (sa, sb) = (rng.range(2.0, 4.0), rng.range(2.0, 4.0));
        let angle = if k % 2 == 0 { 0.0 } else { 0.25 };
        let score = || 0.75;
        s.people.push(Person { start, x: 150.0, y, vx: sa, vy: 0.0, turn: 0.0, stop: 0.0, score: score() });
        s.people.push(Person {
            start,
            x: 618.0,
            y: y + 4.0,
            vx: -sb * (1.0 - angle),
            vy: -sb * angle,
            turn: 0.0,
            stop: 0.0,
            score: score(),
        });
    }
    out.push(s);

    // Occluders: posts and a sign that people pass behind, hidden for about 3 to 12 frames.
    let mut s = base("occluder", 13, 300);
    s.occluders = vec![
        BBox { x1: 180.0, y1: 0.0, x2: 215.0, y2: 576.0 },
        BBox { x1: 380.0, y1: 0.0, x2: 440.0, y2: 576.0 },
        BBox { x1: 560.0, y1: 120.0, x2: 650.0, y2: 576.0 },
    ];
    let mut rng = Rng::new(s.seed ^ 0xabc);
    s.people = (0..14)
        .map(|i| {
            let mut p = walker(&mut rng, i * 18, (2.0, 6.0), 0.0);
            p.vy *= 0.3;
            p
        })
        .collect();
    out.push(s);

    // Score dips: frequent drops below the threshold for 1-4 frames (blur, an odd pose).
    let mut s = base("dips", 14, 300);
    s.dip = 0.08;
    s.dip_len = 4;
    let mut rng = Rng::new(s.seed ^ 0xabc);
    s.people = (0..12).map(|i| walker(&mut rng, i * 20, (1.0, 4.0), 0.03)).collect();
    out.push(s);

    // Crowd: many people wandering, stopping and starting, more misses and false positives,
    // two occluders.
    let mut s = base("crowd", 15, 300);
    s.miss = 0.1;
    s.jitter = 0.05;
    s.dip = 0.03;
    s.dip_len = 3;
    s.false_pos = 0.8;
    s.occluders = vec![
        BBox { x1: 250.0, y1: 200.0, x2: 300.0, y2: 576.0 },
        BBox { x1: 500.0, y1: 0.0, x2: 540.0, y2: 400.0 },
    ];
    let mut rng = Rng::new(s.seed ^ 0xabc);
    s.people = (0..22)
        .map(|i| {
            let mut p = walker(&mut rng, i * 10, (1.0, 5.0), 0.12);
            p.stop = 0.03;
            p
        })
        .collect();
    out.push(s);

    // Runners: 6-12 px per frame (a sprint at 10 fps), turning.
    let mut s = base("runners", 16, 240);
    let mut rng = Rng::new(s.seed ^ 0xabc);
    s.people = (0..10).map(|i| walker(&mut rng, i * 20, (6.0, 12.0), 0.05)).collect();
    out.push(s);

    out
}
