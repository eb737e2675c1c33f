//! Assembling a device from its board profile and running it.
//!
//! [`run`] opens what the profile describes (camera, microphone, models, rules, outputs, store)
//! and hands the parts to [`frame_loop::run`], the per-frame loop. Tests hand it parts of their
//! own (a camera that stalls, a model of known cost) through the same entry point.

pub mod frame_loop;
pub mod ladder;
pub mod notify;
pub mod output;
pub mod perception;
pub mod realtime;
pub mod supervisor;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;

use crate::alert;
use crate::audio::{alsa::AlsaMic, wav::WavMic, AudioSource};
use crate::audit::AuditLog;
use crate::capture::{v4l2::V4l2Camera, y4m::Y4mCamera, FrameSource};
use crate::config::rulepack;
use crate::config::{AudioKind, Board, CameraKind};
use crate::recorder::{EventsDest, Recorder};
use crate::rules::{Mailbox, RuleSet, RulesUpdate};
use crate::store::{Store, StoreConfig};
use crate::sync::mqtt::{MqttLink, MqttSettings};
use crate::sync::{Forwarder, ForwarderConfig, RulesSink};
use crate::telemetry::metrics::Metrics;
use crate::telemetry::server::{MetricsServer, Sources};
use crate::telemetry::Summary;

pub use frame_loop::Parts;

#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    pub events: Option<EventsDest>,
    pub max_frames: Option<u64>,
    /// Start a clip this many frames in (simulated cameras only).
    pub from_frame: u64,
    /// Deliver frames at the camera's rate (a clip plays like a live camera).
    pub pace: bool,
    /// Play a clip at this rate instead of its own.
    pub pace_fps: Option<f64>,
    /// Emit one `frame` event per decided frame.
    pub frame_events: bool,
    /// Where the loop publishes live numbers (the metrics endpoint reads them); `None`: its own.
    pub metrics: Option<Arc<crate::telemetry::metrics::Metrics>>,
}

/// `stop` lets a camera that is waiting for a lost device give up when the process stops.
pub fn open_camera(
    board: &Board,
    opts: &RunOptions,
    stop: &'static AtomicBool,
) -> anyhow::Result<Box<dyn FrameSource>> {
    let cam = board.cameras.first().context("the profile has no camera")?;
    match cam.kind {
        CameraKind::Sim => {
            let mut clip = Y4mCamera::open(&cam.source, opts.pace, Some((cam.width, cam.height)))
                .with_context(|| format!("opening camera `{}`", cam.name))?;
            if let Some(fps) = opts.pace_fps {
                clip = clip.with_rate(fps);
            }
            let skipped =
                clip.skip(opts.from_frame).with_context(|| format!("reading camera `{}`", cam.name))?;
            anyhow::ensure!(
                skipped == opts.from_frame,
                "camera `{}`: {} has {skipped} frames, the run starts at frame {}",
                cam.name,
                cam.source.display(),
                opts.from_frame
            );
            Ok(Box::new(clip))
        }
        CameraKind::V4l2 => {
            // A live camera runs at its own rate: `pace` and `pace_fps` are for clips.
            let v4l2 = V4l2Camera::open(&cam.source, cam.width, cam.height, cam.fps)
                .with_context(|| format!("opening camera `{}`", cam.name))?
                .with_stop(stop);
            Ok(Box::new(v4l2))
        }
    }
}

pub fn open_microphone(board: &Board, pace: bool) -> anyhow::Result<Option<Box<dyn AudioSource>>> {
    let Some(cfg) = &board.audio else { return Ok(None) };
    match cfg.kind {
        AudioKind::Wav => Ok(Some(Box::new(
            WavMic::open(&cfg.source, cfg.sample_rate, cfg.chunk_ms, pace)
                .context("opening the microphone")?,
        ))),
        AudioKind::Alsa => {
            let device = cfg.source.to_string_lossy();
            let mic =
                AlsaMic::open(&device, cfg.sample_rate, cfg.chunk_ms).context("opening the microphone")?;
            Ok(Some(Box::new(mic)))
        }
    }
}

/// Speech-to-text for the profile's keyword rules (`None` without them). A missing model, or a
/// build without onnxruntime, is a start-up error naming the path.
pub fn open_speech(board: &Board) -> anyhow::Result<Option<crate::audio::stt::SpeechToText>> {
    if board.rules.keyword.is_empty() {
        return Ok(None);
    }
    let Some(model) = &board.models.speech else {
        anyhow::bail!("rules.keyword needs [models.speech] (the Moonshine tiny-en directory)");
    };
    let stt =
        crate::audio::stt::SpeechToText::open_with(&model.path, &board.inference).with_context(|| {
            format!("opening the speech-to-text model {} for rules.keyword", model.path.display())
        })?;
    Ok(Some(stt))
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
    let store_cfg = StoreConfig::from_board(&board.storage);
    let store = Store::open(&board.storage.path, store_cfg).context("opening the pattern store")?;
    let audit = AuditLog::open(&crate::audit::path_for(board), &board.board.device_id)
        .context("opening the alert audit log")?;
    let board = &with_saved_rulepack(board, &store);
    let camera = open_camera(board, opts, stop)?;
    let info = camera.info();
    let mut ladder = ladder::Ladder::new(&board.frame_loop, frame_budget(board, info.fps));
    choose_detector(board, &mut ladder);
    let perception = perception::Models::load(board, info.width, info.height, &ladder)?;
    let rules = RuleSet::new(board).context("building the rules")?;
    let outputs = alert::open_outputs(board).context("opening alert outputs")?;
    let heartbeat =
        board.frame_loop.heartbeat.as_ref().and_then(|h| board.outputs.iter().position(|o| &o.name == h));
    let microphone = open_microphone(board, opts.pace)?;
    let speech = open_speech(board)?;
    let mut watches: Vec<Box<dyn supervisor::HealthWatch>> = Vec::new();
    if let Some(systemd) = notify::SystemdWatch::from_env().context("systemd notification settings")? {
        watches.push(Box::new(systemd));
    }
    // A pending update version is committed or rolled back by the loop's health.
    let gate = crate::update::gate::attach(board, stop).map(|(watch, handle)| {
        watches.push(Box::new(watch));
        handle
    });
    let uplink = match &board.sync {
        Some(_) => Some(Uplink::start(board, store_cfg)?),
        None => None,
    };
    let recorder = Recorder::spawn_with_audit(opts.events.as_ref(), store, Some(audit))?;
    let metrics = opts.metrics.clone().unwrap_or_default();
    let endpoint = start_metrics(board, &metrics, uplink.as_ref().map(|u| u.stats.clone()), store_cfg);
    let opts = &RunOptions { metrics: Some(metrics), ..opts.clone() };
    let summary = frame_loop::run(
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
            tracking: board.tracking.clone(),
            rules_inbox: uplink.as_ref().map(|u| u.rules.clone()),
            watches,
            speech,
        },
        opts,
        stop,
    );
    if let Some(u) = uplink {
        u.finish(&board.storage.path, store_cfg);
    }
    if let Some(e) = endpoint {
        e.stop();
    }
    // A rolled-back version ends the run with an error, so the service restarts the committed one.
    if let Some(gate) = gate {
        gate.finish()?;
    }
    summary
}

/// The metrics endpoint, when the profile's `[telemetry]` names an address. An address that
/// cannot be bound is logged, not fatal: the device's job is its alerts, not its metrics.
fn start_metrics(
    board: &Board,
    metrics: &Arc<Metrics>,
    sync: Option<Arc<crate::sync::SyncStats>>,
    store_cfg: StoreConfig,
) -> Option<MetricsServer> {
    let addr = board.telemetry.as_ref()?.metrics_addr()?;
    let sources = Sources {
        metrics: metrics.clone(),
        device: board.board.device_id.clone(),
        sync,
        store: Some((board.storage.path.clone(), store_cfg)),
        fs_root: crate::telemetry::thermal::root_from_env(),
    };
    match MetricsServer::start(addr, sources) {
        Ok(server) => {
            let addr = server.local_addr();
            if !addr.ip().is_loopback() {
                tracing::warn!(
                    "the metrics endpoint on {addr} is reachable from the network, without authentication"
                );
            }
            tracing::info!("metrics on http://{addr}/metrics");
            Some(server)
        }
        Err(e) => {
            tracing::error!("{e}; running without it");
            None
        }
    }
}

/// Starts the ladder on the most accurate detector variant whose measured latency on this
/// machine fits the detect budget (see [`crate::infer::select`]).
pub fn choose_detector(board: &Board, ladder: &mut ladder::Ladder) {
    use crate::infer::select::{self, LatencyProfile, VariantKey, PROFILE_FILE};
    let d = &board.models.detector;
    if d.variants.is_empty() {
        return;
    }
    let variants = d.all_variants();
    let keys: Vec<(&str, VariantKey)> = variants
        .iter()
        .map(|&(name, path, input)| {
            // An unreadable file fails to load right after this, with its own error.
            let key =
                VariantKey::of(path, input, d.backend, board.inference.accelerator).unwrap_or(VariantKey {
                    file_sha: String::new(),
                    input,
                    backend: d.backend,
                    accelerator: board.inference.accelerator,
                });
            (name, key)
        })
        .collect();
    let profile = LatencyProfile::load(&board.storage.path.join(PROFILE_FILE)).unwrap_or_else(|e| {
        tracing::warn!("{e}: ignoring it");
        None
    });
    let budget = board
        .frame_loop
        .stage_budget_ms
        .detect
        .map_or(ladder.budget(), |ms| Duration::from_secs_f64(ms as f64 / 1000.0));
    let choice = select::choose(&keys, profile.as_ref(), budget);
    tracing::info!("detector variant {}", choice.reason);
    let names: Vec<&str> = variants.iter().map(|v| v.0).collect();
    ladder.select_detectors(&names, choice.index);
}

/// The profile with the last accepted rule pack applied, so a restart keeps the rules the
/// fleet sent. A saved pack that no longer verifies (keys rotated, profile changed) is dropped
/// with a warning and forgotten, so the device neither reports it as running nor refuses the
/// same version re-signed: the profile's own rules run.
fn with_saved_rulepack(board: &Board, store: &Store) -> Board {
    let keys: Vec<_> = board
        .sync
        .iter()
        .flat_map(|s| &s.rulepack_keys)
        .filter_map(|k| rulepack::parse_public_key(k).ok())
        .collect();
    match store.meta(crate::sync::PACK_ENVELOPE) {
        Ok(Some(envelope)) => match rulepack::open(envelope.as_bytes(), &keys, board, None) {
            Ok((pack, applied)) => {
                tracing::info!("running rule pack {} saved from the uplink", pack.version);
                applied
            }
            Err(e) => {
                tracing::warn!("the saved rule pack is not used: {e}");
                if let Err(e) = store.forget_meta(crate::sync::PACK_ENVELOPE) {
                    tracing::error!("cannot forget the saved rule pack: {e}");
                }
                if let Err(e) = store.forget_meta(crate::sync::PACK_VERSION) {
                    tracing::error!("cannot forget the saved rule pack: {e}");
                }
                board.clone()
            }
        },
        Ok(None) => board.clone(),
        Err(e) => {
            tracing::warn!("cannot read the saved rule pack: {e}");
            board.clone()
        }
    }
}

/// Hands accepted rule packs to the loop as ready-built rule sets.
struct LoopRules(Arc<Mailbox<RulesUpdate>>);

impl RulesSink for LoopRules {
    fn apply(&mut self, board: &Board, version: u64) -> Result<(), String> {
        let update = RulesUpdate::new(board, version).map_err(|e| e.to_string())?;
        self.0.post(update);
        Ok(())
    }
}

/// The uplink thread, running beside the loop.
struct Uplink {
    rules: Arc<Mailbox<RulesUpdate>>,
    stats: Arc<crate::sync::SyncStats>,
    stop: Arc<AtomicBool>,
    handle: JoinHandle<()>,
}

/// How long the uplink may keep sending after the loop ended (the run's summary, last alerts).
const UPLINK_GRACE: Duration = Duration::from_secs(3);

impl Uplink {
    fn start(board: &Board, store_cfg: StoreConfig) -> anyhow::Result<Self> {
        let s = board.sync.as_ref().context("no [sync] section")?;
        let cfg = ForwarderConfig::from_board(board).map_err(anyhow::Error::msg)?;
        let tls = crate::sync::tls::client_config(&s.ca, &s.cert, &s.key).context("sync: TLS set-up")?;
        let offline = serde_json::json!({"schema": crate::sync::schema::STATUS_SCHEMA, "state": "offline",
            "device": board.board.device_id});
        let link = MqttLink::new(MqttSettings {
            host: s.host.clone(),
            port: s.port,
            client_id: board.board.device_id.clone(),
            tls,
            keep_alive: Duration::from_secs_f64(s.keep_alive_s),
            inflight: s.inflight.min(u16::MAX as usize) as u16,
            last_will: Some((cfg.topics.status(), offline.to_string().into_bytes())),
        });
        let store =
            Store::open(&board.storage.path, store_cfg).context("opening the pattern store for sync")?;
        let rules: Arc<Mailbox<RulesUpdate>> = Arc::default();
        let forwarder = Forwarder::new(link, store, cfg, Some(Box::new(LoopRules(rules.clone()))))
            .context("starting the uplink")?;
        let stats = forwarder.stats();
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = stop.clone();
        let handle = std::thread::Builder::new()
            .name("uplink".into())
            .spawn(move || forwarder.run(&thread_stop))
            .context("starting the uplink thread")?;
        Ok(Self { rules, stats, stop, handle })
    }

    /// Gives the uplink a moment to send what the run left in the store, then stops it.
    fn finish(self, dir: &std::path::Path, store_cfg: StoreConfig) {
        let until = std::time::Instant::now() + UPLINK_GRACE;
        if let Ok(store) = Store::open(dir, store_cfg) {
            while std::time::Instant::now() < until
                && self.stats.connected.load(Ordering::Relaxed)
                && store.backlog().map(|b| b.count.iter().sum::<u64>() > 0).unwrap_or(false)
            {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        self.stop.store(true, Ordering::Relaxed);
        if self.handle.join().is_err() {
            tracing::error!("uplink thread panicked");
        }
    }
}
