//! The virtual hardware-in-the-loop rig: every scenario boots a QEMU guest (hil/virtual) with
//! real kernel drivers (vivid, snd-aloop, gpio-sim, an 8250 UART) and runs the sideline binary
//! this build produced inside it, against those drivers. The host checks what came out.
//!
//! The first run downloads and unpacks Debian's kernel and QEMU packages and builds gpio-sim
//! (about a minute, cached in .cache/hil); each boot then takes a few seconds under TCG.

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;
use sideline::alert::serial::protocol::{Body, Decoder, Encoder, Frame};
use sideline::rules::AlertState;

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
            // Without the periodic progress lines, which would push the serial link's out.
            tail(
                &self
                    .file("sideline.log")
                    .lines()
                    .filter(|l| !l.contains("recorder: running"))
                    .collect::<Vec<_>>()
                    .join("\n"),
                40
            ),
            tail(&self.file("console.log"), 15)
        )
    }
}

/// The rig's serial receiver, on the far end of the guest's second UART (a unix socket QEMU
/// connects to): decodes frames with the documented protocol (docs/SERIAL.md) and acknowledges
/// them, except the first transmission of the first ALERT, so the device has to resend it.
struct UartReceiver {
    frames: Arc<Mutex<Vec<(Instant, Frame)>>>,
    /// Bytes read, decode errors, and why the receiver stopped if it did before the test ended.
    log: Arc<Mutex<ReceiverLog>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl UartReceiver {
    fn listen(path: &std::path::Path) -> Self {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).expect("binding the UART socket");
        listener.set_nonblocking(true).unwrap();
        let frames: Arc<Mutex<Vec<(Instant, Frame)>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let log: Arc<Mutex<ReceiverLog>> = Arc::default();
        let (seen, done, said, log_of_bytes) = (frames.clone(), stop.clone(), log.clone(), log.clone());
        let end = move |why: String| said.lock().unwrap().ended = Some(why);
        let handle = std::thread::spawn(move || {
            let mut conn = loop {
                match listener.accept() {
                    Ok((c, _)) => break c,
                    Err(_) if !done.load(Ordering::Relaxed) => std::thread::sleep(Duration::from_millis(20)),
                    Err(_) => return end("QEMU never connected".into()),
                }
            };
            conn.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
            let (mut dec, mut enc) = (Decoder::default(), Encoder::default());
            let mut withheld = false;
            let mut buf = [0u8; 512];
            while !done.load(Ordering::Relaxed) {
                let n = match conn.read(&mut buf) {
                    Ok(0) => return end("end of file from QEMU".into()),
                    Ok(n) => n,
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        continue
                    }
                    Err(e) => return end(format!("read: {e}")),
                };
                let got: Vec<Frame> = {
                    let mut log = log_of_bytes.lock().unwrap();
                    log.bytes += n;
                    dec.feed(&buf[..n])
                        .filter_map(|f| f.map_err(|e| log.decode_errors.push(e.to_string())).ok())
                        .collect()
                };
                for f in got {
                    let first_alert = matches!(f.body, Body::Alert(_)) && !withheld;
                    withheld |= first_alert;
                    if !first_alert {
                        if let Err(e) = conn.write_all(enc.encode(&Frame { seq: f.seq, body: Body::Ack })) {
                            return end(format!("writing an ACK: {e}"));
                        }
                    }
                    seen.lock().unwrap().push((Instant::now(), f));
                }
            }
        });
        Self { frames, log, stop, handle: Some(handle) }
    }

    fn frames(&self) -> Vec<(Instant, Frame)> {
        self.frames.lock().unwrap().clone()
    }

    /// What the receiver saw, for failure messages.
    fn explain(&self) -> String {
        let log = self.log.lock().unwrap();
        format!(
            "host receiver: {} bytes, {} frames, decode errors {:?}, {}",
            log.bytes,
            self.frames.lock().unwrap().len(),
            log.decode_errors,
            log.ended.as_deref().unwrap_or("still listening")
        )
    }
}

#[derive(Default)]
struct ReceiverLog {
    bytes: usize,
    decode_errors: Vec<String>,
    ended: Option<String>,
}

impl Drop for UartReceiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// One guest at a time: two emulated guests on a small machine would time each other out.
static RIG: Mutex<()> = Mutex::new(());

/// Boots the guest once with `script` (bash, run as root in the guest) after the rig preamble.
fn boot(name: &str, script: &str) -> (Guest, UartReceiver) {
    boot_keeping(name, &[], script)
}

/// [`boot`], keeping the named files the test put in the output folder (the guest's `/mnt`).
fn boot_keeping(name: &str, keep: &[&str], script: &str) -> (Guest, UartReceiver) {
    let _one = RIG.lock().unwrap_or_else(|p| p.into_inner());
    let out = repo().join("target/hil").join(name);
    std::fs::create_dir_all(&out).unwrap();
    for entry in std::fs::read_dir(&out).unwrap().flatten() {
        if !keep.iter().any(|k| entry.file_name() == **k) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    let uart = UartReceiver::listen(&out.join("uart.sock"));
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
        .arg(out.join("uart.sock"))
        .status()
        .expect("running hil/virtual/boot");
    let log = std::fs::read_to_string(out.join("guest.log")).unwrap_or_default();
    (Guest { out, ok: status.success(), log }, uart)
}

fn alerts<'a>(events: &'a [Value], rule: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == "alert" && e["rule"] == rule).collect()
}

/// Scenario 1: vivid frames flow through sideline; vivid's test pattern switched to black
/// raises `lens-covered`, which drives the gpio-sim `siren` line high; the rig reads the line
/// back through gpio-sim's sysfs; the normal pattern clears it and the line drops.
#[test]
fn camera_obstructed_drives_the_siren_line() {
    let (g, _uart) = boot(
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
for cycle in 1 2 3; do
  t0=$(ms); v4l2-ctl -d /dev/video0 -c test_pattern=5
  wait_line siren 1 60000 || fail "siren never went high after the pattern went black"
  echo "covered->siren_ms $(( $(ms) - t0 ))" >> $OUT/rig.txt
  # The horn is pulsed: high with the siren, low again after its 3 s while the siren stays.
  [ "$(line horn)" = 1 ] || fail "no horn pulse with the siren"
  t1=$(ms); wait_line horn 0 20000 || fail "the horn pulse never ended"
  echo "horn_pulse_ms $(( $(ms) - t1 ))" >> $OUT/rig.txt
  [ "$(line siren)" = 1 ] || fail "the siren dropped with the horn"
  t0=$(ms); v4l2-ctl -d /dev/video0 -c test_pattern=0
  wait_line siren 0 60000 || fail "siren stayed high after the picture came back"
  echo "uncovered->siren_off_ms $(( $(ms) - t0 ))" >> $OUT/rig.txt
done
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
    assert_eq!(states, ["raised", "cleared"].repeat(3), "{lens:?}\n{}", g.explain());
    for a in &lens {
        assert_eq!(a["outputs"], serde_json::json!(["siren", "horn", "plc"]), "{a}");
    }
    // Frame-to-output latency as each alert recorded it: from the frame reaching the loop to
    // the siren line written and read back (and the serial frame queued).
    let mut lat: Vec<f64> = lens.iter().map(|a| a["latency_us"].as_f64().unwrap() / 1000.0).collect();
    lat.sort_by(f64::total_cmp);
    let pct = |q: f64| lat[((lat.len() - 1) as f64 * q).round() as usize];
    eprintln!(
        "frame-to-GPIO latency over {} alerts (emulated CPU): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        lat.len(),
        pct(0.5),
        pct(0.99),
        lat[lat.len() - 1]
    );
    // Of which the decision to the line written and read back (the run's own summary).
    let log = g.file("sideline.log");
    for stage in ["detect", "decide->out"] {
        if let Some(l) = log.lines().find(|l| l.starts_with(stage)) {
            eprintln!("  {l}");
        }
    }
    eprintln!("{}", g.file("rig.txt"));
    assert!(g.file("rig.txt").contains("sideline exit 0"), "{}", g.explain());
}

/// Scenario 2: real footage (the sample clip) played into a v4l2loopback camera is captured
/// by sideline in the guest and its people are detected.
#[test]
fn real_footage_through_v4l2loopback_is_detected() {
    let (g, _uart) = boot(
        "footage",
        r#"
rig_gpio
insmod $HIL_LOOPBACK video_nr=10 card_label=footage exclusive_caps=1 || fail "v4l2loopback did not load"
# The rig profile, pointed at the loopback camera with the clip's size and rate (written in the
# guest's in-memory layer; the host's file is untouched).
sed -e 's#/dev/video0#/dev/video10#' -e 's/^width = 640/width = 768/' -e 's/^height = 360/height = 576/'     -e 's/^fps = 25.0/fps = 10.0/' $REPO/board/rig-virtual.toml > $REPO/board/rig-footage.toml
# From frame 250 on, people walk across the lawn in every frame. 15 s of them, looped, so the
# camera never runs dry however slowly the emulated CPU decides frames.
ffmpeg -nostdin -loglevel error -ss 25 -i $REPO/.cache/media/vtest.y4m -frames:v 150 /tmp/people.y4m || fail "cutting the clip failed"
ffmpeg -nostdin -loglevel error -re -stream_loop -1 -i /tmp/people.y4m -f v4l2 -pix_fmt yuyv422 /dev/video10 &
feed=$!
sleep 3
$BIN run --board $REPO/board/rig-footage.toml --events $OUT/events.jsonl --max-frames 8 > $OUT/sideline.log 2>&1   || fail "sideline run failed"
kill $feed
echo "sideline exit 0" >> $OUT/rig.txt
"#,
    );
    assert!(g.ok, "scenario failed\n{}", g.explain());
    let events = g.events();
    let people: Vec<&Value> =
        events.iter().filter(|e| e["type"] == "detection" && e["class"] == "person").collect();
    let frames: std::collections::BTreeSet<u64> =
        people.iter().map(|e| e["frame"].as_u64().unwrap()).collect();
    eprintln!("{} person detections over {} frames", people.len(), frames.len());
    assert!(frames.len() >= 4 && people.len() >= 8, "people in too few frames: {people:?}\n{}", g.explain());
    for p in &people {
        let b = &p["box"];
        let (x2, y2) = (b[2].as_f64().unwrap(), b[3].as_f64().unwrap());
        assert!(x2 <= 768.5 && y2 <= 576.5, "box outside the 768x576 frame: {p}");
    }
}

/// Scenario 3: a known stretch of audio played into snd-aloop comes out of sideline's ALSA
/// capture bit for bit.
#[test]
fn audio_through_snd_aloop_is_captured_bit_exact() {
    // 2 s of full-range noise from a fixed generator: any dropped, repeated or altered sample
    // shows.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let known: Vec<i16> = (0..32_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 48) as i16
        })
        .collect();
    let out = repo().join("target/hil/audio");
    std::fs::create_dir_all(&out).unwrap();
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 16_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(out.join("known.wav"), spec).unwrap();
    // Followed by silence: the loopback may drop the player's last partial period when it
    // closes, which is the player's business, not the capture's.
    known.iter().chain(&[0i16; 16_000]).for_each(|&s| w.write_sample(s).unwrap());
    w.finalize().unwrap();
    let (g, _uart) = boot_keeping(
        "audio",
        &["known.wav"],
        r#"
$BIN audio record --board $REPO/board/rig-virtual.toml --seconds 7 --out $OUT/heard.wav > $OUT/record.txt 2> $OUT/sideline.log &
pid=$!
sleep 2
aplay -q -D hw:Loopback,0,0 $OUT/known.wav || fail "aplay into the loopback failed"
wait $pid || fail "sideline audio record failed"
"#,
    );
    assert!(g.ok, "scenario failed\n{}", g.explain());
    let heard: Vec<i16> = hound::WavReader::open(g.out.join("heard.wav"))
        .expect("sideline wrote heard.wav")
        .samples::<i16>()
        .map(Result::unwrap)
        .collect();
    let at = heard.windows(64).position(|w| w == &known[..64]);
    let Some(at) = at else {
        panic!("the known audio is not in the {} samples captured\n{}", heard.len(), g.explain())
    };
    assert!(heard.len() >= at + known.len(), "capture ended inside the known stretch\n{}", g.explain());
    let diff = heard[at..at + known.len()].iter().zip(&known).filter(|(a, b)| a != b).count();
    assert_eq!(diff, 0, "{diff} of {} samples differ (starting at {at})", known.len());
    eprintln!("{} samples bit-exact at offset {at} of {}", known.len(), heard.len());
}

/// Scenario 4: alert frames reach the host over the guest's UART; the host acknowledges them;
/// the one acknowledgement it withholds makes the device send the same frame again.
#[test]
fn serial_alerts_are_acknowledged_and_resent() {
    let (g, uart) = boot(
        "serial",
        r#"
rig_gpio
v4l2-ctl -d /dev/video0 -c test_pattern=0 -c osd_text_mode=2
$BIN run --board $REPO/board/rig-virtual.toml --events $OUT/events.jsonl > $OUT/sideline.log 2>&1 &
pid=$!
wait_line heartbeat 1 120000 || fail "the heartbeat never went high"
v4l2-ctl -d /dev/video0 -c test_pattern=5
wait_line siren 1 60000 || fail "siren never went high"
v4l2-ctl -d /dev/video0 -c test_pattern=0
wait_line siren 0 60000 || fail "siren stayed high"
sleep 2
kill -INT $pid; wait $pid
echo "sideline exit $?" >> $OUT/rig.txt
# The guest kernel's byte counts for its UARTs (tx, rx, errors): says which side lost bytes.
cat /proc/tty/driver/serial >> $OUT/rig.txt
"#,
    );
    assert!(g.ok, "scenario failed\n{}\n{}", uart.explain(), g.explain());
    let frames = uart.frames();
    let alerts: Vec<(Instant, u16, sideline::alert::serial::protocol::Alert)> = frames
        .iter()
        .filter_map(|(t, f)| match f.body {
            Body::Alert(a) => Some((*t, f.seq, a)),
            _ => None,
        })
        .collect();
    let summary: Vec<String> =
        frames.iter().map(|(_, f)| format!("{}:{}", f.seq, f.body.type_code())).collect();
    let why = format!("{summary:?}\n{}\n{}\n{}", uart.explain(), g.file("rig.txt"), g.explain());
    assert!(frames.iter().any(|(_, f)| matches!(f.body, Body::Hello(_))), "no HELLO: {why}");
    let beats = frames.iter().filter(|(_, f)| matches!(f.body, Body::Heartbeat(_))).count();
    assert!(beats >= 3, "{beats} heartbeats: {why}");
    // The first ALERT went unacknowledged and came again, same sequence number, same content.
    assert!(alerts.len() >= 3, "alerts on the wire: {why}");
    let (t0, seq0, a0) = alerts[0];
    let (t1, seq1, a1) = alerts[1];
    assert_eq!((seq1, a1), (seq0, a0), "the unacknowledged frame is resent as it was");
    eprintln!("resent after {} ms", t1.duration_since(t0).as_millis());
    assert_eq!(a0.state, AlertState::Raised);
    assert_eq!(a0.name.to_string_lossy(), "lens-covered");
    assert!(a0.latency_us > 0 && a0.latency_us < 60_000_000, "latency {} µs", a0.latency_us);
    // Then the clear, under a new sequence number, acknowledged at once (sent once).
    let cleared: Vec<_> = alerts.iter().filter(|(_, _, a)| a.state == AlertState::Cleared).collect();
    assert_eq!(cleared.len(), 1, "{why}");
    assert_ne!(cleared[0].1, seq0);
    assert!(g.file("rig.txt").contains("sideline exit 0"), "{}", g.explain());
}

/// Scenario 5: the camera disappears (vivid unbound from its driver) and comes back: the blind
/// alarm drives the siren, the camera is reopened by itself, the alarm clears, frames flow
/// again, all in one process.
#[test]
fn camera_loss_raises_blind_alarm_and_recovers() {
    let (g, _uart) = boot(
        "camera-loss",
        r#"
rig_gpio
v4l2-ctl -d /dev/video0 -c test_pattern=0
$BIN run --board $REPO/board/rig-virtual.toml --events $OUT/events.jsonl --frame-events > $OUT/sideline.log 2>&1 &
pid=$!
wait_line heartbeat 1 120000 || fail "the heartbeat never went high"
sleep 2
echo vivid.0 > /sys/bus/platform/drivers/vivid/unbind || fail "cannot unbind vivid"
echo "unbound at $(ms)" >> $OUT/rig.txt
wait_line siren 1 60000 || fail "no blind alarm on the siren line"
echo "siren up at $(ms)" >> $OUT/rig.txt
[ -e /dev/video0 ] && fail "/dev/video0 still there"
sleep 2
echo vivid.0 > /sys/bus/platform/drivers/vivid/bind || fail "cannot bind vivid again"
echo "bound at $(ms)" >> $OUT/rig.txt
wait_line siren 0 90000 || fail "the blind alarm never cleared"
echo "siren down at $(ms)" >> $OUT/rig.txt
sleep 8
kill -INT $pid; wait $pid
echo "sideline exit $?" >> $OUT/rig.txt
"#,
    );
    assert!(g.ok, "scenario failed\n{}", g.explain());
    let events = g.events();
    let blind = alerts(&events, "camera-blind");
    let states: Vec<&str> = blind.iter().map(|a| a["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["raised", "cleared"], "{blind:?}\n{}", g.explain());
    let cleared_at = blind[1]["capture_us"].as_u64().unwrap();
    let after =
        events.iter().filter(|e| e["type"] == "frame" && e["capture_us"].as_u64() > Some(cleared_at)).count();
    assert!(after >= 1, "no frame decided after the camera came back\n{}", g.explain());
    eprintln!("{}", g.file("rig.txt"));
    assert!(g.file("rig.txt").contains("sideline exit 0"), "{}", g.explain());
}
