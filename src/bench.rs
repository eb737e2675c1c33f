//! `sideline bench`: numbers for speed and memory, never pass/fail.
//!
//! Three measurements on the board's own clip and models: bare inference per model and backend
//! (preprocessing untimed), the whole loop as fast as it goes (throughput), and the whole loop
//! fed by a camera at a fixed rate (latency, drops, deadline misses, ladder changes). The loop's
//! throughput is measured in segments with the bare detector between them, so that a host whose
//! speed drifts compares like with like. `bench/run` puts these next to the Python reference
//! peer and prints the ratios.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

use crate::capture::{y4m::Y4mCamera, Frame, FrameSource};
use crate::clock::MonoTime;
use crate::config::{Backend, Board, CameraKind};
use crate::infer::detector::Detector;
use crate::infer::pose::PoseEstimator;
use crate::infer::select::{LatencyProfile, Measurement, VariantKey, PROFILE_FILE, PROFILE_SCHEMA};
use crate::pipeline::{self, RunOptions};
use crate::telemetry::{StageStats, StageSummary};

#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub frames: u64,
    pub pace_fps: Option<f64>,
    pub json: Option<PathBuf>,
    pub mode: Mode,
    /// Parts the throughput run is split into, with the bare detector measured between them.
    pub segments: u64,
}

/// Which of the loop's measurements to run (bare inference goes with throughput).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    #[default]
    All,
    Throughput,
    Paced,
}

/// Default for [`BenchOptions::segments`].
pub const SEGMENTS: u64 = 4;

/// Frames each detector variant runs for the latency profile.
pub const PROFILE_FRAMES: usize = 60;

/// Measures every detector variant as the loop would run it (the board's backend and
/// accelerator) and saves the latency profile the loop chooses its start variant from
/// (see [`crate::infer::select`]). Returns the profile and where it was written.
pub fn profile_variants(board: &Board) -> anyhow::Result<(LatencyProfile, PathBuf)> {
    let cam = board.cameras.first().context("the profile has no camera")?;
    // A live camera gives no repeatable frames; these graphs cost the same on any content
    // (fixed input size, fixed top-k), so mid-grey frames measure them as well as a clip.
    let frames = match cam.kind {
        CameraKind::Sim => read_frames(board, PROFILE_FRAMES as u64)?,
        CameraKind::V4l2 => {
            let mut f = Frame::new(cam.width, cam.height, crate::capture::PixelFormat::I420);
            f.data.fill(128);
            vec![f; PROFILE_FRAMES]
        }
    };
    anyhow::ensure!(!frames.is_empty(), "the clip has no frames");
    let (w, h) = (frames[0].width, frames[0].height);
    let d = &board.models.detector;
    let mut measured = Vec::new();
    for (i, (name, path, input)) in d.all_variants().into_iter().enumerate() {
        let key = VariantKey::of(path, input, d.backend, board.inference.accelerator)
            .with_context(|| format!("reading {}", path.display()))?;
        let mut det = Detector::new(&d.variant(i), w, h, &board.inference)
            .with_context(|| format!("loading detector variant `{name}`"))?;
        let mut dets = Vec::with_capacity(128);
        // First runs pay for allocation and kernel selection: not what a running loop sees.
        for f in frames.iter().take(3) {
            det.prepare(f);
            det.infer(&mut dets)?;
        }
        let (_, s) = time_detector(&mut det, &frames)?;
        measured.push(Measurement {
            variant: name.to_string(),
            key,
            p50_ms: ms(s.p50_us),
            p99_ms: ms(s.p99_us),
            runs: s.count,
        });
    }
    let profile = LatencyProfile { schema: PROFILE_SCHEMA.into(), machine: machine(), detector: measured };
    let path = board.storage.path.join(PROFILE_FILE);
    profile.save(&path)?;
    Ok((profile, path))
}

/// CPU model, core count and GPU, for whoever reads a latency profile.
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let gpu = crate::infer::accel::DeviceIdentity::probe().gpu;
    format!("{cpu}; {cores} CPUs; GPU {gpu}")
}

/// The profile in a few lines.
pub fn render_profile(p: &LatencyProfile, path: &std::path::Path) -> String {
    let mut s = format!("detector variants on {} (saved to {}):\n", p.machine, path.display());
    for m in &p.detector {
        s.push_str(&format!(
            "  {:<16} {}x{} {:?}/{}: p50 {:7.2} ms  p99 {:7.2} ms  ({} runs)\n",
            m.variant,
            m.key.input[0],
            m.key.input[1],
            m.key.backend,
            m.key.accelerator,
            m.p50_ms,
            m.p99_ms,
            m.runs
        ));
    }
    s
}

#[derive(Debug, Serialize)]
pub struct Bare {
    pub model: &'static str,
    pub backend: Backend,
    pub variant: &'static str,
    pub input: [u32; 2],
    pub frames: u64,
    pub fps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Bare {
    fn new(
        model: &'static str,
        backend: Backend,
        input: [u32; 2],
        frames: u64,
        fps: f64,
        s: &StageSummary,
    ) -> Self {
        let (p50_ms, p99_ms, max_ms) = (ms(s.p50_us), ms(s.p99_us), ms(s.max_us));
        Self { model, backend, variant: "fp32", input, frames, fps, p50_ms, p99_ms, max_ms }
    }
}

#[derive(Debug, Serialize)]
pub struct Pipeline {
    pub fps: f64,
    pub frames: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Person detections (the reference peer counts these).
    pub detections: u64,
    /// All detections, balls included.
    pub detections_all: u64,
    pub alerts: u64,
    pub allocs_per_frame: Option<f64>,
    pub peak_rss_mb: f64,
    /// Pooled over the segments (see `merge_stages`).
    pub stages: Vec<StageSummary>,
    pub segments: Vec<Segment>,
}

/// One part of the throughput run, next to the bare detector measured either side of it.
#[derive(Debug, Serialize)]
pub struct Segment {
    pub from_frame: u64,
    pub frames: u64,
    pub fps: f64,
    pub bare_fps: f64,
    pub ratio: f64,
}

#[derive(Debug, Serialize)]
pub struct Paced {
    pub fps_in: f64,
    pub frames: u64,
    pub processed: u64,
    pub dropped: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub deadline_misses: u64,
    pub budget_ms: f64,
    pub ladder_changes: u64,
    pub decision_to_output_p99_us: Option<u32>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub tool: &'static str,
    pub board: String,
    pub frames: u64,
    pub threads: usize,
    pub bare: Vec<Bare>,
    pub pipeline: Option<Pipeline>,
    pub paced: Option<Paced>,
    /// Detector variants measured for model selection.
    pub variants: LatencyProfile,
    #[serde(skip)]
    pub variants_file: PathBuf,
}

fn ms(us: u32) -> f64 {
    us as f64 / 1000.0
}

/// The stage called `name`, or an empty one.
fn stage(stages: &[StageSummary], name: &str) -> StageSummary {
    stages.iter().find(|st| st.stage == name).cloned().unwrap_or_else(|| StageStats::new("").summary())
}

/// Runs `step` on each frame; `step` prepares the input untimed and returns the timed part.
fn time_bare(
    frames: &[Frame],
    mut step: impl FnMut(&Frame) -> anyhow::Result<Duration>,
) -> anyhow::Result<(f64, StageSummary)> {
    let mut stats = StageStats::new("bare");
    let mut total = Duration::ZERO;
    for f in frames {
        let d = step(f)?;
        total += d;
        stats.record(d);
    }
    Ok((frames.len() as f64 / total.as_secs_f64().max(1e-9), stats.summary()))
}

/// Bare detector inference over `frames`, preprocessing untimed.
fn time_detector(det: &mut Detector, frames: &[Frame]) -> anyhow::Result<(f64, StageSummary)> {
    let mut dets = Vec::with_capacity(128);
    time_bare(frames, |f| {
        det.prepare(f);
        dets.clear();
        let t = MonoTime::now();
        det.infer(&mut dets)?;
        Ok(MonoTime::now().since(t))
    })
}

fn read_frames(board: &Board, n: u64) -> anyhow::Result<Vec<Frame>> {
    let cam = board.cameras.first().context("the profile has no camera")?;
    anyhow::ensure!(cam.kind == CameraKind::Sim, "bench needs a simulated camera (a clip)");
    let mut clip = Y4mCamera::open(&cam.source, false, Some((cam.width, cam.height)))?;
    let info = clip.info();
    let mut out = Vec::new();
    let mut f = Frame::new(info.width, info.height, info.format);
    while (out.len() as u64) < n && clip.next_frame(&mut f)? {
        out.push(f.clone());
    }
    Ok(out)
}

/// Bare inference of every model and backend but the one the loop is compared with (the
/// detector on the board's backend, measured between the loop's segments instead).
fn bare_others(board: &Board, clip: &[Frame]) -> anyhow::Result<Vec<Bare>> {
    let n = clip.len() as u64;
    let mut backends = vec![];
    if cfg!(feature = "ort") {
        backends.push((Backend::Ort, n));
    }
    if cfg!(feature = "tract") {
        backends.push((Backend::Tract, n.min(50)));
    }
    let (w, h) = (clip[0].width, clip[0].height);
    let mut out = vec![];
    for (backend, count) in backends {
        let frames = &clip[..count as usize];
        if backend != board.models.detector.backend {
            let mut cfg = board.models.detector.clone();
            cfg.backend = backend;
            let mut det = Detector::new(&cfg, w, h, &board.inference)?;
            warm_up(&mut det, &frames[0])?;
            let (fps, s) = time_detector(&mut det, frames)?;
            out.push(Bare::new("detector", backend, cfg.input, count, fps, &s));
        }
        if let Some(p) = &board.models.pose {
            let mut cfg = p.clone();
            cfg.backend = backend;
            let mut pose = PoseEstimator::new(&cfg, w, h, &board.inference)?;
            let mut poses = Vec::with_capacity(8);
            pose.prepare(&frames[0]);
            pose.infer(&mut poses)?;
            let (fps, s) = time_bare(frames, |f| {
                pose.prepare(f);
                poses.clear();
                let t = MonoTime::now();
                pose.infer(&mut poses)?;
                Ok(MonoTime::now().since(t))
            })?;
            out.push(Bare::new("pose", backend, cfg.input, count, fps, &s));
        }
    }
    Ok(out)
}

/// The board's detector, bare, from a fresh session warmed up by one untimed run (as each loop
/// segment starts one, and as the reference peer does).
fn bare_detector(board: &Board, frames: &[Frame]) -> anyhow::Result<(f64, StageSummary)> {
    let cfg = &board.models.detector;
    let mut det = Detector::new(cfg, frames[0].width, frames[0].height, &board.inference)?;
    warm_up(&mut det, &frames[0])?;
    time_detector(&mut det, frames)
}

/// One untimed run: a session's first pays for allocation and kernel selection, which the loop
/// pays at start-up (`Models::load`), not per frame.
fn warm_up(det: &mut Detector, frame: &Frame) -> anyhow::Result<()> {
    det.prepare(frame);
    det.infer(&mut Vec::with_capacity(128))?;
    Ok(())
}

/// The loop as fast as it goes, in `segments` parts over consecutive stretches of the clip,
/// with the bare detector measured before, between and after them: a shared host's speed
/// drifts over seconds, and the pipeline/bare ratio must compare like with like.
fn throughput(
    board: &Board,
    opts: &BenchOptions,
    clip: &[Frame],
    stop: &'static AtomicBool,
) -> anyhow::Result<(Bare, Pipeline)> {
    let n = opts.frames.max(1);
    let parts = opts.segments.clamp(1, n);
    let per_bare = &clip[..clip.len().min(n.div_ceil(parts) as usize)];
    let mut bares = vec![bare_detector(board, per_bare).context("bare detector")?];
    let mut runs = Vec::new();
    let mut segments = Vec::new();
    for i in 0..parts {
        let (from, to) = (i * n / parts, (i + 1) * n / parts);
        let run_opts = RunOptions { max_frames: Some(to - from), from_frame: from, ..RunOptions::default() };
        let s = pipeline::run(board, &run_opts, stop)
            .with_context(|| format!("pipeline, unpaced, frames {from}..{to}"))?;
        bares.push(bare_detector(board, per_bare).context("bare detector")?);
        let around = (bares[bares.len() - 2].0 + bares[bares.len() - 1].0) / 2.0;
        segments.push(Segment {
            from_frame: from,
            frames: s.frames,
            fps: s.fps,
            bare_fps: around,
            ratio: s.fps / around.max(1e-9),
        });
        runs.push(s);
    }

    // The bare detector over all its measurements: frames over the time they took.
    let frames_each = per_bare.len() as u64;
    let bare_seconds: f64 = bares.iter().map(|(fps, _)| frames_each as f64 / fps.max(1e-9)).sum();
    let bare_frames = frames_each * bares.len() as u64;
    let merged = merge_stages(bares.iter().map(|(_, s)| s.clone()).collect());
    let d = &board.models.detector;
    let bare =
        Bare::new("detector", d.backend, d.input, bare_frames, bare_frames as f64 / bare_seconds, &merged);

    let frames: u64 = runs.iter().map(|s| s.frames).sum();
    let seconds: f64 = runs.iter().map(|s| s.seconds).sum();
    let allocs: Vec<(f64, u64)> =
        runs.iter().filter_map(|s| s.allocs_per_frame.map(|a| (a, s.frames))).collect();
    let stage_names: Vec<&'static str> = runs[0].stages.iter().map(|st| st.stage).collect();
    let stages: Vec<StageSummary> = stage_names
        .iter()
        .map(|&name| merge_stages(runs.iter().map(|s| stage(&s.stages, name)).collect()))
        .collect();
    let t = stage(&stages, "frame->out");
    let pipeline = Pipeline {
        fps: frames as f64 / seconds.max(1e-9),
        frames,
        p50_ms: ms(t.p50_us),
        p99_ms: ms(t.p99_us),
        max_ms: ms(t.max_us),
        detections: runs.iter().map(|s| s.persons).sum(),
        detections_all: runs.iter().map(|s| s.detections).sum(),
        alerts: runs.iter().map(|s| s.alerts_raised).sum(),
        allocs_per_frame: (allocs.len() == runs.len()).then(|| {
            let counted: u64 = allocs.iter().map(|&(_, f)| f).sum();
            allocs.iter().map(|&(a, f)| a * f as f64).sum::<f64>() / counted.max(1) as f64
        }),
        peak_rss_mb: runs.iter().map(|s| s.peak_rss_mb).fold(0.0, f64::max),
        stages,
        segments,
    };
    Ok((bare, pipeline))
}

/// One stage's numbers over several runs: counts and means pooled, p50 the median of the
/// runs' p50s, p99 and max the worst run's (the samples themselves are not kept).
fn merge_stages(of: Vec<StageSummary>) -> StageSummary {
    let Some(first) = of.first() else { return StageStats::new("").summary() };
    let count: u64 = of.iter().map(|s| s.count).sum();
    let mut p50s: Vec<u32> = of.iter().map(|s| s.p50_us).collect();
    p50s.sort_unstable();
    StageSummary {
        stage: first.stage,
        count,
        mean_us: of.iter().map(|s| s.mean_us * s.count).sum::<u64>() / count.max(1),
        p50_us: p50s[p50s.len() / 2],
        p99_us: of.iter().map(|s| s.p99_us).max().unwrap_or(0),
        max_us: of.iter().map(|s| s.max_us).max().unwrap_or(0),
        overruns: of.iter().map(|s| s.overruns).sum(),
    }
}

fn paced(board: &Board, opts: &BenchOptions, stop: &'static AtomicBool) -> anyhow::Result<Paced> {
    let fps_in = opts.pace_fps.unwrap_or(board.cameras[0].fps);
    let paced_opts = RunOptions {
        max_frames: Some(opts.frames),
        pace: true,
        pace_fps: Some(fps_in),
        ..RunOptions::default()
    };
    let p = pipeline::run(board, &paced_opts, stop).context("pipeline, paced")?;
    let t = stage(&p.stages, "frame->out");
    Ok(Paced {
        fps_in,
        frames: p.frames + p.dropped_frames,
        processed: p.frames,
        dropped: p.dropped_frames,
        p50_ms: ms(t.p50_us),
        p99_ms: ms(t.p99_us),
        max_ms: ms(t.max_us),
        deadline_misses: p.deadline_misses,
        budget_ms: p.budget_ms,
        ladder_changes: p.ladder_changes,
        decision_to_output_p99_us: p.stages.iter().find(|s| s.stage == "decide->out").map(|s| s.p99_us),
    })
}

pub fn run(
    board: &Board,
    board_path: &str,
    opts: &BenchOptions,
    stop: &'static AtomicBool,
) -> anyhow::Result<Report> {
    // First, so that the loops below start on the variant this machine can afford.
    let (variants, variants_file) = profile_variants(board).context("detector variants")?;
    let (mut bare, mut pipeline) = (Vec::new(), None);
    if opts.mode != Mode::Paced {
        // The first frames of the clip, for every bare run.
        let clip = read_frames(board, opts.frames.clamp(1, 200))?;
        anyhow::ensure!(!clip.is_empty(), "the clip has no frames");
        let (compared, p) = throughput(board, opts, &clip, stop)?;
        bare.push(compared);
        bare.extend(bare_others(board, &clip).context("bare inference")?);
        pipeline = Some(p);
    }
    let paced = if opts.mode != Mode::Throughput { Some(paced(board, opts, stop)?) } else { None };
    let report = Report {
        tool: "sideline",
        board: board_path.to_string(),
        frames: opts.frames,
        threads: crate::infer::thread_count(&board.inference),
        bare,
        pipeline,
        paced,
        variants,
        variants_file,
    };
    if let Some(path) = &opts.json {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report)
}

impl Report {
    pub fn render(&self) -> String {
        let mut s =
            format!("board {}, {} frames, {} inference threads\n", self.board, self.frames, self.threads);
        s.push_str("bare inference (preprocessing not timed):\n");
        for b in &self.bare {
            s.push_str(&format!(
                "  {:<9} {:<6} {} {}x{}: {:7.1} fps  p50 {:7.2} ms  p99 {:7.2} ms  max {:7.2} ms  ({} frames)\n",
                b.model,
                format!("{:?}", b.backend).to_lowercase(),
                b.variant,
                b.input[0],
                b.input[1],
                b.fps,
                b.p50_ms,
                b.p99_ms,
                b.max_ms,
                b.frames
            ));
        }
        if let Some(p) = &self.pipeline {
            s.push_str(&format!(
                "pipeline, as fast as it goes: {:.1} fps; frame->out p50 {:.2} ms p99 {:.2} ms; {} person detections, \
                 {} alerts; allocations/frame {}; peak RSS {:.0} MB\n",
                p.fps,
                p.p50_ms,
                p.p99_ms,
                p.detections,
                p.alerts,
                p.allocs_per_frame.map_or("n/a".into(), |a| format!("{a:.2}")),
                p.peak_rss_mb
            ));
            for g in &p.segments {
                s.push_str(&format!(
                    "  frames {:>4}..{:<4} {:7.1} fps, bare detector around it {:7.1} fps: {:.3}\n",
                    g.from_frame,
                    g.from_frame + g.frames,
                    g.fps,
                    g.bare_fps,
                    g.ratio
                ));
            }
            for st in &p.stages {
                s.push_str(&format!(
                    "  {:<12} p50 {:8.3} ms  p99 {:8.3} ms  max {:8.3} ms\n",
                    st.stage,
                    ms(st.p50_us),
                    ms(st.p99_us),
                    ms(st.max_us)
                ));
            }
        }
        if let Some(q) = &self.paced {
            s.push_str(&format!(
                "pipeline, camera at {:.0} fps: {} of {} frames decided ({} dropped stale); frame->out p50 {:.2} ms \
                 p99 {:.2} ms max {:.2} ms; {} deadline misses at {:.1} ms; {} ladder changes; decide->out p99 {}\n",
                q.fps_in,
                q.processed,
                q.frames,
                q.dropped,
                q.p50_ms,
                q.p99_ms,
                q.max_ms,
                q.deadline_misses,
                q.budget_ms,
                q.ladder_changes,
                q.decision_to_output_p99_us.map_or("n/a".into(), |us| format!("{us} us"))
            ));
        }
        s.push_str(&render_profile(&self.variants, &self.variants_file));
        s
    }
}
