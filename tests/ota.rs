//! Signed A/B updates end to end, with the real binary and slots in a temporary directory:
//! bad bundles (unsigned, wrongly signed, truncated, for another board, tampered, not newer)
//! are refused and the running slot stays as it was; SIGKILL at random points of 100 updates
//! always leaves `current` on a complete, intact slot; a version whose loop misses its
//! deadlines is rolled back by the health gate and a healthy one is committed; a version that
//! cannot start is rolled back after `max_boot_tries`; a model update is accepted only if its
//! golden clip agrees with the expected detections within the latency budget.
//!
//! `OTA_KILL_SEED` replays the kill test (the seed is printed).

mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use ed25519_dalek::SigningKey;
use serde_json::Value;
use sha2::{Digest, Sha256};
use sideline::update::build::{build, BuildSpec};
use sideline::update::Version;

const EXE: &str = env!("CARGO_BIN_EXE_sideline");

fn sideline(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let out = Command::new(EXE).args(args).output().unwrap();
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    out
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn ok(o: Output) -> Output {
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    o
}

/// A device: a board profile with an `[update]` table over a temporary update directory.
struct Device {
    tmp: tempfile::TempDir,
    board: PathBuf,
    dir: PathBuf,
    key: SigningKey,
    key_file: PathBuf,
}

/// A small profile on the sample clip: the detector only (fast to load), one zone, a log
/// output; `update` is the `[update]` table's extra lines, `budget_ms` the loop's deadline.
fn profile_text(tmp: &Path, dir: &Path, public: &str, budget_ms: f64, update: &str) -> String {
    let repo = common::repo();
    format!(
        r#"[board]
name = "sim"
device_id = "ota-test"

[[cameras]]
name = "field"
kind = "sim"
source = "{clip}"
width = 768
height = 576
fps = 10.0

[inference]
ort_library = "{repo}/.cache/onnxruntime/libonnxruntime.so"
threads = 1

[models.detector]
path = "{repo}/models/centernet.onnx"
backend = "ort"
input = [512, 512]
score_threshold = 0.45
classes = ["person"]

[[rules.zone_incursion]]
name = "road"
polygon = [[540, 175], [700, 105], [768, 100], [768, 175], [700, 190], [690, 250], [560, 250]]
severity = "warning"
outputs = ["log"]

[[outputs]]
name = "log"
kind = "log"

[storage]
path = "{state}"

[loop]
budget_ms = {budget_ms}
heartbeat_ms = 1000

[update]
dir = "{dir}"
keys = ["{public}"]
restart = []
{update}
"#,
        clip = common::media("vtest.y4m").display(),
        repo = repo.display(),
        state = tmp.join("state").display(),
        dir = dir.display(),
    )
}

impl Device {
    fn new(update: &str) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("update");
        let key = SigningKey::from_bytes(&[42u8; 32]);
        let key_file = tmp.path().join("ops.key");
        std::fs::write(&key_file, base64::engine::general_purpose::STANDARD.encode(key.to_bytes())).unwrap();
        let public = base64::engine::general_purpose::STANDARD.encode(key.verifying_key().as_bytes());
        let board = tmp.path().join("board.toml");
        std::fs::write(&board, profile_text(tmp.path(), &dir, &public, 2000.0, update)).unwrap();
        Self { tmp, board, dir, key, key_file }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// The profile's text with another loop budget (for a version that regresses).
    fn profile_with_budget(&self, budget_ms: f64, update: &str) -> String {
        let public = base64::engine::general_purpose::STANDARD.encode(self.key.verifying_key().as_bytes());
        profile_text(self.tmp.path(), &self.dir, &public, budget_ms, update)
    }

    /// `sideline update init` from a directory holding `files` (name, bytes, executable).
    fn init(&self, version: &str, files: &[(&str, Vec<u8>, bool)]) {
        let from = self.path(&format!("pkg-{version}"));
        write_tree(&from, files);
        let out = ok(sideline(&[
            &"update",
            &"init",
            &"--board",
            &self.board,
            &"--from",
            &from,
            &"--version",
            &version,
        ]));
        assert!(stdout(&out).contains(&format!("version {version} committed in slot a")), "{}", stdout(&out));
    }

    /// Builds a bundle with the CLI; files are written to a package directory first.
    fn build_cli(
        &self,
        version: &str,
        boards: &[&str],
        files: &[(&str, Vec<u8>, bool)],
        extra: &[&str],
    ) -> PathBuf {
        let from = self.path(&format!("src-{version}-{}", boards.join("+")));
        write_tree(&from, files);
        let out = self.path(&format!("v{version}-{}.bundle", boards.join("+")));
        let mut cmd = Command::new(EXE);
        cmd.args(["update", "build", "--key"]).arg(&self.key_file).args(["--version", version]);
        for b in boards {
            cmd.args(["--board-compat", b]);
        }
        for (name, _, _) in files {
            cmd.arg("--file").arg(format!("{name}={}", from.join(name).display()));
        }
        let o = cmd.args(extra).arg("--out").arg(&out).output().unwrap();
        ok(o);
        out
    }

    fn apply(&self, bundle: &Path) -> Output {
        sideline(&[&"update", &"apply", &"--board", &self.board, &bundle])
    }

    /// Applies through standard input, as `ssh device sideline update apply - < bundle` does.
    fn apply_stdin(&self, bytes: &[u8]) -> Output {
        let mut child = Command::new(EXE)
            .args(["update", "apply", "--board"])
            .arg(&self.board)
            .arg("-")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        // The device may refuse before reading everything: a broken pipe is its answer.
        let _ = stdin.write_all(bytes);
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
        out
    }

    fn state(&self) -> Value {
        let text = std::fs::read(self.dir.join("state.json")).expect("state.json exists");
        serde_json::from_slice(&text).unwrap_or_else(|e| panic!("state.json does not parse: {e}"))
    }

    fn current(&self) -> String {
        std::fs::read_link(self.dir.join("current")).unwrap().to_string_lossy().into_owned()
    }

    /// `sideline run` through the stable entry point (this build), as systemd starts it.
    fn run(&self, extra: &[&str]) -> Child {
        Command::new(EXE)
            .args(["run", "--board"])
            .arg(&self.board)
            .args(extra)
            .env_remove("SIDELINE_SLOT_EXEC")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }
}

fn write_tree(root: &Path, files: &[(&str, Vec<u8>, bool)]) {
    for (name, bytes, exec) in files {
        let p = root.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, bytes).unwrap();
        let mode = if *exec { 0o755 } else { 0o644 };
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
}

fn sha_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks that the slot `current` names is complete and every file matches its manifest, that
/// the committed slot is too, and that the binary is executable; returns a fingerprint of the
/// running slot (link, state's slots and versions, files and hashes).
fn check_good(dev: &Device, context: &str) -> String {
    let state = dev.state();
    assert_eq!(state["format"], "sideline-update-state/1", "{context}");
    let current = dev.current();
    let slot = current.strip_prefix("slots/").unwrap_or_else(|| panic!("{context}: current -> {current}"));
    // The link may lag the state by one switch after a kill (the next start or update command
    // finishes it), so it must name a complete slot, not necessarily the state's.
    assert!(slot == "a" || slot == "b", "{context}: current -> {current}");
    let committed = state["committed"]["slot"].as_str().unwrap();
    let mut fingerprint = format!("{current} {} {}\n", state["committed"], state["pending"]);
    for s in [Some(slot), Some(committed)].into_iter().flatten() {
        let dir = dev.dir.join("slots").join(s);
        let manifest: Value = serde_json::from_slice(
            &std::fs::read(dir.join("manifest.json"))
                .unwrap_or_else(|e| panic!("{context}: slot {s} has no manifest: {e}")),
        )
        .unwrap();
        if s == committed {
            assert_eq!(manifest["version"], state["committed"]["version"], "{context}: committed slot {s}");
        }
        for f in manifest["files"].as_array().unwrap() {
            let path = dir.join(f["path"].as_str().unwrap());
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{context}: {}: {e}", path.display()));
            assert_eq!(bytes.len() as u64, f["size"].as_u64().unwrap(), "{context}: {}", path.display());
            assert_eq!(sha_hex(&bytes), f["sha256"].as_str().unwrap(), "{context}: {}", path.display());
            if s == slot {
                fingerprint += &format!("{} {}\n", f["path"], f["sha256"]);
            }
        }
    }
    let bin = dev.dir.join("current/bin/sideline");
    let mode =
        std::fs::metadata(&bin).unwrap_or_else(|e| panic!("{context}: {}: {e}", bin.display())).permissions();
    assert!(mode.mode() & 0o111 != 0, "{context}: the current binary is not executable");
    fingerprint
}

/// Firmware files whose content depends on `seed`.
fn firmware(seed: u64, big: usize) -> Vec<(&'static str, Vec<u8>, bool)> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut bytes = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    };
    vec![
        ("bin/sideline", bytes(big), true),
        ("models/detector.onnx", bytes(2 * big), false),
        ("share/notes.txt", format!("firmware {seed}\n").into_bytes(), false),
    ]
}

#[test]
fn bad_bundles_are_refused_and_the_running_slot_is_untouched() {
    let dev = Device::new("");
    dev.init("1.0", &firmware(1, 4096));
    let before = check_good(&dev, "after init");
    assert_eq!(dev.current(), "slots/a");

    let good = dev.build_cli("1.1", &["sim"], &firmware(2, 100_000), &[]);
    let bytes = std::fs::read(&good).unwrap();
    let other_board = dev.build_cli("1.1", &["jetson-orin-nano"], &firmware(2, 1000), &[]);
    let older = dev.build_cli("0.9", &["sim"], &firmware(3, 1000), &[]);
    // Wrongly signed: a key this device does not trust.
    let stranger = dev.path("stranger");
    ok(sideline(&[&"update", &"keygen", &"--out", &stranger]));
    let wrong_key = {
        let o = Command::new(EXE)
            .args(["update", "build", "--key"])
            .arg(dev.path("stranger.key"))
            .args(["--version", "1.1", "--board-compat", "sim", "--file"])
            .arg(format!("bin/sideline={}", EXE))
            .arg("--out")
            .arg(dev.path("stranger.bundle"))
            .output()
            .unwrap();
        ok(o);
        std::fs::read(dev.path("stranger.bundle")).unwrap()
    };
    // Unsigned: the signature line left empty.
    let unsigned = {
        let mut lines = bytes.splitn(3, |&b| b == b'\n');
        let (magic, len) = (lines.next().unwrap(), lines.next().unwrap());
        let len: usize = std::str::from_utf8(len).unwrap().parse().unwrap();
        let sig_start = magic.len() + 1 + format!("{len}").len() + 1 + len + 1;
        let sig_end = sig_start + bytes[sig_start..].iter().position(|&b| b == b'\n').unwrap();
        [&bytes[..sig_start], &bytes[sig_end..]].concat()
    };
    let mut tampered = bytes.clone();
    let last = tampered.len() - 10;
    tampered[last] ^= 0x40;

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("unsigned", unsigned, "signature: 0 bytes"),
        ("wrongly signed", wrong_key, "bad signature"),
        ("truncated in the header", bytes[..30].to_vec(), "bundle: manifest: truncated"),
        ("truncated in a file", bytes[..bytes.len() / 2].to_vec(), "truncated after"),
        ("truncated by one byte", bytes[..bytes.len() - 1].to_vec(), "file share/notes.txt: truncated after"),
        ("for another board", std::fs::read(&other_board).unwrap(), "does not list this board `sim`"),
        ("tampered", tampered, "file share/notes.txt: sha256 mismatch"),
        ("not newer", std::fs::read(&older).unwrap(), "0.9 is not newer than the committed 1.0"),
        ("empty", Vec::new(), "bundle: header: missing"),
    ];
    for (i, (what, b, expect)) in cases.iter().enumerate() {
        // Half through a file, half through standard input.
        let out = if i % 2 == 0 {
            let p = dev.path(&format!("case{i}.bundle"));
            std::fs::write(&p, b).unwrap();
            dev.apply(&p)
        } else {
            dev.apply_stdin(b)
        };
        assert!(!out.status.success(), "{what}: accepted\n{}", stderr(&out));
        assert!(stderr(&out).contains(expect), "{what}: expected `{expect}` in:\n{}", stderr(&out));
        assert_eq!(check_good(&dev, what), before, "{what}: the running slot changed");
        assert_eq!(dev.state()["pending"], Value::Null, "{what}");
        assert!(!dev.dir.join("slots/b/manifest.json").exists(), "{what}: slot b marked complete");
    }
    // Refusals are recorded, with the reason.
    let status = stdout(&ok(sideline(&[&"update", &"status", &"--board", &dev.board])));
    assert!(status.contains("rejected") && status.contains("bundle: header: missing"), "{status}");

    // The good one, over standard input: installed, current, pending.
    let out = dev.apply_stdin(&bytes);
    assert!(out.status.success(), "{}", stderr(&out));
    check_good(&dev, "after the good bundle");
    assert_eq!(dev.current(), "slots/b");
    assert_eq!(dev.state()["pending"]["version"], "1.1");
    // While it is pending, nothing else is installed.
    let out = dev.apply(&older);
    assert!(stderr(&out).contains("pending its health gate"), "{}", stderr(&out));
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Where a killed apply of `version` got to, read off the disk.
fn apply_phase(dev: &Device, state: &Value, version: u64) -> &'static str {
    let v = version.to_string();
    if state["pending"]["version"] == v.as_str() {
        let pending = state["pending"]["slot"].as_str().unwrap();
        return if dev.current() == format!("slots/{pending}") {
            "switched"
        } else {
            "recorded, not switched"
        };
    }
    let committed = state["committed"]["slot"].as_str().unwrap();
    let target = if committed == "a" { "b" } else { "a" };
    match std::fs::read(dev.dir.join("slots").join(target).join("manifest.json")) {
        Err(_) if dev.dir.join("slots").join(target).exists() => "slot being written",
        Err(_) => "before the slot was touched",
        Ok(m) => {
            let m: Value = serde_json::from_slice(&m).unwrap();
            if m["version"] == v.as_str() {
                "slot complete, not recorded"
            } else {
                "before the slot was touched"
            }
        }
    }
}

/// Runs `sideline` with `args`, SIGKILLs it after `after` unless it has exited; returns whether
/// it was killed and its status.
/// `None`: never killed; the elapsed time is returned then.
fn run_killed(
    args: &[&dyn AsRef<std::ffi::OsStr>],
    after: Option<Duration>,
) -> (bool, std::process::ExitStatus, Duration) {
    let start = Instant::now();
    let mut child = Command::new(EXE).args(args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let until = start + after.unwrap_or(Duration::from_secs(3600));
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (false, status, start.elapsed());
        }
        if Instant::now() >= until {
            // SAFETY: kill(2) on our own child, not yet reaped.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
            let status = child.wait().unwrap();
            return (status.code().is_none(), status, start.elapsed());
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

#[test]
fn sigkill_at_random_points_of_100_updates_always_leaves_a_good_slot() {
    const UPDATES: u64 = 100;
    let seed = std::env::var("OTA_KILL_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
    });
    eprintln!("OTA_KILL_SEED={seed}");
    let mut rng = Rng(seed);
    let dev = Device::new("");
    dev.init("1", &firmware(1, 4096));
    check_good(&dev, "after init");

    // Time one uninterrupted apply and commit, to spread the kills over the whole of each.
    let timed = |args: &[&dyn AsRef<std::ffi::OsStr>]| {
        let t = Instant::now();
        ok(sideline(args));
        t.elapsed()
    };
    let write_bundle = |version: u64| {
        let from = dev.path(&format!("fw-{version}"));
        let files = firmware(version, 150_000);
        write_tree(&from, &files);
        let spec = BuildSpec {
            version: Version::parse(&version.to_string()).unwrap(),
            boards: vec!["sim".into()],
            description: String::new(),
            files: files.iter().map(|(n, _, _)| (n.to_string(), from.join(n))).collect(),
            acceptance: None,
        };
        let path = dev.path("next.bundle");
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        build(&spec, &dev.key, &mut f).unwrap();
        f.flush().unwrap();
        std::fs::remove_dir_all(&from).unwrap();
        path
    };
    let bundle = write_bundle(2);
    let mut apply_time = timed(&[&"update", &"apply", &"--board", &dev.board, &bundle]);
    let mut commit_time = timed(&[&"update", &"commit", &"--board", &dev.board]);
    check_good(&dev, "after the timed update");
    eprintln!("apply {apply_time:?}, commit {commit_time:?}");

    let (mut killed_apply, mut killed_resolve, mut installed) = (0, 0, 0);
    let mut phases = std::collections::BTreeMap::new();
    for update in 0..UPDATES {
        let version = update + 3;
        let ctx = |what: &str| format!("update {update} (v{version}, seed {seed}): {what}");
        let bundle = write_bundle(version);
        // Every fifth update runs undisturbed and re-times apply and commit, so the kills keep
        // spreading over the whole operation as the machine's load changes.
        let calm = update % 5 == 4;
        let spread =
            |t: Duration, rng: &mut Rng| Duration::from_micros(rng.below(t.as_micros() as u64 * 13 / 10));
        let after = (!calm).then(|| spread(apply_time, &mut rng));
        let (killed, status, took) =
            run_killed(&[&"update", &"apply", &"--board", &dev.board, &bundle], after);
        if calm {
            apply_time = took;
        }
        killed_apply += killed as u32;
        check_good(&dev, &ctx(&format!("apply killed after {after:?}")));
        assert!(!calm || !killed);
        let state = dev.state();
        if killed {
            *phases.entry(apply_phase(&dev, &state, version)).or_insert(0u32) += 1;
        }
        if !killed {
            assert!(status.success(), "{}", ctx("apply failed on its own"));
        }
        if state["pending"]["version"] == version.to_string().as_str() {
            installed += 1;
            // Resolve it as the gate would, commit or roll back, killed at a random point too.
            let cmd = if rng.below(2) == 0 { "commit" } else { "rollback" };
            let args: [&dyn AsRef<std::ffi::OsStr>; 4] = [&"update", &cmd, &"--board", &dev.board];
            let after = (!calm).then(|| spread(commit_time, &mut rng));
            let (killed, status, took) = run_killed(&args, after);
            if calm {
                commit_time = took;
            }
            killed_resolve += killed as u32;
            assert!(killed || status.success(), "{}", ctx(&format!("{cmd} failed on its own")));
            check_good(&dev, &ctx(&format!("{cmd} killed after {after:?}")));
            assert!(!calm || !killed);
            // Killed before it wrote the state: finish it (the gate would, at the next start).
            if dev.state()["pending"] != Value::Null {
                ok(sideline(&args));
            }
        } else {
            assert!(killed, "{}", ctx("apply exited without installing"));
        }
        assert_eq!(dev.state()["pending"], Value::Null, "{}", ctx("still pending"));
        // `status` works, finds the running slot intact, and repairs a link a kill left behind
        // the state.
        let st = sideline(&[&"update", &"status", &"--verify", &"--board", &dev.board]);
        assert!(st.status.success(), "{}: {}", ctx("status"), stderr(&st));
        check_good(&dev, &ctx("end"));
        let committed = dev.state()["committed"]["slot"].as_str().unwrap().to_string();
        assert_eq!(dev.current(), format!("slots/{committed}"), "{}", ctx("current after status"));
    }
    eprintln!("{UPDATES} updates: {killed_apply} applies and {killed_resolve} commits/rollbacks killed, {installed} installed");
    eprintln!("applies killed by phase: {phases:?}");
    // The kills must have landed inside the writing, not only around it.
    assert!(phases.get("slot being written").is_some_and(|&n| n > 0), "{phases:?}");
    assert!(killed_apply >= UPDATES as u32 / 4, "too few applies were interrupted to prove anything");
    assert!(installed >= UPDATES as u32 / 10, "too few updates got through");
}

/// A launcher standing in for a firmware build: runs this build's binary with `args`.
fn launcher(args: &str) -> Vec<u8> {
    format!("#!/bin/sh\nexec \"{EXE}\" {args}\n").into_bytes()
}

/// Waits for `child` to exit within `limit`; kills it and fails otherwise.
fn wait_exit(child: &mut Child, limit: Duration, what: &str) -> std::process::ExitStatus {
    let until = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() >= until {
            let _ = child.kill();
            let out = child.wait_with_output_lossy();
            panic!("{what}: still running after {limit:?}\n{out}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

trait Stderr {
    fn wait_with_output_lossy(&mut self) -> String;
}

impl Stderr for Child {
    fn wait_with_output_lossy(&mut self) -> String {
        use std::io::Read;
        let mut s = String::new();
        if let Some(mut e) = self.stderr.take() {
            let _ = e.read_to_string(&mut s);
        }
        let _ = self.wait();
        s
    }
}

/// Version 2 carries a profile whose loop cannot meet its deadline (`budget_ms = 1`): every
/// frame is late, the gate never passes, and after `gate_timeout_s` the version is rolled back
/// by itself and the process exits non-zero, for the service manager to restart into 1.0.
#[test]
fn a_version_that_misses_its_deadlines_is_rolled_back_by_the_gate() {
    common::ort_env();
    let gate = "gate_s = 1\ngate_timeout_s = 4";
    let dev = Device::new(gate);
    dev.init("1.0", &[("bin/sideline", launcher("\"$@\""), true)]);
    // v2: the same build with a loop that regressed.
    let bad_profile = dev.profile_with_budget(1.0, gate);
    let v2 = dev.build_cli(
        "2.0",
        &["sim"],
        &[
            ("bin/sideline", launcher("run --board \"$(dirname \"$0\")/../board.toml\""), true),
            ("board.toml", bad_profile.into_bytes(), false),
        ],
        &[],
    );
    ok(dev.apply(&v2));
    assert_eq!(dev.current(), "slots/b");

    let started = Instant::now();
    let mut child = dev.run(&[]);
    let status = wait_exit(&mut child, Duration::from_secs(40), "the run of v2");
    let log = child.wait_with_output_lossy();
    assert!(!status.success(), "v2 exited 0 without passing its gate\n{log}");
    assert!(log.contains("rolled back"), "{log}");
    let state = dev.state();
    assert_eq!(state["pending"], Value::Null, "{log}");
    assert_eq!(state["committed"]["version"], "1.0");
    assert_eq!(state["last"]["result"], "rolled_back");
    let reason = state["last"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("health gate not passed within 4 s") && reason.contains("with the loop late"),
        "{reason}"
    );
    assert_eq!(dev.current(), "slots/a", "current is back on 1.0");
    check_good(&dev, "after the rollback");
    eprintln!("rolled back {:.1} s after the start", started.elapsed().as_secs_f64());
    let status = stdout(&ok(sideline(&[&"update", &"status", &"--board", &dev.board])));
    assert!(status.contains("rolled_back 2.0") && status.contains("version 1.0 (committed)"), "{status}");
}

/// Version 2 is this very build: the entry point execs into the slot's copy (the process's
/// executable becomes slots/b/bin/sideline), the loop runs healthy for `gate_s`, and the
/// version is committed while the device keeps running.
#[test]
fn a_healthy_version_is_committed_by_the_gate() {
    common::ort_env();
    let dev = Device::new("gate_s = 1.5\ngate_timeout_s = 60");
    dev.init("1.0", &[("bin/sideline", launcher("\"$@\""), true)]);
    let exe = std::fs::read(EXE).unwrap();
    let v2 = dev.build_cli("2.0", &["sim"], &[("bin/sideline", exe, true)], &[]);
    ok(dev.apply(&v2));

    let mut child = dev.run(&[]);
    let until = Instant::now() + Duration::from_secs(45);
    while dev.state()["pending"] != Value::Null {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended ({status}) before the gate decided\n{}", child.wait_with_output_lossy());
        }
        assert!(Instant::now() < until, "no commit within 45 s\n{}", {
            let _ = child.kill();
            child.wait_with_output_lossy()
        });
        std::thread::sleep(Duration::from_millis(100));
    }
    let exe_now = std::fs::read_link(format!("/proc/{}/exe", child.id())).unwrap();
    // SAFETY: SIGTERM to our own child, which is still running.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let status = wait_exit(&mut child, Duration::from_secs(20), "stopping v2");
    let log = child.wait_with_output_lossy();
    assert!(status.success(), "{log}");
    assert_eq!(exe_now, dev.dir.join("slots/b/bin/sideline").canonicalize().unwrap(), "{log}");
    let state = dev.state();
    assert_eq!(state["committed"], serde_json::json!({"slot": "b", "version": "2.0"}), "{log}");
    assert_eq!(state["last"]["result"], "committed");
    assert!(state["last"]["reason"].as_str().unwrap().contains("health gate passed"), "{state}");
    assert_eq!(state["history"].as_array().unwrap().len(), 3, "seeded, installed, committed");
    assert_eq!(dev.current(), "slots/b");
    check_good(&dev, "after the commit");
}

/// Version 2 dies at once on every start (a build that cannot start on this board): each start
/// through the entry point counts a try, and the start after `max_boot_tries` rolls back and
/// exits non-zero; the next start runs 1.0.
#[test]
fn a_version_that_cannot_start_is_rolled_back_after_max_boot_tries() {
    common::ort_env();
    let dev = Device::new("max_boot_tries = 2");
    dev.init("1.0", &[("bin/sideline", launcher("\"$@\""), true)]);
    let v2 = dev.build_cli("2.0", &["sim"], &[("bin/sideline", b"#!/bin/sh\nexit 3\n".to_vec(), true)], &[]);
    ok(dev.apply(&v2));
    for start in 1..=2 {
        let mut child = dev.run(&[]);
        let status = wait_exit(&mut child, Duration::from_secs(20), "a start of v2");
        assert_eq!(
            status.code(),
            Some(3),
            "start {start} did not run v2\n{}",
            child.wait_with_output_lossy()
        );
        assert_eq!(dev.state()["pending"]["tries"], start);
    }
    let mut child = dev.run(&[]);
    let status = wait_exit(&mut child, Duration::from_secs(20), "the third start");
    let log = child.wait_with_output_lossy();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("2 starts ended before the health gate decided"), "{log}");
    assert_eq!(dev.state()["pending"], Value::Null);
    assert_eq!(dev.current(), "slots/a");
    // And 1.0 runs again.
    let mut child = dev.run(&["--no-pace", "--max-frames", "2"]);
    let status = wait_exit(&mut child, Duration::from_secs(30), "1.0 after the rollback");
    let log = child.wait_with_output_lossy();
    assert!(status.success(), "{log}");
}

/// A model update with a golden clip: accepted when the slot's detector finds what the trusted
/// build found within the latency budget; refused, with `current` untouched, when the expected
/// detections are wrong or the budget is too tight.
#[test]
fn a_model_update_is_accepted_only_if_its_golden_clip_agrees() {
    common::ort_env();
    let dev = Device::new("");
    dev.init("1.0", &firmware(1, 4096));
    let before = check_good(&dev, "after init");
    let golden = dev.path("golden");
    let out = ok(sideline(&[
        &"update",
        &"golden",
        &"--board",
        &dev.board,
        &"--clip",
        &common::media("vtest.y4m"),
        &"--start",
        &"100",
        &"--frames",
        &"3",
        &"--out",
        &golden,
    ]));
    let expected: Value =
        serde_json::from_slice(&std::fs::read(golden.join("expected.json")).unwrap()).unwrap();
    let people: usize =
        expected["frames"].as_array().unwrap().iter().map(|f| f.as_array().unwrap().len()).sum();
    assert!(people >= 3, "too few people on the golden frames to prove anything: {}", stdout(&out));

    // The same detections, moved 60 px: what a model that regressed would find.
    let mut wrong = expected.clone();
    for f in wrong["frames"].as_array_mut().unwrap() {
        for d in f.as_array_mut().unwrap() {
            for i in 0..4 {
                d["box"][i] = (d["box"][i].as_f64().unwrap() + 60.0).into();
            }
        }
    }
    let model = std::fs::read(common::repo().join("models/centernet.onnx")).unwrap();
    let clip = std::fs::read(golden.join("golden.y4m")).unwrap();
    let bundle = |version: &str, expected: &Value, p99: &str| {
        let mut files = firmware(1, 4096);
        files[1] = ("models/detector.onnx", model.clone(), false);
        files.push(("golden/clip.y4m", clip.clone(), false));
        files.push(("golden/expected.json", serde_json::to_vec(expected).unwrap(), false));
        let accept = [
            "--accept-model",
            "models/detector.onnx",
            "--accept-clip",
            "golden/clip.y4m",
            "--accept-expected",
            "golden/expected.json",
            "--accept-max-p99-ms",
            p99,
        ];
        dev.build_cli(version, &["sim"], &files, &accept)
    };

    let out = dev.apply(&bundle("1.1", &wrong, "5000"));
    assert!(!out.status.success(), "wrong expected detections accepted");
    assert!(
        stderr(&out).contains("acceptance: model models/detector.onnx: detections agree 0%"),
        "{}",
        stderr(&out)
    );
    assert_eq!(check_good(&dev, "after the wrong golden"), before);

    let out = dev.apply(&bundle("1.2", &expected, "0.001"));
    assert!(!out.status.success(), "latency over budget accepted");
    assert!(
        stderr(&out).contains("p99 latency") && stderr(&out).contains("over the budget"),
        "{}",
        stderr(&out)
    );
    assert_eq!(check_good(&dev, "after the slow model"), before);
    assert!(!dev.dir.join("slots/b/manifest.json").exists(), "a refused slot is never complete");

    let out = ok(dev.apply(&bundle("1.3", &expected, "5000")));
    assert!(stdout(&out).contains("acceptance check passed: 3 frames"), "{}", stdout(&out));
    assert_eq!(dev.current(), "slots/b");
    assert_eq!(dev.state()["pending"]["version"], "1.3");
    check_good(&dev, "after the model update");
}

/// The package's postinst runs `init` with the device's own profile, whose models live in the
/// slot `init` creates: `init` needs only the `[update]` table. A second `init` (a package
/// upgrade) changes nothing; `--force` rebuilds the inactive slot and commits it.
#[test]
fn init_needs_only_the_update_table_and_is_idempotent() {
    let dev = Device::new("");
    let model = common::repo().join("models/centernet.onnx");
    let in_slot = dev.dir.join("current/models/centernet.onnx");
    let text = std::fs::read_to_string(&dev.board).unwrap();
    std::fs::write(&dev.board, text.replace(&model.display().to_string(), &in_slot.display().to_string()))
        .unwrap();
    assert!(sideline::config::Board::load(&dev.board).is_err(), "the profile loads before its models exist");
    let files = [
        ("bin/sideline", launcher("\"$@\""), true),
        ("models/centernet.onnx", std::fs::read(&model).unwrap(), false),
    ];
    dev.init("1.0", &files);
    sideline::config::Board::load(&dev.board).unwrap_or_else(|e| panic!("{e}"));
    check_good(&dev, "after init");

    let pkg = dev.path("pkg-1.0");
    let again =
        ok(sideline(&[&"update", &"init", &"--board", &dev.board, &"--from", &pkg, &"--version", &"9.9"]));
    assert!(stdout(&again).contains("already initialized"), "{}", stdout(&again));
    assert_eq!(dev.state()["committed"]["version"], "1.0");

    let forced = ok(sideline(&[
        &"update",
        &"init",
        &"--board",
        &dev.board,
        &"--from",
        &pkg,
        &"--version",
        &"1.1",
        &"--force",
    ]));
    assert!(stdout(&forced).contains("version 1.1 committed in slot b"), "{}", stdout(&forced));
    assert_eq!(dev.current(), "slots/b");
    check_good(&dev, "after init --force");
    // Both slots are complete now: an operator's rollback goes back to 1.0.
    let out = ok(sideline(&[&"update", &"rollback", &"--board", &dev.board, &"--reason", &"field test"]));
    assert!(stdout(&out).contains("slot a (version 1.0) is current"), "{}", stdout(&out));
    assert!(dev.state()["last"]["reason"].as_str().unwrap().starts_with("field test"));
    check_good(&dev, "after the rollback");
}

/// A wrong `[update]` table is refused at load like any other table, naming the field.
#[test]
fn a_bad_update_table_names_the_field() {
    let dev = Device::new("");
    let text = std::fs::read_to_string(&dev.board).unwrap();
    let load = |extra: &str| {
        let p = dev.path("bad.toml");
        std::fs::write(&p, text.replace("restart = []\n", &format!("restart = []\n{extra}\n"))).unwrap();
        sideline::config::Board::load(&p).map(|_| ()).unwrap_err().to_string()
    };
    let err = load("gate_s = 0\ngate_timeout_s = 10\nmax_boot_tries = 0");
    for field in ["update.gate_s", "update.max_boot_tries"] {
        assert!(err.contains(field), "{field} not named in: {err}");
    }
    let err = load("gate_s = 30\ngate_timeout_s = 20");
    assert!(err.contains("update.gate_timeout_s"), "{err}");
    let err = load("gate_secs = 30");
    assert!(err.contains("gate_secs"), "{err}");
    let bad_key = text.replace("keys = [\"", "keys = [\"x");
    std::fs::write(dev.path("bad.toml"), bad_key).unwrap();
    let err = sideline::config::Board::load(&dev.path("bad.toml")).map(|_| ()).unwrap_err().to_string();
    assert!(err.contains("update.keys[0]"), "{err}");
}
