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
    },
    /// Validate a board profile and everything it points to.
    Check {
        #[arg(long)]
        board: PathBuf,
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
            let profile = Board::load(&board)?;
            install_signal_handlers();
            let opts = RunOptions {
                events: events.as_deref().map(EventsDest::parse),
                max_frames,
                pace: !no_pace,
                pace_fps,
                frame_events,
            };
            tracing::info!(board = %board.display(), "starting");
            let summary = pipeline::run(&profile, &opts, &STOP)
                .with_context(|| format!("running {}", board.display()))?;
            eprintln!("{}", summary.render());
            Ok(())
        }
        Command::Bench { board, frames, pace_fps, json } => {
            let profile = Board::load(&board)?;
            install_signal_handlers();
            let opts = sideline::bench::BenchOptions { frames, pace_fps, json };
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
    }
}
