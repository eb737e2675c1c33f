//! Assembling a device from its board profile and running it.
//!
//! [`run`] opens what the profile describes (camera, microphone, models, rules, outputs, store)
//! and hands the parts to [`frame_loop::run`], the per-frame loop. Tests hand it parts of their
//! own (a camera that stalls, a model of known cost) through the same entry point.

pub mod frame_loop;
pub mod ladder;
pub mod output;
pub mod perception;
pub mod realtime;
pub mod supervisor;

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context;

use crate::alert;
use crate::audio::{wav::WavMic, AudioError, AudioSource};
use crate::capture::{y4m::Y4mCamera, CaptureError, FrameSource};
use crate::config::{AudioKind, Board, CameraKind};
use crate::recorder::{EventsDest, Recorder};
use crate::rules::RuleSet;
use crate::store::PatternLog;
use crate::sync::{pattern_topic, SimUplink};
use crate::telemetry::Summary;

pub use frame_loop::Parts;

#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    pub events: Option<EventsDest>,
    pub max_frames: Option<u64>,
    /// Deliver frames at the camera's rate (a clip plays like a live camera).
    pub pace: bool,
    /// Play a clip at this rate instead of its own.
    pub pace_fps: Option<f64>,
    /// Emit one `frame` event per decided frame.
    pub frame_events: bool,
}

pub fn open_camera(board: &Board, opts: &RunOptions) -> anyhow::Result<Box<dyn FrameSource>> {
    let cam = board.cameras.first().context("the profile has no camera")?;
    match cam.kind {
        CameraKind::Sim => {
            let mut clip = Y4mCamera::open(&cam.source, opts.pace, Some((cam.width, cam.height)))
                .with_context(|| format!("opening camera `{}`", cam.name))?;
            if let Some(fps) = opts.pace_fps {
                clip = clip.with_rate(fps);
            }
            Ok(Box::new(clip))
        }
        CameraKind::V4l2 => Err(CaptureError::Unsupported("v4l2".into()).into()),
    }
}

pub fn open_microphone(board: &Board, pace: bool) -> anyhow::Result<Option<Box<dyn AudioSource>>> {
    let Some(cfg) = &board.audio else { return Ok(None) };
    match cfg.kind {
        AudioKind::Wav => Ok(Some(Box::new(
            WavMic::open(&cfg.source, cfg.sample_rate, cfg.chunk_ms, pace)
                .context("opening the microphone")?,
        ))),
        AudioKind::Alsa => Err(AudioError::Unsupported("alsa".into()).into()),
    }
}

/// The per-frame deadline: the profile's budget, else one frame interval of the camera.
pub fn frame_budget(board: &Board, fps: f64) -> Duration {
    match board.frame_loop.budget_ms {
        Some(ms) => Duration::from_secs_f64(ms as f64 / 1000.0),
        None => Duration::from_secs_f64(1.0 / fps.max(0.001)),
    }
}

pub fn run(board: &Board, opts: &RunOptions, stop: &'static AtomicBool) -> anyhow::Result<Summary> {
    // Everything that can fail on bad input fails here, before the first frame.
    if board.cameras.len() > 1 {
        tracing::warn!("{} cameras configured; this build runs the first one only", board.cameras.len());
    }
    let camera = open_camera(board, opts)?;
    let info = camera.info();
    let ladder = ladder::Ladder::new(&board.frame_loop, frame_budget(board, info.fps));
    let perception = perception::Models::load(board, info.width, info.height, ladder.pose_inputs())?;
    let rules = RuleSet::new(board).context("building the rules")?;
    let outputs = alert::open_outputs(board).context("opening alert outputs")?;
    let heartbeat =
        board.frame_loop.heartbeat.as_ref().and_then(|h| board.outputs.iter().position(|o| &o.name == h));
    let microphone = open_microphone(board, opts.pace)?;
    let store = PatternLog::open(&board.storage.path).context("opening the pattern store")?;
    let recorder = Recorder::spawn(
        opts.events.as_ref(),
        store,
        Box::new(SimUplink::new(true)),
        pattern_topic(&board.board.device_id),
    )?;
    frame_loop::run(
        Parts {
            camera,
            microphone,
            perception: Box::new(perception),
            rules,
            outputs,
            heartbeat,
            recorder,
            ladder,
            cfg: board.frame_loop.clone(),
        },
        opts,
        stop,
    )
}
