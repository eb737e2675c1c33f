//! The per-frame loop, top to bottom.
//!
//! ```text
//! camera thread --(latest-frame slot)--> decision loop --(bounded)--> output thread --> outputs
//!                                          | plan (ladder) -> preprocess -> detect -> pose
//!                                          | track -> rules -> hand alerts to the outputs
//!                                          '--(bounded)--> recorder thread (events, store)
//! uplink thread: store -> broker; accepted rule packs -> mailbox -> swapped in at step 0
//! supervisor thread: camera-blind / loop-stalled alarms, heartbeat
//! microphone thread: audio chunks on the same clock
//! ```
//!
//! Each frame has a deadline: capture time + budget. The loop never queues frames: the camera
//! overwrites a stale frame in the slot (see [`crate::capture::slot`]). When decisions come late,
//! the degradation ladder gives up pose work or frames, never rules or outputs. Buffers are
//! allocated here, before the first frame; steady state allocates nothing on this thread.
//! Errors end the run: systemd restarts the service.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{bail, Context};

use super::ladder::{Change, Ladder};
use super::output::{AlertMsg, OutputMsg, OutputStage, OutputTx};
use super::perception::Perception;
use super::realtime;
use super::supervisor::{Health, HealthWatch, Supervisor};
use super::RunOptions;
use crate::alert::AlertOutput;
use crate::audio::{speech, Detector};
use crate::audio::{AudioChunk, AudioSource};
use crate::capture::slot::{FrameSlot, Put, SlotMode};
use crate::capture::{Frame, FrameSource};
use crate::clock::MonoTime;
use crate::config::{FrameLoop, Realtime, Tracking};
use crate::event::Event;
use crate::geometry::BBox;
use crate::infer::coco;
use crate::infer::detector::Detection;
use crate::infer::pose::Pose;
use crate::recorder::Recorder;
use crate::rules::obstructed::LumaStats;
use crate::rules::{
    Alert, AlertState, Mailbox, RuleKind, RuleMeta, RuleSet, RulesUpdate, Scene, Tracked, TrackedPose,
};
use crate::store::cache::{Recent, RecentAlerts};
use crate::telemetry::metrics::{FrameSample, Metrics};
use crate::telemetry::{alloc, AudioSummary, StageStats, Summary};
use crate::track::{Tracker, TrackerConfig};

/// Everything the loop runs with, opened and validated beforehand.
pub struct Parts {
    pub camera: Box<dyn FrameSource>,
    pub microphone: Option<Box<dyn AudioSource>>,
    pub perception: Box<dyn Perception>,
    pub rules: RuleSet,
    pub outputs: Vec<Box<dyn AlertOutput>>,
    /// Index of the heartbeat output.
    pub heartbeat: Option<usize>,
    pub recorder: Recorder,
    pub ladder: Ladder,
    pub cfg: FrameLoop,
    /// `[tracking]`: the trackers' settings.
    pub tracking: Tracking,
    /// Where accepted rule packs arrive, to be swapped in between frames.
    pub rules_inbox: Option<Arc<Mailbox<RulesUpdate>>>,
    /// Followers of the loop's health (watchdog, update gate), run on the supervisor thread.
    pub watches: Vec<Box<dyn HealthWatch>>,
    /// Speech-to-text for the keyword rules, opened at start-up (`None` without them).
    pub speech: Option<crate::audio::stt::SpeechToText>,
}

/// Frame buffers in circulation: one being filled, the slot's, one in the loop.
const FRAME_BUFFERS: usize = 2 + crate::capture::slot::LOSSLESS_DEPTH;
/// How often the loop reports a status line.
const STATUS_EVERY: Duration = Duration::from_secs(10);
/// Frames before allocation counting starts (first-use growth of buffers is fine).
const WARMUP_FRAMES: u64 = 50;

pub fn run(parts: Parts, opts: &RunOptions, stop: &'static AtomicBool) -> anyhow::Result<Summary> {
    let Parts {
        camera,
        microphone,
        mut perception,
        mut rules,
        outputs,
        heartbeat,
        recorder,
        mut ladder,
        cfg,
        tracking,
        rules_inbox,
        watches,
        speech,
    } = parts;
    let info = camera.info();
    let budget = ladder.budget();
    let ms = |v: Option<f32>| v.map(|ms| Duration::from_secs_f64(ms as f64 / 1000.0));

    // ---- threads around the loop.
    if cfg.realtime.as_ref().is_some_and(|rt| rt.mlock) {
        realtime::lock_memory();
    }
    let events = recorder.sender();
    let health = Arc::new(Health::new(MonoTime::now()));
    // Live numbers for the metrics endpoint; written whether or not anyone reads them.
    let metrics: Arc<Metrics> = opts.metrics.clone().unwrap_or_default();
    let (output_stage, out) = OutputStage::spawn(
        outputs,
        heartbeat,
        rules.shared_metas(),
        recorder.sender(),
        Some(health.clone()),
        Some(metrics.clone()),
    )?;
    out.send_urgent(OutputMsg::Fusion(0, rules.fusion()));
    let supervisor =
        Supervisor::spawn(&cfg, health.clone(), rules.alarms(), heartbeat.is_some(), out.clone(), watches)?;
    let slot = Arc::new(FrameSlot::new(if opts.pace { SlotMode::Latest } else { SlotMode::Lossless }));
    let (free_tx, free_rx) = mpsc::sync_channel::<Frame>(FRAME_BUFFERS);
    for _ in 0..FRAME_BUFFERS {
        free_tx.send(Frame::new(info.width, info.height, info.format))?;
    }
    let camera_thread =
        spawn_camera(camera, slot.clone(), free_rx, health.clone(), cfg.realtime.clone(), opts.pace, stop)?;
    let audio_done = Arc::new(AtomicBool::new(false));
    let audio_inbox: Arc<Mailbox<AudioRules>> = Arc::default();
    let audio_thread = microphone
        .map(|m| {
            let audio = (0, rules.audio().to_vec());
            spawn_microphone(m, audio, speech, audio_inbox.clone(), out.clone(), stop, audio_done.clone())
        })
        .transpose()?;
    if let Some(rt) = &cfg.realtime {
        realtime::apply_to_current_thread(rt, "decision loop");
    }

    // ---- buffers for the loop, sized once.
    let mut dets: Vec<Detection> = Vec::with_capacity(128);
    let mut poses: Vec<Pose> = Vec::with_capacity(8);
    // One tracker per class, reporting from the detector's threshold for the class; the poses
    // given are all above the pose model's threshold.
    let mut class_trackers: Vec<_> = perception
        .classes()
        .iter()
        .map(|&id| {
            let cfg = TrackerConfig::from_profile(&tracking, perception.score_threshold(id));
            (id, Tracker::new(cfg), Vec::<(BBox, f32)>::with_capacity(128))
        })
        .collect();
    let mut pose_tracker = Tracker::new(TrackerConfig::from_profile(&tracking, 0.0));
    let mut pose_boxes: Vec<(BBox, f32)> = Vec::with_capacity(8);
    let mut ids: Vec<u32> = Vec::with_capacity(128);
    let mut objects: Vec<Tracked> = Vec::with_capacity(128);
    let mut carried: Vec<Tracked> = Vec::with_capacity(128);
    let mut coasting: Vec<Tracked> = Vec::with_capacity(128);
    let mut tracked_poses: Vec<TrackedPose> = Vec::with_capacity(8);
    let mut alerts: Vec<Alert> = Vec::with_capacity(16);
    let b = &cfg.stage_budget_ms;
    let has_pose = perception.has_pose();
    let report_detections = opts.events.is_some();
    let mut st_idle = StageStats::new("idle");
    let mut st_wait = StageStats::new("queue");
    let mut st_pre = StageStats::with_budget("preprocess", ms(b.preprocess));
    let mut st_detect = StageStats::with_budget("detect", ms(b.detect));
    let mut st_pose = StageStats::with_budget("pose", ms(b.pose));
    let mut st_rules = StageStats::with_budget("track+rules", ms(b.rules));
    let mut st_out = StageStats::with_budget("output", ms(b.output));
    let mut st_total = StageStats::with_budget("frame->out", Some(budget));
    let mut summary = Summary { budget_ms: budget.as_secs_f64() * 1000.0, ..Summary::default() };
    metrics
        .set_budgets(budget, [None, ms(b.preprocess), ms(b.detect), ms(b.pose), ms(b.rules), ms(b.output)]);
    let mut next_seq = 0u64;
    let mut counted_allocs = 0u64;
    let mut counted_frames = 0u64;
    let started = MonoTime::now();
    let mut last_status = started;
    let mut rules_gen = 0u32;
    // Recent alerts, for what a rule on its own cannot know (see `same_player`).
    let mut recent = RecentAlerts::with_capacity(RECENT_ALERTS);

    // ---- the loop.
    let result: anyhow::Result<()> = (|| {
        let mut idle_from = MonoTime::now();
        while let Some(frame) = slot.take() {
            let t0 = MonoTime::now();
            st_idle.record(t0.since(idle_from));
            let allocs_before = alloc::thread_allocs();
            // The deadline runs from capture. A clip read as fast as possible is no live camera:
            // its frames wait for the loop by design, so their deadline runs from when they are
            // taken.
            let start = if opts.pace { frame.ts.min(frame.arrived) } else { t0 };
            summary.dropped_frames += frame.seq.saturating_sub(next_seq);
            next_seq = frame.seq + 1;

            // 0. a rule pack arrived: swap it in between frames. Built elsewhere; here only
            // moves. What the old rules hold raised is cleared first, under the old rules.
            if let Some(update) = rules_inbox.as_ref().and_then(|m| m.take()) {
                alerts.clear();
                rules.clear_all(&mut alerts);
                let now = MonoTime::now();
                for &alert in &alerts {
                    let (capture, arrived) = (frame.ts, frame.arrived);
                    let msg = AlertMsg {
                        alert,
                        frame: frame.seq,
                        capture,
                        arrived,
                        decided: now,
                        rules: rules_gen,
                        same_as: None,
                    };
                    out.send(OutputMsg::Alert(msg));
                }
                rules_gen += 1;
                rules = update.rules;
                recent.clear();
                out.send_urgent(OutputMsg::Rules(rules_gen, rules.shared_metas()));
                out.send_urgent(OutputMsg::Fusion(rules_gen, rules.fusion()));
                audio_inbox.post((rules_gen, update.audio));
                events.send_urgent(Event::Rules { frame: frame.seq, version: update.version });
            }

            // 1. plan: what this frame gets at the current degradation level.
            let mut plan = ladder.plan();
            plan.run_pose &= has_pose;
            if !plan.decide {
                summary.dropped_frames += 1;
                let _ = free_tx.send(frame);
                continue;
            }
            st_wait.record(t0.since(frame.arrived));
            let (seq, ts, arrived) = (frame.seq, frame.ts, frame.arrived);

            // 2. preprocess (and measure how much picture there is), then the buffer goes
            // straight back to the camera.
            let luma = LumaStats::of(&frame);
            perception.prepare(&frame, &plan);
            let _ = free_tx.send(frame);
            let t1 = MonoTime::now();
            st_pre.record(t1.since(t0));

            // 3. detect
            dets.clear();
            perception.detect(&mut dets).with_context(|| format!("detector on frame {seq}"))?;
            let t2 = MonoTime::now();
            st_detect.record(t2.since(t1));

            // 4. pose, when the plan has it.
            poses.clear();
            if plan.run_pose {
                perception.pose(&plan, &mut poses).with_context(|| format!("pose model on frame {seq}"))?;
            }
            let t3 = MonoTime::now();
            if plan.run_pose {
                st_pose.record(t3.since(t2));
            }

            // 5. track: one tracker per class, one for poses. The rules see the detections at
            // or above the class threshold; the tracks followed without one go to `carried`
            // (by a low-score detection) and `coasting` (through a miss).
            objects.clear();
            carried.clear();
            coasting.clear();
            for (class, tracker, boxes) in &mut class_trackers {
                boxes.clear();
                boxes.extend(dets.iter().filter(|d| d.class == *class).map(|d| (d.bbox, d.score)));
                tracker.update(boxes, &mut ids);
                objects.extend(named(&dets, *class, &ids));
                carried.extend(named(&dets, *class, tracker.carried()));
                coasting.extend(tracker.coasting().map(|t| Tracked {
                    track: t.id,
                    class: *class,
                    score: 0.0,
                    bbox: t.bbox,
                }));
            }
            tracked_poses.clear();
            if plan.run_pose {
                pose_boxes.clear();
                pose_boxes.extend(poses.iter().map(|p| (p.bbox, p.score)));
                pose_tracker.update(&pose_boxes, &mut ids);
                tracked_poses
                    .extend(poses.iter().zip(&ids).map(|(p, &track)| TrackedPose { track, pose: *p }));
            }

            // 6. rules: every decided frame, at every level.
            alerts.clear();
            let poses_seen = plan.run_pose.then_some(&tracked_poses[..]);
            let scene = Scene {
                seq,
                ts,
                objects: &objects,
                carried: &carried,
                coasting: &coasting,
                poses: poses_seen,
                luma: Some(luma),
            };
            rules.evaluate(&scene, &mut alerts);
            let t4 = MonoTime::now();
            st_rules.record(t4.since(t3));

            // 7. outputs: hand each alert to the output thread, which drives the lines.
            for &alert in &alerts {
                let same_as = same_player(&recent, rules.metas(), &alert, ts);
                recent.push(Recent {
                    rule: alert.rule,
                    track: alert.track,
                    state: alert.state,
                    at: alert.at,
                    ts,
                });
                let msg = AlertMsg {
                    alert,
                    frame: seq,
                    capture: ts,
                    arrived,
                    decided: t4,
                    rules: rules_gen,
                    same_as,
                };
                out.send(OutputMsg::Alert(msg));
            }
            let done = MonoTime::now();
            st_out.record(done.since(t4));

            // 8. deadline: health for the supervisor, then the ladder.
            let age = done.since(start);
            let missed = age > budget;
            st_total.record(age);
            summary.deadline_misses += missed as u64;
            health.frame_decided(seq, done, !missed);
            if let Some(change) = ladder.record(age) {
                summary.ladder_changes += 1;
                let (from, to, direction) = match change {
                    Change::Down { from, to } => (from, to, "down"),
                    Change::Up { from, to } => (from, to, "up"),
                };
                health.set_level(to);
                events.send(Event::Ladder { frame: seq, from, to, direction });
            }
            // Atomics only: the endpoint reads them on its own thread.
            metrics.frame(&FrameSample {
                stages: [
                    Some(t0.since(arrived)),
                    Some(t1.since(t0)),
                    Some(t2.since(t1)),
                    plan.run_pose.then(|| t3.since(t2)),
                    Some(t4.since(t3)),
                    Some(done.since(t4)),
                ],
                age,
                missed,
                decided: done,
                level: ladder.level(),
                dropped_frames: summary.dropped_frames,
                ladder_changes: summary.ladder_changes,
                events_dropped: events.dropped(),
                alerts_dropped: out.dropped(),
            });

            // 9. report: the recorder thread serialises and writes.
            // Detections only go out when someone reads them: on two cores every wake-up of
            // another thread during inference costs the loop time.
            for o in objects.iter().filter(|_| report_detections) {
                events.send(Event::Detection {
                    frame: seq,
                    capture_us: ts.as_micros(),
                    class: coco::class_name(o.class),
                    score: (o.score * 1000.0).round() / 1000.0,
                    bbox: o.bbox,
                    track: o.track,
                });
            }
            if opts.frame_events {
                events.send(Event::Frame {
                    frame: seq,
                    capture_us: ts.as_micros(),
                    taken_age_us: t0.since(start).as_micros() as u64,
                    age_us: age.as_micros() as u64,
                    level: plan.level,
                    pose: plan.run_pose,
                    missed,
                    luma_mean: (luma.mean * 10.0).round() / 10.0,
                    luma_spread: luma.spread,
                });
            }
            summary.detections += objects.len() as u64;
            summary.persons += objects.iter().filter(|o| o.class == coco::PERSON).count() as u64;
            summary.frames += 1;
            if done.since(last_status) >= STATUS_EVERY {
                last_status = done;
                let people = objects.iter().filter(|o| o.class == coco::PERSON).count();
                let balls = objects.len() - people;
                events.send(Event::Status { frame: seq, people, balls, level: ladder.level() });
            }
            if summary.frames > WARMUP_FRAMES {
                counted_allocs += alloc::thread_allocs() - allocs_before;
                counted_frames += 1;
            }
            if opts.max_frames.is_some_and(|n| summary.frames >= n) || stop.load(Ordering::Relaxed) {
                break;
            }
            idle_from = MonoTime::now();
        }
        Ok(())
    })();

    // ---- shutdown: stop the sources, drain the stages, write the summary.
    let seconds = MonoTime::now().since(started).as_secs_f64();
    slot.close();
    audio_done.store(true, Ordering::Relaxed);
    let camera_result = camera_thread.join().map_err(|_| anyhow::anyhow!("camera thread panicked"))?;
    let audio = match audio_thread {
        Some(h) => Some(h.join().map_err(|_| anyhow::anyhow!("microphone thread panicked"))??),
        None => None,
    };
    supervisor.finish();
    summary.alerts_dropped = out.dropped();
    drop(out);
    let report = output_stage.finish()?;
    summary.seconds = seconds;
    summary.fps = if seconds > 0.0 { summary.frames as f64 / seconds } else { 0.0 };
    summary.alerts_raised = report.raised;
    summary.alerts_cleared = report.cleared;
    summary.events_dropped = events.dropped();
    summary.alerts_unrecorded = events.dropped_urgent();
    summary.final_level = ladder.level();
    summary.allocs_per_frame =
        (alloc::installed() && counted_frames > 0).then(|| counted_allocs as f64 / counted_frames as f64);
    summary.peak_rss_mb = crate::telemetry::peak_rss_mb();
    summary.stages = vec![st_idle.summary(), st_wait.summary(), st_pre.summary(), st_detect.summary()];
    if st_pose.summary().count > 0 {
        summary.stages.push(st_pose.summary());
    }
    summary.stages.extend([st_rules.summary(), st_out.summary(), st_total.summary()]);
    summary.stages.extend(report.latency);
    summary.audio = audio;
    drop(events);
    let recorded = recorder.finish(Event::Summary(summary.clone()));
    result?;
    camera_result?;
    recorded?;
    if summary.frames == 0 {
        bail!("the camera delivered no frames");
    }
    Ok(summary)
}

fn spawn_camera(
    mut camera: Box<dyn FrameSource>,
    slot: Arc<FrameSlot>,
    free: Receiver<Frame>,
    health: Arc<Health>,
    realtime: Option<Realtime>,
    live: bool,
    stop: &'static AtomicBool,
) -> anyhow::Result<JoinHandle<anyhow::Result<()>>> {
    let handle = std::thread::Builder::new().name("camera".into()).spawn(move || {
        match &realtime {
            Some(rt) if live => realtime::apply_to_current_thread(rt, "camera"),
            // A clip read ahead of the loop is batch work: it must not preempt inference.
            _ if !live => realtime::batch_current_thread(),
            _ => {}
        }
        let mut spare: Option<Frame> = None;
        let result = loop {
            if stop.load(Ordering::Relaxed) {
                break Ok(());
            }
            let Some(mut frame) = spare.take().or_else(|| free.recv().ok()) else {
                break Ok(()); // the loop is gone
            };
            match camera.next_frame(&mut frame) {
                Ok(true) => health.frame_arrived(frame.arrived),
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

/// Alerts remembered by the loop; a match produces a few hundred at most.
const RECENT_ALERTS: usize = 1024;
/// A player-down raised this close to one still open, within this time, is probably the same
/// player under a new track id.
const SAME_PLAYER_PX: f32 = 48.0;
const SAME_PLAYER_WINDOW: Duration = Duration::from_secs(60);

/// The detections of `class` that `ids` (one per detection of that class) names, as tracked
/// objects.
fn named<'a>(dets: &'a [Detection], class: u16, ids: &'a [u32]) -> impl Iterator<Item = Tracked> + 'a {
    let of_class = dets.iter().filter(move |d| d.class == class).zip(ids);
    of_class.filter(|(_, &track)| track != 0).map(|(d, &track)| Tracked {
        track,
        class: d.class,
        score: d.score,
        bbox: d.bbox,
    })
}

/// The open player-down alert a new one probably repeats: a player lying still is easily lost
/// by the tracker and found again under a new id. The new alert is still raised (two players
/// can go down together); this only marks it, for whoever reads the alerts.
fn same_player(recent: &RecentAlerts, metas: &[RuleMeta], alert: &Alert, ts: MonoTime) -> Option<u32> {
    let player_down = metas.get(alert.rule).is_some_and(|m| m.kind == RuleKind::PlayerDown);
    if !player_down || alert.state != AlertState::Raised {
        return None;
    }
    let since = MonoTime::from_nanos(ts.as_nanos().saturating_sub(SAME_PLAYER_WINDOW.as_nanos() as u64));
    recent.raised_near(alert.rule, alert.track, alert.at, SAME_PLAYER_PX, since).map(|r| r.track)
}

/// The audio rules of one rule set generation.
type AudioRules = (u32, Vec<(usize, crate::rules::AudioRule)>);

/// The microphone thread: reads chunks and runs the audio rules on them, on the same clock
/// as the frames, sending alerts straight to the output thread.
fn spawn_microphone(
    mut mic: Box<dyn AudioSource>,
    audio: AudioRules,
    speech: Option<crate::audio::stt::SpeechToText>,
    inbox: Arc<Mailbox<AudioRules>>,
    out: OutputTx,
    stop: &'static AtomicBool,
    done: Arc<AtomicBool>,
) -> anyhow::Result<JoinHandle<anyhow::Result<AudioSummary>>> {
    let rate = mic.sample_rate();
    let chunk_len = mic.chunk_len();
    let build = move |rules: &[(usize, crate::rules::AudioRule)]| -> Vec<(usize, Detector)> {
        rules.iter().filter_map(|(i, r)| Some((*i, Detector::new(r, rate, chunk_len)?))).collect()
    };
    let (mut rules_gen, mut detectors) = (audio.0, build(&audio.1));
    // Keyword rules: the voice segments they hear go to the speech thread.
    let keywords = speech::keyword_rules(&audio.1);
    let capacity = |detectors: &[(usize, Detector)], listened: &[usize]| {
        detectors.iter().filter(|(i, _)| listened.contains(i)).map(|(_, d)| d.segment_capacity()).max()
    };
    let mut listened: Vec<usize> = keywords.iter().map(|k| k.voice).collect();
    let speech = match speech {
        Some(stt) => {
            let queue = Arc::new(speech::SegmentQueue::new(
                speech::QUEUE_DEPTH,
                capacity(&detectors, &listened).unwrap_or(0),
            ));
            let tx = out.clone();
            let emit = move |e: speech::Emit| {
                let alert =
                    Alert { rule: e.change.rule, state: e.change.state, track: 0, at: Default::default() };
                let (frame, capture, arrived, decided) = (e.seq, e.change.at, e.arrived, e.decided);
                let msg =
                    AlertMsg { alert, frame, capture, arrived, decided, rules: e.generation, same_as: None };
                tx.send(OutputMsg::Alert(msg));
            };
            let flag = done.clone();
            let running = move || !stop.load(Ordering::Relaxed) && !flag.load(Ordering::Relaxed);
            let thread = speech::spawn(stt, queue.clone(), rules_gen, keywords, emit, running)
                .context("starting the speech thread")?;
            Some((queue, thread))
        }
        None if !keywords.is_empty() => bail!("keyword rules need speech-to-text, and none was opened"),
        None => None,
    };
    let handle = std::thread::Builder::new().name("microphone".into()).spawn(move || {
        let mut chunk = AudioChunk { samples: Vec::with_capacity(chunk_len), ..Default::default() };
        let mut s = AudioSummary { peak_dbfs: f32::NEG_INFINITY, ..Default::default() };
        let mut samples = 0u64;
        let mut warned_drop = false;
        while !stop.load(Ordering::Relaxed) && !done.load(Ordering::Relaxed) {
            if !mic.next_chunk(&mut chunk)? {
                break;
            }
            let arrived = MonoTime::now();
            if let Some((generation, rules)) = inbox.take() {
                // What the old rules hold raised is cleared first, under the old rules (the speech
                // thread clears its keyword alerts when it takes the new ones).
                for (rule, _) in detectors.iter().filter(|(_, d)| d.active()) {
                    let alert =
                        Alert { rule: *rule, state: AlertState::Cleared, track: 0, at: Default::default() };
                    let (capture, decided) = (chunk.ts, MonoTime::now());
                    let (rules, same_as) = (rules_gen, None);
                    let msg = AlertMsg { alert, frame: chunk.seq, capture, arrived, decided, rules, same_as };
                    out.send(OutputMsg::Alert(msg));
                }
                rules_gen = generation;
                detectors = build(&rules);
                let keywords = speech::keyword_rules(&rules);
                listened = keywords.iter().map(|k| k.voice).collect();
                match &speech {
                    Some((queue, _)) => {
                        let cap = capacity(&detectors, &listened).unwrap_or(0);
                        queue.post_rules(generation, keywords, cap);
                    }
                    None if !keywords.is_empty() => {
                        tracing::warn!("the new rules have keyword rules, but no speech-to-text model was opened at start: they stay silent");
                    }
                    None => {}
                }
            }
            s.chunks += 1;
            samples += chunk.samples.len() as u64;
            s.peak_dbfs = s.peak_dbfs.max(chunk.level_dbfs());
            for (rule, det) in &mut detectors {
                let queue = speech.as_ref().filter(|_| listened.contains(rule)).map(|(q, _)| q);
                let (voice, seq, generation) = (*rule, chunk.seq, rules_gen);
                let change = det.push_with(&chunk, |seg| {
                    let Some(queue) = queue else { return };
                    if queue.offer(voice, generation, seq, arrived, seg) && !warned_drop {
                        warned_drop = true;
                        tracing::warn!("speech thread busy: a waiting voice segment was dropped (counted in the summary; logged once)");
                    }
                });
                let Some((state, at)) = change else { continue };
                let alert = Alert { rule: *rule, state, track: 0, at: Default::default() };
                let decided = MonoTime::now();
                let (rules, same_as) = (rules_gen, None);
                let msg = AlertMsg { alert, frame: chunk.seq, capture: at, arrived, decided, rules, same_as };
                out.send(OutputMsg::Alert(msg));
            }
        }
        s.seconds = samples as f64 / mic.sample_rate() as f64;
        if let Some((queue, thread)) = speech {
            queue.close();
            let summary = thread.join().map_err(|_| anyhow::anyhow!("speech thread panicked"))?;
            tracing::info!(
                segments = summary.segments,
                failed = summary.failed,
                dropped = summary.dropped,
                max_compute_ms = summary.max_compute.as_millis() as u64,
                "speech thread done"
            );
        }
        Ok(s)
    })?;
    Ok(handle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Severity;
    use crate::geometry::Point;

    #[test]
    fn a_player_down_next_to_an_open_one_is_marked_not_dropped() {
        let meta = |kind| RuleMeta { name: "r".into(), kind, severity: Severity::Critical, outputs: vec![] };
        let metas = [meta(RuleKind::PlayerDown), meta(RuleKind::ZoneIncursion)];
        let ts = MonoTime::from_nanos(100_000_000_000);
        let mut recent = RecentAlerts::with_capacity(8);
        let at = Point { x: 300.0, y: 200.0 };
        recent.push(Recent { rule: 0, track: 4, state: AlertState::Raised, at, ts });
        let alert =
            |rule, track, x| Alert { rule, state: AlertState::Raised, track, at: Point { x, y: 200.0 } };
        assert_eq!(same_player(&recent, &metas, &alert(0, 9, 320.0), ts), Some(4), "new id, same spot");
        assert_eq!(same_player(&recent, &metas, &alert(0, 9, 400.0), ts), None, "another player");
        assert_eq!(same_player(&recent, &metas, &alert(1, 9, 300.0), ts), None, "only player-down");
        let later = ts.plus(SAME_PLAYER_WINDOW + Duration::from_secs(1));
        assert_eq!(same_player(&recent, &metas, &alert(0, 9, 300.0), later), None, "too long ago");
    }
}
