//! The real `sideline run` on the simulated board, with its uplink talking to a real Mosquitto
//! over mutual TLS: alerts reach the fleet side, a signed rule pack changes the rules of the
//! running loop without a restart, and a restart without a broker keeps the accepted pack.

mod common;
#[path = "common/mqtt.rs"]
mod mqtt;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use serde_json::Value;
use sideline::config::rulepack;

use mqtt::{Backend, Broker, Msg, Pki};

const DEVICE: &str = "field-7";
const FRAMES: u64 = 200;
/// The `road` zone of board/sim.toml (checked below, so the copy cannot drift).
const ROAD: &str = "[[540, 175], [700, 105], [768, 100], [768, 175], [700, 190], [690, 250], [560, 250]]";

fn signing_key() -> SigningKey {
    SigningKey::from_bytes(&[7u8; 32])
}

fn topic(rest: &str) -> String {
    format!("sideline/v1/{DEVICE}/{rest}")
}

/// board/sim.toml as device `field-7`, its uplink pointed at `broker`, accepting packs signed
/// by the test key.
fn profile(dir: &Path, pki: &Pki, broker: &Broker) -> PathBuf {
    use base64::Engine as _;
    let public = base64::engine::general_purpose::STANDARD.encode(signing_key().verifying_key().as_bytes());
    common::sim_profile(dir, |text| {
        assert!(text.contains(&format!("polygon = {ROAD}")), "board/sim.toml's road zone changed");
        let text = text.replace(r#"device_id = "sim-0001""#, &format!(r#"device_id = "{DEVICE}""#));
        format!(
            "{text}\n[sync]\nhost = \"127.0.0.1\"\nport = {}\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n\
             backoff_min_s = 0.05\nbackoff_max_s = 0.4\nrulepack_keys = [\"{public}\"]\n",
            broker.port,
            pki.ca.display(),
            pki.device_cert.display(),
            pki.device_key.display()
        )
    })
}

/// Pack 2: the same road, renamed, so every alert says which rule set raised it.
fn pack_v2() -> Vec<u8> {
    let text = format!(
        "version = 2\ndescription = \"road renamed\"\n\n[[rules.zone_incursion]]\nname = \"road-v2\"\n\
         polygon = {ROAD}\nclasses = [\"person\"]\nmin_frames = 3\nseverity = \"warning\"\n\
         outputs = [\"log\"]\ncooldown_s = 30\n"
    );
    rulepack::sign(&text, &signing_key())
}

/// One finished `sideline run`.
struct Run {
    events: Vec<Value>,
    stderr: String,
    took: Duration,
}

impl Run {
    fn of<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.events.iter().filter(move |e| e["type"] == kind)
    }

    fn alerts(&self) -> Vec<&Value> {
        self.of("alert").collect()
    }

    fn zone_alerts(&self) -> Vec<&Value> {
        self.of("alert").filter(|a| a["kind"] == "zone_incursion").collect()
    }

    fn summary(&self) -> &Value {
        let last = self.events.last().expect("no events at all");
        assert_eq!(last["type"], "summary", "the summary is the last event: {last}");
        last
    }

    /// The alerts, the rules events and the end of standard error, for failure messages
    /// (detections and frame events would bury them).
    fn notable(&self) -> String {
        let lines: Vec<String> = self
            .events
            .iter()
            .filter(|e| e["type"] == "alert" || e["type"] == "rules")
            .map(|e| e.to_string())
            .collect();
        format!("{}\n--- stderr (tail):\n{}", lines.join("\n"), tail(&self.stderr, 30))
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Complete lines of an events file written so far, parsed.
fn read_events(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    complete
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad event line {l}: {e}")))
        .collect()
}

/// `sideline run --board <board> --events <events> --max-frames <frames> --no-pace --frame-events`,
/// with `during` called while it runs; it must exit 0. Its standard error goes to a file beside
/// the events (a pipe nobody reads could fill up and stall it).
fn run_with(board: &Path, events: &Path, frames: u64, during: impl FnOnce(&mut Child)) -> Run {
    common::ort_env();
    common::media("vtest.y4m");
    let stderr_path = events.with_extension("stderr");
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sideline"))
        .args(["run", "--no-pace", "--frame-events", "--max-frames", &frames.to_string(), "--board"])
        .arg(board)
        .arg("--events")
        .arg(events)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    // Not left running if `during` fails.
    struct Reap<'a>(&'a mut Child);
    impl Drop for Reap<'_> {
        fn drop(&mut self) {
            if std::thread::panicking() {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
    }
    let reap = Reap(&mut child);
    during(reap.0);
    let status = reap.0.wait().unwrap();
    let took = started.elapsed();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap();
    assert!(status.success(), "sideline run failed ({status}):\n{stderr}");
    let run = Run { events: read_events(events), stderr, took };
    assert_eq!(run.summary()["frames"], frames, "every frame ran:\n{}", run.notable());
    run
}

fn run(board: &Path, events: &Path, frames: u64) -> Run {
    run_with(board, events, frames, |_| {})
}

/// Waits until the run reports an alert that `pred` accepts, and returns it. Fails if the run
/// ends first or nothing comes within a minute.
fn wait_for_alert(child: &mut Child, events: &Path, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // Only alert lines are parsed: the file also grows by detections and frames.
        let text = std::fs::read_to_string(events).unwrap_or_default();
        let found = text
            .split_inclusive('\n')
            .filter(|l| l.ends_with('\n') && l.contains(r#""type":"alert""#))
            .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("bad event line {l}: {e}")))
            .find(&pred);
        if let Some(alert) = found {
            return alert;
        }
        let status = child.try_wait().unwrap();
        assert!(status.is_none(), "the run ended ({status:?}) before the awaited alert:\n{text}");
        assert!(Instant::now() < deadline, "the awaited alert did not come within a minute");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn frame(e: &Value) -> u64 {
    e["frame"].as_u64().unwrap_or_else(|| panic!("no frame in {e}"))
}

/// Every pattern upstream of `class`, deduplicated by key (delivery is at least once).
fn patterns(msgs: &[Msg], class: &str) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for m in msgs.iter().filter(|m| m.topic == topic(&format!("patterns/{class}"))) {
        let batch: Value = serde_json::from_slice(&m.payload).expect("batch is JSON");
        assert_eq!(batch["class"], class, "{batch}");
        for p in batch["patterns"].as_array().unwrap() {
            out.insert(p["key"].as_str().unwrap().to_string(), p.clone());
        }
    }
    out
}

/// The bodies of the safety patterns upstream, as text, one per key.
fn safety_bodies(msgs: &[Msg]) -> Vec<String> {
    patterns(msgs, "safety").values().map(|p| p["body"].to_string()).collect()
}

fn sorted(values: &[&Value]) -> Vec<String> {
    let mut v: Vec<String> = values.iter().map(|v| v.to_string()).collect();
    v.sort();
    v
}

fn statuses(msgs: &[Msg]) -> Vec<Value> {
    msgs.iter()
        .filter(|m| m.topic == topic("status"))
        .map(|m| serde_json::from_slice(&m.payload).expect("status is JSON"))
        .collect()
}

#[test]
fn alerts_reach_upstream_rule_packs_change_rules_live_and_survive_a_restart_offline() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&dir.path().join("pki"));
    let mut broker = Broker::start(&pki, &dir.path().join("broker"));
    let backend = Backend::connect(&broker, &pki, &topic("#"));
    let board = profile(dir.path(), &pki, &broker);

    // ---- phase 1: the loop runs the profile's rules until someone walks onto the road; then
    // pack 2 is published (retained, as a fleet console would) and the running loop takes it.
    // Published only then, and not before the run, so that the old rules demonstrably ran
    // first: a retained pack waiting at start reaches the loop before its second frame here.
    let events_1 = dir.path().join("events-1.jsonl");
    let mut road_alert = Value::Null;
    let first = run_with(&board, &events_1, FRAMES, |child| {
        road_alert = wait_for_alert(child, &events_1, |e| e["rule"] == "road" && e["state"] == "raised");
        backend.publish(&topic("rulepack"), &pack_v2(), true);
    });
    let rules: Vec<&Value> = first.of("rules").collect();
    assert_eq!(rules.len(), 1, "one rule set swap:\n{}", first.notable());
    assert_eq!(rules[0]["version"], 2, "{}", rules[0]);
    let swap = frame(rules[0]);
    assert!(
        frame(&road_alert) < swap,
        "the swap at frame {swap} follows the alert it waited for: {road_alert}"
    );
    // One process decided every frame, on both sides of the swap: it was not restarted.
    // (A loaded machine may make the ladder skip frames: decided frames rise, not necessarily
    // one by one.)
    let decided: Vec<u64> = first.of("frame").map(frame).collect();
    assert!(decided.windows(2).all(|w| w[0] < w[1]), "frames decided in order: {decided:?}");
    assert_eq!(decided.first(), Some(&0), "{decided:?}");
    let after = decided.iter().filter(|&&f| f >= swap).count();
    assert!(after >= 20, "the swap at frame {swap} left {after} frames to see the new rules");
    let zone = first.zone_alerts();
    assert!(zone.contains(&&road_alert), "{road_alert} is among the alerts");
    for a in &zone {
        // The swap happens before frame `swap` is decided; what the old rules held raised is
        // cleared at that frame, under the old rule's name.
        let clears_old = frame(a) == swap && a["rule"] == "road" && a["state"] == "cleared";
        if frame(a) >= swap && !clears_old {
            assert_eq!(a["rule"], "road-v2", "after the swap at frame {swap}: {a}\n{}", first.notable());
        } else if frame(a) < swap {
            assert_eq!(a["rule"], "road", "before the swap at frame {swap}: {a}\n{}", first.notable());
        }
    }
    // Nothing raised under `road` is left open: every raise has its clear.
    let open_under = |rule: &str| {
        let mut open = std::collections::HashSet::new();
        for a in zone.iter().filter(|a| a["rule"] == rule) {
            if a["state"] == "raised" {
                open.insert(a["track"].as_u64());
            } else {
                open.remove(&a["track"].as_u64());
            }
        }
        open
    };
    assert!(open_under("road").is_empty(), "`road` alerts left raised by the swap: {:?}", open_under("road"));
    let raised_v2 = zone.iter().filter(|a| a["rule"] == "road-v2" && a["state"] == "raised").count();
    assert!(raised_v2 >= 1, "people cross the road after the swap at frame {swap}:\n{}", first.notable());
    eprintln!(
        "phase 1: swap before frame {swap}, {} alerts, {:.1} s",
        first.alerts().len(),
        first.took.as_secs_f64()
    );

    // Upstream: the outcome of the pack, every alert once, the summary, online then offline.
    // The backend gets them a moment after the run ended.
    let alerts = sorted(&first.alerts());
    let has_summary = |m: &[Msg], run: &Run| {
        patterns(m, "telemetry").values().any(|p| p["kind"] == "summary" && p["body"] == *run.summary())
    };
    let complete = backend.wait_for(Duration::from_secs(10), |m| {
        safety_bodies(m).len() >= alerts.len()
            && has_summary(m, &first)
            && statuses(m).iter().any(|s| s["state"] == "offline")
    });
    let msgs = backend.messages();
    let mut upstream = safety_bodies(&msgs);
    upstream.sort();
    assert!(
        complete,
        "upstream after the run: {} of {} alerts, summary: {}, statuses: {:?}; broker log:\n{}",
        upstream.len(),
        alerts.len(),
        has_summary(&msgs, &first),
        statuses(&msgs),
        tail(&broker.log(), 20)
    );
    assert_eq!(upstream, alerts, "the safety patterns upstream are exactly the run's alerts");
    let result = msgs.iter().rfind(|m| m.topic == topic("rulepack/result")).expect("a rule pack result");
    let result: Value = serde_json::from_slice(&result.payload).unwrap();
    assert_eq!(result["accepted"], true, "{result}");
    assert_eq!(result["running_version"], 2, "{result}");
    let events = patterns(&msgs, "event");
    assert!(
        events.values().any(|p| p["kind"] == "rulepack" && p["body"] == *rules[0]),
        "the swap is reported upstream: {events:?}"
    );
    let states: Vec<Value> = statuses(&msgs).iter().map(|s| s["state"].clone()).collect();
    assert_eq!(states, ["online", "offline"], "status messages");
    assert_eq!(statuses(&msgs)[1]["rulepack_version"], 2, "the clean goodbye names the running pack");

    // ---- phase 2: no pack on the broker, then no broker at all; the saved pack still runs.
    backend.publish(&topic("rulepack"), b"", true);
    broker.stop();
    let second = run(&board, &dir.path().join("events-2.jsonl"), FRAMES);
    assert_eq!(second.of("rules").count(), 0, "nothing swapped mid-run:\n{}", second.notable());
    let zone = second.zone_alerts();
    assert!(!zone.is_empty(), "people still cross the road:\n{}", second.notable());
    for a in &zone {
        assert_eq!(a["rule"], "road-v2", "the saved pack runs from the start: {a}\n{}", second.notable());
    }
    assert!(
        second.stderr.contains("running rule pack 2 saved from the uplink"),
        "the saved pack is announced:\n{}",
        tail(&second.stderr, 30)
    );
    assert!(
        second.stderr.contains("uplink: ") && !second.stderr.contains("uplink connected"),
        "the uplink tried and failed:\n{}",
        tail(&second.stderr, 30)
    );
    eprintln!("phase 2 (offline): {} alerts, {:.1} s", second.alerts().len(), second.took.as_secs_f64());

    // ---- phase 3: the broker is back; a short run sends what the offline run stored.
    broker.start_again();
    let seen = backend.messages().len();
    let third = run(&board, &dir.path().join("events-3.jsonl"), 10);
    let offline: Vec<String> = second.alerts().iter().map(|a| a.to_string()).collect();
    let arrived = |m: &[Msg]| {
        let got: HashSet<String> = safety_bodies(m).into_iter().collect();
        offline.iter().filter(|a| got.contains(*a)).count()
    };
    let all_backlog =
        backend.wait_for(Duration::from_secs(10), |m| arrived(m) == offline.len() && has_summary(m, &second));
    let msgs = backend.messages();
    assert!(
        all_backlog,
        "of the offline run, {} of {} alerts arrived upstream, summary: {}; broker log:\n{}",
        arrived(&msgs),
        offline.len(),
        has_summary(&msgs, &second),
        tail(&broker.log(), 20)
    );
    let online = statuses(&msgs[seen..])
        .into_iter()
        .find(|s| s["state"] == "online")
        .expect("the device came online again");
    assert_eq!(online["rulepack_version"], 2, "{online}");
    eprintln!("phase 3: backlog of {} alerts delivered, {:.1} s", offline.len(), third.took.as_secs_f64());
}
