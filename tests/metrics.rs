//! The real `sideline run` on the simulated board with `[telemetry] metrics = "127.0.0.1:0"`:
//! its endpoint is scraped while it runs and read with a Prometheus text parser
//! (`prometheus-parse`), `sideline status` is asked while it runs and after, and the run's
//! alert audit log verifies, then fails verification once a line is edited.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use prometheus_parse::{LineInfo, Sample, Scrape, Value};

/// Enough frames to reach the first `road` incursion (near frame 98) with room to scrape it.
const FRAMES: u64 = 170;

/// A fake sysfs tree: one thermal zone and a throttling cooling device.
fn fake_sysfs(root: &Path) {
    let put = |rel: &str, text: &str| {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    put("sys/class/thermal/thermal_zone0/type", "fake-cpu\n");
    put("sys/class/thermal/thermal_zone0/temp", "42500\n");
    put("sys/class/thermal/cooling_device0/type", "fake-fan\n");
    put("sys/class/thermal/cooling_device0/cur_state", "1\n");
    put("sys/class/thermal/cooling_device0/max_state", "3\n");
    put("var/lib/nvpmodel/status", "pmode:0002 fmode:quiet\n");
}

/// A raw HTTP/1.1 GET: status code, headers (lower-cased names) and body.
fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, HashMap<String, String>, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/plain\r\n\r\n")?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").expect("a response head");
    let mut lines = head.lines();
    let code = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok((code, headers, body.to_string()))
}

/// One scrape, parsed as Prometheus would, after checking every line is one the parser
/// understood (it skips what it cannot read, which would hide a malformed line).
struct Scraped {
    samples: Vec<Sample>,
}

impl Scraped {
    fn parse(body: &str) -> Self {
        for line in body.lines() {
            let info = LineInfo::parse(line);
            assert!(!matches!(info, LineInfo::Ignored | LineInfo::Empty), "unparsable line `{line}`");
        }
        let scrape = Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).unwrap();
        Self { samples: scrape.samples }
    }

    fn find(&self, metric: &str, labels: &[(&str, &str)]) -> Option<&Sample> {
        self.samples
            .iter()
            .find(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
    }

    /// A counter, gauge or untyped value.
    fn value(&self, metric: &str, labels: &[(&str, &str)]) -> f64 {
        match self.find(metric, labels).map(|s| &s.value) {
            Some(Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v)) => *v,
            other => panic!("{metric} {labels:?}: {other:?}"),
        }
    }

    /// Checks one histogram series and returns its count.
    fn histogram(&self, metric: &str, labels: &[(&str, &str)]) -> f64 {
        let Some(Value::Histogram(buckets)) = self.find(metric, labels).map(|s| &s.value) else {
            panic!("{metric} {labels:?} is not a histogram");
        };
        let mut b = buckets.clone();
        b.sort_by(|x, y| x.less_than.total_cmp(&y.less_than));
        assert!(b.len() >= 10, "{metric}: {} buckets", b.len());
        assert!(b.windows(2).all(|w| w[0].count <= w[1].count), "{metric} {labels:?}: not cumulative: {b:?}");
        let inf = b.last().unwrap();
        assert_eq!(inf.less_than, f64::INFINITY, "{metric}: the last bucket is +Inf");
        let count = self.value(&format!("{metric}_count"), labels);
        assert_eq!(inf.count, count, "{metric} {labels:?}: +Inf equals _count");
        let sum = self.value(&format!("{metric}_sum"), labels);
        assert!(sum >= 0.0 && (count > 0.0 || sum == 0.0), "{metric} {labels:?}: sum {sum} for {count}");
        count
    }
}

/// Waits for `needle` in the run's standard error; returns the rest of that line.
fn wait_for_log(child: &mut Child, stderr: &Path, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let text = std::fs::read_to_string(stderr).unwrap_or_default();
        if let Some(line) = text.lines().find_map(|l| l.split_once(needle).map(|(_, rest)| rest.to_string()))
        {
            return line;
        }
        let status = child.try_wait().unwrap();
        assert!(status.is_none(), "the run ended ({status:?}) before logging `{needle}`:\n{text}");
        assert!(Instant::now() < deadline, "no `{needle}` within 2 minutes:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn sideline(args: &[&str], board: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sideline")).args(args).arg("--board").arg(board).output().unwrap()
}

/// Kills the run if the test fails while it is going.
struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_metrics_endpoint_status_and_audit_log_of_a_real_run() {
    common::ort_env();
    common::media("vtest.y4m");
    let dir = tempfile::tempdir().unwrap();
    let board = common::sim_profile(dir.path(), |t| format!("{t}\n[telemetry]\nmetrics = \"127.0.0.1:0\"\n"));
    let fs_root = dir.path().join("fs");
    fake_sysfs(&fs_root);
    let stderr_path = dir.path().join("run.stderr");
    let events = dir.path().join("events.jsonl");
    let child = Command::new(env!("CARGO_BIN_EXE_sideline"))
        .args(["run", "--no-pace", "--max-frames", &FRAMES.to_string(), "--board"])
        .arg(&board)
        .arg("--events")
        .arg(&events)
        .env("SIDELINE_FS_ROOT", &fs_root)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let mut run = Reap(child);
    let started = Instant::now();

    // The endpoint's address, from its log line.
    let rest = wait_for_log(&mut run.0, &stderr_path, "metrics on http://");
    let addr: SocketAddr =
        rest.trim_end_matches("/metrics").parse().unwrap_or_else(|e| panic!("`{rest}`: {e}"));
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");

    let scrape = || -> Option<Scraped> {
        let (code, headers, body) = get(addr, "/metrics").ok()?;
        assert_eq!(code, 200, "{body}");
        assert_eq!(headers["content-type"], "text/plain; version=0.0.4; charset=utf-8");
        Some(Scraped::parse(&body))
    };
    // Two scrapes while frames are decided: the counter moves.
    let wait_frames = |above: f64| -> Scraped {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let s = scrape().expect("the endpoint answers while the run goes on");
            if s.value("sideline_frames_total", &[]) > above {
                return s;
            }
            assert!(Instant::now() < deadline, "no frame decided within 2 minutes");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let first = wait_frames(0.0);
    let frames_1 = first.value("sideline_frames_total", &[]);
    let second = wait_frames(frames_1);
    assert!(second.value("sideline_frames_total", &[]) > frames_1);
    assert!(second.value("sideline_uptime_seconds", &[]) > first.value("sideline_uptime_seconds", &[]));

    // Anything else is 404.
    assert_eq!(get(addr, "/").unwrap().0, 404);
    assert_eq!(get(addr, "/metrics/extra").unwrap().0, 404);

    // `sideline status` while it runs.
    let status = sideline(&["status", "--addr", &addr.to_string()], &board);
    let out = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{out}\n{}", String::from_utf8_lossy(&status.stderr));
    for want in ["on sim-0001: running", "fps now", "degradation level", "uplink: not configured"] {
        assert!(out.contains(want), "`{want}` missing from status:\n{out}");
    }
    assert!(out.contains("hottest zone fake-cpu at 42.5 °C; cooling fake-fan at 1/3; power mode 2"), "{out}");

    // Scrape until the run ends, keeping the last answer: it has the run's alerts.
    let mut last = second;
    while let Some(s) = scrape() {
        last = s;
        if run.0.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let exit = run.0.wait().unwrap();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap();
    assert!(exit.success(), "sideline run failed:\n{stderr}");
    let took = started.elapsed();

    // Stage histograms: cumulative, +Inf == count; every stage ran on these frames.
    let frames = last.value("sideline_frames_total", &[]);
    assert!(frames > 100.0, "the last scrape came late in the run: {frames} frames");
    for stage in ["queue", "preprocess", "detect", "pose", "track_rules", "output"] {
        let n = last.histogram("sideline_stage_seconds", &[("stage", stage)]);
        assert!(n > 0.0, "stage {stage} observed nothing");
    }
    let detect = last.histogram("sideline_stage_seconds", &[("stage", "detect")]);
    assert!(detect >= frames, "detect ran on every decided frame: {detect} < {frames}");
    assert!(last.histogram("sideline_frame_age_seconds", &[]) >= frames);
    assert!(last.histogram("sideline_alert_output_seconds", &[]) > 0.0);
    assert_eq!(last.value("sideline_stage_overruns_total", &[("stage", "detect")]).fract(), 0.0);
    last.value("sideline_deadline_misses_total", &[]);
    assert!(
        (0.0..=4.0).contains(&last.value("sideline_ladder_level", &[])),
        "sim.toml has four degraded levels"
    );

    // Alerts by rule name: the road incursions and the whistles the clip is known for.
    let raised = |rule: &str| last.value("sideline_alerts_total", &[("rule", rule), ("state", "raised")]);
    assert!(raised("road") >= 1.0, "road alerts: {}", raised("road"));
    assert!(raised("whistle") >= 1.0, "whistle alerts: {}", raised("whistle"));
    assert_eq!(raised("player-down"), 0.0, "listed, never raised on this clip");

    // Store, uplink, thermal.
    assert_eq!(last.value("sideline_store_readable", &[]), 1.0);
    assert!(last.value("sideline_store_backlog", &[("class", "safety")]) >= 1.0, "alerts wait for an uplink");
    assert_eq!(last.value("sideline_uplink_configured", &[]), 0.0);
    assert_eq!(last.value("sideline_uplink_connected", &[]), 0.0);
    assert_eq!(
        last.value("sideline_thermal_zone_celsius", &[("zone", "thermal_zone0"), ("type", "fake-cpu")]),
        42.5
    );
    assert_eq!(last.value("sideline_cooling_state", &[("type", "fake-fan")]), 1.0);
    assert_eq!(last.value("sideline_power_mode", &[]), 2.0);

    // Once it has ended, `status` says so and reads the backlog from the store.
    let status = sideline(&["status", "--addr", &addr.to_string()], &board);
    let (out, err) = (String::from_utf8_lossy(&status.stdout), String::from_utf8_lossy(&status.stderr));
    assert_eq!(status.status.code(), Some(1), "{out}\n{err}");
    assert!(err.contains(&format!("not running, or its metrics endpoint is unreachable at {addr}")), "{err}");
    assert!(out.contains("store backlog (read from"), "{out}");

    // The audit log holds every alert of the run and verifies.
    let alerts =
        std::fs::read_to_string(&events).unwrap().lines().filter(|l| l.contains(r#""type":"alert""#)).count();
    let verify = sideline(&["audit", "verify"], &board);
    let out = String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success(), "{out}\n{}", String::from_utf8_lossy(&verify.stderr));
    assert!(out.contains(&format!("{alerts} entries")), "{alerts} alerts in the events; {out}");
    // An edited field is caught, with its line.
    let log: PathBuf = dir.path().join("state/audit.log");
    let text = std::fs::read_to_string(&log).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    assert!(lines.len() >= 2, "{text}");
    // A latency of 48917 µs becomes 948917.
    assert!(lines[1].contains(r#""latency_us":"#), "{}", lines[1]);
    lines[1] = lines[1].replacen(r#""latency_us":"#, r#""latency_us":9"#, 1);
    std::fs::write(&log, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    let verify = Command::new(env!("CARGO_BIN_EXE_sideline"))
        .args(["audit", "verify", "--file"])
        .arg(&log)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&verify.stderr);
    assert_eq!(verify.status.code(), Some(1), "{err}");
    assert!(err.contains("line 2: its hash does not match its content"), "{err}");
    eprintln!("run of {FRAMES} frames with scrapes took {:.1} s", took.as_secs_f64());
}

#[test]
fn status_without_an_endpoint_reads_the_store() {
    common::media("vtest.y4m");
    let dir = tempfile::tempdir().unwrap();
    let board = common::sim_profile(dir.path(), |t| t);
    let status = sideline(&["status"], &board);
    let (out, err) = (String::from_utf8_lossy(&status.stdout), String::from_utf8_lossy(&status.stderr));
    assert_eq!(status.status.code(), Some(1), "{out}\n{err}");
    assert!(err.contains("no metrics endpoint in the profile"), "{err}");
    assert!(out.contains("store backlog: no store at"), "{out}");
    // A profile whose endpoint address is wrong is refused with the field named.
    let bad = common::sim_profile(dir.path(), |t| format!("{t}\n[telemetry]\nmetrics = \"localhost\"\n"));
    let check = sideline(&["status"], &bad);
    let err = String::from_utf8_lossy(&check.stderr);
    assert_eq!(check.status.code(), Some(1), "{err}");
    assert!(err.contains("telemetry.metrics: `localhost` is not an address"), "{err}");
}
