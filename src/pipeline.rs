//! The per-frame loop, top to bottom.
//!
//! ```text
//! camera thread --(latest-frame slot)--> decision loop --> alert outputs
//!                                          |  preprocess -> detect -> pose
//!                                          |  track -> rules -> outputs
//!                                          '--(bounded)--> recorder thread (events, store, uplink)
//! microphone thread (audio level; audio rules plug in here)
//! ```
//!
//! The decision loop runs on its own thread, never behind async tasks. Frame buffers are
//! allocated once and recycled between the camera and the loop; a slow loop drops stale frames
//! instead of queueing them (see [`crate::capture::slot`]). Errors end the run: systemd restarts.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::alert::{self, Signal};
use crate::audio::{wav::WavMic, AudioChunk, AudioSource};
use crate::capture::slot::{FrameSlot, Put, SlotMode};
use crate::capture::{y4m::Y4mCamera, CaptureError, Frame, FrameSource};
use crate::clock::MonoTime;
use crate::config::{AudioKind, Board, CameraKind};
use crate::event::{AlertEvent, Event};
use crate::infer::coco;
use crate::infer::detector::{Detection, Detector};
use crate::infer::pose::{Pose, PoseEstimator};
use crate::recorder::{EventsDest, Recorder};
use crate::rules::{Alert, AlertState, RuleSet, Scene, Tracked, TrackedPose};
use crate::store::PatternLog;
use crate::sync::{pattern_topic, SimUplink};
use crate::telemetry::{AudioSummary, StageStats, Summary};
use crate::track::{Tracker, TrackerConfig};

#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    pub events: Option<EventsDest>,
    pub max_frames: Option<u64>,
    /// Deliver frames at the camera's rate (a clip plays like a live camera).
    pub pace: bool,
}

/// Frame buffers in circulation: one being filled, one in the slot, one in the loop.
const FRAME_BUFFERS: usize = 3;
/// How often the loop logs a status line.
const STATUS_EVERY: Duration = Duration::from_secs(10);

pub fn open_camera(board: &Board, pace: bool) -> anyhow::Result<Box<dyn FrameSource>> {
    let cam = board.cameras.first().context("the profile has no camera")?;
    match cam.kind {
        CameraKind::Sim => Ok(Box::new(
            Y4mCamera::open(&cam.source, pace, Some((cam.width, cam.height)))
                .with_context(|| format!("opening camera `{}`", cam.name))?,
        )),
        CameraKind::V4l2 => Err(CaptureError::Unsupported("v4l2".into()).into()),
    }
}

pub fn run(board: &Board, opts: &RunOptions, stop: &'static AtomicBool) -> anyhow::Result<Summary> {
    // ---- set-up: everything that can fail on bad input fails here, before the first frame.
    if board.cameras.len() > 1 {
        tracing::warn!("{} cameras configured; this build runs the first one only", board.cameras.len());
    }
    let camera = open_camera(board, opts.pace)?;
    let info = camera.info();
    let mut detector = Detector::new(&board.models.detector, info.width, info.height, &board.inference)
        .context("loading the detector")?;
    let mut rules = RuleSet::new(board).context("building the rules")?;
    let mut pose = match &board.models.pose {
        Some(p) if rules.needs_pose() => Some(
            PoseEstimator::new(p, info.width, info.height, &board.inference)
                .context("loading the pose model")?,
        ),
        _ => None,
    };
    let mut outputs = alert::open_outputs(board).context("opening alert outputs")?;
    let store = PatternLog::open(&board.storage.path).context("opening the pattern store")?;
    let mut recorder = Recorder::spawn(
        opts.events.as_ref(),
        store,
        Box::new(SimUplink::new(true)),
        pattern_topic(&board.board.device_id),
    )?;

    // ---- threads: camera and microphone feed the loop.
    let slot = Arc::new(FrameSlot::new(if opts.pace { SlotMode::Latest } else { SlotMode::Lossless }));
    let (free_tx, free_rx) = mpsc::channel::<Frame>();
    for _ in 0..FRAME_BUFFERS {
        free_tx.send(Frame::new(info.width, info.height, info.format))?;
    }
    let camera_thread = spawn_camera(camera, slot.clone(), free_rx, stop)?;
    let audio_done = Arc::new(AtomicBool::new(false));
    let audio_thread = spawn_microphone(board, opts.pace, stop, audio_done.clone())?;

    // ---- buffers for the loop, sized once.
    let mut dets: Vec<Detection> = Vec::with_capacity(128);
    let mut poses: Vec<Pose> = Vec::with_capacity(8);
    let mut class_trackers: Vec<(u16, Tracker, Vec<crate::geometry::BBox>)> = board
        .models
        .detector
        .classes
        .iter()
        .filter_map(|c| coco::class_id(c))
        .map(|id| (id, Tracker::new(TrackerConfig::default()), Vec::with_capacity(64)))
        .collect();
    let mut pose_tracker = Tracker::new(TrackerConfig::default());
    let mut pose_boxes = Vec::with_capacity(8);
    let mut ids: Vec<u32> = Vec::with_capacity(64);
    let mut objects: Vec<Tracked> = Vec::with_capacity(128);
    let mut tracked_poses: Vec<TrackedPose> = Vec::with_capacity(8);
    let mut alerts: Vec<Alert> = Vec::with_capacity(16);
    let mut stats = Stages::new();
    let mut summary = Summary::default();
    let mut next_seq = 0u64;
    let started = MonoTime::now();
    let mut last_status = started;

    // ---- the loop.
    let result: anyhow::Result<()> = (|| {
        while let Some(frame) = slot.take() {
            let t0 = MonoTime::now();
            stats.wait.record(t0.since(frame.arrived));
            summary.dropped_frames += frame.seq.saturating_sub(next_seq);
            next_seq = frame.seq + 1;
            let (seq, ts, arrived) = (frame.seq, frame.ts, frame.arrived);

            // 1. preprocess: both model inputs, then the buffer goes straight back to the camera.
            detector.prepare(&frame);
            if let Some(p) = pose.as_mut() {
                p.prepare(&frame);
            }
            let _ = free_tx.send(frame);
            let t1 = MonoTime::now();
            stats.preprocess.record(t1.since(t0));

            // 2. detect
            dets.clear();
            detector.infer(&mut dets).with_context(|| format!("detector on frame {seq}"))?;
            let t2 = MonoTime::now();
            stats.detect.record(t2.since(t1));

            // 3. pose
            poses.clear();
            if let Some(p) = pose.as_mut() {
                p.infer(&mut poses).with_context(|| format!("pose model on frame {seq}"))?;
            }
            let t3 = MonoTime::now();
            if pose.is_some() {
                stats.pose.record(t3.since(t2));
            }

            // 4. track: one tracker per class, one for poses.
            objects.clear();
            for (class, tracker, boxes) in &mut class_trackers {
                boxes.clear();
                boxes.extend(dets.iter().filter(|d| d.class == *class).map(|d| d.bbox));
                tracker.update(boxes, &mut ids);
                let of_class = dets.iter().filter(|d| d.class == *class);
                objects.extend(of_class.zip(&ids).map(|(d, &track)| Tracked {
                    track,
                    class: d.class,
                    score: d.score,
                    bbox: d.bbox,
                }));
            }
            tracked_poses.clear();
            if pose.is_some() {
                pose_boxes.clear();
                pose_boxes.extend(poses.iter().map(|p| p.bbox));
                pose_tracker.update(&pose_boxes, &mut ids);
                tracked_poses
                    .extend(poses.iter().zip(&ids).map(|(p, &track)| TrackedPose { track, pose: *p }));
            }

            // 5. rules
            alerts.clear();
            let scene =
                Scene { seq, ts, objects: &objects, poses: pose.is_some().then_some(&tracked_poses[..]) };
            rules.evaluate(&scene, &mut alerts);
            let t4 = MonoTime::now();
            stats.rules.record(t4.since(t3));

            // 6. outputs: drive first, report after.
            for a in &alerts {
                let meta = rules.meta(a.rule);
                let signal = Signal { rule: meta, state: a.state, track: a.track, frame: seq };
                let mut driven = Vec::with_capacity(meta.outputs.len());
                for &oi in &meta.outputs {
                    let out = &mut outputs[oi];
                    match out.drive(&signal) {
                        Ok(()) => driven.push(out.name().to_string()),
                        Err(e) => tracing::error!("{e}"),
                    }
                }
                let decided = MonoTime::now();
                match a.state {
                    AlertState::Raised => summary.alerts_raised += 1,
                    AlertState::Cleared => summary.alerts_cleared += 1,
                }
                recorder.send(Event::Alert(AlertEvent {
                    rule: meta.name.clone(),
                    kind: meta.kind,
                    severity: meta.severity,
                    state: a.state,
                    track: a.track,
                    frame: seq,
                    capture_us: ts.as_micros(),
                    decision_us: decided.as_micros(),
                    latency_us: decided.since(arrived).as_micros() as u64,
                    outputs: driven,
                    at: a.at,
                }));
            }
            let done = MonoTime::now();
            stats.output.record(done.since(t4));
            stats.total.record(done.since(arrived));

            // 7. report (off the hot path: the recorder thread serialises and writes).
            for o in &objects {
                recorder.send(Event::Detection {
                    frame: seq,
                    capture_us: ts.as_micros(),
                    class: coco::class_name(o.class),
                    score: (o.score * 1000.0).round() / 1000.0,
                    bbox: o.bbox,
                    track: o.track,
                });
            }
            summary.detections += objects.len() as u64;
            summary.frames += 1;
            if done.since(last_status) >= STATUS_EVERY {
                last_status = done;
                let people = objects.iter().filter(|o| o.class == coco::PERSON).count();
                tracing::info!(frame = seq, people, balls = objects.len() - people, "running");
            }
            if opts.max_frames.is_some_and(|n| summary.frames >= n) || stop.load(Ordering::Relaxed) {
                break;
            }
        }
        Ok(())
    })();

    // ---- shutdown: stop the sources, collect their results, write the summary.
    slot.close();
    audio_done.store(true, Ordering::Relaxed);
    let camera_result = camera_thread.join().map_err(|_| anyhow::anyhow!("camera thread panicked"))?;
    let audio = match audio_thread {
        Some(h) => Some(h.join().map_err(|_| anyhow::anyhow!("microphone thread panicked"))??),
        None => None,
    };
    let seconds = MonoTime::now().since(started).as_secs_f64();
    summary.seconds = seconds;
    summary.fps = if seconds > 0.0 { summary.frames as f64 / seconds } else { 0.0 };
    summary.events_dropped = recorder.dropped();
    summary.stages = stats.summaries(pose.is_some());
    summary.audio = audio;
    let recorded = recorder.finish(Event::Summary(summary.clone()));
    result?;
    camera_result?;
    recorded?;
    if summary.frames == 0 {
        bail!("the camera delivered no frames");
    }
    Ok(summary)
}

struct Stages {
    wait: StageStats,
    preprocess: StageStats,
    detect: StageStats,
    pose: StageStats,
    rules: StageStats,
    output: StageStats,
    total: StageStats,
}

impl Stages {
    fn new() -> Self {
        Self {
            wait: StageStats::new("queue"),
            preprocess: StageStats::new("preprocess"),
            detect: StageStats::new("detect"),
            pose: StageStats::new("pose"),
            rules: StageStats::new("track+rules"),
            output: StageStats::new("output"),
            total: StageStats::new("frame->out"),
        }
    }

    fn summaries(&self, with_pose: bool) -> Vec<crate::telemetry::StageSummary> {
        let mut v = vec![self.wait.summary(), self.preprocess.summary(), self.detect.summary()];
        if with_pose {
            v.push(self.pose.summary());
        }
        v.extend([self.rules.summary(), self.output.summary(), self.total.summary()]);
        v
    }
}

fn spawn_camera(
    mut camera: Box<dyn FrameSource>,
    slot: Arc<FrameSlot>,
    free: mpsc::Receiver<Frame>,
    stop: &'static AtomicBool,
) -> anyhow::Result<JoinHandle<anyhow::Result<()>>> {
    let handle = std::thread::Builder::new().name("camera".into()).spawn(move || {
        let mut spare: Option<Frame> = None;
        let result = loop {
            if stop.load(Ordering::Relaxed) {
                break Ok(());
            }
            let Some(mut frame) = spare.take().or_else(|| free.recv().ok()) else {
                break Ok(()); // the loop is gone
            };
            match camera.next_frame(&mut frame) {
                Ok(true) => {}
                Ok(false) => break Ok(()),
                Err(e) => break Err(anyhow::Error::new(e).context("camera")),
            }
            match slot.put(frame) {
                Put::Stored => {}
                Put::Replaced(stale) => spare = Some(stale),
                Put::Closed(_) => break Ok(()),
            }
        };
        slot.close();
        result
    })?;
    Ok(handle)
}

fn spawn_microphone(
    board: &Board,
    pace: bool,
    stop: &'static AtomicBool,
    done: Arc<AtomicBool>,
) -> anyhow::Result<Option<JoinHandle<anyhow::Result<AudioSummary>>>> {
    let Some(cfg) = &board.audio else {
        return Ok(None);
    };
    let mut mic: Box<dyn AudioSource> = match cfg.kind {
        AudioKind::Wav => Box::new(
            WavMic::open(&cfg.source, cfg.sample_rate, cfg.chunk_ms, pace)
                .context("opening the microphone")?,
        ),
        AudioKind::Alsa => return Err(crate::audio::AudioError::Unsupported("alsa".into()).into()),
    };
    let handle = std::thread::Builder::new().name("microphone".into()).spawn(move || {
        let mut chunk = AudioChunk::default();
        let mut s = AudioSummary { peak_dbfs: f32::NEG_INFINITY, ..Default::default() };
        let mut samples = 0u64;
        while !stop.load(Ordering::Relaxed) && !done.load(Ordering::Relaxed) {
            if !mic.next_chunk(&mut chunk)? {
                break;
            }
            s.chunks += 1;
            samples += chunk.samples.len() as u64;
            s.peak_dbfs = s.peak_dbfs.max(chunk.level_dbfs());
        }
        s.seconds = samples as f64 / mic.sample_rate() as f64;
        Ok(s)
    })?;
    Ok(Some(handle))
}
