//! The binary on the sample footage: expected people found, zone incursions raised where people
//! really cross the road, and nothing raised where nobody goes or while nobody is on the road.
//!
//! Ground truth was read off the clip by eye (frames 50, 90, 100 and 170 were checked against
//! the zone drawn on them): nobody stands in the `road` zone before frame 90; a man walks into
//! it at about frame 96 and several people cross it up to frame 200; nobody ever walks on the
//! lower-right lawn (`lawn-south`, a zone added by this test).

mod common;

use std::process::Command;

use serde_json::Value;
use sideline::geometry::{BBox, Point, Polygon};
use sideline::store::{Priority, Store, StoreConfig};

const FRAMES: u64 = 200;

const LAWN_SOUTH: &str = r#"
[[rules.zone_incursion]]
name = "lawn-south"
polygon = [[460, 440], [700, 440], [700, 525], [460, 525]]
classes = ["person"]
min_frames = 1
severity = "warning"
outputs = ["log"]
"#;

fn bbox(v: &Value) -> BBox {
    let b: Vec<f32> = v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
    BBox { x1: b[0], y1: b[1], x2: b[2], y2: b[3] }
}

#[test]
fn sample_footage_detections_and_zone_alerts() {
    common::ort_env();
    common::media("vtest.y4m");
    let dir = tempfile::tempdir().unwrap();
    // What the models and rules find on every frame is the subject here, not degradation
    // (tests/deadline_loop.rs): without the ladder a loaded machine cannot skip frames.
    let board = common::sim_profile(dir.path(), |t| {
        format!("{}{LAWN_SOUTH}", common::without_tables(&t, &["[[loop.ladder]]"]))
    });
    let events = dir.path().join("events.jsonl");
    let out = Command::new(env!("CARGO_BIN_EXE_sideline"))
        .args(["run", "--board"])
        .arg(&board)
        .args(["--no-pace", "--max-frames", &FRAMES.to_string(), "--events"])
        .arg(&events)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "sideline run failed:\n{stderr}");
    assert!(stderr.contains("ALERT"), "alerts are logged by the simulated output:\n{stderr}");

    let events: Vec<Value> = std::fs::read_to_string(&events)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad event line {l}: {e}")))
        .collect();
    let of = |t: &'static str| events.iter().filter(move |e| e["type"] == t);

    // Every frame ran; the summary is the last event.
    let summary = events.last().unwrap();
    assert_eq!(summary["type"], "summary");
    assert_eq!(summary["frames"], FRAMES);

    // People: the clip always shows several pedestrians (some briefly hidden or tiny).
    let persons: Vec<&Value> = of("detection").filter(|d| d["class"] == "person").collect();
    for f in 0..FRAMES {
        let n = persons.iter().filter(|d| d["frame"] == f).count();
        assert!((1..=12).contains(&n), "frame {f}: {n} people");
    }
    let mean = persons.len() as f64 / FRAMES as f64;
    assert!((3.0..=9.0).contains(&mean), "{mean} people per frame on average");
    // Frame 100, labelled by hand: six people in the open (one more is hidden by a sign).
    let labels = [
        [588.0, 155.0, 618.0, 236.0],
        [347.0, 200.0, 378.0, 273.0],
        [514.0, 156.0, 540.0, 219.0],
        [379.0, 178.0, 408.0, 257.0],
        [221.0, 58.0, 236.0, 95.0],
        [494.0, 152.0, 518.0, 219.0],
    ];
    let at_100: Vec<BBox> = persons.iter().filter(|d| d["frame"] == 100).map(|d| bbox(&d["box"])).collect();
    let found = labels
        .iter()
        .filter(|l| {
            let l = BBox { x1: l[0], y1: l[1], x2: l[2], y2: l[3] };
            at_100.iter().any(|d| d.iou(&l) >= 0.5)
        })
        .count();
    assert!(found >= 5, "frame 100: {found} of 6 labelled people found in {at_100:?}");

    // Alerts.
    let alerts: Vec<&Value> = of("alert").collect();
    let raised = |zone: &str| -> Vec<&Value> {
        alerts.iter().copied().filter(|a| a["rule"] == zone && a["state"] == "raised").collect()
    };
    assert!(raised("lawn-south").is_empty(), "nobody walks on the lower lawn: {:?}", raised("lawn-south"));
    let road = raised("road");
    let road_poly = Polygon::new(&[
        [540.0, 175.0],
        [700.0, 105.0],
        [768.0, 100.0],
        [768.0, 175.0],
        [700.0, 190.0],
        [690.0, 250.0],
        [560.0, 250.0],
    ])
    .unwrap();
    let tracks: std::collections::BTreeSet<u64> = road.iter().map(|a| a["track"].as_u64().unwrap()).collect();
    assert!(tracks.len() >= 2, "several people cross the road by frame 200: {road:?}");
    for a in &road {
        let frame = a["frame"].as_u64().unwrap();
        assert!(frame >= 96, "nobody is on the road before frame 90, yet: {a}");
        assert_eq!(a["kind"], "zone_incursion");
        assert_eq!(a["severity"], "warning");
        assert_eq!(a["outputs"], serde_json::json!(["log"]));
        let at = Point { x: a["at"]["x"].as_f64().unwrap() as f32, y: a["at"]["y"].as_f64().unwrap() as f32 };
        assert!(road_poly.contains(at), "alert outside the zone: {a}");
        // The alerting track was inside for min_frames (3) consecutive frames, by its detections.
        let track = &a["track"];
        for f in frame - 2..=frame {
            let d = persons
                .iter()
                .find(|d| d["frame"] == f && &d["track"] == track)
                .unwrap_or_else(|| panic!("track {track} missing at frame {f}"));
            assert!(road_poly.contains(bbox(&d["box"]).foot()), "track {track} outside at frame {f}");
        }
        // Unpaced, capture times follow the clip's timeline; latency is from frame arrival.
        assert!(a["latency_us"].as_u64().unwrap() > 0, "{a}");
    }

    // The microphone ran beside the camera: every referee whistle in field.wav raised an alert,
    // each inside a labelled whistle (an audio alert's `frame` is its 32 ms chunk number).
    let windows = common::whistle_windows();
    let whistles = raised("whistle");
    for (start, end) in &windows {
        let heard = whistles.iter().any(|a| {
            let t = a["frame"].as_u64().unwrap() as f64 * 0.032;
            t >= *start && t <= *end
        });
        assert!(heard, "no whistle alert for {start}..{end} s: {whistles:?}");
    }
    for a in &whistles {
        let t = a["frame"].as_u64().unwrap() as f64 * 0.032;
        assert!(windows.iter().any(|(s, e)| t >= *s && t <= *e), "whistle alert at {t} s: {a}");
        assert_eq!(a["kind"], "whistle");
    }

    // The durable store holds every alert the events file reported, as safety patterns in
    // the same order, and the run's summary as telemetry.
    let store = Store::open(&dir.path().join("state"), StoreConfig::default()).unwrap();
    let mut stored = Vec::new();
    store.next_batch(Priority::Safety, 0, 100_000, 0, &mut stored).unwrap();
    let stored: Vec<Value> = stored.iter().map(|p| serde_json::from_str(&p.body).unwrap()).collect();
    assert_eq!(stored.iter().collect::<Vec<_>>(), alerts);
    let mut telemetry = Vec::new();
    store.next_batch(Priority::Telemetry, 0, 100_000, 0, &mut telemetry).unwrap();
    assert!(telemetry.iter().any(|p| p.kind == "summary"), "the run's summary is kept");
}
