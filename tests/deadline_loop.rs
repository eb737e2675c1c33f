//! The deadline loop under load and faults, with a model stage of known cost.
//!
//! The camera is a synthetic one that numbers its frames and can stall; the model stage sleeps
//! for a cost the test sets (an artificially slow model) and reports one person standing in a
//! zone. Everything else (slot, ladder, rules, output thread, supervisor, recorder) is the real
//! loop.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use sideline::alert::{AlertError, AlertOutput, Signal};
use sideline::capture::{CaptureError, Frame, FrameSource, PixelFormat, SourceInfo};
use sideline::clock::{sleep_until, MonoTime};
use sideline::config::Board;
use sideline::geometry::BBox;
use sideline::infer::detector::Detection;
use sideline::infer::pose::Pose;
use sideline::pipeline::frame_loop::{self, Parts};
use sideline::pipeline::ladder::{FramePlan, Ladder};
use sideline::pipeline::perception::Perception;
use sideline::pipeline::{frame_budget, RunOptions};
use sideline::recorder::{EventsDest, Recorder};
use sideline::rules::{AlertState, RuleSet};
use sideline::store::{Store, StoreConfig};

static STOP: AtomicBool = AtomicBool::new(false);

/// A camera at `fps` that numbers frames, publishes the newest number, and can stall once.
struct Camera {
    fps: f64,
    frames: u64,
    seq: u64,
    start: Option<MonoTime>,
    latest: Arc<AtomicU64>,
    stall_at: Option<(u64, Duration)>,
    stalled: Duration,
}

impl FrameSource for Camera {
    fn info(&self) -> SourceInfo {
        SourceInfo { width: 64, height: 48, fps: self.fps, format: PixelFormat::I420 }
    }
    fn next_frame(&mut self, frame: &mut Frame) -> Result<bool, CaptureError> {
        if self.seq >= self.frames {
            return Ok(false);
        }
        let start = *self.start.get_or_insert_with(MonoTime::now);
        if let Some((at, d)) = self.stall_at {
            if self.seq == at && self.stalled.is_zero() {
                std::thread::sleep(d);
                self.stalled = d;
            }
        }
        let due = start.plus(Duration::from_secs_f64(self.seq as f64 / self.fps) + self.stalled);
        sleep_until(due);
        frame.seq = self.seq;
        frame.ts = MonoTime::now();
        frame.arrived = frame.ts;
        self.latest.store(self.seq, Ordering::SeqCst);
        self.seq += 1;
        Ok(true)
    }
}

/// A model stage of known cost: sleeps, then reports one person inside the zone.
struct SlowModel {
    detect_us: Arc<AtomicU64>,
    pose_us: Arc<AtomicU64>,
    /// Frames that hang the model this long (a stuck inference).
    hang: Option<(u64, Duration)>,
    latest: Arc<AtomicU64>,
    /// (frame taken, newest frame the camera had produced when it was taken)
    taken: Arc<Mutex<Vec<(u64, u64)>>>,
    seq: u64,
}

impl Perception for SlowModel {
    fn classes(&self) -> &[u16] {
        &[0]
    }
    fn has_pose(&self) -> bool {
        true
    }
    fn prepare(&mut self, frame: &Frame, _plan: &FramePlan) {
        self.seq = frame.seq;
        self.taken.lock().unwrap().push((frame.seq, self.latest.load(Ordering::SeqCst)));
    }
    fn detect(&mut self, out: &mut Vec<Detection>) -> anyhow::Result<()> {
        std::thread::sleep(Duration::from_micros(self.detect_us.load(Ordering::Relaxed)));
        if let Some((at, d)) = self.hang {
            if self.seq == at {
                std::thread::sleep(d);
            }
        }
        out.push(Detection { class: 0, score: 0.9, bbox: BBox { x1: 20.0, y1: 10.0, x2: 30.0, y2: 40.0 } });
        Ok(())
    }
    fn pose(&mut self, _plan: &FramePlan, _out: &mut Vec<Pose>) -> anyhow::Result<()> {
        std::thread::sleep(Duration::from_micros(self.pose_us.load(Ordering::Relaxed)));
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Seen {
    Heartbeat(bool),
    Alert(String, AlertState),
}

/// An alert output that records what it was told, and when.
struct Recording(Arc<Mutex<Vec<(MonoTime, Seen)>>>);

impl AlertOutput for Recording {
    fn name(&self) -> &str {
        "recording"
    }
    fn drive(&mut self, s: &Signal<'_>) -> Result<(), AlertError> {
        self.0.lock().unwrap().push((MonoTime::now(), Seen::Alert(s.rule.name.clone(), s.state)));
        Ok(())
    }
    fn heartbeat(&mut self, level: bool) -> Result<(), AlertError> {
        self.0.lock().unwrap().push((MonoTime::now(), Seen::Heartbeat(level)));
        Ok(())
    }
}

fn board(dir: &Path, loop_toml: &str) -> Board {
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    let text = format!(
        r#"
[board]
name = "test"
device_id = "test-1"
[[cameras]]
name = "synthetic"
kind = "v4l2"
source = "/dev/null"
width = 64
height = 48
fps = 30.0
[models.detector]
path = "{models}/centernet.onnx"
backend = "tract"
input = [512, 512]
score_threshold = 0.5
classes = ["person"]
[models.pose]
path = "{models}/movenet-multipose.onnx"
backend = "tract"
input = [256, 256]
score_threshold = 0.3
[[rules.zone_incursion]]
name = "zone"
polygon = [[0, 0], [64, 0], [64, 48], [0, 48]]
min_frames = 3
severity = "warning"
outputs = ["recording"]
[[rules.player_down]]
name = "down"
severity = "critical"
outputs = ["recording"]
[[outputs]]
name = "recording"
kind = "log"
[storage]
path = "{state}"
[loop]
{loop_toml}
"#,
        models = models.display(),
        state = dir.join("state").display(),
    );
    Board::from_toml(&text, &dir.join("board.toml")).unwrap_or_else(|e| panic!("{e}"))
}

struct Run {
    events: Vec<Value>,
    taken: Vec<(u64, u64)>,
    seen: Vec<(MonoTime, Seen)>,
    summary: sideline::telemetry::Summary,
}

fn run(board: &Board, camera: Camera, model: SlowModel, dir: &Path) -> Run {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let taken = model.taken.clone();
    let events = dir.join("events.jsonl");
    let recorder = Recorder::spawn(
        Some(&EventsDest::File(events.clone())),
        Store::open(&board.storage.path, StoreConfig::default()).unwrap(),
    )
    .unwrap();
    let parts = Parts {
        ladder: Ladder::new(&board.frame_loop, frame_budget(board, camera.fps)),
        camera: Box::new(camera),
        microphone: None,
        perception: Box::new(model),
        rules: RuleSet::new(board).unwrap(),
        outputs: vec![Box::new(Recording(seen.clone()))],
        heartbeat: Some(0),
        recorder,
        cfg: board.frame_loop.clone(),
        tracking: board.tracking.clone(),
        rules_inbox: None,
        watches: Vec::new(),
        speech: None,
    };
    let opts = RunOptions { pace: true, frame_events: true, ..RunOptions::default() };
    let summary = frame_loop::run(parts, &opts, &STOP).unwrap();
    let events =
        std::fs::read_to_string(events).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let taken = taken.lock().unwrap().clone();
    let seen = seen.lock().unwrap().clone();
    Run { events, taken, seen, summary }
}

fn camera(frames: u64, latest: &Arc<AtomicU64>) -> Camera {
    Camera {
        fps: 30.0,
        frames,
        seq: 0,
        start: None,
        latest: latest.clone(),
        stall_at: None,
        stalled: Duration::ZERO,
    }
}

fn model(latest: &Arc<AtomicU64>, detect_ms: u64, pose_ms: u64) -> SlowModel {
    SlowModel {
        detect_us: Arc::new(AtomicU64::new(detect_ms * 1000)),
        pose_us: Arc::new(AtomicU64::new(pose_ms * 1000)),
        hang: None,
        latest: latest.clone(),
        taken: Arc::new(Mutex::new(Vec::new())),
        seq: 0,
    }
}

#[test]
fn slow_model_degrades_newest_frame_first_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    // 30 fps, 33 ms budget. Ladder: pose on every 2nd frame, then pose off.
    let board = board(
        dir.path(),
        "degrade_after = 3\nwindow = 10\nrecover_after = 20\nheadroom = 0.6\n\
         [[loop.ladder]]\npose_every = 2\n[[loop.ladder]]\npose_every = 0\n",
    );
    let latest = Arc::new(AtomicU64::new(0));
    let m = model(&latest, 8, 60);
    let pose_us = m.pose_us.clone();
    // After 4 s the pose model becomes fast: the ladder must climb back.
    let speed_up = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(4));
        pose_us.store(1000, Ordering::Relaxed);
    });
    let r = run(&board, camera(270, &latest), m, dir.path());
    speed_up.join().unwrap();

    // No frame twice, always the newest available (allowing one frame produced in the
    // instant between the take and the check).
    let seqs: Vec<u64> = r.taken.iter().map(|t| t.0).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "frames taken out of order or twice: {seqs:?}");
    for &(seq, newest) in &r.taken {
        assert!(seq + 1 >= newest, "took frame {seq} while {newest} was available");
    }
    assert!(r.summary.dropped_frames > 0, "a slow loop drops stale frames");

    // Frame age stays bounded: at most a frame interval of waiting plus one slow frame.
    let frames: Vec<&Value> = r.events.iter().filter(|e| e["type"] == "frame").collect();
    let max_taken_age = frames.iter().map(|f| f["taken_age_us"].as_u64().unwrap()).max().unwrap();
    assert!(max_taken_age < 120_000, "a frame waited {max_taken_age} us before being taken");
    let late_half = &frames[frames.len() / 2..];
    let max_age = late_half.iter().map(|f| f["age_us"].as_u64().unwrap()).max().unwrap();
    assert!(max_age < 150_000, "ages grow: {max_age} us");

    // The ladder stepped down while pose was slow, and back up after, with hysteresis: each
    // step up comes only after `recover_after` decided frames at the level below.
    let ladder: Vec<(u64, u64, u64)> = r
        .events
        .iter()
        .filter(|e| e["type"] == "ladder")
        .map(|e| (e["frame"].as_u64().unwrap(), e["from"].as_u64().unwrap(), e["to"].as_u64().unwrap()))
        .collect();
    assert!(ladder.iter().any(|&(_, f, t)| f == 0 && t == 1), "{ladder:?}");
    assert!(ladder.iter().any(|&(_, f, t)| f == 1 && t == 2), "{ladder:?}");
    assert!(ladder.iter().any(|&(_, f, t)| f == 1 && t == 0), "{ladder:?}");
    assert_eq!(r.summary.final_level, 0, "{ladder:?}");
    for w in ladder.windows(2) {
        let ((f0, _, _), (f1, from, to)) = (w[0], w[1]);
        if to < from {
            let decided_between =
                frames.iter().filter(|f| (f0..f1).contains(&f["frame"].as_u64().unwrap())).count();
            assert!(decided_between >= 20, "stepped up after only {decided_between} frames: {ladder:?}");
        }
    }
    // Pose was given up at level 2 and the frames still went through the rules.
    assert!(frames.iter().any(|f| f["level"] == 2 && f["pose"] == false));

    // Rules ran on every decided frame, at every level: one frame event each, and the zone
    // alert raised once, on the third decided frame.
    assert_eq!(frames.len() as u64, r.summary.frames);
    let alerts: Vec<&Value> =
        r.events.iter().filter(|e| e["type"] == "alert" && e["rule"] == "zone").collect();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0]["frame"], frames[2]["frame"]);
    assert!(r.seen.iter().any(|s| s.1 == Seen::Alert("zone".into(), AlertState::Raised)));
}

/// The `[loop]` of the health tests: quick blind and stall alarms, a fast heartbeat.
const HEALTH_LOOP: &str =
    "blind_after_ms = 300\nstall_after_ms = 300\nheartbeat = \"recording\"\nheartbeat_ms = 50\n";

fn heartbeats_between(seen: &[(MonoTime, Seen)], from: MonoTime, to: MonoTime) -> usize {
    seen.iter().filter(|(t, s)| *t >= from && *t <= to && matches!(s, Seen::Heartbeat(true))).count()
}

fn first(seen: &[(MonoTime, Seen)], want: &Seen, after: MonoTime) -> Option<MonoTime> {
    seen.iter().find(|(t, s)| s == want && *t >= after).map(|(t, _)| *t)
}

#[test]
fn camera_stall_raises_blind_alarm_and_stops_heartbeat_then_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let board = board(dir.path(), HEALTH_LOOP);
    let latest = Arc::new(AtomicU64::new(0));
    let mut cam = camera(120, &latest);
    cam.stall_at = Some((45, Duration::from_millis(1500)));
    let t0 = MonoTime::now();
    let r = run(&board, cam, model(&latest, 2, 2), dir.path());
    // Frame 45 is due 1.5 s after start; the stall begins when frame 44 is delivered.
    let stall_start = t0.plus(Duration::from_millis(44 * 1000 / 30));
    let stall_end = stall_start.plus(Duration::from_millis(1500));
    let blind_raised = Seen::Alert("camera-blind".into(), AlertState::Raised);
    let blind_cleared = Seen::Alert("camera-blind".into(), AlertState::Cleared);

    let raised = first(&r.seen, &blind_raised, t0).expect("camera-blind raised");
    let after = raised.since(stall_start);
    assert!(
        after >= Duration::from_millis(250) && after <= Duration::from_millis(800),
        "raised {after:?} into the stall"
    );
    // The heartbeat beat before the stall, stopped within blind_after + a period, and resumed.
    assert!(heartbeats_between(&r.seen, t0, stall_start) >= 5);
    let quiet_from = stall_start.plus(Duration::from_millis(300 + 50 + 100));
    assert_eq!(heartbeats_between(&r.seen, quiet_from, stall_end), 0, "heartbeat during the stall");
    let cleared = first(&r.seen, &blind_cleared, raised).expect("camera-blind cleared after the stall");
    assert!(cleared >= stall_end);
    assert!(
        heartbeats_between(&r.seen, cleared, cleared.plus(Duration::from_secs(1))) >= 3,
        "heartbeat resumed"
    );
    // A blind camera is not a stalled loop.
    assert!(!r.seen.iter().any(|s| s.1 == Seen::Alert("loop-stalled".into(), AlertState::Raised)));
}

#[test]
fn hung_model_raises_loop_stalled_and_stops_heartbeat_then_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let board = board(dir.path(), HEALTH_LOOP);
    let latest = Arc::new(AtomicU64::new(0));
    let mut m = model(&latest, 2, 2);
    m.hang = Some((40, Duration::from_millis(1500)));
    let taken = m.taken.clone();
    let t0 = MonoTime::now();
    let r = run(&board, camera(120, &latest), m, dir.path());
    let _ = taken;
    let stalled_raised = Seen::Alert("loop-stalled".into(), AlertState::Raised);
    let stalled_cleared = Seen::Alert("loop-stalled".into(), AlertState::Cleared);
    let raised = first(&r.seen, &stalled_raised, t0).expect("loop-stalled raised");
    let cleared = first(&r.seen, &stalled_cleared, raised).expect("loop-stalled cleared");
    let hang_start = t0.plus(Duration::from_millis(40 * 1000 / 30));
    let after = raised.since(hang_start);
    assert!(
        after >= Duration::from_millis(250) && after <= Duration::from_millis(900),
        "raised {after:?} into the hang"
    );
    assert_eq!(heartbeats_between(&r.seen, raised.plus(Duration::from_millis(100)), cleared), 0);
    assert!(
        heartbeats_between(&r.seen, cleared, cleared.plus(Duration::from_secs(1))) >= 3,
        "heartbeat resumed"
    );
    assert!(!r.seen.iter().any(|s| s.1 == Seen::Alert("camera-blind".into(), AlertState::Raised)));
}

#[test]
fn no_heartbeat_before_the_first_frame_is_decided() {
    let dir = tempfile::tempdir().unwrap();
    let board = board(dir.path(), HEALTH_LOOP);
    let latest = Arc::new(AtomicU64::new(0));
    // The first frame takes 800 ms (a model warming up): nothing is decided meanwhile.
    let mut m = model(&latest, 2, 2);
    m.hang = Some((0, Duration::from_millis(800)));
    let t0 = MonoTime::now();
    let r = run(&board, camera(60, &latest), m, dir.path());
    assert_eq!(heartbeats_between(&r.seen, t0, t0.plus(Duration::from_millis(700))), 0, "{:?}", r.seen);
    assert!(
        heartbeats_between(&r.seen, t0.plus(Duration::from_millis(800)), MonoTime::now()) >= 3,
        "never beat"
    );
}
