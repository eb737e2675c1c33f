//! Footage for the video rules: frames of a real clip, with spans where the lens is covered,
//! run through the device's own decision loop (models, trackers, rules, outputs thread) with
//! every frame decided, so a scenario judges what the device would raise on that footage.
//!
//! ```toml
//! [footage]
//! clip = "vtest"             # <clips>/<clip>.y4m (set.toml's `clips`)
//! from_frame = 0             # the scenario's t = 0; it lasts length_s at the clip's rate
//! [[cover]]                  # the lens covered (a hand, a jacket): dark, flat, sensor noise
//! from_s = 2.0
//! to_s = 7.0
//! ```
//!
//! and people staged into it (`[[actor]]`, see [`super::stage`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use anyhow::{bail, Context};
use serde::Deserialize;

use super::stage::{Actor, Staged};
use crate::capture::y4m::Y4mCamera;
use crate::capture::{CaptureError, Frame, FrameSource, SourceInfo};
use crate::clock::MonoTime;
use crate::config::Board;
use crate::pipeline::ladder::Ladder;
use crate::pipeline::perception::Models;
use crate::pipeline::{frame_budget, frame_loop, Parts, RunOptions};
use crate::recorder::{EventsDest, Recorder};
use crate::rules::{AlertState, RuleSet};
use crate::store::{Store, StoreConfig};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Footage {
    /// `<clips>/<clip>.y4m`.
    pub clip: String,
    /// The clip's frame shown at the scenario's t = 0.
    #[serde(default)]
    pub from_frame: u64,
}

/// The lens covered from `from_s` to `to_s`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cover {
    pub from_s: f32,
    pub to_s: f32,
}

/// Luma of a covered lens: a hand or cloth close to it, lit through, out of focus.
const COVERED_LUMA: u8 = 34;
/// Sensor noise on it, +- this many levels.
const COVERED_NOISE: u32 = 3;

/// The clip from `from_frame`, `count` frames, covered where the scenario says; frames are
/// numbered from 0 and stamped on the scenario's timeline (clip time, as an unpaced clip is).
struct Played {
    clip: Y4mCamera,
    count: u64,
    /// Covered frames, `[from, to)` in scenario frame numbers.
    covers: Vec<(u64, u64)>,
    actors: Vec<Staged>,
    next: u64,
    start: Option<MonoTime>,
    noise: u32,
}

impl FrameSource for Played {
    fn info(&self) -> SourceInfo {
        self.clip.info()
    }

    fn next_frame(&mut self, frame: &mut Frame) -> Result<bool, CaptureError> {
        if self.next >= self.count || !self.clip.next_frame(frame)? {
            return Ok(false);
        }
        let seq = self.next;
        self.next += 1;
        let secs = seq as f64 / self.clip.info().fps;
        for a in &self.actors {
            a.paste(frame, secs as f32);
        }
        if self.covers.iter().any(|&(a, b)| (a..b).contains(&seq)) {
            self.cover(frame);
        }
        let start = *self.start.get_or_insert_with(MonoTime::now);
        frame.seq = seq;
        frame.ts = start.plus(std::time::Duration::from_secs_f64(secs));
        Ok(true)
    }
}

impl Played {
    fn cover(&mut self, frame: &mut Frame) {
        let luma = (frame.width * frame.height) as usize;
        let (y, chroma) = frame.data.split_at_mut(luma);
        for v in y {
            // xorshift: cheap noise, the same on every run.
            self.noise ^= self.noise << 13;
            self.noise ^= self.noise >> 17;
            self.noise ^= self.noise << 5;
            let n = (self.noise % (2 * COVERED_NOISE + 1)) as u8;
            *v = COVERED_LUMA - COVERED_NOISE as u8 + n;
        }
        chroma.fill(128);
    }
}

/// A raise or clear of one of the board's rules, `t` seconds into the scenario.
#[derive(Clone, Copy, Debug)]
pub struct Seen {
    pub rule: usize,
    pub state: AlertState,
    pub track: u32,
    pub t: f32,
}

/// Checks a scenario's footage fields; each problem names its field.
pub fn check(footage: &Footage, covers: &[Cover], length_s: f32) -> Vec<String> {
    let mut p = Vec::new();
    if footage.clip.is_empty() || footage.clip.contains(['/', '\\']) {
        p.push(format!("footage.clip: `{}` is not a clip name", footage.clip));
    }
    for (i, c) in covers.iter().enumerate() {
        if !(c.from_s >= 0.0 && c.from_s < c.to_s && c.to_s <= length_s) {
            p.push(format!("cover[{i}]: {}..{} must rise within the scenario", c.from_s, c.to_s));
        }
    }
    p
}

static STOP: AtomicBool = AtomicBool::new(false);

/// Runs `length_s` of the footage through the board's models, trackers and rules, every frame
/// decided, and returns the alerts the loop drove, on the scenario's timeline.
pub fn watch(
    board: &Board,
    clips: &Path,
    footage: &Footage,
    covers: &[Cover],
    actors: &[Actor],
    length_s: f32,
) -> anyhow::Result<Vec<Seen>> {
    let path = clips.join(format!("{}.y4m", footage.clip));
    if !path.is_file() {
        bail!("{} is missing: run scripts/setup (scripts/MEDIA.md lists the clips)", path.display());
    }
    let mut clip =
        Y4mCamera::open(&path, false, None).with_context(|| format!("opening {}", path.display()))?;
    let info = clip.info();
    let mut skipped = Frame::new(info.width, info.height, info.format);
    for n in 0..footage.from_frame {
        if !clip.next_frame(&mut skipped)? {
            bail!("footage.from_frame: {} has only {n} frames", path.display());
        }
    }
    let count = (length_s as f64 * info.fps).round() as u64;
    let frame_of = |s: f32| (s as f64 * info.fps).round() as u64;
    let played = Played {
        clip,
        count,
        covers: covers.iter().map(|c| (frame_of(c.from_s), frame_of(c.to_s))).collect(),
        actors: actors
            .iter()
            .enumerate()
            .map(|(i, a)| Staged::load(clips, a).with_context(|| format!("actor[{i}]")))
            .collect::<anyhow::Result<_>>()?,
        next: 0,
        start: None,
        noise: 0x2545_f491,
    };

    // Every frame decided: the subject is what the rules find, not how the loop degrades.
    let mut cfg = board.frame_loop.clone();
    cfg.ladder.clear();
    let ladder = Ladder::new(&cfg, frame_budget(board, info.fps));
    let models = Models::load(board, info.width, info.height, &ladder)?;
    let rules = RuleSet::new(board).context("building the rules")?;
    let metas = rules.metas().to_vec();
    let scratch = Scratch::new()?;
    let events = scratch.0.join("events.jsonl");
    let store = Store::open(&scratch.0, StoreConfig::default()).context("opening a scratch store")?;
    let recorder = Recorder::spawn(Some(&EventsDest::File(events.clone())), store)?;
    let parts = Parts {
        camera: Box::new(played),
        microphone: None,
        perception: Box::new(models),
        rules,
        outputs: Vec::new(),
        heartbeat: None,
        recorder,
        ladder,
        cfg,
        tracking: board.tracking.clone(),
        rules_inbox: None,
        watches: Vec::new(),
        speech: None,
    };
    let summary = frame_loop::run(parts, &RunOptions::default(), &STOP).context("the decision loop")?;
    if summary.frames < count {
        bail!(
            "{}: {} frames from frame {}, the scenario needs {count} (length_s at {} fps)",
            path.display(),
            summary.frames,
            footage.from_frame,
            info.fps
        );
    }

    let text = std::fs::read_to_string(&events).with_context(|| format!("reading {}", events.display()))?;
    let mut seen = Vec::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).context("an event line")?;
        if v["type"] != "alert" {
            continue;
        }
        let Some(rule) = metas.iter().position(|m| v["rule"] == m.name.as_str()) else { continue };
        let state = if v["state"] == "raised" { AlertState::Raised } else { AlertState::Cleared };
        let (frame, track) = (v["frame"].as_u64().unwrap_or(0), v["track"].as_u64().unwrap_or(0));
        seen.push(Seen { rule, state, track: track as u32, t: (frame as f64 / info.fps) as f32 });
    }
    Ok(seen)
}

/// A directory for one run's store and events, removed afterwards.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> anyhow::Result<Self> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("sideline-scenario-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
