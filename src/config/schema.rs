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
    /// How detections become tracks (src/track/mod.rs); every field has a default.
    #[serde(default)]
    pub tracking: Tracking,
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
    /// Signed A/B updates of the firmware and models (docs/UPDATE.md); without it the device
    /// runs the binary it was started as and refuses bundles.
    #[serde(default)]
    pub update: Option<Update>,
    /// Observability: the Prometheus endpoint and the alert audit log (docs/OBSERVABILITY.md).
    /// Without it there is no endpoint; the audit log is kept all the same.
    #[serde(default)]
    pub telemetry: Option<Telemetry>,
}

/// `[telemetry]`: where the metrics endpoint listens and where the audit log lives.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Telemetry {
    /// `ip:port` of the Prometheus text endpoint (`GET /metrics`), localhost by default (it has
    /// no authentication); port 0 picks a free port, logged at start; `"off"` for none.
    #[serde(default = "default_metrics_addr")]
    pub metrics: String,
    /// The alert audit log (hash chain); default `audit.log` in `[storage] path`.
    #[serde(default)]
    pub audit_log: Option<PathBuf>,
}

fn default_metrics_addr() -> String {
    "127.0.0.1:9464".into()
}

impl Telemetry {
    /// The endpoint's address; `None` when it is off (or, before validation, malformed).
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics.parse().ok()
    }
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
    /// Where `ort` models run: the CPU, or an NVIDIA GPU through onnxruntime's CUDA or
    /// TensorRT execution provider. A GPU that cannot be used stops the device at start.
    #[serde(default)]
    pub accelerator: Accelerator,
    #[serde(default)]
    pub tensorrt: TensorRt,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Accelerator {
    #[default]
    Cpu,
    Cuda,
    Tensorrt,
}

impl std::fmt::Display for Accelerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
            Self::Tensorrt => "tensorrt",
        })
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// INT8 where the model carries quantization (QDQ) or a calibration table, FP16 elsewhere.
    #[default]
    Int8,
    Fp16,
    Fp32,
}

/// TensorRT engine settings (`[inference.tensorrt]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorRt {
    /// Built engines and timing caches, one directory per model, TensorRT version and GPU.
    #[serde(default = "default_engine_cache")]
    pub cache_dir: PathBuf,
    #[serde(default)]
    pub precision: Precision,
    /// TensorRT calibration table for models without QDQ nodes (file name inside the model's
    /// cache directory, as onnxruntime expects).
    #[serde(default)]
    pub calibration_table: Option<String>,
    /// Builder workspace limit.
    #[serde(default = "default_workspace_mb")]
    pub workspace_mb: u32,
    /// Orin's deep-learning accelerator core to use, if any (AGX Orin has two).
    #[serde(default)]
    pub dla_core: Option<u32>,
    /// Let onnxruntime put nodes TensorRT and CUDA cannot run on the CPU. Off: such a model
    /// fails to load, instead of quietly running part of every frame on the CPU.
    #[serde(default)]
    pub allow_cpu_nodes: bool,
}

impl Default for TensorRt {
    fn default() -> Self {
        Self {
            cache_dir: default_engine_cache(),
            precision: Precision::default(),
            calibration_table: None,
            workspace_mb: default_workspace_mb(),
            dla_core: None,
            allow_cpu_nodes: false,
        }
    }
}

fn default_engine_cache() -> PathBuf {
    PathBuf::from("/var/lib/sideline/engines")
}

fn default_workspace_mb() -> u32 {
    1024
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
    /// Speech to text for `[[rules.keyword]]` (src/audio/stt): Moonshine tiny-en.
    #[serde(default)]
    pub speech: Option<SpeechModel>,
}

/// `[models.speech]`: the directory of Moonshine tiny-en's three files (scripts/setup makes
/// them in `.cache/models/moonshine-tiny-en`). Runs on onnxruntime, on the CPU.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpeechModel {
    pub path: PathBuf,
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
    /// Cheaper alternatives (INT8, smaller inputs), most accurate first. The model above is
    /// variant `primary`. At start the loop takes the first one whose measured p99 fits the
    /// detect budget (`sideline bench` measures them); ladder levels may name one.
    #[serde(default)]
    pub variants: Vec<DetectorVariant>,
}

/// The name of the detector configured in `[models.detector]` itself.
pub const PRIMARY_VARIANT: &str = "primary";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectorVariant {
    pub name: String,
    /// Same outputs as the primary detector (e.g. its INT8 file).
    pub path: PathBuf,
    pub input: [u32; 2],
}

impl DetectorModel {
    /// Every variant as `(name, path, input)`, primary first.
    pub fn all_variants(&self) -> Vec<(&str, &std::path::Path, [u32; 2])> {
        std::iter::once((PRIMARY_VARIANT, self.path.as_path(), self.input))
            .chain(self.variants.iter().map(|v| (v.name.as_str(), v.path.as_path(), v.input)))
            .collect()
    }

    /// This detector with variant `i`'s file and input.
    pub fn variant(&self, i: usize) -> DetectorModel {
        let mut m = self.clone();
        if let Some(v) = i.checked_sub(1).and_then(|i| self.variants.get(i)) {
            m.path = v.path.clone();
            m.input = v.input;
        }
        m
    }
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

/// `[tracking]`: the ByteTrack-style tracker run per detector class and on poses.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tracking {
    /// Minimum IoU of a track's predicted box and a detection to associate them.
    #[serde(default = "default_track_min_iou")]
    pub min_iou: f32,
    /// Detections from this score up to the detector's threshold for their class keep existing
    /// tracks alive (a person half hidden or blurred) but are never reported and never start a
    /// track. At or above a class's threshold (1: every class) there is no low-score stage.
    #[serde(default = "default_track_low_score")]
    pub low_score: f32,
    /// Minimum IoU for a low-score detection.
    #[serde(default = "default_track_low_min_iou")]
    pub low_min_iou: f32,
    /// Frames a confirmed track coasts on its prediction without a detection (an occlusion)
    /// before it is dropped.
    #[serde(default = "default_track_max_misses")]
    pub max_misses: u32,
    /// Hits before a track is confirmed; a track with fewer is dropped at its first miss (its
    /// detections are reported all the same). 1: confirmed at once.
    #[serde(default = "default_track_min_hits")]
    pub min_hits: u32,
    /// `kalman` (SORT's filter on centre, aspect and height) or `velocity` (smoothed centre
    /// motion, the original tracker).
    #[serde(default)]
    pub motion: crate::track::Motion,
    /// `optimal` (Hungarian, most total overlap) or `greedy` (best overlap first).
    #[serde(default)]
    pub association: crate::track::Association,
}

impl Default for Tracking {
    fn default() -> Self {
        toml::from_str("").expect("every [tracking] field has a default")
    }
}

fn default_track_min_iou() -> f32 {
    0.2
}
fn default_track_low_score() -> f32 {
    0.1
}
fn default_track_low_min_iou() -> f32 {
    0.5
}
fn default_track_max_misses() -> u32 {
    10
}
fn default_track_min_hits() -> u32 {
    1
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
    #[serde(default)]
    pub thunder: Vec<Thunder>,
    #[serde(default)]
    pub voice: Vec<Voice>,
    #[serde(default)]
    pub keyword: Vec<Keyword>,
    #[serde(default)]
    pub fusion: Vec<Fusion>,
    #[serde(default)]
    pub collision: Vec<Collision>,
}

/// Thunder on the microphone: a burst of low-frequency, noise-like energy well above the
/// background, lasting `min_duration_ms` (src/audio/thunder.rs).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Thunder {
    pub name: String,
    /// The rumble's band, `[low, high]` Hz.
    #[serde(default = "default_thunder_band")]
    pub band_hz: [f32; 2],
    /// Band level over its running background estimate, dB.
    #[serde(default = "default_thunder_rise")]
    pub min_rise_db: f32,
    /// Share of the energy from `band_hz[0]` up to Nyquist that lies in the band.
    #[serde(default = "default_thunder_share")]
    pub min_band_share: f32,
    /// Spectral flatness in the band (geometric over arithmetic mean, 0..1): rumble is
    /// noise-like (about 0.3), a voice's harmonics are not (below 0.1).
    #[serde(default = "default_thunder_flatness")]
    pub min_flatness: f32,
    /// Band level, dB relative to full scale.
    #[serde(default = "default_thunder_level")]
    pub min_level_dbfs: f32,
    /// Loud in the band for this long before it counts.
    #[serde(default = "default_thunder_min_ms")]
    pub min_duration_ms: f32,
    /// Dips this short (a rolling rumble) do not end it.
    #[serde(default = "default_thunder_gap_ms")]
    pub max_gap_ms: f32,
    /// Time constant with which the background follows a louder level, s.
    #[serde(default = "default_thunder_background_s")]
    pub background_s: f32,
    /// Time constant with which it follows a quieter level, s.
    #[serde(default = "default_thunder_background_fall_s")]
    pub background_fall_s: f32,
    /// Analysis window (rounded up to a power of two of samples): long enough to resolve the band.
    #[serde(default = "default_thunder_window_ms")]
    pub window_ms: f32,
    pub severity: Severity,
    pub outputs: Vec<String>,
    /// Seconds after a thunder alert clears before thunder can raise it again.
    #[serde(default = "default_cooldown")]
    pub cooldown_s: f32,
}

fn default_thunder_band() -> [f32; 2] {
    [20.0, 250.0]
}
fn default_thunder_rise() -> f32 {
    10.0
}
// Share and flatness sit mid-way in the range where every scenario in tests/scenarios/ passes
// (0.2-0.4 and 0.15-0.35): crowd and rain pass below, the quietest thunder fails above.
fn default_thunder_share() -> f32 {
    0.3
}
fn default_thunder_flatness() -> f32 {
    0.25
}
fn default_thunder_level() -> f32 {
    -45.0
}
fn default_thunder_min_ms() -> f32 {
    600.0
}
fn default_thunder_gap_ms() -> f32 {
    400.0
}
fn default_thunder_background_s() -> f32 {
    20.0
}
fn default_thunder_background_fall_s() -> f32 {
    1.0
}
fn default_thunder_window_ms() -> f32 {
    128.0
}

/// Someone speaking near the microphone (src/audio/vad.rs): earshot's voice score, a level and
/// a single pitch (a crowd is voices too, but not one), with hysteresis. Each stretch of voice is
/// a segment for speech-to-text; the alert is raised at a segment's start, cleared at its end.
/// The microphone must run at 16000 Hz (earshot hears nothing else).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Voice {
    pub name: String,
    /// earshot's voice score a 16 ms frame needs, 0..1 (earshot suggests 0.5; it has no other
    /// knob, no aggressiveness modes).
    #[serde(default = "default_voice_threshold")]
    pub threshold: f32,
    /// Periodicity at a voice's pitch (normalised autocorrelation, 60-1500 Hz, 0..1): one voice's
    /// vowels reach 0.85-0.98, a crowd's boo and ooh only for a stray frame.
    #[serde(default = "default_voice_periodicity")]
    pub min_periodicity: f32,
    /// Frame level, dB relative to full scale.
    #[serde(default = "default_voice_level")]
    pub min_level_dbfs: f32,
    /// Voiced frames (gaps shorter than `hangover_ms` allowed) before a segment starts.
    #[serde(default = "default_voice_min_speech_ms")]
    pub min_speech_ms: f32,
    /// This long without a voiced frame ends a segment.
    #[serde(default = "default_voice_hangover_ms")]
    pub hangover_ms: f32,
    /// A longer segment is handed over at this length and goes on in a new one.
    #[serde(default = "default_voice_max_segment_s")]
    pub max_segment_s: f32,
    /// Audio kept before a segment's start (and up to as much after its end).
    #[serde(default = "default_voice_pre_roll_ms")]
    pub pre_roll_ms: f32,
    #[serde(default = "default_voice_severity")]
    pub severity: Severity,
    pub outputs: Vec<String>,
    /// Seconds after the alert clears before it can be raised again (segments are still made).
    /// None by default: every utterance is its own event.
    #[serde(default)]
    pub cooldown_s: f32,
}

/// Spoken keywords (src/audio/speech.rs): each segment of the voice rule `voice` is transcribed
/// (`[models.speech]`) and the alert is raised when the transcript says one of `words` (whole
/// words, any case; a phrase as consecutive words). It stays raised `hold_s` after the last
/// keyword heard, then clears. A segment that starts within `join_gap_ms` of the end of the
/// previous one (the voice rule cut one utterance at a breath) is transcribed joined to it too.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Keyword {
    pub name: String,
    /// Words or phrases, e.g. `["help", "medic", "call an ambulance"]`.
    pub words: Vec<String>,
    /// Name of the `[[rules.voice]]` rule whose segments are transcribed.
    pub voice: String,
    #[serde(default = "default_keyword_hold_s")]
    pub hold_s: f32,
    /// A segment starting within this many ms of the previous segment's end is also heard
    /// joined to it (the earlier audio, silence for the gap, this one); 0: each alone.
    #[serde(default = "default_keyword_join_gap_ms")]
    pub join_gap_ms: f32,
    pub severity: Severity,
    pub outputs: Vec<String>,
}

fn default_keyword_hold_s() -> f32 {
    5.0
}
fn default_keyword_join_gap_ms() -> f32 {
    800.0
}

// Scenario set (tests/scenarios/), moved one at a time: no misses or false alarms with threshold
// 0.5-0.85, min_periodicity 0.78-0.88 (0: 23 false alarms, the crowd), 50-128 ms of speech,
// hangover 100-500 ms and levels -60 to -20 dBFS (so the set does not test the level). At these
// values nothing but speech gathers more than 3 voiced frames (the crowd), and the hardest
// utterance (alsa-utils' "Front Center" over the crowd) 9; 6 are needed.
fn default_voice_threshold() -> f32 {
    0.7
}
fn default_voice_periodicity() -> f32 {
    0.82
}
fn default_voice_level() -> f32 {
    -40.0
}
fn default_voice_min_speech_ms() -> f32 {
    90.0
}
fn default_voice_hangover_ms() -> f32 {
    300.0
}
fn default_voice_max_segment_s() -> f32 {
    10.0
}
fn default_voice_pre_roll_ms() -> f32 {
    200.0
}
fn default_voice_severity() -> Severity {
    Severity::Info
}

/// Alerts of other rules meeting: every rule in `all_of` raised within `within_s` of the others
/// (in any order) or still raised, e.g. a whistle and a player down make a medic alert. Raised
/// once per episode; cleared when none of them is raised any more.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fusion {
    pub name: String,
    /// Names of the rules (two or more; not fusion rules themselves).
    pub all_of: Vec<String>,
    #[serde(default = "default_fusion_within_s")]
    pub within_s: f32,
    pub severity: Severity,
    pub outputs: Vec<String>,
}

fn default_fusion_within_s() -> f32 {
    5.0
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
    /// A dip back across the limit this short does not restart the `min_s` clock: a person the
    /// detector misses for a frame or two (occluded, or a score dipping under the threshold).
    #[serde(default = "default_crowding_gap_s")]
    pub max_gap_s: f32,
    pub severity: Severity,
    pub outputs: Vec<String>,
}

fn default_crowding_s() -> f32 {
    2.0
}
fn default_crowding_gap_s() -> f32 {
    0.5
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

/// Two tracked people running into each other, then one of them down (src/rules/collision.rs).
/// An impact is the boxes of two people coming into contact while the distance between them
/// shrinks fast; one of the two down within `down_within_s` raises the alert (or the impact
/// alone, with `require_down = false`). Lengths are in body heights (the pair's mean box
/// height), so the thresholds hold near and far from the camera.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Collision {
    pub name: String,
    /// Closing speed at contact: how fast the distance between the two box centres shrank,
    /// in body heights per second, averaged over `speed_window_s`.
    #[serde(default = "default_collision_speed")]
    pub min_closing_speed: f32,
    /// Window the closing speed is averaged over, from the tracks' history (at most 1 s).
    #[serde(default = "default_collision_window")]
    pub speed_window_s: f32,
    /// Contact: the boxes' intersection over the smaller box's area, at least this.
    #[serde(default = "default_collision_overlap")]
    pub min_overlap: f32,
    /// One of the two must go down within this many seconds of the impact.
    #[serde(default = "default_collision_down_within")]
    pub down_within_s: f32,
    /// `false`: the impact alone raises the alert (no pose model; give it severity `warning`).
    #[serde(default = "default_true")]
    pub require_down: bool,
    /// Consecutive frames the player must be down (or, without `require_down`, the pair in
    /// contact) to raise, and up again (and apart) to clear.
    #[serde(default = "default_collision_min_frames")]
    pub min_frames: u32,
    /// Down from the pose: torso at most this far from horizontal (as player_down).
    #[serde(default = "default_torso_angle")]
    pub max_torso_angle_deg: f32,
    /// Down from the pose: hips at most this high above the lowest keypoint, in torso lengths.
    #[serde(default = "default_hip_height")]
    pub max_hip_height: f32,
    /// Down from the box (no pose for the player): shorter than at the impact and either wider
    /// than tall or its centre dropped by this fraction of the height at the impact.
    #[serde(default = "default_collision_drop")]
    pub min_drop: f32,
    /// A raised alert clears when the player who went down has not been seen for this long.
    #[serde(default = "default_collision_clear_after")]
    pub clear_after_s: f32,
    pub severity: Severity,
    pub outputs: Vec<String>,
    /// Seconds after a raise before the same pair can raise it again.
    #[serde(default = "default_cooldown")]
    pub cooldown_s: f32,
}

fn default_collision_speed() -> f32 {
    2.0
}
fn default_collision_window() -> f32 {
    0.3
}
fn default_collision_overlap() -> f32 {
    0.2
}
fn default_collision_down_within() -> f32 {
    2.0
}
fn default_true() -> bool {
    true
}
fn default_collision_min_frames() -> u32 {
    2
}
fn default_collision_drop() -> f32 {
    0.3
}
fn default_collision_clear_after() -> f32 {
    10.0
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
    // 0.6 missed tuxfootball's short whistle 3 dB under the crowd (its blast held 0.56 of the
    // energy in its fifth chunk); speech fires at 0.35, the crowd at 0.3 (tests/scenarios/ passes
    // with 0.4-0.55).
    0.5
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

/// `[update]`: where the A/B slots live, whose signatures bundles must carry, and the health
/// gate a new version must pass before it is committed (docs/UPDATE.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Update {
    /// Holds `slots/a`, `slots/b`, the `current` link and `state.json`.
    #[serde(default = "default_update_dir")]
    pub dir: PathBuf,
    /// ed25519 public keys (base64, as `sync.rulepack_keys`) whose signatures bundles must
    /// carry; none: every bundle is refused.
    #[serde(default)]
    pub keys: Vec<String>,
    /// Seconds a new version must run continuously healthy before it is committed.
    #[serde(default = "default_gate_s")]
    pub gate_s: f64,
    /// Seconds after start by which the gate must be passed; otherwise the version is rolled
    /// back.
    #[serde(default = "default_gate_timeout_s")]
    pub gate_timeout_s: f64,
    /// Starts of a new version that may end before the gate decides (crashes) before it is
    /// rolled back.
    #[serde(default = "default_max_boot_tries")]
    pub max_boot_tries: u32,
    /// Command run after switching slots to start the new version; empty: none.
    #[serde(default = "default_restart")]
    pub restart: Vec<String>,
}

fn default_update_dir() -> PathBuf {
    PathBuf::from("/var/lib/sideline/update")
}
fn default_gate_s() -> f64 {
    60.0
}
fn default_gate_timeout_s() -> f64 {
    300.0
}
fn default_max_boot_tries() -> u32 {
    3
}
fn default_restart() -> Vec<String> {
    ["systemctl", "try-restart", "sideline.service"].map(String::from).to_vec()
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
    /// A cheaper detector variant (by name) for this level and the ones below it.
    #[serde(default)]
    pub detector: Option<String>,
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
