//! The `sideline` binary: command line, logging, signals, and error reporting at the edge.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use clap::{Parser, Subcommand};

use sideline::config::Board;
use sideline::pipeline::{self, RunOptions};
use sideline::recorder::EventsDest;

#[derive(Parser)]
#[command(
    name = "sideline",
    version,
    about = "Field safety appliance: cameras and microphones in, alerts out"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the detection loop on a board.
    Run {
        /// Board profile (TOML).
        #[arg(long)]
        board: PathBuf,
        /// Write events as JSON lines to this file, or `-` for standard output.
        #[arg(long)]
        events: Option<String>,
        /// Stop after this many frames.
        #[arg(long)]
        max_frames: Option<u64>,
        /// Read sources as fast as possible instead of at their nominal rate.
        #[arg(long)]
        no_pace: bool,
        /// Play a clip at this frame rate instead of its own.
        #[arg(long)]
        pace_fps: Option<f64>,
        /// Also emit one `frame` event per decided frame (age, level, deadline).
        #[arg(long)]
        frame_events: bool,
    },
    /// Measure inference and loop speed, latency and memory on a board's clip.
    Bench {
        #[arg(long)]
        board: PathBuf,
        /// Frames to run through each measurement.
        #[arg(long, default_value_t = 795)]
        frames: u64,
        /// Camera rate for the latency run (default: the camera's own).
        #[arg(long)]
        pace_fps: Option<f64>,
        /// Also write the results as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Which measurements to run.
        #[arg(long, value_enum, default_value_t = sideline::bench::Mode::All)]
        mode: sideline::bench::Mode,
        /// Parts the throughput run is split into, with the bare detector measured between them.
        #[arg(long, default_value_t = sideline::bench::SEGMENTS)]
        segments: u64,
        /// Only measure the detector variants and save the latency profile model selection
        /// uses (seconds instead of minutes).
        #[arg(long)]
        variants_only: bool,
    },
    /// Validate a board profile and everything it points to.
    Check {
        #[arg(long)]
        board: PathBuf,
    },
    /// The board's microphone.
    Audio {
        #[command(subcommand)]
        command: AudioCommand,
    },
    /// The durable pattern store.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// Signed rule packs: new rules for running devices.
    Rulepack {
        #[command(subcommand)]
        command: RulepackCommand,
    },
    /// Signed A/B updates of the firmware and models, health-gated (docs/UPDATE.md).
    Update {
        #[command(subcommand)]
        command: sideline::update::cli::UpdateCommand,
    },
    /// Models on this device's accelerator.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
    /// Whether sideline runs on this device and how it is doing, from its metrics endpoint.
    Status {
        #[arg(long)]
        board: PathBuf,
        /// The endpoint's address, instead of the profile's `[telemetry] metrics`.
        #[arg(long)]
        addr: Option<std::net::SocketAddr>,
    },
    /// Run the labelled scenarios (audio, and footage through the decision loop) through the
    /// board's rules; print what fired when, and precision and recall per rule. Exits 1 on a
    /// miss or a false alarm.
    Scenarios {
        /// The scenario set (its set.toml names the sounds and the default board).
        #[arg(long, default_value = "tests/scenarios")]
        dir: PathBuf,
        /// Board profile whose rule parameters run (default: set.toml's).
        #[arg(long)]
        board: Option<PathBuf>,
        /// Directory of the source sounds (default: set.toml's).
        #[arg(long)]
        sounds: Option<PathBuf>,
        /// Directory of the clips for footage scenarios (default: set.toml's).
        #[arg(long)]
        clips: Option<PathBuf>,
    },
    /// Transcribe a WAV file of speech with the on-device model (Moonshine tiny-en); prints the
    /// text, then the audio length, compute time and real-time factor.
    Transcribe {
        /// Speech, any rate and channel count (mixed to mono, resampled to 16 kHz); 30 s at most.
        #[arg(long)]
        wav: PathBuf,
        /// The model's directory (made by scripts/setup).
        #[arg(long, default_value = sideline::audio::stt::DEFAULT_DIR)]
        models: PathBuf,
        /// onnxruntime library, if `ORT_DYLIB_PATH` is not set.
        #[arg(long)]
        ort_library: Option<PathBuf>,
    },
    /// The hash-chained alert audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check every line's hash and its link to the line before; exits 1 at the first bad line.
    Verify {
        /// The log file.
        #[arg(long, required_unless_present = "board", conflicts_with = "board")]
        file: Option<PathBuf>,
        /// The log of this profile (`[telemetry] audit_log`, else `audit.log` in the storage dir).
        #[arg(long)]
        board: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum AudioCommand {
    /// Capture from the board's microphone into a 16-bit mono WAV file, printing each second's
    /// level: to check a microphone at the field, and for the rig's bit-exact test.
    Record {
        #[arg(long)]
        board: PathBuf,
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Backlog (patterns waiting for upstream) and losses of a board's store.
    Stats {
        #[arg(long)]
        board: PathBuf,
    },
    /// Write patterns as fast as the disk allows, printing `committed <first> <last>` once each
    /// batch is durable (for crash tests: kill it, then check the store).
    Soak {
        /// Store directory.
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 64)]
        batch: usize,
        /// Patterns to write; 0 writes until killed.
        #[arg(long, default_value_t = 0)]
        count: u64,
    },
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// Build the board's TensorRT engines into the engine cache and report load times.
    Build {
        #[arg(long)]
        board: PathBuf,
    },
}

#[derive(Subcommand)]
enum RulepackCommand {
    /// Make a signing key: writes <OUT>.key (secret) and <OUT>.pub (for sync.rulepack_keys).
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign a rule pack (TOML) and write its envelope.
    Sign {
        /// Signing key written by `keygen`.
        #[arg(long)]
        key: PathBuf,
        pack: PathBuf,
        /// Write the envelope here instead of to standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Check a signed pack as the device with this board profile would.
    Check {
        #[arg(long)]
        board: PathBuf,
        signed: PathBuf,
        /// Version of the pack the device runs now; the new one must be above it.
        #[arg(long)]
        current_version: Option<u64>,
    },
}

#[global_allocator]
static ALLOC: sideline::telemetry::alloc::CountingAlloc = sideline::telemetry::alloc::CountingAlloc;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn install_signal_handlers() {
    let handler: extern "C" fn(libc::c_int) = on_signal;
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(sig, handler as libc::sighandler_t);
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,ort=warn".into()),
        )
        .init();
    match real_main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run { board, events, max_frames, no_pace, pace_fps, frame_events } => {
            // May exec into the current update slot's binary, or end a pending version that has
            // used up its starts (non-zero exit: the service restarts into the committed slot).
            // Before the profile is loaded: the slot's binary may know fields this one does not.
            sideline::update::boot::start(&board).with_context(|| format!("starting {}", board.display()))?;
            let profile = Board::load(&board)?;
            install_signal_handlers();
            let opts = RunOptions {
                events: events.as_deref().map(EventsDest::parse),
                max_frames,
                pace: !no_pace,
                pace_fps,
                frame_events,
                metrics: None,
                from_frame: 0,
            };
            tracing::info!(board = %board.display(), "starting");
            let summary = pipeline::run(&profile, &opts, &STOP)
                .with_context(|| format!("running {}", board.display()))?;
            eprintln!("{}", summary.render());
            Ok(())
        }
        Command::Bench { board, variants_only: true, .. } => {
            let profile = Board::load(&board)?;
            let (variants, file) = sideline::bench::profile_variants(&profile)
                .with_context(|| format!("measuring detector variants of {}", board.display()))?;
            print!("{}", sideline::bench::render_profile(&variants, &file));
            Ok(())
        }
        Command::Bench { board, frames, pace_fps, json, mode, segments, .. } => {
            let profile = Board::load(&board)?;
            install_signal_handlers();
            let opts = sideline::bench::BenchOptions { frames, pace_fps, json, mode, segments };
            let report = sideline::bench::run(&profile, &board.display().to_string(), &opts, &STOP)
                .with_context(|| format!("benchmarking {}", board.display()))?;
            print!("{}", report.render());
            Ok(())
        }
        Command::Check { board } => {
            let profile = Board::load(&board)?;
            let report =
                sideline::check::check(&profile).with_context(|| format!("checking {}", board.display()))?;
            println!("{report}\nOK: {}", board.display());
            Ok(())
        }
        Command::Audio { command } => audio(command),
        Command::Store { command } => store(command),
        Command::Rulepack { command } => rulepack(command),
        Command::Update { command } => sideline::update::cli::run(command),
        Command::Status { board, addr } => status(&board, addr),
        Command::Audit { command: AuditCommand::Verify { file, board } } => audit_verify(file, board),
        Command::Transcribe { wav, models, ort_library } => transcribe(&wav, &models, ort_library.as_deref()),
        Command::Scenarios { dir, board, sounds, clips } => {
            let report =
                sideline::scenarios::run(&sideline::scenarios::Options { dir, board, sounds, clips })?;
            print!("{}", report.render());
            match report.failures() {
                0 => Ok(()),
                n => anyhow::bail!("{n} scenario expectation(s) failed (MISSED or FALSE ALARM above)"),
            }
        }
        Command::Models { command: ModelsCommand::Build { board } } => {
            let profile = Board::load(&board)?;
            let report = sideline::models_cmd::build(&profile)
                .with_context(|| format!("building engines for {}", board.display()))?;
            print!("{report}");
            Ok(())
        }
    }
}

fn audio(command: AudioCommand) -> anyhow::Result<()> {
    let AudioCommand::Record { board, seconds, out } = command;
    let profile = Board::load(&board)?;
    install_signal_handlers();
    let mut mic = pipeline::open_microphone(&profile, true)?.context("the profile has no [audio] section")?;
    let rate = mic.sample_rate();
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut wav =
        hound::WavWriter::create(&out, spec).with_context(|| format!("creating {}", out.display()))?;
    let want = (seconds * rate as f64) as u64;
    let mut chunk = sideline::audio::AudioChunk::default();
    let (mut written, mut second_peak, mut first_ts) = (0u64, 0i32, None);
    while written < want && !STOP.load(Ordering::Relaxed) && mic.next_chunk(&mut chunk)? {
        first_ts.get_or_insert(chunk.ts);
        for &s in &chunk.samples {
            wav.write_sample(s).with_context(|| format!("writing {}", out.display()))?;
            second_peak = second_peak.max((s as i32).abs());
            written += 1;
            if written % rate as u64 == 0 {
                let db = 20.0 * (second_peak.max(1) as f64 / 32768.0).log10();
                eprintln!("{:>4} s: peak {db:6.1} dBFS", written / rate as u64);
                second_peak = 0;
            }
        }
    }
    wav.finalize().with_context(|| format!("writing {}", out.display()))?;
    let start = first_ts.map_or("-".to_string(), |t| t.to_string());
    println!(
        "{} samples at {rate} Hz to {} (first chunk captured at {start} monotonic)",
        written,
        out.display()
    );
    Ok(())
}

fn status(board: &std::path::Path, addr: Option<std::net::SocketAddr>) -> anyhow::Result<()> {
    use sideline::telemetry::status;
    let profile = Board::load(board)?;
    let backlog = || {
        status::store_backlog(
            &profile.storage.path,
            sideline::store::StoreConfig::from_board(&profile.storage),
        )
    };
    let configured = profile.telemetry.as_ref().and_then(|t| t.metrics_addr());
    let Some(addr) = addr.or(configured) else {
        println!("{}", backlog());
        anyhow::bail!(
            "{}: no metrics endpoint in the profile ([telemetry] metrics): cannot ask a running sideline",
            board.display()
        );
    };
    if addr.port() == 0 {
        println!("{}", backlog());
        anyhow::bail!(
            "the profile's metrics port is 0 (picked at start and logged as `metrics on http://...`): pass --addr"
        );
    }
    match status::read(addr, std::time::Duration::from_secs(1)) {
        Ok((first, second)) => {
            let (now, before) = match &second {
                Some(s) => (s, Some(&first)),
                None => (&first, None),
            };
            print!("{}", status::render(addr, now, before));
            Ok(())
        }
        Err(e) => {
            println!("{}", backlog());
            anyhow::bail!("not running, or its metrics endpoint is unreachable at {addr}: {e}")
        }
    }
}

fn transcribe(
    wav: &std::path::Path,
    models: &std::path::Path,
    ort_library: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    use sideline::audio::stt::{SpeechToText, SAMPLE_RATE};
    let samples = sideline::audio::wav::load_mono(wav, SAMPLE_RATE)?;
    let mut stt = SpeechToText::open(models, ort_library)?;
    let t = stt.transcribe(&samples).with_context(|| format!("transcribing {}", wav.display()))?;
    println!("{}", t.text);
    println!(
        "audio {:.2} s, compute {:.0} ms, real-time factor {:.3}, {} tokens",
        t.audio_s,
        t.compute.as_secs_f64() * 1e3,
        t.real_time_factor(),
        t.tokens
    );
    Ok(())
}

fn audit_verify(file: Option<PathBuf>, board: Option<PathBuf>) -> anyhow::Result<()> {
    let path = match (file, board) {
        (Some(f), _) => f,
        (None, Some(b)) => sideline::audit::path_for(&Board::load(&b)?),
        (None, None) => anyhow::bail!("name the log: --file <path> or --board <toml>"),
    };
    let v = sideline::audit::verify(&path)?;
    if let Some(t) = v.torn {
        println!(
            "warning: line {} is torn ({} bytes): a write cut short by a crash or power loss, not part of \
             the chain (the next start cuts it off and records that)",
            t.line, t.bytes
        );
    }
    println!("OK: {}: {} entries, chain head {}", path.display(), v.entries, v.head_hex());
    Ok(())
}

fn store(command: StoreCommand) -> anyhow::Result<()> {
    use sideline::store::{soak, Priority, Store, StoreConfig};
    match command {
        StoreCommand::Stats { board } => {
            let profile = Board::load(&board)?;
            let store = Store::open(&profile.storage.path, StoreConfig::from_board(&profile.storage))?;
            let (backlog, losses) = (store.backlog()?, store.losses()?);
            println!("store {} (generation {})", store.path().display(), store.generation());
            println!("{:<10} {:>10} {:>10} {:>10}", "class", "waiting", "evicted", "expired");
            for p in Priority::ALL {
                let i = p as usize;
                println!(
                    "{:<10} {:>10} {:>10} {:>10}",
                    p.name(),
                    backlog.count[i],
                    losses.evicted[i],
                    losses.expired[i]
                );
            }
            println!("accounted size {:.1} MB", backlog.bytes as f64 / 1e6);
        }
        StoreCommand::Soak { dir, batch, count } => {
            soak::run(&dir, StoreConfig::default(), batch.max(1), count, &mut std::io::stdout().lock())
                .with_context(|| format!("soak on {}", dir.display()))?;
        }
    }
    Ok(())
}

fn rulepack(command: RulepackCommand) -> anyhow::Result<()> {
    use sideline::rulepack_cmd;
    match command {
        RulepackCommand::Keygen { out } => println!("{}", rulepack_cmd::keygen(&out)?),
        RulepackCommand::Sign { key, pack, out } => {
            let envelope = rulepack_cmd::sign(&key, &pack)?;
            match out {
                Some(out) => {
                    std::fs::write(&out, envelope).with_context(|| format!("writing {}", out.display()))?
                }
                None => println!("{}", String::from_utf8_lossy(&envelope)),
            }
        }
        RulepackCommand::Check { board, signed, current_version } => {
            println!("{}", rulepack_cmd::check(&board, &signed, current_version)?)
        }
    }
    Ok(())
}
