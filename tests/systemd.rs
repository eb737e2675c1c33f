//! The service unit and the binary's side of it: `systemd/sideline.service` passes
//! `systemd-analyze verify`, `systemd/sideline.sysusers` makes the user with its device groups,
//! and the real binary, run under a stand-in service manager (a datagram socket as
//! `NOTIFY_SOCKET`), reports readiness after its first decided frame and pings the watchdog only
//! while its loop is healthy: the pings stop while the camera stalls and come back with it.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ANALYZE: &str = "/usr/bin/systemd-analyze";
const SYSUSERS: &str = "/usr/bin/systemd-sysusers";

fn require(tool: &str) {
    assert!(
        Path::new(tool).is_file(),
        "{tool} is missing: install Debian's `systemd` package (scripts/setup does)"
    );
}

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    require(ANALYZE);
    let unit = std::fs::read_to_string(common::repo().join("systemd/sideline.service")).unwrap();
    // verify fails when ExecStart's program does not exist, and /usr/bin/sideline is only there
    // once the .deb is installed. So the unit is copied, and only the program path in ExecStart
    // is rewritten to the binary under test; its arguments and every other line stay as shipped.
    // (systemd 252 does not resolve User=; a version that does would report the missing user
    // `sideline` here, and this test would fail saying so.)
    let exec = "ExecStart=/usr/bin/sideline ";
    assert_eq!(unit.matches(exec).count(), 1, "one ExecStart running /usr/bin/sideline");
    let unit = unit.replace(exec, &format!("ExecStart={} ", env!("CARGO_BIN_EXE_sideline")));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sideline.service");
    std::fs::write(&path, unit).unwrap();

    let out = Command::new(ANALYZE).arg("verify").arg(&path).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "systemd-analyze verify failed ({}):\n{text}", out.status);
    // Unknown or malformed directives are only warnings (exit status 0), naming the unit's file:
    // none may be about this unit. Lines about other units on this machine are not ours.
    let ours: Vec<&str> = text.lines().filter(|l| l.contains("sideline.service")).collect();
    assert!(ours.is_empty(), "systemd-analyze verify warns about the unit:\n{}", ours.join("\n"));

    // The same check does catch a bad directive, so silence above means something.
    let typo = std::fs::read_to_string(&path).unwrap().replace("ProtectSystem=strict", "ProtectSystm=strict");
    std::fs::write(&path, typo).unwrap();
    let out = Command::new(ANALYZE).arg("verify").arg(&path).output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("sideline.service") && text.contains("ProtectSystm"), "{text}");
}

#[test]
fn sysusers_makes_the_user_with_only_its_device_groups() {
    require(SYSUSERS);
    let root = tempfile::tempdir().unwrap();
    let etc = root.path().join("etc");
    std::fs::create_dir(&etc).unwrap();
    // A Debian base system's groups (base-passwd's ids), including ones the user must not join.
    let groups = "root:x:0:\ndisk:x:6:\ndialout:x:20:\nsudo:x:27:\naudio:x:29:\nvideo:x:44:\nusers:x:100:\n";
    std::fs::write(etc.join("group"), groups).unwrap();
    std::fs::write(etc.join("passwd"), "root:x:0:0:root:/root:/bin/bash\n").unwrap();
    let conf = common::repo().join("systemd/sideline.sysusers");
    // sysusers sets owners on what it writes: as root directly, otherwise as root of a user
    // namespace (where the files it made are its own).
    // SAFETY: geteuid has no preconditions.
    let mut cmd = if unsafe { libc::geteuid() } == 0 {
        Command::new(SYSUSERS)
    } else {
        let mut c = Command::new("unshare");
        c.args(["--map-root-user", SYSUSERS]);
        c
    };
    let out = cmd.arg(format!("--root={}", root.path().display())).arg(&conf).output().unwrap();
    assert!(out.status.success(), "systemd-sysusers: {}", String::from_utf8_lossy(&out.stderr));

    let passwd = std::fs::read_to_string(etc.join("passwd")).unwrap();
    let user: Vec<&str> =
        passwd.lines().find(|l| l.starts_with("sideline:")).expect("user made").split(':').collect();
    let (uid, gid): (u32, u32) = (user[2].parse().unwrap(), user[3].parse().unwrap());
    assert!((1..1000).contains(&uid), "a system user: uid {uid}");
    assert_eq!(user[5], "/var/lib/sideline", "home is the state directory");
    assert!(user[6].ends_with("nologin"), "no login shell: {}", user[6]);

    let group = std::fs::read_to_string(etc.join("group")).unwrap();
    let mut member_of: Vec<&str> = group
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|g| g[3].split(',').any(|m| m == "sideline"))
        .map(|g| g[0])
        .collect();
    member_of.sort();
    assert_eq!(member_of, ["audio", "dialout", "gpio", "video"], "{group}");
    let own = group.lines().find(|l| l.starts_with("sideline:")).expect("its own group");
    assert_eq!(own.split(':').nth(2).unwrap().parse::<u32>().unwrap(), gid);
    // Existing groups keep their ids; the unit's User=/Group= name what was made.
    assert!(group.contains("video:x:44:sideline"), "{group}");
    let unit = std::fs::read_to_string(common::repo().join("systemd/sideline.service")).unwrap();
    assert!(unit.lines().any(|l| l == "User=sideline") && unit.lines().any(|l| l == "Group=sideline"));
}

/// What the stand-in service manager received, with arrival times.
type Inbox = Arc<Mutex<Vec<(Instant, String)>>>;

/// Phases of the camera feed written into the named pipe.
const HOLD: u8 = 0;
const RUN: u8 = 1;
const END: u8 = 2;

/// Timings of the loop in this test's profile. The camera goes blind 250 ms after its last
/// frame; the supervisor then ticks every 50 ms (a quarter of the 200 ms watchdog).
const BLIND_AFTER_MS: u64 = 250;
const WATCHDOG: Duration = Duration::from_millis(200);
/// How long into a stall a ping may still come: blindness, a tick, and slack for a shared,
/// noisy machine (the frame in flight, scheduling).
const STALL_GRACE: Duration = Duration::from_millis(600);
const STALL: Duration = Duration::from_millis(2000);

#[test]
fn readiness_and_watchdog_pings_follow_the_loop_health() {
    common::ort_env();
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("camera.y4m");
    mkfifo(&fifo);
    let board = common::sim_profile(dir.path(), |text| test_profile(&text, &fifo));
    let (header, frames) = clip_frames(&common::media("vtest.y4m"), 20);

    let sock_path = dir.path().join("notify");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let inbox: Inbox = Arc::default();
    let listening = Arc::new(AtomicU8::new(1));
    let listener = {
        let (inbox, listening) = (inbox.clone(), listening.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while listening.load(Ordering::Relaxed) == 1 {
                if let Ok(n) = sock.recv(&mut buf) {
                    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                    inbox.lock().unwrap().push((Instant::now(), msg));
                }
            }
        })
    };

    let mut child = Command::new(env!("CARGO_BIN_EXE_sideline"))
        .args(["run", "--board"])
        .arg(&board)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", WATCHDOG.as_micros().to_string())
        .env_remove("WATCHDOG_PID")
        .env("RUST_LOG", "info,ort=warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    // Kill the child if an assertion fails, so the test does not hang on the pipe.
    let guard = KillOnDrop(pid);
    let log: Arc<Mutex<String>> = Arc::default();
    let stderr = child.stderr.take().unwrap();
    let reader = {
        let log = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        })
    };

    // The camera: frames from the clip at 10 fps into the pipe, while the phase says RUN.
    let phase = Arc::new(AtomicU8::new(HOLD));
    let last_write: Arc<Mutex<Option<Instant>>> = Arc::default();
    let writer = {
        let (phase, last_write, fifo) = (phase.clone(), last_write.clone(), fifo.clone());
        std::thread::spawn(move || {
            // Blocks until the binary opens its camera.
            let mut pipe = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
            pipe.write_all(&header).unwrap();
            let mut k = 0;
            let mut next = Instant::now();
            loop {
                match phase.load(Ordering::Relaxed) {
                    END => break,
                    HOLD => {
                        std::thread::sleep(Duration::from_millis(5));
                        next = Instant::now();
                    }
                    _ => {
                        // The binary may have exited (it was told to stop): then writes fail.
                        if pipe.write_all(&frames[k % frames.len()]).is_err() {
                            break;
                        }
                        *last_write.lock().unwrap() = Some(Instant::now());
                        k += 1;
                        next += Duration::from_millis(100);
                        std::thread::sleep(next.saturating_duration_since(Instant::now()));
                    }
                }
            }
        })
    };

    let failure = |what: &str| -> String {
        let msgs = inbox.lock().unwrap();
        let first = msgs.first().map(|m| m.0).unwrap_or(started);
        let msgs: Vec<String> = msgs
            .iter()
            .map(|(t, m)| format!("{:>6} ms {m:?}", t.duration_since(first).as_millis()))
            .collect();
        format!("{what}\nnotifications:\n{}\nsideline's log:\n{}", msgs.join("\n"), log.lock().unwrap())
    };

    // 1. Models loaded and the loop running, but no frame yet: the supervisor raises
    // camera-blind. Nothing may have been said to systemd: not ready, no pings.
    let blind = wait_for(Duration::from_secs(120), || {
        let exited = child.try_wait().unwrap().is_some();
        exited || log.lock().unwrap().lines().any(|l| l.contains("rule=camera-blind") && l.contains("Raised"))
    });
    assert!(
        blind && child.try_wait().unwrap().is_none(),
        "{}",
        failure("the loop never started (no camera-blind alarm while no frames came)")
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(inbox.lock().unwrap().is_empty(), "{}", failure("notifications before the first frame"));

    // 2. Frames: READY=1 after the first one is decided, then pings about every 100 ms.
    phase.store(RUN, Ordering::Relaxed);
    let frames_from = Instant::now();
    let ready = wait_for(Duration::from_secs(30), || {
        inbox.lock().unwrap().iter().any(|(_, m)| m.lines().any(|l| l == "READY=1"))
    });
    assert!(ready, "{}", failure("no READY=1 after frames started"));
    {
        let msgs = inbox.lock().unwrap();
        let (at, msg) = msgs.iter().find(|(_, m)| m.contains("READY=1")).unwrap();
        assert!(*at > frames_from);
        assert!(decided(msg).is_some_and(|n| n >= 1), "READY=1 says what was decided: {msg:?}");
    }
    std::thread::sleep(Duration::from_secs(3));
    let run_pings = pings(&inbox, frames_from, Instant::now());
    assert!(run_pings.len() >= 10, "{}", failure(&format!("{} pings in 3 s of frames", run_pings.len())));

    // 3. The camera stalls: after blind_after_ms the loop is not healthy and the pings stop.
    phase.store(HOLD, Ordering::Relaxed);
    std::thread::sleep(STALL);
    let stall_from = last_write.lock().unwrap().unwrap();
    let stall_to = Instant::now();
    phase.store(RUN, Ordering::Relaxed);
    let late = pings(&inbox, stall_from + STALL_GRACE, stall_to);
    assert!(
        late.is_empty(),
        "{}",
        failure(&format!(
            "{} pings more than {STALL_GRACE:?} into a stall (blind after {BLIND_AFTER_MS} ms)",
            late.len()
        ))
    );
    assert!(
        inbox
            .lock()
            .unwrap()
            .iter()
            .any(|(t, m)| *t > stall_from && m.contains("STATUS=unhealthy: camera blind")),
        "{}",
        failure("the status does not say the camera is blind")
    );

    // 4. Frames again: the pings come back once the loop decides again (seconds here; under
    // emulation on a busy machine one inference can take several).
    let back = wait_for(Duration::from_secs(30), || pings(&inbox, stall_to, Instant::now()).len() >= 5);
    assert!(
        back,
        "{}",
        failure(&format!(
            "{} pings in 30 s after the camera came back",
            pings(&inbox, stall_to, Instant::now()).len()
        ))
    );

    // 5. systemd stops the service: STOPPING=1, and a clean exit.
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = wait_child(&mut child, Duration::from_secs(30));
    phase.store(END, Ordering::Relaxed);
    writer.join().unwrap();
    reader.join().unwrap();
    std::mem::forget(guard);
    std::thread::sleep(Duration::from_millis(100));
    listening.store(0, Ordering::Relaxed);
    listener.join().unwrap();
    assert!(status.is_some_and(|s| s.success()), "{}", failure(&format!("exit: {status:?}")));
    assert!(
        inbox.lock().unwrap().iter().any(|(_, m)| m.lines().any(|l| l == "STOPPING=1")),
        "{}",
        failure("no STOPPING=1")
    );
    eprintln!(
        "{} pings while running, none {STALL_GRACE:?} into a {STALL:?} stall, {} after it; {:.1} s",
        run_pings.len(),
        pings(&inbox, stall_to, Instant::now()).len(),
        started.elapsed().as_secs_f64()
    );
}

/// The sim board with the pipe as its camera, the detector only (pose, audio, their rules and
/// the ladder's pose levels off, to keep a shared CPU's frame time low), and loop timings for this test: a generous
/// deadline and heartbeat window so a slow machine stays healthy, and a quick blind alarm.
fn test_profile(text: &str, fifo: &Path) -> String {
    let repo = common::repo();
    let clip = format!("\"{}/.cache/media/vtest.y4m\"", repo.display());
    assert!(text.contains(&clip), "the sim camera's clip");
    let text = text.replace(&clip, &format!("\"{}\"", fifo.display()));
    let dropped =
        ["[models.pose]", "[[rules.player_down]]", "[audio]", "[[rules.whistle]]", "[[loop.ladder]]"];
    let mut out = common::without_tables(&text, &dropped);
    let edits = [
        ("[loop]\n", "[loop]\nbudget_ms = 3000\n".to_string()),
        ("blind_after_ms = 1000\n", format!("blind_after_ms = {BLIND_AFTER_MS}\n")),
        ("stall_after_ms = 1000\n", "stall_after_ms = 2000\n".to_string()),
        ("heartbeat_ms = 250\n", "heartbeat_ms = 1000\n".to_string()),
    ];
    for (from, to) in edits {
        assert_eq!(out.matches(from).count(), 1, "{from:?} in board/sim.toml");
        out = out.replace(from, &to);
    }
    out
}

/// The clip's header line and its first `n` frames (each with its FRAME line), as bytes.
fn clip_frames(path: &Path, n: usize) -> (Vec<u8>, Vec<Vec<u8>>) {
    let mut r = BufReader::new(std::fs::File::open(path).unwrap());
    let mut header = Vec::new();
    r.read_until(b'\n', &mut header).unwrap();
    let text = String::from_utf8_lossy(&header).into_owned();
    let field = |tag: char| -> usize {
        text.split_whitespace().find_map(|f| f.strip_prefix(tag)).unwrap().parse().unwrap()
    };
    let len = field('W') * field('H') * 3 / 2;
    let frames = (0..n)
        .map(|_| {
            let mut f = Vec::new();
            r.read_until(b'\n', &mut f).unwrap();
            assert!(f.starts_with(b"FRAME"));
            let start = f.len();
            f.resize(start + len, 0);
            r.read_exact(&mut f[start..]).unwrap();
            f
        })
        .collect();
    (header, frames)
}

/// The frame count in a STATUS line: `STATUS=<state>; <n> frames decided, ...`.
fn decided(msg: &str) -> Option<u64> {
    let status = msg.lines().find_map(|l| l.strip_prefix("STATUS="))?;
    let (_, rest) = status.split_once("; ")?;
    rest.split(" frames decided").next()?.parse().ok()
}

fn pings(inbox: &Inbox, from: Instant, to: Instant) -> Vec<Instant> {
    let msgs = inbox.lock().unwrap();
    msgs.iter()
        .filter(|(t, m)| *t >= from && *t < to && m.lines().any(|l| l == "WATCHDOG=1"))
        .map(|(t, _)| *t)
        .collect()
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo {}", path.display());
}

fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

fn wait_child(child: &mut std::process::Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

struct KillOnDrop(libc::pid_t);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: signalling our own child, which may already be gone.
        unsafe { libc::kill(self.0, libc::SIGKILL) };
    }
}
