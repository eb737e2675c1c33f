//! `sideline update ...`: the command line of the update machinery, on the developer machine
//! (keygen, golden, build) and on the device (init, apply, status, rollback, commit). This is
//! the edge: errors get their context here and the rest of the module stays typed.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::build::{parse_file_arg, BuildSpec};
use super::install::{self, ApplyOptions};
use super::manifest::{Acceptance, Version};
use super::slots::{Outcome, Slot, SlotDir, SlotInfo, State};
use crate::config::{self, Board};

/// The profile the service runs with, when a command is not given one.
pub const DEFAULT_BOARD: &str = "/etc/sideline/board.toml";

#[derive(clap::Subcommand)]
pub enum UpdateCommand {
    /// Make a bundle signing key: writes <OUT>.key (secret) and <OUT>.pub (for update.keys).
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Cut a golden clip from a Y4M clip and record what the board's detector finds on it, for a
    /// model update's acceptance check (writes <OUT>/golden.y4m and <OUT>/expected.json).
    Golden {
        #[arg(long)]
        board: PathBuf,
        #[arg(long)]
        clip: PathBuf,
        /// First frame to take.
        #[arg(long, default_value_t = 0)]
        start: u64,
        #[arg(long, default_value_t = 5)]
        frames: u64,
        /// Detector model to record with, instead of the profile's.
        #[arg(long)]
        model: Option<PathBuf>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Build and sign a bundle (on the developer machine).
    Build {
        /// Signing key written by `sideline update keygen` (or `rulepack keygen`).
        #[arg(long)]
        key: PathBuf,
        /// Dot-separated numbers, e.g. 1.4.2; devices install only versions above their own.
        #[arg(long)]
        version: String,
        /// `[board] name` of a board this bundle is for; repeat for several.
        #[arg(long = "board-compat", required = true)]
        board_compat: Vec<String>,
        /// DEST=SRC: SRC goes to DEST in the slot, e.g. bin/sideline=target/release/sideline,
        /// models/centernet.onnx=models/centernet.onnx. Repeat for each file.
        #[arg(long = "file", required = true, value_parser = parse_file_arg)]
        files: Vec<(String, PathBuf)>,
        #[arg(long, default_value = "")]
        description: String,
        /// Acceptance check: the slot path of the detector model to check...
        #[arg(long, requires_all = ["accept_clip", "accept_expected", "accept_max_p99_ms"])]
        accept_model: Option<String>,
        /// ...the golden clip (slot path)...
        #[arg(long, requires = "accept_model")]
        accept_clip: Option<String>,
        /// ...the expected detections (slot path, from `sideline update golden`)...
        #[arg(long, requires = "accept_model")]
        accept_expected: Option<String>,
        /// ...the p99 latency budget per frame on the device...
        #[arg(long, requires = "accept_model")]
        accept_max_p99_ms: Option<f64>,
        /// ...and the share of detections that must agree, both ways.
        #[arg(long, default_value_t = super::manifest::default_min_agree())]
        accept_min_agree: f64,
        /// The bundle file, or `-` for standard output.
        #[arg(long)]
        out: PathBuf,
    },
    /// Seed slot a from local files and commit it (package install; idempotent).
    Init {
        #[command(flatten)]
        at: Target,
        /// Directory whose files (recursively) go into the slot, e.g. /usr/share/sideline.
        #[arg(long)]
        from: Option<PathBuf>,
        /// The binary to install as bin/sideline, e.g. /usr/bin/sideline.
        #[arg(long)]
        binary: Option<PathBuf>,
        /// Version of what is installed (default: this binary's).
        #[arg(long)]
        version: Option<String>,
        /// Already initialized: rebuild the inactive slot from these files and commit it.
        #[arg(long)]
        force: bool,
    },
    /// Install a signed bundle into the inactive slot, switch to it and restart.
    Apply {
        #[command(flatten)]
        at: Target,
        /// Bundle file, or `-` for standard input (`ssh device sideline update apply - < b`).
        bundle: PathBuf,
        /// Install even if the version is not above the committed one (a signed downgrade).
        #[arg(long)]
        force: bool,
        /// Do not run update.restart; the new version starts with the next start.
        #[arg(long)]
        no_restart: bool,
        /// Wait for the health gate's verdict; exit non-zero if the version was rolled back.
        #[arg(long)]
        wait: bool,
    },
    /// Slots, versions, pending version and boot tries, last result.
    Status {
        #[command(flatten)]
        at: Target,
        /// Re-hash every file of both slots against their manifests.
        #[arg(long)]
        verify: bool,
        #[arg(long)]
        json: bool,
    },
    /// Abandon the pending version, or with none pending go back to the other complete slot.
    Rollback {
        #[command(flatten)]
        at: Target,
        /// Recorded in the history.
        #[arg(long, default_value = "rolled back by an operator")]
        reason: String,
        #[arg(long)]
        no_restart: bool,
    },
    /// Commit the pending version now, without waiting for the health gate.
    Commit {
        #[command(flatten)]
        at: Target,
    },
}

/// Which device's update directory a command works on.
#[derive(clap::Args)]
pub struct Target {
    /// Board profile; its [update] table names the directory, keys and restart command
    /// [default: /etc/sideline/board.toml].
    #[arg(long)]
    board: Option<PathBuf>,
    /// The update directory, instead of the profile's update.dir.
    #[arg(long)]
    dir: Option<PathBuf>,
}

impl Target {
    fn board_path(&self) -> Option<PathBuf> {
        self.board.clone().or_else(|| self.dir.is_none().then(|| DEFAULT_BOARD.into()))
    }

    /// For `apply`: the whole profile, validated (keys, board name, the detector settings for
    /// an acceptance check), and the directory.
    fn load(&self) -> anyhow::Result<(SlotDir, Board)> {
        let path = self.board.clone().unwrap_or_else(|| DEFAULT_BOARD.into());
        let board = Board::load(&path)?;
        let dir = match (&self.dir, &board.update) {
            (Some(d), _) => d.clone(),
            (None, Some(u)) => u.dir.clone(),
            (None, None) => bail!("{}: no [update] table (or pass --dir)", path.display()),
        };
        Ok((SlotDir::new(dir), board))
    }

    /// For the other device commands: only the profile's `[update]` table, so that they work
    /// while the rest of the profile does not load (before `init` the models it points at in
    /// the slot do not exist yet; after a bad edit an operator still needs `status`).
    fn update_table(&self) -> anyhow::Result<(SlotDir, Option<config::Update>)> {
        let table = match self.board_path() {
            Some(path) => super::boot::update_table(&path)?,
            None => None,
        };
        let dir = match (&self.dir, &table) {
            (Some(d), _) => d.clone(),
            (None, Some(u)) => u.dir.clone(),
            (None, None) => {
                bail!(
                    "{}: no [update] table (or pass --dir)",
                    self.board_path().unwrap_or_default().display()
                )
            }
        };
        Ok((SlotDir::new(dir), table))
    }
}

pub fn run(command: UpdateCommand) -> anyhow::Result<()> {
    match command {
        UpdateCommand::Keygen { out } => println!("{}", crate::signing::keygen(&out)?),
        UpdateCommand::Golden { board, clip, start, frames, model, out } => {
            let profile = Board::load(&board)?;
            let g = super::accept::golden(&profile, model.as_deref(), &clip, start, frames, &out)
                .with_context(|| format!("recording golden detections from {}", clip.display()))?;
            println!(
                "{} frames to {}, {} detections to {}",
                g.frames,
                g.clip.display(),
                g.detections,
                g.expected.display()
            );
        }
        UpdateCommand::Build {
            key,
            version,
            board_compat,
            files,
            description,
            accept_model,
            accept_clip,
            accept_expected,
            accept_max_p99_ms,
            accept_min_agree,
            out,
        } => {
            let key = crate::signing::read_signing_key(&key)?;
            let version = Version::parse(&version).map_err(anyhow::Error::msg).context("--version")?;
            let acceptance = match (accept_model, accept_clip, accept_expected, accept_max_p99_ms) {
                (Some(model), Some(clip), Some(expected), Some(max_p99_ms)) => {
                    Some(Acceptance { model, clip, expected, max_p99_ms, min_agree: accept_min_agree })
                }
                _ => None,
            };
            let spec = BuildSpec { version, boards: board_compat, description, files, acceptance };
            let manifest = if out.as_os_str() == "-" {
                super::build::build(&spec, &key, &mut std::io::stdout().lock())?
            } else {
                let tmp = out.with_extension("partial");
                let mut f = std::io::BufWriter::new(
                    std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?,
                );
                let m = super::build::build(&spec, &key, &mut f)
                    .with_context(|| format!("building {}", out.display()))
                    .inspect_err(|_| {
                        let _ = std::fs::remove_file(&tmp);
                    })?;
                drop(f);
                std::fs::rename(&tmp, &out).with_context(|| format!("writing {}", out.display()))?;
                m
            };
            eprintln!(
                "bundle version {} for {:?}: {} files, {:.1} MB{}",
                manifest.version,
                manifest.boards,
                manifest.files.len(),
                manifest.total_size() as f64 / 1e6,
                if manifest.acceptance.is_some() { ", with an acceptance check" } else { "" }
            );
        }
        UpdateCommand::Init { at, from, binary, version, force } => {
            let (dir, _) = at.update_table()?;
            if let (Some(st), false) = (dir.read_state()?, force) {
                println!(
                    "{}: already initialized (committed version {} in slot {}); nothing changed",
                    dir.root().display(),
                    st.committed.version,
                    st.committed.slot
                );
                return Ok(());
            }
            if from.is_none() && binary.is_none() {
                bail!("nothing to install: pass --from <dir> and/or --binary <file>");
            }
            let version = version.unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_string());
            let version = Version::parse(&version).map_err(anyhow::Error::msg).context("--version")?;
            let files = install::collect_files(from.as_deref(), binary.as_deref())?;
            let slot = install::seed(&dir, &files, version.clone(), force)
                .with_context(|| format!("initializing {}", dir.root().display()))?;
            println!(
                "{}: version {version} committed in slot {slot} ({} files)",
                dir.root().display(),
                files.len()
            );
        }
        UpdateCommand::Apply { at, bundle, force, no_restart, wait } => {
            apply(&at, &bundle, force, no_restart, wait)?
        }
        UpdateCommand::Status { at, verify, json } => {
            let (dir, update) = at.update_table()?;
            let max_tries = update.as_ref().map(|u| u.max_boot_tries);
            let ok = status(&dir, verify, json, max_tries)
                .with_context(|| format!("update status of {}", dir.root().display()))?;
            if !ok {
                bail!("the running slot's files do not match its manifest");
            }
        }
        UpdateCommand::Rollback { at, reason, no_restart } => {
            let (dir, update) = at.update_table()?;
            let lock = dir.lock(false)?;
            let st = dir
                .roll_back(&lock, reason, true)
                .with_context(|| format!("rolling back in {}", dir.root().display()))?;
            drop(lock);
            println!("rolled back: slot {} (version {}) is current", st.committed.slot, st.committed.version);
            if !no_restart {
                restart(update.as_ref())?;
            }
        }
        UpdateCommand::Commit { at } => {
            let (dir, _) = at.update_table()?;
            let lock = dir.lock(false)?;
            let st = dir
                .commit(&lock, "committed by an operator".into())
                .with_context(|| format!("committing in {}", dir.root().display()))?;
            println!("committed version {} in slot {}", st.committed.version, st.committed.slot);
        }
    }
    Ok(())
}

fn apply(at: &Target, bundle: &Path, force: bool, no_restart: bool, wait: bool) -> anyhow::Result<()> {
    let (dir, board) = at.load()?;
    let cfg = board
        .update
        .clone()
        .unwrap_or_else(|| toml::from_str("").expect("every [update] field has a default"));
    let keys = cfg
        .keys
        .iter()
        .map(|k| config::rulepack::parse_public_key(k).map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()
        .context("update.keys")?;
    let name =
        if bundle.as_os_str() == "-" { "standard input".to_string() } else { bundle.display().to_string() };
    let mut input: Box<dyn BufRead> = if bundle.as_os_str() == "-" {
        Box::new(std::io::BufReader::with_capacity(1 << 16, std::io::stdin()))
    } else {
        let f = std::fs::File::open(bundle).with_context(|| format!("opening {name}"))?;
        Box::new(std::io::BufReader::with_capacity(1 << 16, f))
    };
    let applied = install::apply(&dir, &board, &keys, &mut input, &ApplyOptions { force })
        .with_context(|| format!("{name}: not installed"))?;
    if let Some(r) = &applied.acceptance {
        println!("acceptance check passed: {r}");
    }
    println!(
        "installed version {} into slot {} ({} files, {:.1} MB); it is current and pending its health gate",
        applied.version,
        applied.slot,
        applied.files,
        applied.bytes as f64 / 1e6
    );
    if !no_restart {
        restart(Some(&cfg))?;
    }
    if wait {
        let limit = Duration::from_secs_f64(cfg.gate_timeout_s * cfg.max_boot_tries as f64 + 60.0);
        wait_for_gate(&dir, &applied.version, limit)?;
    }
    Ok(())
}

/// Runs `update.restart`; a failure is an error, though the switch has happened.
fn restart(update: Option<&config::Update>) -> anyhow::Result<()> {
    let Some(cmd) = update.map(|u| &u.restart) else {
        println!("no board profile named: restart the service to run the current slot");
        return Ok(());
    };
    let Some((prog, args)) = cmd.split_first() else {
        println!("update.restart is empty: the current slot runs from the next start");
        return Ok(());
    };
    let status = std::process::Command::new(prog).args(args).status().with_context(|| {
        format!("the slot is switched, but the restart command `{}` could not run", cmd.join(" "))
    })?;
    if !status.success() {
        bail!("the slot is switched, but the restart command `{}` failed ({status})", cmd.join(" "));
    }
    println!("restarted: {}", cmd.join(" "));
    Ok(())
}

fn wait_for_gate(dir: &SlotDir, version: &Version, limit: Duration) -> anyhow::Result<()> {
    let until = Instant::now() + limit;
    eprintln!("waiting up to {:.0} s for the health gate's verdict on {version}", limit.as_secs_f64());
    loop {
        let st = dir.state()?;
        if st.pending.as_ref().map(|p| &p.version) != Some(version) {
            let last = st.last.as_ref().filter(|e| e.version.as_ref() == Some(version));
            return match last {
                Some(e) if e.result == Outcome::Committed => {
                    println!("committed {version}: {}", e.reason);
                    Ok(())
                }
                Some(e) => bail!("{version} was {}: {}", e.result.name(), e.reason),
                None => bail!("{version} is no longer pending; see `sideline update status`"),
            };
        }
        if Instant::now() >= until {
            bail!("no verdict on {version} within {:.0} s; it is still pending", limit.as_secs_f64());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Prints the status; returns false if `verify` found the running slot damaged. If the lock is
/// free (and writable), first finishes what an interrupted operation left; otherwise reports it.
fn status(dir: &SlotDir, verify: bool, json: bool, max_tries: Option<u32>) -> anyhow::Result<bool> {
    dir.state()?;
    if let Ok(lock) = dir.lock(false) {
        dir.reconcile(&lock)?;
    }
    let state = dir.state()?;
    let current = dir.current()?;
    let mut healthy = true;
    let mut slots = serde_json::Map::new();
    let mut lines = Vec::new();
    for slot in [Slot::A, Slot::B] {
        let info = dir.slot_info(slot)?;
        let problems = match (&info, verify) {
            (SlotInfo::Complete { .. }, true) => dir.verify_slot(slot)?,
            _ => Vec::new(),
        };
        if !problems.is_empty() && current == Some(slot) {
            healthy = false;
        }
        let (text, value) = describe_slot(&info, &problems, verify);
        lines.push(format!("slot {slot}     {text}"));
        slots.insert(slot.name().into(), value);
    }
    if json {
        let v = serde_json::json!({
            "dir": dir.root(),
            "current": current,
            "state": state,
            "slots": slots,
        });
        println!("{}", serde_json::to_string_pretty(&v).expect("status serializes"));
        return Ok(healthy);
    }
    println!("update dir {}", dir.root().display());
    let running = state.running();
    match &state.pending {
        Some(p) => println!(
            "running    slot {}, version {}: pending its health gate, started {} of at most {} times",
            p.slot,
            p.version,
            p.tries,
            max_tries.map_or("max_boot_tries".to_string(), |m| m.to_string())
        ),
        None => println!(
            "running    slot {}, version {} (committed)",
            state.committed.slot, state.committed.version
        ),
    }
    if current != Some(running) {
        println!(
            "current    -> {} (an operation was interrupted; the next update command or start repairs it)",
            current.map_or("nothing".to_string(), |s| format!("slot {s}"))
        );
    }
    println!("committed  slot {}, version {}", state.committed.slot, state.committed.version);
    for l in lines {
        println!("{l}");
    }
    print_history(&state);
    Ok(healthy)
}

fn describe_slot(info: &SlotInfo, problems: &[String], verify: bool) -> (String, serde_json::Value) {
    match info {
        SlotInfo::Missing => ("empty".into(), serde_json::json!({"status": "empty"})),
        SlotInfo::Incomplete => (
            "incomplete (an install was interrupted or refused; never run)".into(),
            serde_json::json!({"status": "incomplete"}),
        ),
        SlotInfo::Corrupt(e) => {
            (format!("corrupt manifest: {e}"), serde_json::json!({"status": "corrupt", "error": e}))
        }
        SlotInfo::Complete { manifest, signed } => {
            let mut text = format!(
                "complete, version {}, {} files, {:.1} MB, {}",
                manifest.version,
                manifest.files.len(),
                manifest.total_size() as f64 / 1e6,
                if *signed { "from a signed bundle" } else { "seeded by init" }
            );
            if verify {
                text += &if problems.is_empty() {
                    ", every file matches".to_string()
                } else {
                    format!(", DAMAGED: {}", problems.join("; "))
                };
            }
            let value = serde_json::json!({
                "status": "complete",
                "version": manifest.version,
                "files": manifest.files.len(),
                "bytes": manifest.total_size(),
                "signed": signed,
                "problems": problems,
            });
            (text, value)
        }
    }
}

fn print_history(state: &State) {
    let Some(last) = &state.last else { return };
    let what = |e: &super::slots::Event| {
        let v = e.version.as_ref().map_or(String::new(), |v| format!(" {v}"));
        format!("{} {}{v}: {}", utc(e.at), e.result.name(), e.reason)
    };
    println!("last       {}", what(last));
    let earlier: Vec<_> = state.history.iter().rev().skip(1).take(4).collect();
    for e in earlier {
        println!("earlier    {}", what(e));
    }
}

/// `YYYY-MM-DD hh:mm:ss UTC` from Unix seconds (civil-from-days, no time zone database).
fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC", rem / 3600, rem / 60 % 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_764_244_800 + 3661), "2025-11-27 13:01:01 UTC");
    }
}
