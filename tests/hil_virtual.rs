//! The virtual hardware-in-the-loop rig: every scenario boots a QEMU guest (hil/virtual) with
//! real kernel drivers (vivid, snd-aloop, gpio-sim, an 8250 UART) and runs the sideline binary
//! this build produced inside it, against those drivers. The host checks what came out.
//!
//! The first run downloads and unpacks Debian's kernel and QEMU packages and builds gpio-sim
//! (about a minute, cached in .cache/hil); each boot then takes a few seconds under TCG.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// What a scenario left in its output folder.
struct Guest {
    out: PathBuf,
    ok: bool,
    log: String,
}

impl Guest {
    fn file(&self, name: &str) -> String {
        std::fs::read_to_string(self.out.join(name)).unwrap_or_default()
    }

    fn events(&self) -> Vec<Value> {
        self.file("events.jsonl").lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    /// Everything worth seeing when an assertion fails.
    fn explain(&self) -> String {
        let tail = |s: &str, n: usize| {
            s.lines().rev().take(n).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
        };
        format!(
            "--- guest.log\n{}\n--- sideline.log\n{}\n--- console\n{}",
            tail(&self.log, 40),
            tail(&self.file("sideline.log"), 40),
            tail(&self.file("console.log"), 15)
        )
    }
}

/// Boots the guest once with `script` (bash, run as root in the guest) after the rig preamble.
fn boot(name: &str, script: &str) -> Guest {
    let out = repo().join("target/hil").join(name);
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    let preamble = format!(
        "set -u\nBIN={bin}\nREPO={repo}\nOUT=/mnt\n{common}\n",
        bin = env!("CARGO_BIN_EXE_sideline"),
        repo = repo().display(),
        common = include_str!("../hil/virtual/scenario-common.sh"),
    );
    let script_path = out.join("script.sh");
    std::fs::write(&script_path, format!("{preamble}\n{script}")).unwrap();
    let status = Command::new(repo().join("hil/virtual/boot"))
        .arg(&out)
        .arg(&script_path)
        .status()
        .expect("running hil/virtual/boot");
    let log = std::fs::read_to_string(out.join("guest.log")).unwrap_or_default();
    Guest { out, ok: status.success(), log }
}

fn alerts<'a>(events: &'a [Value], rule: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == "alert" && e["rule"] == rule).collect()
}

/// Scenario 1: vivid frames flow through sideline; vivid's test pattern switched to black
/// raises `lens-covered`, which drives the gpio-sim `siren` line high; the rig reads the line
/// back through gpio-sim's sysfs; the normal pattern clears it and the line drops.
#[test]
fn camera_obstructed_drives_the_siren_line() {
    let g = boot(
        "obstructed",
        r#"
rig_gpio
# No on-screen text: a covered lens shows none either.
v4l2-ctl -d /dev/video0 -c test_pattern=0 -c osd_text_mode=2
$BIN run --board $REPO/board/rig-virtual.toml --events $OUT/events.jsonl --frame-events > $OUT/sideline.log 2>&1 &
pid=$!
wait_line heartbeat 1 120000 || fail "the heartbeat never went high: no frame decided in time"
echo "heartbeat up at $(ms)" >> $OUT/rig.txt
sleep 3
[ "$(line siren)" = 0 ] || fail "siren high before the lens was covered"
t0=$(ms); v4l2-ctl -d /dev/video0 -c test_pattern=5
wait_line siren 1 60000 || fail "siren never went high after the pattern went black"
echo "covered->siren_ms $(( $(ms) - t0 ))" >> $OUT/rig.txt
t0=$(ms); v4l2-ctl -d /dev/video0 -c test_pattern=0
wait_line siren 0 60000 || fail "siren stayed high after the picture came back"
echo "uncovered->siren_off_ms $(( $(ms) - t0 ))" >> $OUT/rig.txt
kill -INT $pid; wait $pid
echo "sideline exit $?" >> $OUT/rig.txt
"#,
    );
    assert!(g.ok, "scenario failed\n{}", g.explain());
    let events = g.events();
    let frames: Vec<&Value> = events.iter().filter(|e| e["type"] == "frame").collect();
    assert!(frames.len() >= 5, "only {} frames decided\n{}", frames.len(), g.explain());
    // Camera rate: the camera's sequence numbers against its capture clock.
    let (first, last) = (frames[0], frames[frames.len() - 1]);
    let secs = (last["capture_us"].as_u64().unwrap() - first["capture_us"].as_u64().unwrap()) as f64 / 1e6;
    let fps = (last["frame"].as_u64().unwrap() - first["frame"].as_u64().unwrap()) as f64 / secs;
    // The profile asks for 25 fps, what vivid offers at this size.
    eprintln!("camera delivered {fps:.1} fps (configured 25); {} frames decided", frames.len());
    assert!((fps - 25.0).abs() < 2.5, "camera at {fps:.1} fps, configured 25\n{}", g.explain());
    let lens = alerts(&events, "lens-covered");
    let states: Vec<&str> = lens.iter().map(|a| a["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["raised", "cleared"], "{lens:?}\n{}", g.explain());
    assert_eq!(lens[0]["outputs"], serde_json::json!(["siren"]), "{}", lens[0]);
    eprintln!("{}", g.file("rig.txt"));
    assert!(g.file("rig.txt").contains("sideline exit 0"), "{}", g.explain());
}

#[allow(dead_code)]
fn unused(_: &Path) {}
