//! Collision, end to end: board/sim.toml's `[[rules.collision]]` table, loaded and
//! validated as `sideline check` does, then the real trackers (one for people, one for poses)
//! and the per-frame rule set, fed synthetic detections and poses frame by frame as the loop
//! feeds them. No footage of a collision is available, so the people are drawn as boxes and
//! keypoints: two players, 40 px tall as on the clip's lawn, run into each other, one falls
//! over three frames and lies there, then gets up.

mod common;

use std::time::Duration;

use sideline::alert::serial::protocol::kind_code;
use sideline::clock::MonoTime;
use sideline::config::{Board, Severity};
use sideline::geometry::{BBox, Point};
use sideline::infer::coco;
use sideline::infer::pose::{kp, Keypoint, Pose, KEYPOINTS};
use sideline::rules::{AlertState, RuleKind, RuleSet, Scene, Tracked, TrackedPose};
use sideline::track::{Tracker, TrackerConfig};

/// The collision table of board/sim.toml, as shipped.
const COLLISION: &str =
    "[[rules.collision]]\nname = \"collision\"\nseverity = \"critical\"\noutputs = [\"log\"]\n";

/// board/sim.toml (paths made absolute, state under `dir`) with its collision table replaced
/// by `table`.
fn sim_with(dir: &std::path::Path, table: &str) -> std::path::PathBuf {
    common::sim_profile(dir, |text| {
        assert_eq!(text.matches(COLLISION).count(), 1, "board/sim.toml's collision rule changed");
        text.replace(COLLISION, table)
    })
}

/// Height of the players, px, and where they meet.
const H: f32 = 40.0;
const MEET: Point = Point { x: 300.0, y: 450.0 };

/// A box `h` tall and `w` wide standing on `foot` at `x`.
fn on_ground(x: f32, foot: f32, w: f32, h: f32) -> BBox {
    BBox { x1: x - w / 2.0, y1: foot - h, x2: x + w / 2.0, y2: foot }
}

/// Keypoints for `b`: torso upright, or lying along the bottom of the box.
fn pose(b: BBox, lying: bool) -> Pose {
    let cx = b.center().x;
    let at = |x: f32, y: f32| Keypoint { x, y, score: 0.8 };
    let mut k = [Keypoint { x: cx, y: b.y2, score: 0.05 }; KEYPOINTS];
    let (sh, hip, ankle) = if lying {
        let y = b.y2 - 0.3 * b.height();
        (at(b.x1 + 0.2 * b.width(), y), at(cx, y), at(b.x2 - 0.05 * b.width(), y + 1.0))
    } else {
        (at(cx, b.y1 + 0.2 * b.height()), at(cx, b.y1 + 0.5 * b.height()), at(cx, b.y2))
    };
    for (i, p) in [(kp::L_SHOULDER, sh), (kp::R_SHOULDER, sh), (kp::L_HIP, hip), (kp::R_HIP, hip)] {
        k[i] = p;
    }
    k[kp::L_ANKLE] = ankle;
    k[kp::R_ANKLE] = ankle;
    Pose { score: 0.7, bbox: b, keypoints: k }
}

/// Frame `i` at 10 fps: player A (left) and B (right) run at each other at 1.5 heights/s and
/// meet at frame 10; B goes down over frames 15-17 and lies until frame 40, A walks off from
/// frame 20. Returns each player's box and whether their pose lies.
fn clash(i: u32) -> [(BBox, bool); 2] {
    let t = i as f32 * 0.1;
    let run = 1.5 * H * (1.0 - t).max(0.0);
    let walk = H * (t - 2.0).max(0.0);
    let a = on_ground(MEET.x - 0.15 * H - run - walk, MEET.y, 0.4 * H, H);
    let bx = MEET.x + 0.15 * H + run;
    // Falling: 0 standing .. 1 lying, over three frames.
    let f = if (15..40).contains(&i) { ((i - 14) as f32 / 3.0).min(1.0) } else { 0.0 };
    let b = on_ground(bx, MEET.y, (0.4 + 0.6 * f) * H, (1.0 - 0.6 * f) * H);
    [(a, false), (b, f >= 1.0)]
}

/// Runs `frames` of `scene(i)` through the trackers and the board's rules; returns each
/// alert of the rule named `rule` as (frame, state, track, at), and the person track id
/// of each player in the last frame.
/// Alerts of one rule: (frame, state, track, at).
type Alerts = Vec<(u32, AlertState, u32, Point)>;

fn play(board: &Board, rule: &str, frames: u32) -> (Alerts, [u32; 2]) {
    play_seen(board, rule, frames, |_, _| Some(0.8))
}

/// As [`play`], with each player's detection score on each frame from `score(frame, player)`
/// (`None`: not detected at all). Tracks the tracker still follows without a detection over its
/// threshold reach the rules as the loop hands them over: carried.
fn play_seen(
    board: &Board,
    rule: &str,
    frames: u32,
    score: impl Fn(u32, usize) -> Option<f32>,
) -> (Alerts, [u32; 2]) {
    let mut rules = RuleSet::new(board).unwrap();
    let index = rules.metas().iter().position(|m| m.name == rule).expect("the rule is in the set");
    let person_threshold = board.models.detector.score_threshold;
    let mut people = Tracker::new(TrackerConfig::from_profile(&board.tracking, person_threshold));
    let mut bodies = Tracker::new(TrackerConfig::from_profile(&board.tracking, 0.0));
    let (mut ids, mut pose_ids, mut alerts, mut out) = (vec![], vec![], vec![], vec![]);
    let mut last = [0; 2];
    for i in 0..frames {
        let players = clash(i);
        let dets: Vec<(BBox, f32)> =
            players.iter().enumerate().filter_map(|(k, &(b, _))| Some((b, score(i, k)?))).collect();
        people.update(&dets, &mut ids);
        let named = |ids: &[u32]| -> Vec<Tracked> {
            dets.iter()
                .zip(ids)
                .filter(|(_, &id)| id != 0)
                .map(|(&(bbox, score), &track)| Tracked { track, class: coco::PERSON, score, bbox })
                .collect()
        };
        let objects = named(&ids);
        let carried = named(people.carried());
        let coasting: Vec<Tracked> = people
            .coasting()
            .map(|t| Tracked { track: t.id, class: coco::PERSON, score: 0.0, bbox: t.bbox })
            .collect();
        if ids.len() == 2 {
            last = [ids[0], ids[1]];
        }
        let poses: Vec<Pose> = players.iter().map(|&(b, lying)| pose(b, lying)).collect();
        let boxes: Vec<(BBox, f32)> = poses.iter().map(|p| (p.bbox, p.score)).collect();
        bodies.update(&boxes, &mut pose_ids);
        let tracked: Vec<TrackedPose> =
            poses.iter().zip(&pose_ids).map(|(p, &track)| TrackedPose { track, pose: *p }).collect();
        let ts = MonoTime::from_nanos(1_000_000_000).plus(Duration::from_millis(i as u64 * 100));
        alerts.clear();
        rules.evaluate(
            &Scene {
                seq: i as u64,
                ts,
                objects: &objects,
                carried: &carried,
                coasting: &coasting,
                poses: Some(&tracked),
                luma: None,
            },
            &mut alerts,
        );
        out.extend(alerts.iter().filter(|a| a.rule == index).map(|a| (i, a.state, a.track, a.at)));
    }
    (out, last)
}

#[test]
fn a_clash_then_a_fall_raises_the_profile_s_collision_rule_for_the_one_down() {
    let dir = tempfile::tempdir().unwrap();
    let board = common::load_board(&sim_with(dir.path(), COLLISION));
    let c = &board.rules.collision[0];
    // Defaults, as documented.
    assert_eq!((c.min_closing_speed, c.speed_window_s, c.min_overlap), (2.0, 0.3, 0.2));
    assert_eq!((c.down_within_s, c.require_down, c.min_frames, c.cooldown_s), (2.0, true, 2, 30.0));
    let rules = RuleSet::new(&board).unwrap();
    let meta = rules.metas().iter().find(|m| m.name == "collision").unwrap();
    assert_eq!(
        (meta.kind, meta.severity, kind_code(meta.kind)),
        (RuleKind::Collision, Severity::Critical, 11)
    );

    let (alerts, ids) = play(&board, "collision", 60);
    let [a, b] = ids;
    assert_ne!(a, b);
    // B starts going down at frame 15 (the pose lies from 17); two frames of debounce.
    let states: Vec<_> = alerts.iter().map(|&(_, s, t, _)| (s, t)).collect();
    assert_eq!(states, vec![(AlertState::Raised, b), (AlertState::Cleared, b)], "{alerts:?}");
    assert!((16..=18).contains(&alerts[0].0), "raised at the fall: {alerts:?}");
    assert!((40..=42).contains(&alerts[1].0), "cleared once B is up: {alerts:?}");
    let at = alerts[0].3;
    assert!((at.x - MEET.x).abs() < 3.0 && (at.y - (MEET.y - H / 2.0)).abs() < 3.0, "contact point {at:?}");

    // The same profile with the fall required away, and severity warning: raised at the
    // impact (frame 10 plus one of debounce), before anyone falls.
    let impact_only = COLLISION.replace("critical", "warning") + "require_down = false\n";
    let board = common::load_board(&sim_with(dir.path(), &impact_only));
    let (alerts, _) = play(&board, "collision", 30);
    assert_eq!(alerts.first().map(|a| (a.0, a.1)), Some((11, AlertState::Raised)), "{alerts:?}");
}

#[test]
fn players_hidden_at_the_clash_still_make_contact_through_the_tracker() {
    // At the clash A half hides B (frames 9-10: B scores 0.3, under the 0.45 threshold), then
    // wholly (11-12: no detection of B at all) while A's score dips too (0.35): a detector at a
    // real clash. The tracker follows both, and the rule sees the impact through it.
    let dir = tempfile::tempdir().unwrap();
    let board = common::load_board(&sim_with(dir.path(), COLLISION));
    let hidden = |i: u32, k: usize| match (i, k) {
        (9..=10, 1) => Some(0.3),
        (11..=12, 1) => None,
        (9..=12, 0) => Some(0.35),
        _ => Some(0.8),
    };
    let (alerts, [_, b]) = play_seen(&board, "collision", 60, hidden);
    let states: Vec<_> = alerts.iter().map(|&(_, s, t, _)| (s, t)).collect();
    assert_eq!(states, vec![(AlertState::Raised, b), (AlertState::Cleared, b)], "{alerts:?}");
    assert!((16..=18).contains(&alerts[0].0), "raised at the fall: {alerts:?}");
}

#[test]
fn sideline_check_lists_the_rule_and_names_each_bad_field() {
    let dir = tempfile::tempdir().unwrap();
    let good = sim_with(dir.path(), COLLISION);
    common::ort_env();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sideline"))
        .args(["check", "--board"])
        .arg(&good)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("1 collision"), "{stdout}");

    let bad = COLLISION.replace(
        "outputs = [\"log\"]",
        "outputs = [\"siren\"]\nmin_closing_speed = -1\nmin_overlap = 1.5\nspeed_window_s = 0.05\nmin_frames = 0",
    );
    let err = Board::load(&sim_with(dir.path(), &bad)).unwrap_err().to_string();
    for field in ["outputs[0]", "min_closing_speed", "min_overlap", "speed_window_s", "min_frames"] {
        assert!(err.contains(&format!("rules.collision[0].{field}: ")), "{field} in:\n{err}");
    }
    assert!(err.contains("one frame interval"), "{err}");
    let typo = COLLISION.to_string() + "min_speed = 3\n";
    let err = Board::load(&sim_with(dir.path(), &typo)).unwrap_err().to_string();
    assert!(err.contains("rules.collision[0]") && err.contains("min_speed"), "{err}");
}
