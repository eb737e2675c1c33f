//! Labelled scenarios: real recordings mixed at given offsets and gains, run through the
//! detectors the device runs (with a board's rule parameters) and through fusion, and real
//! footage run through the device's decision loop (see [`footage`]), with people staged into it
//! where no footage shows what a rule is for (see [`stage`]); then scored.
//!
//! A scenario set is a directory of TOML files (`tests/scenarios/`): `set.toml` says where the
//! source sounds and clips are (made by scripts/setup) and which board profile's rules to run;
//! every other `*.toml` is one scenario:
//!
//! ```toml
//! description = "Referee whistles over the crowd, whistles at -6 dB"
//! length_s = 16.0
//! [[source]]                 # mixed in, in -1..1 full scale; `loop` repeats it to the end
//! sound = "crowd"
//! gain_db = -9.0
//! loop = true
//! [[source]]
//! sound = "refwhistleshort"
//! at_s = 2.0
//! gain_db = -6.0
//! [[inject]]                 # an alert of a non-audio rule (no footage here), for fusion
//! rule = "player-down"
//! from_s = 1.0
//! to_s = 12.0
//! [[expect]]                 # the rule must raise within the window; nowhere else
//! rule = "whistle"
//! from_s = 2.0
//! to_s = 2.9
//! # known_miss = "why"       # a miss is reported as known, not failed
//! ```
//!
//! Every audio and fusion rule of the board is judged in every scenario, and every video rule
//! (zone, crowding, camera obstructed, player down, collision) in every scenario with footage:
//! a raise inside one of its windows hits that window (true positive, once per window), a
//! raise outside all of them is a false alarm, a window with no raise is a miss. A rule with no
//! window in a scenario must stay silent there, so each scenario is a negative for the rules it
//! does not expect. Video alerts reach fusion like audio ones.

pub mod footage;
pub mod stage;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;

use crate::audio::speech::{keyword_rules, Listener};
use crate::audio::stt::SpeechToText;
use crate::audio::{wav, AudioChunk, Detector};
use crate::clock::MonoTime;
use crate::config::Board;
use crate::rules::fusion::FusionSet;
use crate::rules::{Alert, AlertState, RuleKind, RuleSet};

/// `set.toml`: paths relative to it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SetFile {
    /// Directory of the source sounds, `<name>.wav` each.
    sounds: PathBuf,
    /// Directory of the clips for footage, `<name>.y4m` each.
    #[serde(default)]
    clips: Option<PathBuf>,
    /// The board profile whose rules run, unless `--board` names another.
    board: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub description: String,
    pub length_s: f32,
    #[serde(default, rename = "source")]
    pub sources: Vec<Source>,
    #[serde(default, rename = "inject")]
    pub injects: Vec<Inject>,
    #[serde(default, rename = "expect")]
    pub expects: Vec<Expect>,
    /// Real footage for the video rules.
    pub footage: Option<footage::Footage>,
    #[serde(default, rename = "cover")]
    pub covers: Vec<footage::Cover>,
    /// People staged into the footage (a fall, a collision).
    #[serde(default, rename = "actor")]
    pub actors: Vec<stage::Actor>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// `<sounds>/<sound>.wav`.
    pub sound: String,
    #[serde(default)]
    pub at_s: f32,
    #[serde(default)]
    pub gain_db: f32,
    /// Repeat it back to back until the end of the scenario.
    #[serde(default, rename = "loop")]
    pub looped: bool,
}

/// An alert of a rule that is not judged in the scenario (player down where there is no
/// footage, say), raised at `from_s` and cleared at `to_s`: what fusion would get from the
/// decision loop.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inject {
    pub rule: String,
    pub from_s: f32,
    pub to_s: Option<f32>,
    #[serde(default = "default_track")]
    pub track: u32,
}

fn default_track() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    pub rule: String,
    pub from_s: f32,
    pub to_s: f32,
    /// Why this event is not heard (yet): reported as a known miss instead of a failure.
    pub known_miss: Option<String>,
}

/// Where to find the set and what to run it with.
#[derive(Debug, Clone)]
pub struct Options {
    pub dir: PathBuf,
    /// Overrides `set.toml`'s board.
    pub board: Option<PathBuf>,
    /// Overrides `set.toml`'s sounds.
    pub sounds: Option<PathBuf>,
    /// Overrides `set.toml`'s clips.
    pub clips: Option<PathBuf>,
}

/// One alert heard (or injected) in a scenario, `t` seconds from its start.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Heard {
    pub rule: usize,
    pub state: AlertState,
    pub t: f32,
    pub injected: bool,
}

/// How one expected window went.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Raised at this time.
    Hit(f32),
    Missed,
    /// Missed, as its `known_miss` says.
    KnownMiss(String),
    /// Labelled a known miss, yet heard: the label is stale.
    KnownMissHeard(f32, String),
}

#[derive(Clone, Debug)]
pub struct Window {
    pub rule: usize,
    pub from_s: f32,
    pub to_s: f32,
    pub outcome: Outcome,
}

#[derive(Clone, Debug)]
pub struct ScenarioResult {
    pub name: String,
    pub description: String,
    pub windows: Vec<Window>,
    /// Raises outside every window of their rule: (rule, time).
    pub false_alarms: Vec<(usize, f32)>,
    pub heard: Vec<Heard>,
    /// The rules judged in it (video rules only where there is footage).
    pub judged: Vec<usize>,
}

#[derive(Clone, Debug, Default)]
pub struct RuleScore {
    /// Index of the rule in the board's rule set.
    pub rule: usize,
    pub name: String,
    pub kind: String,
    pub tp: u32,
    pub fp: u32,
    pub fn_: u32,
    /// Of `fn_`, those labelled known misses.
    pub known: u32,
}

impl RuleScore {
    pub fn precision(&self) -> Option<f64> {
        (self.tp + self.fp > 0).then(|| self.tp as f64 / (self.tp + self.fp) as f64)
    }

    pub fn recall(&self) -> Option<f64> {
        (self.tp + self.fn_ > 0).then(|| self.tp as f64 / (self.tp + self.fn_) as f64)
    }
}

#[derive(Clone, Debug)]
pub struct Report {
    pub board: PathBuf,
    /// Every rule's name, by rule index.
    pub names: Vec<String>,
    pub scenarios: Vec<ScenarioResult>,
    pub rules: Vec<RuleScore>,
    /// Audio run through the detectors, and footage through the decision loop, seconds; and
    /// how long it all took.
    pub audio_s: f64,
    pub footage_s: f64,
    pub elapsed: Duration,
}

impl Report {
    /// Misses not labelled as known, and false alarms.
    pub fn failures(&self) -> usize {
        self.scenarios
            .iter()
            .map(|s| s.false_alarms.len() + s.windows.iter().filter(|w| w.outcome == Outcome::Missed).count())
            .sum()
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "scenarios: {} from {}", self.scenarios.len(), self.board.display());
        let secs = |t: f32| format!("{t:.2}");
        for s in &self.scenarios {
            let _ = writeln!(out, "\n{}: {}", s.name, s.description);
            // The judged rules, then what was injected.
            let mut shown: Vec<usize> = self.rules.iter().map(|r| r.rule).collect();
            for h in s.heard.iter().filter(|h| h.injected) {
                if !shown.contains(&h.rule) {
                    shown.push(h.rule);
                }
            }
            let mut lines = 0;
            for i in shown {
                let name = self.names.get(i).map_or("?", String::as_str);
                let windows: Vec<&Window> = s.windows.iter().filter(|w| w.rule == i).collect();
                let heard: Vec<&Heard> = s.heard.iter().filter(|h| h.rule == i).collect();
                if windows.is_empty() && heard.is_empty() {
                    continue;
                }
                let expected = if windows.is_empty() {
                    "none".to_string()
                } else {
                    windows
                        .iter()
                        .map(|w| format!("{}-{}", secs(w.from_s), secs(w.to_s)))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                let fired = if heard.is_empty() {
                    "nothing".to_string()
                } else {
                    heard
                        .iter()
                        .map(|h| {
                            let state = if h.state == AlertState::Raised { "raised" } else { "cleared" };
                            format!("{state} {}", secs(h.t))
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                let mut verdict = Vec::new();
                for w in &windows {
                    match &w.outcome {
                        Outcome::Hit(t) => verdict.push(format!("heard +{:.2} s", t - w.from_s)),
                        Outcome::Missed => {
                            verdict.push(format!("MISSED {}-{}", secs(w.from_s), secs(w.to_s)))
                        }
                        Outcome::KnownMiss(why) => verdict.push(format!("known miss: {why}")),
                        Outcome::KnownMissHeard(t, _) => verdict.push(format!(
                            "heard +{:.2} s (labelled a known miss: stale label)",
                            t - w.from_s
                        )),
                    }
                }
                for (_, t) in s.false_alarms.iter().filter(|(r, _)| *r == i) {
                    verdict.push(format!("FALSE ALARM {}", secs(*t)));
                }
                if verdict.is_empty() {
                    verdict.push("silent, as expected".into());
                }
                if heard.iter().any(|h| h.injected) {
                    let _ = writeln!(out, "  {name:<15} injected: {fired}");
                } else {
                    let _ =
                        writeln!(out, "  {name:<15} expected {expected}; {fired}: {}", verdict.join("; "));
                }
                lines += 1;
            }
            if lines == 0 {
                let silent: Vec<&str> =
                    s.judged.iter().filter_map(|&i| self.names.get(i)).map(String::as_str).collect();
                let _ = writeln!(out, "  nothing fired ({} silent, as expected)", silent.join(", "));
            }
        }
        let _ = writeln!(
            out,
            "\nper rule (TP: labelled events heard, FP: raises outside them, FN: labelled events missed)"
        );
        let _ = writeln!(
            out,
            "{:<15} {:<17} {:>4} {:>4} {:>4} {:>6} {:>10} {:>8}",
            "rule", "kind", "TP", "FP", "FN", "known", "precision", "recall"
        );
        let ratio = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
        for r in &self.rules {
            let _ = writeln!(
                out,
                "{:<15} {:<17} {:>4} {:>4} {:>4} {:>6} {:>10} {:>8}",
                r.name,
                r.kind,
                r.tp,
                r.fp,
                r.fn_,
                r.known,
                ratio(r.precision()),
                ratio(r.recall())
            );
        }
        let known = self.rules.iter().map(|r| r.known).sum::<u32>();
        let _ = writeln!(
            out,
            "\n{} s of audio through the detectors and {} s of footage through the loop in {:.2} s; \
             {} failure(s), {} known miss(es)",
            self.audio_s.round(),
            self.footage_s.round(),
            self.elapsed.as_secs_f64(),
            self.failures(),
            known
        );
        out
    }
}

/// Runs every scenario in `opts.dir`.
pub fn run(opts: &Options) -> anyhow::Result<Report> {
    let started = std::time::Instant::now();
    let set_path = opts.dir.join("set.toml");
    let text =
        std::fs::read_to_string(&set_path).with_context(|| format!("reading {}", set_path.display()))?;
    let set: SetFile = toml::from_str(&text).with_context(|| format!("{}", set_path.display()))?;
    let base = opts.dir.as_path();
    let board_path = opts.board.clone().unwrap_or_else(|| base.join(&set.board));
    let sounds = opts.sounds.clone().unwrap_or_else(|| base.join(&set.sounds));
    let board = Board::load(&board_path)?;
    let audio = board.audio.as_ref().with_context(|| format!("{}: no [audio]", board_path.display()))?;
    let (rate, chunk_ms) = (audio.sample_rate, audio.chunk_ms);
    let rules = RuleSet::new(&board).context("rules")?;
    let metas = rules.metas();
    // Keyword rules transcribe the voice segments here, synchronously.
    let mut stt = crate::pipeline::open_speech(&board)?;
    // Judged everywhere: what listens, and what fuses; where there is footage, what watches.
    let listened: Vec<usize> = rules
        .audio()
        .iter()
        .map(|(i, _)| *i)
        .chain(metas.iter().enumerate().filter(|(_, m)| m.kind == RuleKind::Fusion).map(|(i, _)| i))
        .collect();
    let watched: Vec<usize> =
        metas.iter().enumerate().filter(|(_, m)| is_video(m.kind)).map(|(i, _)| i).collect();
    let clips = opts.clips.clone().or_else(|| set.clips.as_ref().map(|c| base.join(c)));
    let mut files: Vec<PathBuf> = std::fs::read_dir(&opts.dir)
        .with_context(|| format!("reading {}", opts.dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|e| e == "toml") && p.file_name().is_some_and(|n| n != "set.toml")
        })
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("{}: no scenarios (*.toml besides set.toml)", opts.dir.display());
    }
    let mut cache: HashMap<String, Vec<f32>> = HashMap::new();
    let mut results = Vec::new();
    let mut audio_s = 0.0;
    let mut footage_s = 0.0;
    for file in &files {
        let name = file.file_stem().unwrap_or_default().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let sc: Scenario = toml::from_str(&text).with_context(|| format!("{}", file.display()))?;
        let index = |rule: &str| metas.iter().position(|m| m.name == rule);
        let mut judged = listened.clone();
        if sc.footage.is_some() {
            judged.extend(&watched);
        }
        let problems = check(&sc, &judged, &index);
        if !problems.is_empty() {
            bail!("{}: {}", file.display(), problems.join("; "));
        }
        let seen = match &sc.footage {
            Some(f) => {
                let clips = clips.as_deref().with_context(|| {
                    format!("{}: footage, yet {} names no `clips`", file.display(), set_path.display())
                })?;
                footage_s += sc.length_s as f64;
                footage::watch(&board, clips, f, &sc.covers, &sc.actors, sc.length_s)
                    .with_context(|| format!("{}: footage", file.display()))?
            }
            None => Vec::new(),
        };
        let samples = mix(&sc, &sounds, rate, &mut cache)?;
        audio_s += samples.len() as f64 / rate as f64;
        let mut events = listen(&rules, stt.as_mut(), &samples, rate, chunk_ms, &sc, &index)
            .with_context(|| format!("{}", file.display()))?;
        events.extend(seen.iter().map(|s| {
            (at(s.t), Alert { rule: s.rule, state: s.state, track: s.track, at: Default::default() }, false)
        }));
        let heard = fuse(&rules, events);
        results.push(judge(name, &sc, heard, &judged, &index));
    }
    let scores = listened
        .iter()
        .chain(&watched)
        .map(|&r| {
            let mut s = RuleScore {
                rule: r,
                name: metas[r].name.clone(),
                kind: kind_name(metas[r].kind),
                ..RuleScore::default()
            };
            for res in &results {
                for w in res.windows.iter().filter(|w| w.rule == r) {
                    match w.outcome {
                        Outcome::Hit(_) | Outcome::KnownMissHeard(..) => s.tp += 1,
                        Outcome::Missed => s.fn_ += 1,
                        Outcome::KnownMiss(_) => {
                            s.fn_ += 1;
                            s.known += 1;
                        }
                    }
                }
                s.fp += res.false_alarms.iter().filter(|(rule, _)| *rule == r).count() as u32;
            }
            s
        })
        .collect();
    let names = metas.iter().map(|m| m.name.clone()).collect();
    Ok(Report {
        board: board_path,
        names,
        scenarios: results,
        rules: scores,
        audio_s,
        footage_s,
        elapsed: started.elapsed(),
    })
}

/// Rules the decision loop runs on frames.
fn is_video(k: RuleKind) -> bool {
    matches!(
        k,
        RuleKind::ZoneIncursion
            | RuleKind::Crowding
            | RuleKind::CameraObstructed
            | RuleKind::PlayerDown
            | RuleKind::Collision
    )
}

fn kind_name(k: RuleKind) -> String {
    serde_json::to_value(k).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

fn check(sc: &Scenario, judged: &[usize], index: &dyn Fn(&str) -> Option<usize>) -> Vec<String> {
    let mut p = Vec::new();
    if !(sc.length_s > 0.0 && sc.length_s <= 600.0) {
        p.push(format!("length_s: {} is outside (0, 600]", sc.length_s));
    }
    match &sc.footage {
        None if sc.sources.is_empty() => p.push("source: mix at least one sound, or show footage".into()),
        None if !sc.covers.is_empty() => p.push("cover: covers the lens of [footage]; there is none".into()),
        None if !sc.actors.is_empty() => p.push("actor: is staged into [footage]; there is none".into()),
        Some(f) => {
            p.extend(footage::check(f, &sc.covers, sc.length_s));
            for (i, a) in sc.actors.iter().enumerate() {
                p.extend(stage::check(i, a, sc.length_s));
            }
        }
        None => {}
    }
    for (i, s) in sc.sources.iter().enumerate() {
        if !(s.at_s >= 0.0 && s.at_s < sc.length_s) {
            p.push(format!("source[{i}].at_s: {} is outside the scenario", s.at_s));
        }
        if !s.gain_db.is_finite() || s.gain_db > 40.0 {
            p.push(format!("source[{i}].gain_db: {} is not a sensible gain", s.gain_db));
        }
    }
    for (i, e) in sc.expects.iter().enumerate() {
        match index(&e.rule) {
            Some(r) if judged.contains(&r) => {}
            Some(_) => p.push(format!(
                "expect[{i}].rule: `{}` watches frames: the scenario needs [footage] to judge it",
                e.rule
            )),
            None => p.push(format!("expect[{i}].rule: no rule `{}` on the board", e.rule)),
        }
        if !(e.from_s >= 0.0 && e.from_s < e.to_s && e.to_s <= sc.length_s) {
            p.push(format!("expect[{i}]: window {}..{} must rise within the scenario", e.from_s, e.to_s));
        }
    }
    for (i, j) in sc.injects.iter().enumerate() {
        match index(&j.rule) {
            Some(r) if !judged.contains(&r) => {}
            Some(_) => p.push(format!("inject[{i}].rule: `{}` is judged here, not injected", j.rule)),
            None => p.push(format!("inject[{i}].rule: no rule `{}` on the board", j.rule)),
        }
        if !(j.from_s >= 0.0 && j.to_s.is_none_or(|t| t > j.from_s)) {
            p.push(format!("inject[{i}]: from_s must be >= 0 and before to_s"));
        }
    }
    p
}

/// The scenario's sources mixed at `rate`, as 16-bit samples (clipped, as a microphone would).
fn mix(
    sc: &Scenario,
    sounds: &Path,
    rate: u32,
    cache: &mut HashMap<String, Vec<f32>>,
) -> anyhow::Result<Vec<i16>> {
    let len = (sc.length_s as f64 * rate as f64).round() as usize;
    let mut acc = vec![0.0f32; len];
    for s in &sc.sources {
        if !cache.contains_key(&s.sound) {
            let path = sounds.join(format!("{}.wav", s.sound));
            if !path.is_file() {
                bail!("{} is missing: run scripts/setup (scripts/MEDIA.md lists the sounds)", path.display());
            }
            cache.insert(s.sound.clone(), wav::load_mono(&path, rate)?);
        }
        let x = &cache[&s.sound];
        if x.is_empty() {
            continue;
        }
        let gain = 10f32.powf(s.gain_db / 20.0);
        let mut at = (s.at_s as f64 * rate as f64).round() as usize;
        while at < len {
            for (a, v) in acc[at..].iter_mut().zip(x) {
                *a += v * gain;
            }
            if !s.looped {
                break;
            }
            at += x.len();
        }
    }
    Ok(acc.iter().map(|v| (v * 32767.0).round().clamp(-32768.0, 32767.0) as i16).collect())
}

/// The scenario's clock: t = 0 on the monotonic clock the rules run on.
const T0: MonoTime = MonoTime::from_nanos(1_000_000_000);

fn secs(at: MonoTime) -> f32 {
    at.since(T0).as_secs_f32()
}

fn at(s: f32) -> MonoTime {
    T0.plus(Duration::from_secs_f32(s))
}

/// An alert on the scenario's clock; `true` where the scenario injected it.
type Timed = (MonoTime, Alert, bool);

/// Runs the board's audio rules over the samples in microphone-sized chunks (the keyword rules
/// over their voice rule's segments, transcribed as each ends); returns what they raised and
/// cleared, with what the scenario injects.
fn listen(
    rules: &RuleSet,
    mut stt: Option<&mut SpeechToText>,
    samples: &[i16],
    rate: u32,
    chunk_ms: u32,
    sc: &Scenario,
    index: &dyn Fn(&str) -> Option<usize>,
) -> anyhow::Result<Vec<Timed>> {
    let chunk_len = (rate as usize * chunk_ms as usize / 1000).max(1);
    let mut detectors: Vec<(usize, Detector)> =
        rules.audio().iter().filter_map(|(i, r)| Some((*i, Detector::new(r, rate, chunk_len)?))).collect();
    let mut listener = Listener::new(keyword_rules(rules.audio()));
    if !listener.keywords.is_empty() && stt.is_none() {
        bail!("keyword rules without speech-to-text");
    }
    type Times = (MonoTime, MonoTime, MonoTime);
    let mut segments: Vec<(usize, Times, Vec<i16>)> = Vec::new();
    let mut changes = Vec::new();
    let mut chunk = AudioChunk { samples: Vec::with_capacity(chunk_len), ..Default::default() };
    let mut events: Vec<(MonoTime, Alert, bool)> = Vec::new();
    for (seq, part) in samples.chunks(chunk_len).enumerate() {
        chunk.samples.clear();
        chunk.samples.extend_from_slice(part);
        chunk.seq = seq as u64;
        chunk.ts = T0.plus(Duration::from_secs_f64((seq * chunk_len) as f64 / rate as f64));
        for (rule, det) in &mut detectors {
            let listened = listener.keywords.listens_to(*rule);
            let change = det.push_with(&chunk, |seg| {
                if listened {
                    segments.push((*rule, (seg.start, seg.end, seg.audio_start), seg.samples.to_vec()));
                }
            });
            if let Some((state, at)) = change {
                events.push((at, Alert { rule: *rule, state, track: 0, at: Default::default() }, false));
            }
        }
        for (voice, times, samples) in segments.drain(..) {
            let Some(stt) = stt.as_deref_mut() else { break };
            let end = times.1;
            listener.keywords.expire(end, &mut changes);
            let heard = listener.hear(stt, voice, times, &samples, &mut changes).context("speech to text")?;
            let t = &heard.alone;
            tracing::info!(at_s = format_args!("{:.2}", secs(end)), text = %t.text, "transcript");
            if let Some((gap, t)) = &heard.joined {
                let gap_ms = gap.as_millis() as u64;
                tracing::info!(at_s = format_args!("{:.2}", secs(end)), gap_ms, text = %t.text, "transcript, joined");
            }
        }
    }
    // Holds that run out within the scenario clear.
    listener.keywords.expire(at(sc.length_s), &mut changes);
    for c in changes {
        events.push((c.at, Alert { rule: c.rule, state: c.state, track: 0, at: Default::default() }, false));
    }
    for j in &sc.injects {
        let Some(rule) = index(&j.rule) else { continue };
        let alert = |state| Alert { rule, state, track: j.track, at: Default::default() };
        events.push((at(j.from_s), alert(AlertState::Raised), true));
        if let Some(to) = j.to_s {
            events.push((at(to), alert(AlertState::Cleared), true));
        }
    }
    Ok(events)
}

/// Fusion over every alert of the scenario, in capture order; returns them all with what fusion
/// raised and cleared.
fn fuse(rules: &RuleSet, mut events: Vec<Timed>) -> Vec<Heard> {
    events.sort_by_key(|(t, _, _)| *t);
    let mut fusion = FusionSet::new(&rules.fusion());
    let mut fused = Vec::new();
    let mut heard = Vec::new();
    for (at, alert, injected) in events {
        heard.push(Heard { rule: alert.rule, state: alert.state, t: secs(at), injected });
        fused.clear();
        fusion.observe(&alert, at, &mut fused);
        heard.extend(fused.iter().map(|f| Heard {
            rule: f.rule,
            state: f.state,
            t: secs(at),
            injected: false,
        }));
    }
    heard
}

fn judge(
    name: String,
    sc: &Scenario,
    heard: Vec<Heard>,
    judged: &[usize],
    index: &dyn Fn(&str) -> Option<usize>,
) -> ScenarioResult {
    let mut windows: Vec<(Window, Option<String>)> = sc
        .expects
        .iter()
        .filter_map(|e| {
            let rule = index(&e.rule)?;
            Some((
                Window { rule, from_s: e.from_s, to_s: e.to_s, outcome: Outcome::Missed },
                e.known_miss.clone(),
            ))
        })
        .collect();
    let mut false_alarms = Vec::new();
    for h in heard.iter().filter(|h| h.state == AlertState::Raised && judged.contains(&h.rule)) {
        let mut inside = false;
        for (w, _) in windows.iter_mut().filter(|(w, _)| w.rule == h.rule && h.t >= w.from_s && h.t <= w.to_s)
        {
            inside = true;
            if w.outcome == Outcome::Missed {
                w.outcome = Outcome::Hit(h.t);
            }
        }
        if !inside {
            false_alarms.push((h.rule, h.t));
        }
    }
    let windows = windows
        .into_iter()
        .map(|(mut w, known)| {
            w.outcome = match (w.outcome, known) {
                (Outcome::Missed, Some(why)) => Outcome::KnownMiss(why),
                (Outcome::Hit(t), Some(why)) => Outcome::KnownMissHeard(t, why),
                (o, None) => o,
                (o, Some(_)) => o,
            };
            w
        })
        .collect();
    ScenarioResult {
        name,
        description: sc.description.clone(),
        windows,
        false_alarms,
        heard,
        judged: judged.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_scored_once_and_raises_outside_them_are_false_alarms() {
        let sc: Scenario = toml::from_str(
            r#"
            description = "t"
            length_s = 10.0
            [[source]]
            sound = "x"
            [[expect]]
            rule = "whistle"
            from_s = 1.0
            to_s = 2.0
            [[expect]]
            rule = "whistle"
            from_s = 5.0
            to_s = 6.0
            [[expect]]
            rule = "whistle"
            from_s = 8.0
            to_s = 9.0
            known_miss = "too quiet"
            "#,
        )
        .unwrap();
        let index = |r: &str| (r == "whistle").then_some(4);
        let raised = |t| Heard { rule: 4, state: AlertState::Raised, t, injected: false };
        let heard = vec![raised(1.2), raised(1.8), raised(3.0)];
        let r = judge("t".into(), &sc, heard, &[4], &index);
        assert_eq!(r.windows[0].outcome, Outcome::Hit(1.2), "a second raise in a window is not an extra hit");
        assert_eq!(r.windows[1].outcome, Outcome::Missed);
        assert_eq!(r.windows[2].outcome, Outcome::KnownMiss("too quiet".into()));
        assert_eq!(r.false_alarms, vec![(4, 3.0)]);
        assert!(check(&sc, &[4], &index).is_empty());
        assert_eq!(check(&sc, &[], &index).len(), 3, "whistle is not judged: every expect is refused");
    }
}
