//! The profile's shape. Every table rejects unknown fields: a typo in a safety threshold must not
//! silently fall back to a default.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Board {
    pub board: BoardInfo,
    pub cameras: Vec<Camera>,
    #[serde(default)]
    pub audio: Option<Audio>,
    #[serde(default)]
    pub inference: Inference,
    pub models: Models,
    #[serde(default)]
    pub rules: Rules,
    pub outputs: Vec<Output>,
    pub storage: Storage,
    /// Upstream sync; without it patterns stay in the local store.
    #[serde(default)]
    pub sync: Option<Sync>,
    /// The deadline loop: budgets, degradation ladder, alarms, real-time settings.
    #[serde(rename = "loop", default)]
    pub frame_loop: FrameLoop,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoardInfo {
    pub name: String,
    pub device_id: String,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CameraKind {
    /// A recorded clip (YUV4MPEG2) delivered like a camera.
    Sim,
    /// A V4L2 capture device.
    V4l2,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Camera {
    pub name: String,
    pub kind: CameraKind,
    /// Clip file for `sim`, device node (e.g. `/dev/video0`) for `v4l2`.
    pub source: PathBuf,
    pub width: u32,
    pub height: u32,
    pub fps: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AudioKind {
    /// A WAV file delivered like a microphone.
    #[serde(alias = "sim")]
    Wav,
    /// An ALSA capture device.
    Alsa,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Audio {
    pub kind: AudioKind,
    /// WAV file for `wav`, PCM name (e.g. `hw:1,0`) for `alsa`.
    pub source: PathBuf,
    #[serde(default = "default_sample_rate")]
    pub sample_rate: u32,
    #[serde(default = "default_chunk_ms")]
    pub chunk_ms: u32,
}

fn default_sample_rate() -> u32 {
    16_000
}
fn default_chunk_ms() -> u32 {
    32
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inference {
    /// onnxruntime shared library; `ORT_DYLIB_PATH` overrides it.
    #[serde(default)]
    pub ort_library: Option<PathBuf>,
    /// Threads for inference; 0 means one per core.
    #[serde(default)]
    pub threads: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Ort,
    Tract,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Models {
    pub detector: DetectorModel,
    #[serde(default)]
    pub pose: Option<PoseModel>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectorModel {
    pub path: PathBuf,
    pub backend: Backend,
    /// Network input `[width, height]`.
    pub input: [u32; 2],
    pub score_threshold: f32,
    /// COCO class names to keep, e.g. `["person", "sports ball"]`.
    pub classes: Vec<String>,
    /// Per-class score thresholds overriding `score_threshold`, e.g. `{ "sports ball" = 0.7 }`.
    #[serde(default)]
    pub class_thresholds: std::collections::BTreeMap<String, f32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoseModel {
    pub path: PathBuf,
    pub backend: Backend,
    /// Network input `[width, height]`, multiples of 32.
    pub input: [u32; 2],
    /// Minimum person score.
    pub score_threshold: f32,
    /// Keypoints below this score are treated as not seen.
    #[serde(default = "default_keypoint_threshold")]
    pub keypoint_threshold: f32,
}

fn default_keypoint_threshold() -> f32 {
    0.2
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    #[serde(default)]
    pub zone_incursion: Vec<ZoneIncursion>,
    #[serde(default)]
    pub player_down: Vec<PlayerDown>,
    #[serde(default)]
    pub whistle: Vec<Whistle>,
    #[serde(default)]
    pub camera_obstructed: Vec<CameraObstructed>,
    #[serde(default)]
    pub crowding: Vec<Crowding>,
}

/// More people in a zone than it safely holds (a crowd at the touchline, a pitch invasion),
/// for `min_s` seconds; it clears once the count has stayed at or below the limit as long.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Crowding {
    pub name: String,
    /// Polygon vertices in frame pixels; a person counts when their foot point is inside.
    pub polygon: Vec<[f32; 2]>,
    /// Alert when more than this many are inside.
    pub max_people: u32,
    #[serde(default = "default_crowding_s")]
    pub min_s: f32,
    pub severity: Severity,
    pub outputs: Vec<String>,
}

fn default_crowding_s() -> f32 {
    2.0
}

/// A covered, blinded or dark camera: the picture has lost its detail (luma barely varies)
/// for `min_s` seconds. Frames still arrive, so the blind alarm does not see it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraObstructed {
    pub name: String,
    /// Spread of luma (10th to 90th percentile, 0-255) at or below which a frame has no
    /// picture in it.
    #[serde(default = "default_obstructed_spread")]
    pub max_luma_spread: f32,
    #[serde(default = "default_obstructed_s")]
    pub min_s: f32,
    pub severity: Severity,
    pub outputs: Vec<String>,
}

fn default_obstructed_spread() -> f32 {
    12.0
}
fn default_obstructed_s() -> f32 {
    2.0
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneIncursion {
    pub name: String,
    /// Polygon vertices in frame pixels, `[[x, y], ...]`.
    pub polygon: Vec<[f32; 2]>,
    #[serde(default = "default_zone_classes")]
    pub classes: Vec<String>,
    /// Consecutive frames the foot point must be inside before the alert fires.
    #[serde(default = "default_min_frames")]
    pub min_frames: u32,
    pub severity: Severity,
    pub outputs: Vec<String>,
    /// Seconds before the same track can raise this rule again.
    #[serde(default = "default_cooldown")]
    pub cooldown_s: f32,
}

fn default_zone_classes() -> Vec<String> {
    vec!["person".into()]
}
fn default_min_frames() -> u32 {
    3
}
fn default_cooldown() -> f32 {
    30.0
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlayerDown {
    pub name: String,
    /// Seconds a person must stay down, and still, before the alert fires.
    #[serde(default = "default_min_down")]
    pub min_down_s: f32,
    /// Torso (hip centre to shoulder centre) at most this far from horizontal.
    #[serde(default = "default_torso_angle")]
    pub max_torso_angle_deg: f32,
    /// Hips at most this high above the lowest keypoint, in torso lengths.
    #[serde(default = "default_hip_height")]
    pub max_hip_height: f32,
    /// Hip centre moves at most this far while down, in torso lengths.
    #[serde(default = "default_motion")]
    pub max_motion: f32,
    pub severity: Severity,
    pub outputs: Vec<String>,
    #[serde(default = "default_cooldown")]
    pub cooldown_s: f32,
}

fn default_min_down() -> f32 {
    3.0
}
fn default_torso_angle() -> f32 {
    35.0
}
fn default_hip_height() -> f32 {
    0.6
}
fn default_motion() -> f32 {
    0.5
}

/// A referee's whistle on the microphone.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Whistle {
    pub name: String,
    /// The band a whistle's tone lies in, `[low, high]` Hz.
    #[serde(default = "default_whistle_band")]
    pub band_hz: [f32; 2],
    /// Tonal in the band for this long before it counts.
    #[serde(default = "default_whistle_min_ms")]
    pub min_duration_ms: f32,
    /// Gaps this short (a trill) do not end a whistle.
    #[serde(default = "default_whistle_gap_ms")]
    pub max_gap_ms: f32,
    /// Share of 100 Hz..8 kHz energy in the band.
    #[serde(default = "default_whistle_share")]
    pub min_band_share: f32,
    /// Strongest band bin over the band's mean bin.
    #[serde(default = "default_whistle_peakiness")]
    pub min_peakiness: f32,
    #[serde(default = "default_whistle_level")]
    pub min_level_dbfs: f32,
    pub severity: Severity,
    pub outputs: Vec<String>,
}

fn default_whistle_band() -> [f32; 2] {
    [1800.0, 4500.0]
}
fn default_whistle_min_ms() -> f32 {
    150.0
}
fn default_whistle_gap_ms() -> f32 {
    100.0
}
fn default_whistle_share() -> f32 {
    0.6
}
fn default_whistle_peakiness() -> f32 {
    8.0
}
fn default_whistle_level() -> f32 {
    -45.0
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputKind {
    /// Simulated output: a log line and the events file.
    Log,
    /// A GPIO line (character device v2).
    Gpio,
    /// A serial port speaking the alert protocol.
    Serial,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Output {
    pub name: String,
    pub kind: OutputKind,
    /// GPIO chip label or path, e.g. `tegra234-gpio`.
    #[serde(default)]
    pub chip: Option<String>,
    /// GPIO line name or offset.
    #[serde(default)]
    pub line: Option<String>,
    #[serde(default)]
    pub active_low: bool,
    /// Serial device, e.g. `/dev/ttyTHS1`.
    #[serde(default)]
    pub port: Option<String>,
    #[serde(default)]
    pub baud: Option<u32>,
    /// Serial: wait this long for an ACK before resending (default 250).
    #[serde(default)]
    pub ack_timeout_ms: Option<u32>,
    /// Serial: resends of an unacknowledged alert before giving up (default 3).
    #[serde(default)]
    pub retries: Option<u32>,
    /// Serial: no ACK for this long is a receiver-silent fault (default 3000).
    #[serde(default)]
    pub silent_after_ms: Option<u32>,
    /// Serial: period of heartbeat frames (default 1000).
    #[serde(default)]
    pub heartbeat_ms: Option<u32>,
    /// Only alerts of at least this severity reach this output (rules still list it).
    #[serde(default)]
    pub min_severity: Option<Severity>,
    /// GPIO: `latched` (active while an alert is raised) or `pulsed` (active for `pulse_ms`
    /// on each raise, e.g. a horn blast).
    #[serde(default)]
    pub mode: LineMode,
    #[serde(default)]
    pub pulse_ms: Option<u32>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LineMode {
    #[default]
    Latched,
    Pulsed,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Storage {
    /// Directory for the device's durable state.
    pub path: PathBuf,
    /// Most bytes the pattern store may hold; beyond it the lowest priority, oldest patterns go
    /// first, and safety patterns only when nothing else is left.
    #[serde(default = "default_budget_mb")]
    pub budget_mb: f64,
    /// How long an unsent pattern stays worth sending, per priority class.
    #[serde(default)]
    pub ttl_s: Ttl,
}

fn default_budget_mb() -> f64 {
    256.0
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ttl {
    #[serde(default = "default_ttl_safety")]
    pub safety: f64,
    #[serde(default = "default_ttl_event")]
    pub event: f64,
    #[serde(default = "default_ttl_telemetry")]
    pub telemetry: f64,
}

impl Default for Ttl {
    fn default() -> Self {
        Self { safety: default_ttl_safety(), event: default_ttl_event(), telemetry: default_ttl_telemetry() }
    }
}

fn default_ttl_safety() -> f64 {
    30.0 * 86_400.0
}
fn default_ttl_event() -> f64 {
    7.0 * 86_400.0
}
fn default_ttl_telemetry() -> f64 {
    86_400.0
}

/// The upstream link: MQTT over TLS with a client certificate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sync {
    pub host: String,
    #[serde(default = "default_mqtt_port")]
    pub port: u16,
    /// PEM files: the CA that signed the broker's certificate, this device's certificate and key.
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Topic prefix; topics are `<prefix>/v1/<device_id>/...` (see docs/SYNC.md).
    #[serde(default = "default_topic_prefix")]
    pub topic_prefix: String,
    /// Patterns per published message.
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// Messages awaiting the broker's acknowledgement at once.
    #[serde(default = "default_inflight")]
    pub inflight: usize,
    #[serde(default = "default_keep_alive_s")]
    pub keep_alive_s: f64,
    /// Reconnect backoff: doubles from the first to the last, with jitter.
    #[serde(default = "default_backoff_min_s")]
    pub backoff_min_s: f64,
    #[serde(default = "default_backoff_max_s")]
    pub backoff_max_s: f64,
    /// ed25519 public keys (base64) whose signatures rule packs must carry; none: packs refused.
    #[serde(default)]
    pub rulepack_keys: Vec<String>,
}

fn default_mqtt_port() -> u16 {
    8883
}
fn default_topic_prefix() -> String {
    "sideline".into()
}
fn default_batch() -> usize {
    256
}
fn default_inflight() -> usize {
    16
}
fn default_keep_alive_s() -> f64 {
    10.0
}
fn default_backoff_min_s() -> f64 {
    0.2
}
fn default_backoff_max_s() -> f64 {
    30.0
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrameLoop {
    /// Deadline after capture for a frame's decision; default one frame interval (33 ms at 30 fps).
    #[serde(default)]
    pub budget_ms: Option<f32>,
    /// Per-stage budgets; a stage taking longer is counted as an overrun of that stage.
    #[serde(default)]
    pub stage_budget_ms: StageBudgets,
    /// No fresh frame for this long raises the camera-blind alarm.
    #[serde(default = "default_blind_ms")]
    pub blind_after_ms: u32,
    /// No decided frame for this long (while frames arrive) raises the loop-stalled alarm.
    #[serde(default = "default_stall_ms")]
    pub stall_after_ms: u32,
    /// Output toggled every `heartbeat_ms` while the loop meets its deadlines.
    #[serde(default)]
    pub heartbeat: Option<String>,
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u32,
    /// Outputs for the camera-blind and loop-stalled alarms; empty means all outputs.
    #[serde(default)]
    pub alarm_outputs: Vec<String>,
    /// Degraded levels, mildest first; level 0 (everything, every frame) is implicit.
    #[serde(default)]
    pub ladder: Vec<LadderLevel>,
    /// Step down a level after this many deadline misses within the last `window` frames.
    #[serde(default = "default_degrade_after")]
    pub degrade_after: u32,
    #[serde(default = "default_window")]
    pub window: u32,
    /// Step back up after this many consecutive frames decided within `headroom` x budget.
    #[serde(default = "default_recover_after")]
    pub recover_after: u32,
    #[serde(default = "default_headroom")]
    pub headroom: f32,
    #[serde(default)]
    pub realtime: Option<Realtime>,
}

impl Default for FrameLoop {
    fn default() -> Self {
        toml::from_str("").expect("every [loop] field has a default")
    }
}

fn default_blind_ms() -> u32 {
    1000
}
fn default_stall_ms() -> u32 {
    1000
}
fn default_heartbeat_ms() -> u32 {
    250
}
fn default_degrade_after() -> u32 {
    3
}
fn default_window() -> u32 {
    10
}
fn default_recover_after() -> u32 {
    30
}
fn default_headroom() -> f32 {
    0.6
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageBudgets {
    pub preprocess: Option<f32>,
    pub detect: Option<f32>,
    pub pose: Option<f32>,
    pub rules: Option<f32>,
    pub output: Option<f32>,
}

/// One rung of the degradation ladder.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LadderLevel {
    /// Run pose on one frame in N; 0 turns pose off.
    #[serde(default = "one")]
    pub pose_every: u32,
    /// A smaller pose input `[width, height]` (multiples of 32).
    #[serde(default)]
    pub pose_input: Option<[u32; 2]>,
    /// Decide one frame in N; the others are dropped unseen.
    #[serde(default = "one")]
    pub frame_skip: u32,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Realtime {
    /// SCHED_FIFO priority (1..=99) for the camera and decision threads.
    pub priority: i32,
    /// CPUs the loop threads are pinned to; empty leaves affinity alone.
    #[serde(default)]
    pub cpus: Vec<usize>,
    /// Lock all memory (mlockall) so the loop never waits on a page fault.
    #[serde(default)]
    pub mlock: bool,
}
