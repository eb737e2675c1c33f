//! Collision: two people running into each other, then one of them down.
//!
//! Why: after a clash of heads or bodies minutes matter, and a referee following the ball can
//! miss it. Player down waits `min_down_s` for a player lying *still*; a fall right
//! after an impact is a stronger sign, and comes before that. A box overlapping another in one
//! frame means nothing (people cross, stand together, crowd the ball), so the rule works on
//! tracks and what they did over the last moments:
//!
//! 1. every person track keeps a short history of its box centre (a fixed ring of samples).
//!    Tracks carried by a low-score detection ([`Scene::carried`]) count as seen: at contact
//!    one player half hides the other, whose score drops under the detector's threshold. A
//!    player wholly hidden for a frame or two ([`Scene::coasting`]) is where the tracker
//!    predicts them, for contact only;
//! 2. two tracks are in **contact** when their boxes overlap: intersection over the smaller
//!    box at least `min_overlap`. Contact while the distance between the two box centres
//!    shrank faster than `min_closing_speed` over the last `speed_window_s` is an **impact**,
//!    at the centre of the boxes' intersection. The speed is in body heights per second (the
//!    pair's mean box height), so it reads the same near and far from the camera;
//! 3. one of the two **down** within `down_within_s` of the impact, for `min_frames` frames,
//!    raises the alert for that player, at the point of contact. Down is player down's own
//!    posture test ([`player_down::posture`]) on the pose matched to the track, whenever pose
//!    has seen the player in the last second; otherwise the box: shorter than at the impact,
//!    and wider than tall or its centre dropped by `min_drop` of the height at the impact
//!    ([`fallen_box`]). With `require_down = false` (no pose model) the impact alone raises it,
//!    once the pair has been in contact `min_frames` frames. The tracker often loses a player
//!    at the clash or as they go down (boxes merge, then change shape fast) and starts a new
//!    track where they lie: a track born after a member was last seen, over its last box or
//!    lying across where they stood, takes that member's place in the pair. The detector often
//!    finds nobody at all where a player lies (COCO has few lying people) while the pose model
//!    does: a pose that matches no person box is followed too, and may take the place of a
//!    member the detector lost;
//! 4. it clears when both are up again, and apart, for `min_frames` frames, or when the player
//!    who went down has not been seen for `clear_after_s`. The same pair cannot raise it again
//!    within `cooldown_s` of a raise.
//!
//! State is preallocated: a ring of samples per track (in `TrackStates`) and a fixed table
//! of pairs, entered only at an impact. Nothing is allocated per frame once the busiest frame's
//! tracks have been seen, and nothing in here panics on odd boxes (empty, inverted, huge).
//!
//! Limits: the picture is 2-D. Two people moving along the camera's line of sight close more
//! slowly in the picture than on the field, and two people passing at different depths overlap
//! in the picture as two colliding do: without a fall (`require_down = false`) a fast pass is
//! an impact. A partner hidden behind the other at contact (one merged detection) makes no
//! contact. The box test is a fallback: a crouch can look like a fall, which is why the pose
//! test has the last word whenever pose sees the player.

use std::time::Duration;

use super::player_down::{posture, Posture, PostureLimits};
use super::{Alert, AlertState, Scene, TrackStates, TrackedPose};
use crate::clock::MonoTime;
use crate::config::Collision;
use crate::geometry::{BBox, Point};
use crate::infer::coco;

/// Samples of history per track: a 1 s window at 30 fps.
const HISTORY: usize = 32;
/// Pairs followed at once: impacts waiting for a fall, raised alerts, pairs cooling down.
const PAIRS: usize = 32;
/// Longest `speed_window_s`.
pub const MAX_SPEED_WINDOW_S: f32 = 1.0;
/// A pose verdict this recent speaks for the player on frames without one (under load pose
/// runs on every other frame, and MoveNet loses lying people now and then): the box test is
/// used only when pose has not seen the player for this long.
const POSE_MEMORY: Duration = Duration::from_secs(1);
/// Overlap of a pose's box with a track's box for the pose to be that person's.
const POSE_MATCH_IOU: f32 = 0.5;
/// Marks the ids of people only pose sees (pose tracks, a separate id space) in `tracks`.
const POSE_ONLY: u32 = 1 << 31;
/// How far (in standing heights) a lying box may be from where a player stood and still be
/// that player fallen.
const FALL_REACH: f32 = 0.25;

/// Whether a player is down on this frame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Verdict {
    Down,
    Up,
    /// Not seen well enough to say (nor any reference to judge the box by): hold counts.
    #[default]
    Unknown,
}

#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    ts: MonoTime,
    centre: Point,
}

/// One person track: recent centres, its box now, and what it looks like.
#[derive(Debug, Default)]
struct Track {
    ring: [Sample; HISTORY],
    len: usize,
    next: usize,
    bbox: BBox,
    /// First and last seen.
    born: MonoTime,
    seen: MonoTime,
    /// Its box at its last impact: the standing reference for [`fallen_box`].
    standing: Option<BBox>,
    /// When pose last said up or down.
    pose_at: Option<MonoTime>,
    verdict: Verdict,
}

impl Track {
    fn push(&mut self, ts: MonoTime, centre: Point) {
        if self.len == 0 {
            self.born = ts;
        }
        self.ring[self.next] = Sample { ts, centre };
        self.next = (self.next + 1) % HISTORY;
        self.len = (self.len + 1).min(HISTORY);
    }

    /// The `k`-th newest sample (0: the newest).
    fn sample(&self, k: usize) -> Sample {
        self.ring[(self.next + HISTORY - 1 - k) % HISTORY]
    }

    /// Where the centre was `window` before `now`: the newest sample at least that old (else
    /// the oldest, if at least half that old), its displacement to now scaled to `window`.
    /// `None` if the track is not seen at `now` or is too young.
    fn centre_back(&self, now: MonoTime, window: Duration) -> Option<Point> {
        if self.len == 0 || self.sample(0).ts != now {
            return None;
        }
        let cur = self.sample(0).centre;
        let mut then = None;
        for k in 1..self.len {
            let s = self.sample(k);
            then = Some(s);
            if now.since(s.ts) >= window {
                break;
            }
        }
        let then = then?;
        let dt = now.since(then.ts);
        if dt.is_zero() || dt < window / 2 {
            return None;
        }
        let f = window.as_secs_f32() / dt.as_secs_f32();
        Some(Point { x: cur.x - (cur.x - then.centre.x) * f, y: cur.y - (cur.y - then.centre.y) * f })
    }
}

/// Where a pair stands.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Phase {
    /// Impact at `since`: waiting for one of them to go down (consecutive down frames of each),
    /// or, without `require_down`, for the contact to last (frames in contact).
    Armed { since: MonoTime, down: [u32; 2], contact: u32 },
    /// The alert is raised for `track`, pair member `who` (whose id may have changed since:
    /// see [`successor`]); `up` counts frames with both up and apart.
    Raised { track: u32, who: usize, up: u32 },
    /// Nothing going on; kept while the cooldown runs.
    Idle,
}

#[derive(Clone, Copy, Debug)]
struct Pair {
    /// In either order; a member lost by the tracker is replaced by the track that takes
    /// over where it was (see [`successor`]).
    tracks: [u32; 2],
    /// The ids alerts carry: `tracks`, except that a member followed by pose alone keeps
    /// the id of the last person track it had.
    ids: [u32; 2],
    /// Point of contact of the last impact, in frame pixels.
    at: Point,
    phase: Phase,
    /// In contact on the current frame.
    contact: bool,
    last_raised: Option<MonoTime>,
}

pub struct CollisionRule {
    index: usize,
    limits: PostureLimits,
    min_closing_speed: f32,
    window: Duration,
    min_overlap: f32,
    down_within: Duration,
    require_down: bool,
    min_frames: u32,
    min_drop: f32,
    clear_after: Duration,
    cooldown: Duration,
    tracks: TrackStates<Track>,
    pairs: [Option<Pair>; PAIRS],
}

/// Seconds from a profile as a duration in whole microseconds (0.3 is 300 ms, not a hair
/// over, so a window of three 10 fps frames is three frames), without panicking on what
/// validation refuses.
fn secs(v: f32) -> Duration {
    let us = (f64::from(v.max(0.0)) * 1e6).round();
    if us < u64::MAX as f64 {
        Duration::from_micros(us as u64)
    } else {
        Duration::MAX
    }
}

impl CollisionRule {
    pub fn new(index: usize, cfg: &Collision, keypoint_threshold: f32) -> Self {
        Self {
            index,
            limits: PostureLimits::new(keypoint_threshold, cfg.max_torso_angle_deg, cfg.max_hip_height),
            min_closing_speed: cfg.min_closing_speed,
            window: secs(cfg.speed_window_s.min(MAX_SPEED_WINDOW_S)),
            min_overlap: cfg.min_overlap,
            down_within: secs(cfg.down_within_s),
            require_down: cfg.require_down,
            min_frames: cfg.min_frames.max(1),
            min_drop: cfg.min_drop,
            clear_after: secs(cfg.clear_after_s),
            cooldown: secs(cfg.cooldown_s),
            tracks: TrackStates::new(),
            pairs: [None; PAIRS],
        }
    }

    pub fn evaluate(&mut self, scene: &Scene<'_>, alerts: &mut Vec<Alert>) {
        let ts = scene.ts;
        // Players half hidden behind each other at a clash score low: the tracks they carry count.
        let people = || scene.objects.iter().chain(scene.carried).filter(|o| o.class == coco::PERSON);

        // 1. each person: history, box, and whether they are down.
        for o in people() {
            let pose = scene.poses.and_then(|ps| matched_pose(ps, &o.bbox));
            let said = pose.map(|p| posture(&p.pose, &self.limits));
            let t = self.tracks.get(o.track, ts);
            t.push(ts, o.bbox.center());
            t.bbox = o.bbox;
            t.seen = ts;
            t.verdict = match said {
                Some(Posture::Down { .. }) => {
                    t.pose_at = Some(ts);
                    Verdict::Down
                }
                Some(Posture::Up) => {
                    t.pose_at = Some(ts);
                    Verdict::Up
                }
                _ if t.pose_at.is_some_and(|p| ts.since(p) <= POSE_MEMORY) => Verdict::Unknown,
                _ => match t.standing {
                    Some(s) if fallen_box(&s, &o.bbox, self.min_drop) => Verdict::Down,
                    Some(_) => Verdict::Up,
                    None => Verdict::Unknown,
                },
            };
        }

        // 1a. people wholly hidden for a frame or two: where the tracker predicts them, for the
        // closing speed at a contact. Not seen, so nothing is judged of them.
        let coasting = || scene.coasting.iter().filter(|o| o.class == coco::PERSON);
        for o in coasting() {
            self.tracks.get(o.track, ts).push(ts, o.bbox.center());
        }

        // 1b. people only pose sees: what a member the detector lost may have become.
        for tp in scene.poses.unwrap_or_default() {
            if people().any(|o| tp.pose.bbox.iou(&o.bbox) >= POSE_MATCH_IOU) {
                continue;
            }
            let t = self.tracks.get(POSE_ONLY | tp.track, ts);
            t.push(ts, tp.pose.bbox.center());
            t.bbox = tp.pose.bbox;
            t.seen = ts;
            t.pose_at = Some(ts);
            t.verdict = match posture(&tp.pose, &self.limits) {
                Posture::Down { .. } => Verdict::Down,
                Posture::Up => Verdict::Up,
                Posture::Unknown => Verdict::Unknown,
            };
        }

        // 2. pairs in contact; an impact arms a pair.
        for p in self.pairs.iter_mut().flatten() {
            p.contact = false;
        }
        for (i, a) in people().chain(coasting()).enumerate() {
            for b in people().chain(coasting()).skip(i + 1) {
                if a.track == b.track {
                    continue;
                }
                let (overlap, at) = contact(&a.bbox, &b.bbox);
                if overlap.is_nan() || overlap < self.min_overlap {
                    continue;
                }
                let key = [a.track.min(b.track), a.track.max(b.track)];
                let same = |p: &Pair| p.tracks == key || p.tracks == [key[1], key[0]];
                let slot = self.pairs.iter().position(|p| p.is_some_and(|p| same(&p)));
                if let Some(p) = slot.and_then(|i| self.pairs[i].as_mut()) {
                    p.contact = true;
                    let cooling = p.last_raised.is_some_and(|t| ts.since(t) < self.cooldown);
                    if p.phase != Phase::Idle || cooling {
                        continue;
                    }
                }
                let (Some(ta), Some(tb)) = (self.tracks.peek(a.track), self.tracks.peek(b.track)) else {
                    continue;
                };
                let closing = closing_speed(ta, tb, ts, self.window);
                if !closing.is_some_and(|v| v >= self.min_closing_speed) {
                    continue;
                }
                let Some(i) = slot.or_else(|| free_slot(&self.pairs)) else {
                    continue; // every slot busy with a live episode: this impact goes unfollowed
                };
                let last_raised = self.pairs[i].and_then(|p| p.last_raised);
                let phase = Phase::Armed { since: ts, down: [0, 0], contact: 0 };
                self.pairs[i] = Some(Pair { tracks: key, ids: key, at, phase, contact: true, last_raised });
                self.tracks.get(a.track, ts).standing = Some(a.bbox);
                self.tracks.get(b.track, ts).standing = Some(b.bbox);
            }
        }

        // 3. each followed pair: fall, raise, clear, forget. The same two people can be
        // followed as two pairs (one lost and found again under a new id at the clash, while
        // the old track still coasted into contact): one alert per player who went down.
        let mut raised = self.pairs.map(|p| match p.map(|p| p.phase) {
            Some(Phase::Raised { track, .. }) => Some(track),
            _ => None,
        });
        for (i, slot) in self.pairs.iter_mut().enumerate() {
            let Some(p) = slot else { continue };
            if p.phase != Phase::Idle {
                for k in 0..2 {
                    if let Some((id, standing)) = successor(&self.tracks, scene, p.tracks, k) {
                        p.tracks[k] = id;
                        if id & POSE_ONLY == 0 {
                            p.ids[k] = id;
                        }
                        self.tracks.get(id, ts).standing = standing;
                    }
                }
            }
            let seen = |id: u32| self.tracks.peek(id).filter(|t| t.seen == ts);
            let now = [seen(p.tracks[0]), seen(p.tracks[1])];
            match &mut p.phase {
                Phase::Armed { since, down, contact } => {
                    let age = ts.since(*since);
                    let raise = if self.require_down {
                        // The impact's own frame does not count: the fall comes after it.
                        if age > Duration::ZERO {
                            for (k, t) in now.iter().enumerate() {
                                match t.map(|t| t.verdict) {
                                    // A fall must begin within down_within_s; once begun it
                                    // may finish its debounce after.
                                    Some(Verdict::Down) if down[k] > 0 || age <= self.down_within => {
                                        down[k] += 1;
                                    }
                                    Some(Verdict::Up) => down[k] = 0,
                                    _ => {}
                                }
                            }
                        }
                        let fallen = (0..2).find(|&k| down[k] >= self.min_frames);
                        // A fall begun in time has as long again to be confirmed.
                        let late = age > self.down_within.saturating_mul(2);
                        if fallen.is_none() && age > self.down_within && (*down == [0, 0] || late) {
                            p.phase = Phase::Idle;
                        }
                        fallen
                    } else if p.contact {
                        *contact += 1;
                        (*contact >= self.min_frames).then_some(0)
                    } else {
                        p.phase = Phase::Idle;
                        None
                    };
                    if let Some(who) = raise {
                        let track = p.ids[who];
                        p.last_raised = Some(ts);
                        if raised.contains(&Some(track)) {
                            p.phase = Phase::Idle;
                        } else {
                            p.phase = Phase::Raised { track, who, up: 0 };
                            raised[i] = Some(track);
                            alerts.push(Alert {
                                rule: self.index,
                                state: AlertState::Raised,
                                track,
                                at: p.at,
                            });
                        }
                    }
                }
                Phase::Raised { track, who, up } => {
                    let (track, k) = (*track, *who);
                    let gone =
                        self.tracks.peek(p.tracks[k]).is_none_or(|t| ts.since(t.seen) > self.clear_after);
                    match (now[k].map(|t| t.verdict), now[1 - k].map(|t| t.verdict)) {
                        (Some(Verdict::Down), _) | (_, Some(Verdict::Down)) => *up = 0,
                        // The one who went down is up, the other up or out of sight, and apart.
                        (Some(Verdict::Up), Some(Verdict::Up) | None) if !p.contact => *up += 1,
                        (Some(Verdict::Up), _) if p.contact => *up = 0,
                        // Not seen, or not well enough to say: hold.
                        _ => {}
                    }
                    if gone || *up >= self.min_frames {
                        p.phase = Phase::Idle;
                        raised[i] = None;
                        alerts.push(Alert { rule: self.index, state: AlertState::Cleared, track, at: p.at });
                    }
                }
                Phase::Idle => {
                    let cooled = p.last_raised.is_none_or(|t| ts.since(t) >= self.cooldown);
                    let forgotten = p.tracks.iter().all(|&id| self.tracks.peek(id).is_none());
                    if cooled || forgotten {
                        *slot = None;
                    }
                }
            }
        }
        self.tracks.expire(ts, self.clear_after.saturating_add(Duration::from_secs(1)), |_, _| {});
    }

    /// Clears every raised alert (the rule is being replaced).
    pub fn clear_all(&mut self, alerts: &mut Vec<Alert>) {
        for p in self.pairs.iter_mut().flatten() {
            if let Phase::Raised { track, .. } = p.phase {
                p.phase = Phase::Idle;
                alerts.push(Alert { rule: self.index, state: AlertState::Cleared, track, at: p.at });
            }
        }
    }
}

/// The track that took over from member `k` of a pair, with that member's standing box: the
/// tracker loses people at collisions and falls (boxes that merge, then change shape fast) and
/// starts a new track where they lie, or only pose finds them lying. A person track or a pose
/// of nobody the detector sees, born after member `k` was last seen, and either covering at
/// least half of its last box (or half covered by it), or lying across where it stood, or
/// standing where it lay ([`fell_from`]), is taken for it.
fn successor(
    tracks: &TrackStates<Track>,
    scene: &Scene<'_>,
    pair: [u32; 2],
    k: usize,
) -> Option<(u32, Option<BBox>)> {
    let lost = tracks.peek(pair[k])?;
    if lost.seen == scene.ts {
        return None;
    }
    let people = scene.objects.iter().chain(scene.carried);
    let people = people.filter(|o| o.class == coco::PERSON).map(|o| (o.track, o.bbox));
    let posed = scene.poses.unwrap_or_default().iter().map(|p| (POSE_ONLY | p.track, p.pose.bbox));
    people
        .chain(posed)
        .filter(|(id, _)| !pair.contains(id))
        .filter(|(id, _)| tracks.peek(*id).is_some_and(|t| t.born > lost.seen && t.seen == scene.ts))
        .map(|(id, b)| (id, contact(&lost.bbox, &b).0, b))
        .filter(|&(_, overlap, b)| overlap >= 0.5 || fell_from(&lost.bbox, &b) || fell_from(&b, &lost.bbox))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(id, _, _)| (id, lost.standing))
}

/// Whether `now` could be the person last seen standing in `last`, fallen: a box wider than
/// tall, over the point where they stood (the bottom of `last`, give or take a quarter of
/// their height), and no longer than they are tall, give or take half.
fn fell_from(last: &BBox, now: &BBox) -> bool {
    let h = last.height();
    let lying = now.width() > now.height() && (0.5 * h..=1.5 * h).contains(&now.width());
    if !(h > 0.0 && lying) {
        return false;
    }
    let (x, y, r) = (last.center().x, last.y2, FALL_REACH * h);
    (now.x1 - r..=now.x2 + r).contains(&x) && (now.y1 - r..=now.y2 + r).contains(&y)
}

/// A free place in the pair table: an empty one, else the idle pair raised longest ago.
fn free_slot(pairs: &[Option<Pair>; PAIRS]) -> Option<usize> {
    pairs.iter().position(Option::is_none).or_else(|| {
        (0..PAIRS)
            .filter(|&i| pairs[i].is_some_and(|p| p.phase == Phase::Idle))
            .min_by_key(|&i| pairs[i].and_then(|p| p.last_raised))
    })
}

/// The pose whose box overlaps `bbox` most, if it overlaps enough to be the same person.
fn matched_pose<'a>(poses: &'a [TrackedPose], bbox: &BBox) -> Option<&'a TrackedPose> {
    poses
        .iter()
        .map(|p| (p, p.pose.bbox.iou(bbox)))
        .filter(|(_, iou)| *iou >= POSE_MATCH_IOU)
        .max_by(|x, y| x.1.total_cmp(&y.1))
        .map(|(p, _)| p)
}

/// How much two boxes overlap, as intersection over the smaller box's area (0 when either is
/// empty), and the centre of their intersection.
pub fn contact(a: &BBox, b: &BBox) -> (f32, Point) {
    let (x1, y1, x2, y2) = (a.x1.max(b.x1), a.y1.max(b.y1), a.x2.min(b.x2), a.y2.min(b.y2));
    let inter = (x2 - x1).max(0.0) * (y2 - y1).max(0.0);
    let smaller = a.area().min(b.area());
    let overlap = if smaller > 0.0 { inter / smaller } else { 0.0 };
    (overlap, Point { x: (x1 + x2) * 0.5, y: (y1 + y2) * 0.5 })
}

/// How fast the distance between the two tracks' box centres shrank over the last `window`,
/// in body heights (the pair's mean box height now) per second; `None` without enough history.
fn closing_speed(a: &Track, b: &Track, now: MonoTime, window: Duration) -> Option<f32> {
    let (pa, pb) = (a.centre_back(now, window)?, b.centre_back(now, window)?);
    let height = (a.bbox.height() + b.bbox.height()) * 0.5;
    if !height.is_finite() || height < 1.0 {
        return None;
    }
    let before = dist(pa, pb);
    let after = dist(a.bbox.center(), b.bbox.center());
    let v = (before - after) / window.as_secs_f32() / height;
    v.is_finite().then_some(v)
}

/// Down, judged from the box alone against the box when the player last stood (at the impact):
/// shorter than then, and either wider than tall (lying across the picture) or with its centre
/// dropped by `min_drop` of the standing height (lying along the line of sight, or slumped).
/// A box that grew (someone walking towards the camera) or two people merged into one wide box
/// are not falls.
pub fn fallen_box(standing: &BBox, now: &BBox, min_drop: f32) -> bool {
    let (h0, h) = (standing.height(), now.height());
    if !(h0 > 0.0 && h < h0) {
        return false;
    }
    now.width() > h || now.center().y - standing.center().y >= min_drop * h0
}

fn dist(a: Point, b: Point) -> f32 {
    ((a.x - b.x).powi(2) + (a.y - b.y).powi(2)).sqrt()
}

/// What is wrong with a collision rule's own settings, as (field, message); `fps` is the
/// camera's, when known. `sideline check` and rule packs report these under the rule's path.
pub fn problems(c: &Collision, fps: Option<f64>) -> Vec<(&'static str, String)> {
    let mut f = Vec::new();
    let within = |v: f32, lo: f32, hi: f32| v > lo && v <= hi;
    if !within(c.min_closing_speed, 0.0, 20.0) {
        f.push((
            "min_closing_speed",
            format!("{} body heights per second is outside (0, 20]", c.min_closing_speed),
        ));
    }
    if !within(c.speed_window_s, 0.0, MAX_SPEED_WINDOW_S) {
        f.push(("speed_window_s", format!("{} s is outside (0, {MAX_SPEED_WINDOW_S}]", c.speed_window_s)));
    } else if let Some(fps) = fps.filter(|&v| v > 0.0) {
        let frames = c.speed_window_s as f64 * fps;
        if frames < 0.999 {
            f.push((
                "speed_window_s",
                format!(
                    "{} s is shorter than one frame interval ({:.3} s at {fps} fps)",
                    c.speed_window_s,
                    1.0 / fps
                ),
            ));
        } else if frames > (HISTORY - 1) as f64 + 0.001 {
            f.push((
                "speed_window_s",
                format!(
                    "{} s spans more than the {} frames kept per track at {fps} fps",
                    c.speed_window_s,
                    HISTORY - 1
                ),
            ));
        }
    }
    if !within(c.min_overlap, 0.0, 1.0) {
        f.push(("min_overlap", format!("{} is outside (0, 1]", c.min_overlap)));
    }
    if !within(c.down_within_s, 0.0, 60.0) {
        f.push(("down_within_s", format!("{} s is outside (0, 60]", c.down_within_s)));
    }
    if !(1..=100).contains(&c.min_frames) {
        f.push(("min_frames", format!("{} is outside 1..=100", c.min_frames)));
    }
    if !(c.max_torso_angle_deg > 0.0 && c.max_torso_angle_deg < 90.0) {
        f.push(("max_torso_angle_deg", format!("{} is outside (0, 90)", c.max_torso_angle_deg)));
    }
    if !(c.max_hip_height > 0.0 && c.max_hip_height.is_finite()) {
        f.push(("max_hip_height", format!("{} must be > 0", c.max_hip_height)));
    }
    if !(c.min_drop > 0.0 && c.min_drop < 1.0) {
        f.push(("min_drop", format!("{} is outside (0, 1)", c.min_drop)));
    }
    if !within(c.clear_after_s, 0.0, 3600.0) {
        f.push(("clear_after_s", format!("{} s is outside (0, 3600]", c.clear_after_s)));
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infer::pose::{kp, Keypoint, Pose, KEYPOINTS};
    use crate::rules::Tracked;

    fn cfg(require_down: bool, cooldown_s: f32) -> Collision {
        let text = format!(
            "name = \"collision\"\nseverity = \"critical\"\noutputs = [\"log\"]\nrequire_down = {require_down}\ncooldown_s = {cooldown_s}"
        );
        toml::from_str(&text).unwrap()
    }

    fn rule(require_down: bool, cooldown_s: f32) -> CollisionRule {
        CollisionRule::new(3, &cfg(require_down, cooldown_s), 0.3)
    }

    /// A person `h` px tall standing with feet at (x, foot).
    fn standing(track: u32, x: f32, foot: f32, h: f32) -> Tracked {
        let bbox = BBox { x1: x - 0.2 * h, y1: foot - h, x2: x + 0.2 * h, y2: foot };
        Tracked { track, class: coco::PERSON, score: 0.9, bbox }
    }

    /// The same person lying across the picture: as wide as they were tall, 0.4 of it high.
    fn lying(track: u32, x: f32, foot: f32, h: f32) -> Tracked {
        let bbox = BBox { x1: x - 0.5 * h, y1: foot - 0.4 * h, x2: x + 0.5 * h, y2: foot };
        Tracked { track, class: coco::PERSON, score: 0.9, bbox }
    }

    /// A pose filling `bbox`: torso upright, or lying flat along its bottom.
    fn pose(bbox: BBox, down: bool) -> Pose {
        let (cx, h) = (bbox.center().x, bbox.height().max(bbox.width()));
        let at = |x: f32, y: f32| Keypoint { x, y, score: 0.9 };
        let mut k = [Keypoint { x: cx, y: bbox.y2, score: 0.0 }; KEYPOINTS];
        let (sh, hip, ankle) = if down {
            let y = bbox.y2 - 0.1 * h;
            (at(cx - 0.3 * h, y), at(cx, y), at(cx + 0.45 * h, y + 0.02 * h))
        } else {
            (at(cx, bbox.y1 + 0.2 * h), at(cx, bbox.y1 + 0.5 * h), at(cx, bbox.y2))
        };
        k[kp::L_SHOULDER] = sh;
        k[kp::R_SHOULDER] = sh;
        k[kp::L_HIP] = hip;
        k[kp::R_HIP] = hip;
        k[kp::L_ANKLE] = ankle;
        k[kp::R_ANKLE] = ankle;
        Pose { score: 0.8, bbox, keypoints: k }
    }

    /// Alerts as (frame, state, track, at).
    type Alerts = Vec<(u32, AlertState, u32, Point)>;

    /// Plays 10 fps frames `0..frames` of `people(frame)` (with a pose per person where
    /// `poses(frame)` says up or down), returning (frame, state, track, at) of each alert.
    fn play_with(
        r: &mut CollisionRule,
        frames: std::ops::Range<u32>,
        people: impl Fn(u32) -> Vec<Tracked>,
        poses: impl Fn(u32, u32) -> Option<bool>,
    ) -> Alerts {
        play_scenes(r, frames, |i| {
            let objs = people(i);
            let ps: Vec<TrackedPose> = objs
                .iter()
                .filter_map(|o| {
                    poses(i, o.track).map(|d| TrackedPose { track: 100 + o.track, pose: pose(o.bbox, d) })
                })
                .collect();
            (objs, vec![], ps)
        })
    }

    /// Plays 10 fps frames of `scene(frame)`: people reported, people carried by low-score
    /// detections, and poses (none: pose did not run).
    fn play_scenes(
        r: &mut CollisionRule,
        frames: std::ops::Range<u32>,
        scene: impl Fn(u32) -> (Vec<Tracked>, Vec<Tracked>, Vec<TrackedPose>),
    ) -> Alerts {
        let mut out = vec![];
        for i in frames {
            let (objs, carried, ps) = scene(i);
            let mut alerts = vec![];
            let scene = Scene {
                seq: i as u64,
                ts: MonoTime::from_nanos(5_000_000_000 + i as u64 * 100_000_000),
                objects: &objs,
                carried: &carried,
                coasting: &[],
                poses: (!ps.is_empty()).then_some(&ps[..]),
                luma: None,
            };
            r.evaluate(&scene, &mut alerts);
            out.extend(alerts.iter().map(|a| {
                assert_eq!(a.rule, 3);
                (i, a.state, a.track, a.at)
            }));
        }
        out
    }

    fn play(
        r: &mut CollisionRule,
        frames: std::ops::Range<u32>,
        people: impl Fn(u32) -> Vec<Tracked>,
    ) -> Alerts {
        play_with(r, frames, people, |_, _| None)
    }

    fn states(a: &Alerts) -> Vec<(u32, AlertState, u32)> {
        a.iter().map(|&(i, s, t, _)| (i, s, t)).collect()
    }

    /// Two players `h` px tall run at each other at 1.5 heights/s each along the line y = `foot`
    /// (offset by `x0`), meet at frame 10 with centres 0.2 heights apart and stay locked; from
    /// frame 15 player 2 lies on the ground (until frame `up`, if any); from frame 20 player 1
    /// walks away.
    fn clash(i: u32, h: f32, x0: f32, foot: f32, up: Option<u32>) -> Vec<Tracked> {
        let t = i as f32 * 0.1;
        let run = 1.5 * h * (1.0 - t).max(0.0);
        let walk = 1.0 * h * (t - 2.0).max(0.0);
        let a = standing(1, x0 - 0.1 * h - run - walk, foot, h);
        let bx = x0 + 0.1 * h + run;
        let down = i >= 15 && up.is_none_or(|u| i < u);
        let b = if down { lying(2, bx, foot, h) } else { standing(2, bx, foot, h) };
        vec![a, b]
    }

    #[test]
    fn a_clash_then_a_fall_raises_once_at_the_fall_for_the_one_down() {
        let mut r = rule(true, 30.0);
        let a = play(&mut r, 0..60, |i| clash(i, 100.0, 300.0, 400.0, Some(40)));
        // Down from frame 15, two frames of debounce: raised at 16, for player 2, where the
        // boxes met (their intersection: x 290..310 at the impact, the whole height).
        assert_eq!(states(&a), vec![(16, AlertState::Raised, 2), (41, AlertState::Cleared, 2)], "{a:?}");
        let at = a[0].3;
        assert!((at.x - 300.0).abs() < 1.0 && (at.y - 350.0).abs() < 1.0, "{at:?}");
    }

    #[test]
    fn the_fall_may_be_seen_by_pose_alone_and_pose_overrules_the_box() {
        // Player 2 falls along the line of sight: the box keeps its shape, the pose lies flat.
        // Pose runs on every other frame only.
        let mut r = rule(true, 30.0);
        let people = |i| clash(i, 100.0, 300.0, 400.0, Some(0));
        let a = play_with(&mut r, 0..40, people, |i, t| (i % 2 == 0).then_some(t == 2 && i >= 16));
        assert_eq!(states(&a), vec![(18, AlertState::Raised, 2)], "{a:?}");

        // The box looks fallen (a wide, low box) but pose, seeing the player, says up: silent.
        let mut r = rule(true, 30.0);
        let people = |i| clash(i, 100.0, 300.0, 400.0, None);
        let a = play_with(&mut r, 0..40, people, |_, _| Some(false));
        assert!(a.is_empty(), "{a:?}");
        // Without pose the same boxes are a fall.
        let mut r = rule(true, 30.0);
        assert_eq!(states(&play(&mut r, 0..40, people)), vec![(16, AlertState::Raised, 2)]);
    }

    #[test]
    fn walking_side_by_side_overlapping_is_not_an_impact() {
        for require_down in [true, false] {
            let mut r = rule(require_down, 30.0);
            // Both run at 1.5 heights/s, their boxes overlapping by half, for 6 s.
            let a = play(&mut r, 0..60, |i| {
                let x = 100.0 + 15.0 * i as f32;
                vec![standing(1, x, 400.0, 100.0), standing(2, x + 20.0, 405.0, 100.0)]
            });
            assert!(a.is_empty(), "require_down = {require_down}: {a:?}");
        }
    }

    /// Two players running past each other at 1.5 heights/s each, a little apart in depth:
    /// their boxes overlap for three frames (11..=13).
    fn pass(i: u32, h: f32, x0: f32, foot: f32) -> Vec<Tracked> {
        let d = 1.5 * h * (i as f32 * 0.1 - 1.2);
        vec![standing(1, x0 + d, foot, h), standing(2, x0 - d, foot + 0.1 * h, h)]
    }

    #[test]
    fn a_fast_pass_without_a_fall_raises_only_when_a_fall_is_not_required() {
        let mut r = rule(true, 30.0);
        let a = play(&mut r, 0..40, |i| pass(i, 100.0, 300.0, 400.0));
        assert!(a.is_empty(), "{a:?}");

        let mut r = rule(false, 30.0);
        let a = play(&mut r, 0..40, |i| pass(i, 100.0, 300.0, 400.0));
        // Contact from frame 11, two frames of it raise; apart two frames from 14: cleared.
        assert_eq!(states(&a), vec![(12, AlertState::Raised, 1), (15, AlertState::Cleared, 1)], "{a:?}");
    }

    #[test]
    fn a_fall_without_an_impact_is_left_to_player_down() {
        let mut r = rule(true, 30.0);
        // Standing together (overlapping, still), then player 2 falls.
        let a = play(&mut r, 0..50, |i| {
            let b = if i >= 20 { lying(2, 320.0, 400.0, 100.0) } else { standing(2, 320.0, 400.0, 100.0) };
            vec![standing(1, 300.0, 400.0, 100.0), b]
        });
        assert!(a.is_empty(), "{a:?}");
        // Walking into each other (0.5 heights/s each: closing at 1, under the default 2),
        // then a fall: not an impact.
        let mut r = rule(true, 30.0);
        let a = play(&mut r, 0..50, |i| {
            let run = 0.5 * 100.0 * (1.0 - i as f32 * 0.1).max(0.0);
            let b = if i >= 15 {
                lying(2, 310.0 + run, 400.0, 100.0)
            } else {
                standing(2, 310.0 + run, 400.0, 100.0)
            };
            vec![standing(1, 290.0 - run, 400.0, 100.0), b]
        });
        assert!(a.is_empty(), "{a:?}");
        // And the same at 1.5 heights/s each does raise: the speed is what tells them apart.
        let mut r = rule(true, 30.0);
        assert_eq!(play(&mut r, 0..50, |i| clash(i, 100.0, 300.0, 400.0, None)).len(), 1);
    }

    #[test]
    fn a_player_the_tracker_loses_as_they_fall_is_followed_under_the_new_id() {
        // From frame 16, half-way down, the tracker gives player 2 a new id (7); a bystander
        // (id 9) appears next to them at the same time and covers little of their box.
        let relabelled = |i: u32| {
            let mut v = clash(i, 100.0, 300.0, 400.0, Some(40));
            if i >= 16 {
                v[1].track = 7;
                v.push(standing(9, 360.0, 400.0, 100.0));
            }
            v
        };
        let mut r = rule(true, 30.0);
        let a = play(&mut r, 0..60, relabelled);
        assert_eq!(states(&a), vec![(17, AlertState::Raised, 7), (41, AlertState::Cleared, 7)], "{a:?}");
        // Relabelled while lying, after the raise: the alert keeps its id (outputs match a
        // clear to its raise by it) and clears when the player, under the new id, gets up.
        let mut r = rule(true, 30.0);
        let a = play(&mut r, 0..60, |i| {
            let mut v = clash(i, 100.0, 300.0, 400.0, Some(40));
            if i >= 25 {
                v[1].track = 7;
            }
            v
        });
        assert_eq!(states(&a), vec![(16, AlertState::Raised, 2), (41, AlertState::Cleared, 2)], "{a:?}");
        // The same without the bystander.
        let mut r = rule(true, 30.0);
        let a = play(&mut r, 0..60, |i| relabelled(i).into_iter().filter(|o| o.track != 9).collect());
        assert_eq!(states(&a), vec![(17, AlertState::Raised, 7), (41, AlertState::Cleared, 7)], "{a:?}");
    }

    #[test]
    fn a_stumble_or_a_late_fall_is_not_the_clash_s_fall() {
        // After the clash player 2 flickers between lying and standing, one frame each: never
        // down for min_frames (2) in a row.
        let mut r = rule(true, 30.0);
        let a = play(&mut r, 0..50, |i| {
            let mut v = clash(i, 100.0, 300.0, 400.0, Some(0));
            if i > 10 && i % 2 == 1 {
                v[1] = lying(2, 310.0, 400.0, 100.0);
            }
            v
        });
        assert!(a.is_empty(), "{a:?}");
        // Player 2 goes down 2.5 s after the clash (down_within_s is 2): not its doing.
        let mut r = rule(true, 30.0);
        let a = play(&mut r, 0..60, |i| {
            let mut v = clash(i, 100.0, 300.0, 400.0, Some(0));
            if i >= 35 {
                v[1] = lying(2, 310.0, 400.0, 100.0);
            }
            v
        });
        assert!(a.is_empty(), "{a:?}");
    }

    #[test]
    fn far_and_near_pairs_behave_the_same() {
        let scaled =
            |a: Vec<(u32, AlertState, u32, Point)>, s: f32| -> Vec<(u32, AlertState, u32, i32, i32)> {
                a.into_iter()
                    .map(|(i, st, t, p)| (i, st, t, (p.x / s).round() as i32, (p.y / s).round() as i32))
                    .collect()
            };
        for (h, x0, foot) in [(40.0, 120.0, 160.0), (100.0, 300.0, 400.0), (250.0, 750.0, 1000.0)] {
            let s = h / 100.0;
            let mut r = rule(true, 30.0);
            let a = scaled(play(&mut r, 0..60, |i| clash(i, h, x0, foot, Some(40))), s);
            assert_eq!(
                a,
                vec![(16, AlertState::Raised, 2, 300, 350), (41, AlertState::Cleared, 2, 300, 350)],
                "h = {h}"
            );
            let mut r = rule(false, 30.0);
            let a = states(&play(&mut r, 0..40, |i| pass(i, h, x0, foot)));
            assert_eq!(a, vec![(12, AlertState::Raised, 1), (15, AlertState::Cleared, 1)], "h = {h}");
            let mut r = rule(true, 30.0);
            assert!(play(&mut r, 0..40, |i| pass(i, h, x0, foot)).is_empty(), "h = {h}");
        }
    }

    #[test]
    fn cooldown_holds_back_a_second_clash_of_the_same_pair() {
        // Clash and fall (raised at 16, cleared at 41), then the same clash again from frame 60.
        let twice = |i: u32| clash(i % 60, 100.0, 300.0, 400.0, Some(40));
        let mut r = rule(true, 30.0);
        let a = play(&mut r, 0..120, twice);
        assert_eq!(states(&a), vec![(16, AlertState::Raised, 2), (41, AlertState::Cleared, 2)], "{a:?}");
        // With a 5 s cooldown the second clash, 6 s after the first raise, raises again.
        let mut r = rule(true, 5.0);
        let a = play(&mut r, 0..120, twice);
        let raised: Vec<_> = a.iter().filter(|x| x.1 == AlertState::Raised).map(|x| x.0).collect();
        assert_eq!(raised, vec![16, 76], "{a:?}");
    }

    #[test]
    fn clears_when_the_one_down_is_gone_and_on_replacement() {
        let mut r = rule(true, 30.0);
        // Player 2 falls and then the detector loses them: cleared clear_after_s (10 s) later.
        let a = play(&mut r, 0..200, |i| {
            let mut v = clash(i, 100.0, 300.0, 400.0, None);
            if i >= 30 {
                v.truncate(1);
            }
            v
        });
        assert_eq!(states(&a), vec![(16, AlertState::Raised, 2), (130, AlertState::Cleared, 2)], "{a:?}");

        let mut r = rule(true, 30.0);
        play(&mut r, 0..20, |i| clash(i, 100.0, 300.0, 400.0, None));
        let mut cleared = vec![];
        r.clear_all(&mut cleared);
        assert_eq!(cleared.len(), 1);
        assert_eq!((cleared[0].state, cleared[0].track), (AlertState::Cleared, 2));
        cleared.clear();
        r.clear_all(&mut cleared);
        assert!(cleared.is_empty());
    }

    #[test]
    fn odd_boxes_and_crowds_neither_panic_nor_grow_the_state() {
        let mut r = rule(false, 0.0);
        // 30 people jostling on a small patch, ids fixed, plus degenerate boxes.
        let crowd = |i: u32| -> Vec<Tracked> {
            let mut v: Vec<Tracked> = (0..30)
                .map(|k| {
                    let x = 200.0 + 9.0 * k as f32 + 30.0 * ((i + k) as f32 * 0.7).sin();
                    standing(k + 1, x, 400.0 + 3.0 * k as f32, 100.0)
                })
                .collect();
            v.push(Tracked { track: 40, class: coco::PERSON, score: 0.9, bbox: BBox::default() });
            let inverted = BBox { x1: 300.0, y1: 400.0, x2: 250.0, y2: 300.0 };
            v.push(Tracked { track: 41, class: coco::PERSON, score: 0.9, bbox: inverted });
            let nan = BBox { x1: f32::NAN, y1: 0.0, x2: 1e30, y2: f32::INFINITY };
            v.push(Tracked { track: 42, class: coco::PERSON, score: 0.9, bbox: nan });
            v
        };
        play(&mut r, 0..20, crowd);
        let cap = r.tracks.items.capacity();
        let a = play(&mut r, 20..200, crowd);
        assert!(!a.is_empty(), "a jostling crowd makes contacts at speed");
        assert_eq!(r.tracks.items.capacity(), cap, "no growth after the busiest frame");
    }

    #[test]
    fn a_player_only_pose_sees_lying_is_followed_after_the_detector_loses_them() {
        // From frame 15 the detector finds nobody where player 2 lies (lying people score low);
        // the pose model finds them, lying across where they stood, then standing from 40.
        let scene = |i: u32| {
            let mut v = clash(i, 100.0, 300.0, 400.0, Some(40));
            let mut ps = vec![TrackedPose { track: 101, pose: pose(v[0].bbox, false) }];
            if (15..40).contains(&i) {
                let lying = lying(2, 340.0, 400.0, 100.0).bbox;
                ps.push(TrackedPose { track: 57, pose: pose(lying, true) });
                v.pop();
            } else if i >= 40 {
                // Up again where they lay, found again under a new id.
                v[1] = standing(8, 300.0, 400.0, 100.0);
                ps.push(TrackedPose { track: 57, pose: pose(v[1].bbox, false) });
            }
            (v, vec![], ps)
        };
        let mut r = rule(true, 30.0);
        let a = play_scenes(&mut r, 0..60, scene);
        // The alert carries the player's last person track id, not the pose's.
        assert_eq!(states(&a), vec![(16, AlertState::Raised, 2), (41, AlertState::Cleared, 2)], "{a:?}");

        // A pose lying somewhere else is not them: the pair waits, then gives up.
        let mut r = rule(true, 30.0);
        let a = play_scenes(&mut r, 0..60, |i| {
            let (v, c, mut ps) = scene(i);
            for p in ps.iter_mut().filter(|p| p.track == 57) {
                p.pose.bbox.x1 += 300.0;
                p.pose.bbox.x2 += 300.0;
            }
            (v, c, ps)
        });
        assert!(a.is_empty(), "{a:?}");
    }

    #[test]
    fn players_half_hidden_at_the_clash_make_contact_through_the_tracks_they_carry() {
        // At the clash (frames 9..=12) both players score under the detector's threshold:
        // their tracks are carried by low-score detections, not reported.
        let hidden = |i: u32| (9..=12).contains(&i);
        let mut r = rule(true, 30.0);
        let a = play_scenes(&mut r, 0..40, |i| {
            let v = clash(i, 100.0, 300.0, 400.0, None);
            if hidden(i) {
                (vec![], v, vec![])
            } else {
                (v, vec![], vec![])
            }
        });
        assert_eq!(states(&a), vec![(16, AlertState::Raised, 2)], "{a:?}");
        // Without them the impact goes unseen: by frame 13 the two stand locked, not closing.
        let mut r = rule(true, 30.0);
        let a = play_scenes(&mut r, 0..40, |i| {
            let v = clash(i, 100.0, 300.0, 400.0, None);
            (if hidden(i) { vec![] } else { v }, vec![], vec![])
        });
        assert!(a.is_empty(), "{a:?}");
    }

    #[test]
    fn a_fall_lies_across_where_the_player_stood() {
        let stood = BBox { x1: 80.0, y1: 300.0, x2: 120.0, y2: 400.0 };
        let across = |x1: f32, y1: f32, w: f32, h: f32| BBox { x1, y1, x2: x1 + w, y2: y1 + h };
        assert!(fell_from(&stood, &across(100.0, 360.0, 100.0, 40.0)), "fell backwards");
        assert!(fell_from(&stood, &across(0.0, 360.0, 100.0, 40.0)), "fell forwards");
        assert!(fell_from(&stood, &across(110.0, 375.0, 100.0, 45.0)), "and slid a little");
        assert!(!fell_from(&stood, &across(160.0, 360.0, 100.0, 40.0)), "lying further off");
        assert!(!fell_from(&stood, &across(100.0, 200.0, 100.0, 40.0)), "lying higher up the picture");
        assert!(!fell_from(&stood, &across(100.0, 300.0, 40.0, 100.0)), "standing");
        assert!(!fell_from(&stood, &across(0.0, 360.0, 300.0, 40.0)), "three times their height");
        assert!(!fell_from(&BBox::default(), &across(100.0, 360.0, 100.0, 40.0)));
    }

    #[test]
    fn the_box_test_needs_a_shorter_box() {
        let s = BBox { x1: 0.0, y1: 0.0, x2: 40.0, y2: 100.0 };
        assert!(fallen_box(&s, &BBox { x1: -30.0, y1: 60.0, x2: 70.0, y2: 100.0 }, 0.3), "lying across");
        assert!(fallen_box(&s, &BBox { x1: 0.0, y1: 55.0, x2: 40.0, y2: 115.0 }, 0.3), "slumped");
        assert!(!fallen_box(&s, &BBox { x1: 0.0, y1: 20.0, x2: 40.0, y2: 100.0 }, 0.3), "crouching a little");
        assert!(
            !fallen_box(&s, &BBox { x1: -60.0, y1: 0.0, x2: 60.0, y2: 100.0 }, 0.3),
            "merged with another"
        );
        assert!(!fallen_box(&s, &BBox { x1: 0.0, y1: 40.0, x2: 50.0, y2: 160.0 }, 0.3), "coming closer");
        assert!(!fallen_box(&BBox::default(), &s, 0.3));
    }

    #[test]
    fn settings_are_checked_field_by_field() {
        assert!(problems(&cfg(true, 30.0), Some(10.0)).is_empty());
        let mut c = cfg(true, 30.0);
        c.min_closing_speed = 0.0;
        c.min_overlap = 1.5;
        c.speed_window_s = 0.05;
        c.min_frames = 0;
        c.min_drop = f32::NAN;
        let fields: Vec<_> = problems(&c, Some(10.0)).into_iter().map(|(f, _)| f).collect();
        assert_eq!(
            fields,
            vec!["min_closing_speed", "speed_window_s", "min_overlap", "min_frames", "min_drop"]
        );
        c = cfg(true, 30.0);
        c.speed_window_s = 1.0;
        assert_eq!(problems(&c, Some(60.0))[0].0, "speed_window_s", "60 frames do not fit the history");
    }

    #[test]
    fn the_serial_kind_is_11() {
        use crate::alert::serial::protocol::{kind_code, kind_from_code};
        assert_eq!(kind_code(crate::rules::RuleKind::Collision), 11);
        assert_eq!(kind_from_code(11), Some(crate::rules::RuleKind::Collision));
    }
}
