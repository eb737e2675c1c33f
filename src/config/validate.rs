//! Consistency checks serde cannot express: references between sections, geometry, ranges, files.
//! Each finding is `(field path, message)`; the caller locates it in the text.

use std::collections::HashSet;

use super::*;
use crate::geometry::Polygon;
use crate::infer::coco;

type Findings = Vec<(String, String)>;

pub(super) fn check(b: &Board) -> Findings {
    let mut f = Findings::new();
    if b.board.device_id.trim().is_empty() {
        f.push(("board.device_id".into(), "must not be empty".into()));
    }
    check_cameras(b, &mut f);
    if let Some(a) = &b.audio {
        if !(8_000..=48_000).contains(&a.sample_rate) {
            f.push(("audio.sample_rate".into(), format!("{} Hz is outside 8000..=48000", a.sample_rate)));
        }
        if !(1..=1000).contains(&a.chunk_ms) {
            f.push(("audio.chunk_ms".into(), format!("{} ms is outside 1..=1000", a.chunk_ms)));
        }
        if a.kind == AudioKind::Wav && !a.source.is_file() {
            f.push(("audio.source".into(), format!("no such file: {}", a.source.display())));
        }
    }
    if let Some(lib) = &b.inference.ort_library {
        // Only a hint here: ORT_DYLIB_PATH may point elsewhere, and tract needs no library.
        if lib.as_os_str().is_empty() {
            f.push(("inference.ort_library".into(), "must not be empty".into()));
        }
    }
    check_accelerator(b, &mut f);
    check_models(b, &mut f);
    check_tracking(b, &mut f);
    let outputs = check_outputs(b, &mut f);
    check_rules(b, &outputs, &mut f);
    check_loop(b, &outputs, &mut f);
    check_storage(b, &mut f);
    if let Some(s) = &b.sync {
        check_sync(s, &mut f);
    }
    if let Some(u) = &b.update {
        check_update(u, &mut f);
    }
    if let Some(t) = &b.telemetry {
        check_telemetry(t, &mut f);
    }
    f
}

fn check_telemetry(t: &Telemetry, f: &mut Findings) {
    if t.metrics != "off" && t.metrics_addr().is_none() {
        f.push((
            "telemetry.metrics".into(),
            format!("`{}` is not an address like \"127.0.0.1:9464\" (ip:port), nor \"off\"", t.metrics),
        ));
    }
    if let Some(p) = &t.audit_log {
        if p.as_os_str().is_empty() || p.is_dir() {
            f.push(("telemetry.audit_log".into(), format!("`{}` must name a file", p.display())));
        }
    }
}

fn check_update(u: &Update, f: &mut Findings) {
    if u.dir.as_os_str().is_empty() {
        f.push(("update.dir".into(), "must not be empty".into()));
    }
    for (i, k) in u.keys.iter().enumerate() {
        if let Err(e) = crate::config::rulepack::parse_public_key(k) {
            f.push((format!("update.keys[{i}]"), e));
        }
    }
    if !(u.gate_s > 0.0 && u.gate_s <= 86_400.0) {
        f.push(("update.gate_s".into(), format!("{} s is outside (0, 86400]", u.gate_s)));
    }
    if !(u.gate_timeout_s > u.gate_s && u.gate_timeout_s <= 86_400.0) {
        f.push((
            "update.gate_timeout_s".into(),
            format!("{} s must be above gate_s ({} s) and at most 86400", u.gate_timeout_s, u.gate_s),
        ));
    }
    if !(1..=100).contains(&u.max_boot_tries) {
        f.push(("update.max_boot_tries".into(), format!("{} is outside 1..=100", u.max_boot_tries)));
    }
    if u.restart.first().is_some_and(|c| c.trim().is_empty()) {
        f.push(("update.restart".into(), "the command name must not be empty".into()));
    }
}

fn check_accelerator(b: &Board, f: &mut Findings) {
    if b.inference.accelerator == Accelerator::Cpu {
        return;
    }
    let accel = b.inference.accelerator;
    // tract has no GPU path: a model on it would quietly stay on the CPU.
    if b.models.detector.backend == Backend::Tract {
        f.push((
            "models.detector.backend".into(),
            format!("`tract` runs on the CPU only; inference.accelerator `{accel}` needs `ort`"),
        ));
    }
    if b.models.pose.as_ref().is_some_and(|p| p.backend == Backend::Tract) {
        f.push((
            "models.pose.backend".into(),
            format!("`tract` runs on the CPU only; inference.accelerator `{accel}` needs `ort`"),
        ));
    }
    let t = &b.inference.tensorrt;
    if t.cache_dir.as_os_str().is_empty() {
        f.push(("inference.tensorrt.cache_dir".into(), "must not be empty".into()));
    }
    if !(16..=65_536).contains(&t.workspace_mb) {
        f.push((
            "inference.tensorrt.workspace_mb".into(),
            format!("{} is outside 16..=65536", t.workspace_mb),
        ));
    }
    if t.dla_core.is_some_and(|c| c > 1) {
        f.push(("inference.tensorrt.dla_core".into(), "Orin has DLA cores 0 and 1".into()));
    }
    if let Some(name) = &t.calibration_table {
        if name.is_empty() || name.contains('/') {
            f.push((
                "inference.tensorrt.calibration_table".into(),
                format!("`{name}` must be a file name inside the engine cache directory"),
            ));
        }
    }
}

fn check_storage(b: &Board, f: &mut Findings) {
    let s = &b.storage;
    if s.path.as_os_str().is_empty() {
        f.push(("storage.path".into(), "must not be empty".into()));
    }
    if !(s.budget_mb >= 1.0 && s.budget_mb.is_finite()) {
        f.push(("storage.budget_mb".into(), format!("{} MB is below 1", s.budget_mb)));
    }
    for (name, v) in [("safety", s.ttl_s.safety), ("event", s.ttl_s.event), ("telemetry", s.ttl_s.telemetry)]
    {
        if !(v > 0.0 && v.is_finite()) {
            f.push((format!("storage.ttl_s.{name}"), format!("{v} s must be positive")));
        }
    }
}

fn check_sync(s: &Sync, f: &mut Findings) {
    if s.host.trim().is_empty() {
        f.push(("sync.host".into(), "must not be empty".into()));
    }
    for (name, p) in [("ca", &s.ca), ("cert", &s.cert), ("key", &s.key)] {
        if !p.is_file() {
            f.push((format!("sync.{name}"), format!("no such file: {}", p.display())));
        }
    }
    if s.topic_prefix.is_empty() || s.topic_prefix.contains(['#', '+']) || s.topic_prefix.ends_with('/') {
        f.push(("sync.topic_prefix".into(), format!("`{}` is not a topic prefix", s.topic_prefix)));
    }
    if !(1..=10_000).contains(&s.batch) {
        f.push(("sync.batch".into(), format!("{} is outside 1..=10000", s.batch)));
    }
    if !(1..=1000).contains(&s.inflight) {
        f.push(("sync.inflight".into(), format!("{} is outside 1..=1000", s.inflight)));
    }
    if !(s.keep_alive_s >= 1.0 && s.keep_alive_s <= 3600.0) {
        f.push(("sync.keep_alive_s".into(), format!("{} s is outside 1..=3600", s.keep_alive_s)));
    }
    if !(s.backoff_min_s > 0.0 && s.backoff_min_s <= s.backoff_max_s && s.backoff_max_s.is_finite()) {
        f.push((
            "sync.backoff_min_s".into(),
            format!("backoff {}..{} s must be positive and ordered", s.backoff_min_s, s.backoff_max_s),
        ));
    }
    for (i, k) in s.rulepack_keys.iter().enumerate() {
        if let Err(e) = crate::config::rulepack::parse_public_key(k) {
            f.push((format!("sync.rulepack_keys[{i}]"), e));
        }
    }
}

fn check_cameras(b: &Board, f: &mut Findings) {
    if b.cameras.is_empty() {
        f.push(("cameras".into(), "at least one camera is required".into()));
    }
    let mut names = HashSet::new();
    for (i, c) in b.cameras.iter().enumerate() {
        let at = |field: &str| format!("cameras[{i}].{field}");
        if !names.insert(c.name.as_str()) {
            f.push((at("name"), format!("duplicate camera name `{}`", c.name)));
        }
        if c.width == 0 || c.height == 0 || c.width % 2 != 0 || c.height % 2 != 0 {
            f.push((at("width"), format!("{}x{} must be non-zero and even", c.width, c.height)));
        }
        if !(c.fps > 0.0 && c.fps <= 240.0) {
            f.push((at("fps"), format!("{} is outside (0, 240]", c.fps)));
        }
        // A named pipe is a clip too: another process feeding frames live (a test stalls it).
        let clip = std::fs::metadata(&c.source)
            .is_ok_and(|m| m.is_file() || std::os::unix::fs::FileTypeExt::is_fifo(&m.file_type()));
        if c.kind == CameraKind::Sim && !clip {
            f.push((
                at("source"),
                format!("no such clip: {} (run scripts/setup to fetch the sample media)", c.source.display()),
            ));
        }
    }
}

fn check_threshold(v: f32, field: String, f: &mut Findings) {
    if !(v > 0.0 && v <= 1.0) {
        f.push((field, format!("{v} is outside (0, 1]")));
    }
}

fn check_model_file(path: &std::path::Path, field: String, f: &mut Findings) {
    if !path.is_file() {
        f.push((field, format!("no such model file: {}", path.display())));
    }
}

fn check_models(b: &Board, f: &mut Findings) {
    let d = &b.models.detector;
    check_model_file(&d.path, "models.detector.path".into(), f);
    if d.input[0] == 0 || d.input[1] == 0 {
        f.push(("models.detector.input".into(), "width and height must be non-zero".into()));
    }
    check_threshold(d.score_threshold, "models.detector.score_threshold".into(), f);
    if d.classes.is_empty() {
        f.push(("models.detector.classes".into(), "list at least one class".into()));
    }
    for (i, c) in d.classes.iter().enumerate() {
        if coco::class_id(c).is_none() {
            f.push((format!("models.detector.classes[{i}]"), format!("`{c}` is not a COCO class name")));
        }
    }
    for (name, &v) in &d.class_thresholds {
        let field = format!("models.detector.class_thresholds.{name}");
        if !d.classes.contains(name) {
            f.push((field.clone(), format!("`{name}` is not in models.detector.classes")));
        }
        check_threshold(v, field, f);
    }
    let mut names = HashSet::from([PRIMARY_VARIANT]);
    for (i, v) in d.variants.iter().enumerate() {
        let at = |field: &str| format!("models.detector.variants[{i}].{field}");
        if !names.insert(v.name.as_str()) {
            f.push((at("name"), format!("`{}` is already a detector variant", v.name)));
        }
        check_model_file(&v.path, at("path"), f);
        if v.input[0] == 0 || v.input[1] == 0 {
            f.push((at("input"), "width and height must be non-zero".into()));
        }
    }
    for (i, l) in b.frame_loop.ladder.iter().enumerate() {
        if let Some(name) = l.detector.as_deref().filter(|n| !names.contains(n)) {
            f.push((
                format!("loop.ladder[{i}].detector"),
                format!("`{name}` is not `primary` or a name in models.detector.variants"),
            ));
        }
    }
    if let Some(s) = &b.models.speech {
        let stt = crate::audio::stt::MODEL_FILES;
        if !s.path.is_dir() {
            f.push(("models.speech.path".into(), format!("no such directory: {}", s.path.display())));
        } else if let Some(missing) = stt.iter().find(|n| !s.path.join(n).is_file()) {
            f.push((
                "models.speech.path".into(),
                format!("{} lacks {missing} (scripts/setup makes the model)", s.path.display()),
            ));
        }
    }
    if let Some(p) = &b.models.pose {
        check_model_file(&p.path, "models.pose.path".into(), f);
        if p.input.iter().any(|&v| v == 0 || v % 32 != 0) {
            f.push((
                "models.pose.input".into(),
                format!("{}x{}: width and height must be non-zero multiples of 32", p.input[0], p.input[1]),
            ));
        }
        check_threshold(p.score_threshold, "models.pose.score_threshold".into(), f);
        check_threshold(p.keypoint_threshold, "models.pose.keypoint_threshold".into(), f);
    }
}

fn check_tracking(b: &Board, f: &mut Findings) {
    let t = &b.tracking;
    for (field, v) in [("min_iou", t.min_iou), ("low_min_iou", t.low_min_iou)] {
        if !(v > 0.0 && v < 1.0) {
            f.push((format!("tracking.{field}"), format!("{v} is outside (0, 1)")));
        }
    }
    // At or above a class's threshold there is no low-score stage for that class (1: none).
    check_threshold(t.low_score, "tracking.low_score".into(), f);
    if t.max_misses > 300 {
        f.push(("tracking.max_misses".into(), format!("{} is outside 0..=300", t.max_misses)));
    }
    if !(1..=30).contains(&t.min_hits) {
        f.push(("tracking.min_hits".into(), format!("{} is outside 1..=30", t.min_hits)));
    }
}

fn check_outputs<'a>(b: &'a Board, f: &mut Findings) -> HashSet<&'a str> {
    let mut names = HashSet::new();
    for (i, o) in b.outputs.iter().enumerate() {
        let at = |field: &str| format!("outputs[{i}].{field}");
        if !names.insert(o.name.as_str()) {
            f.push((at("name"), format!("duplicate output name `{}`", o.name)));
        }
        match o.kind {
            OutputKind::Log => {}
            OutputKind::Gpio => {
                if o.chip.as_deref().is_none_or(str::is_empty) {
                    f.push((at("chip"), "a gpio output needs `chip` (label or path)".into()));
                }
                if o.line.as_deref().is_none_or(str::is_empty) {
                    f.push((at("line"), "a gpio output needs `line` (name or offset)".into()));
                }
                if let Some(p) = o.pulse_ms {
                    if o.mode != LineMode::Pulsed {
                        f.push((at("pulse_ms"), "only a `pulsed` line has a pulse length".into()));
                    } else if !(10..=600_000).contains(&p) {
                        f.push((at("pulse_ms"), format!("{p} ms is outside 10..=600000")));
                    }
                }
            }
            OutputKind::Serial => {
                if o.port.as_deref().is_none_or(str::is_empty) {
                    f.push((at("port"), "a serial output needs `port`".into()));
                }
                for (field, problem) in crate::alert::serial::Settings::problems(o) {
                    f.push((at(field), problem));
                }
            }
        }
    }
    names
}

fn check_rule_common(
    at: &dyn Fn(&str) -> String,
    name: &str,
    outputs: &[String],
    cooldown_s: f32,
    known: &HashSet<&str>,
    names: &mut HashSet<String>,
    f: &mut Findings,
) {
    if name.trim().is_empty() {
        f.push((at("name"), "must not be empty".into()));
    } else if !names.insert(name.to_string()) {
        f.push((at("name"), format!("duplicate rule name `{name}`")));
    }
    if outputs.is_empty() {
        f.push((at("outputs"), "list at least one output".into()));
    }
    for (j, o) in outputs.iter().enumerate() {
        if !known.contains(o.as_str()) {
            f.push((at(&format!("outputs[{j}]")), format!("no output named `{o}` in [[outputs]]")));
        }
    }
    if !(cooldown_s >= 0.0 && cooldown_s.is_finite()) {
        f.push((at("cooldown_s"), format!("{cooldown_s} must be >= 0")));
    }
}

fn check_rules(b: &Board, outputs: &HashSet<&str>, f: &mut Findings) {
    let mut names = HashSet::new();
    let frame = b.cameras.first().map(|c| (c.width as f32, c.height as f32));
    for (i, z) in b.rules.zone_incursion.iter().enumerate() {
        let at = |field: &str| format!("rules.zone_incursion[{i}].{field}");
        check_rule_common(&at, &z.name, &z.outputs, z.cooldown_s, outputs, &mut names, f);
        match Polygon::new(&z.polygon) {
            Err(e) => f.push((at("polygon"), e.to_string())),
            Ok(_) => {
                if let Some((w, h)) = frame {
                    for (j, p) in z.polygon.iter().enumerate() {
                        if p[0] < 0.0 || p[1] < 0.0 || p[0] > w || p[1] > h {
                            f.push((
                                at(&format!("polygon[{j}]")),
                                format!("point ({}, {}) lies outside the {w}x{h} frame", p[0], p[1]),
                            ));
                        }
                    }
                }
            }
        }
        for (j, c) in z.classes.iter().enumerate() {
            if coco::class_id(c).is_none() {
                f.push((at(&format!("classes[{j}]")), format!("`{c}` is not a COCO class name")));
            } else if !b.models.detector.classes.contains(c) {
                f.push((
                    at(&format!("classes[{j}]")),
                    format!("`{c}` is not in models.detector.classes, so it is never detected"),
                ));
            }
        }
        if z.min_frames == 0 {
            f.push((at("min_frames"), "must be at least 1".into()));
        }
    }
    for (i, c) in b.rules.crowding.iter().enumerate() {
        let at = |field: &str| format!("rules.crowding[{i}].{field}");
        check_rule_common(&at, &c.name, &c.outputs, 0.0, outputs, &mut names, f);
        if let Err(e) = Polygon::new(&c.polygon) {
            f.push((at("polygon"), e.to_string()));
        }
        if !(c.min_s >= 0.0 && c.min_s <= 3600.0) {
            f.push((at("min_s"), format!("{} s is outside 0..=3600", c.min_s)));
        }
        if !(c.max_gap_s >= 0.0 && c.max_gap_s <= c.min_s.max(0.0)) {
            f.push((at("max_gap_s"), format!("{} s is outside 0..=min_s ({} s)", c.max_gap_s, c.min_s)));
        }
        if !b.models.detector.classes.iter().any(|c| c == "person") {
            f.push((at("name"), "counting people needs `person` in models.detector.classes".into()));
        }
    }
    for (i, c) in b.rules.camera_obstructed.iter().enumerate() {
        let at = |field: &str| format!("rules.camera_obstructed[{i}].{field}");
        check_rule_common(&at, &c.name, &c.outputs, 0.0, outputs, &mut names, f);
        if !(c.max_luma_spread > 0.0 && c.max_luma_spread < 128.0) {
            f.push((at("max_luma_spread"), format!("{} is outside (0, 128)", c.max_luma_spread)));
        }
        if !(c.min_s >= 0.0 && c.min_s <= 3600.0) {
            f.push((at("min_s"), format!("{} s is outside 0..=3600", c.min_s)));
        }
    }
    for (i, w) in b.rules.whistle.iter().enumerate() {
        let at = |field: &str| format!("rules.whistle[{i}].{field}");
        check_rule_common(&at, &w.name, &w.outputs, 0.0, outputs, &mut names, f);
        let nyquist = b.audio.as_ref().map_or(0.0, |a| a.sample_rate as f32 / 2.0);
        if b.audio.is_none() {
            f.push((at("name"), "a whistle rule needs a microphone ([audio])".into()));
        } else if !(w.band_hz[0] > 0.0 && w.band_hz[0] < w.band_hz[1] && w.band_hz[1] <= nyquist) {
            f.push((
                at("band_hz"),
                format!("[{}, {}] must rise and lie within 0..{nyquist} Hz", w.band_hz[0], w.band_hz[1]),
            ));
        }
        for (field, v) in [("min_duration_ms", w.min_duration_ms), ("max_gap_ms", w.max_gap_ms)] {
            if !(v > 0.0 && v.is_finite()) {
                f.push((at(field), format!("{v} must be > 0")));
            }
        }
        if !(w.min_band_share > 0.0 && w.min_band_share <= 1.0) {
            f.push((at("min_band_share"), format!("{} is outside (0, 1]", w.min_band_share)));
        }
    }
    for (i, t) in b.rules.thunder.iter().enumerate() {
        let at = |field: &str| format!("rules.thunder[{i}].{field}");
        check_rule_common(&at, &t.name, &t.outputs, t.cooldown_s, outputs, &mut names, f);
        check_thunder(b, t, &at, f);
    }
    for (i, v) in b.rules.voice.iter().enumerate() {
        let at = |field: &str| format!("rules.voice[{i}].{field}");
        check_rule_common(&at, &v.name, &v.outputs, v.cooldown_s, outputs, &mut names, f);
        check_voice(b, v, &at, f);
    }
    for (i, k) in b.rules.keyword.iter().enumerate() {
        let at = |field: &str| format!("rules.keyword[{i}].{field}");
        check_rule_common(&at, &k.name, &k.outputs, 0.0, outputs, &mut names, f);
        check_keyword(b, k, &at, f);
    }
    for (i, r) in b.rules.player_down.iter().enumerate() {
        let at = |field: &str| format!("rules.player_down[{i}].{field}");
        check_rule_common(&at, &r.name, &r.outputs, r.cooldown_s, outputs, &mut names, f);
        if b.models.pose.is_none() {
            f.push((at("name"), "player_down needs a pose model ([models.pose])".into()));
        }
        if !(r.min_down_s > 0.0 && r.min_down_s.is_finite()) {
            f.push((at("min_down_s"), format!("{} must be > 0", r.min_down_s)));
        }
        if !(r.max_torso_angle_deg > 0.0 && r.max_torso_angle_deg < 90.0) {
            f.push((at("max_torso_angle_deg"), format!("{} is outside (0, 90)", r.max_torso_angle_deg)));
        }
        for (field, v) in [("max_hip_height", r.max_hip_height), ("max_motion", r.max_motion)] {
            if !(v > 0.0 && v.is_finite()) {
                f.push((at(field), format!("{v} must be > 0")));
            }
        }
    }
    for (i, c) in b.rules.collision.iter().enumerate() {
        let at = |field: &str| format!("rules.collision[{i}].{field}");
        check_rule_common(&at, &c.name, &c.outputs, c.cooldown_s, outputs, &mut names, f);
        if !b.models.detector.classes.iter().any(|c| c == "person") {
            f.push((at("name"), "a collision rule needs `person` in models.detector.classes".into()));
        }
        let fps = b.cameras.first().map(|c| c.fps);
        for (field, problem) in crate::rules::collision::problems(c, fps) {
            f.push((at(field), problem));
        }
    }
    // Last: a fusion rule names rules of any other kind.
    let inputs = names.clone();
    for (i, r) in b.rules.fusion.iter().enumerate() {
        let at = |field: &str| format!("rules.fusion[{i}].{field}");
        check_rule_common(&at, &r.name, &r.outputs, 0.0, outputs, &mut names, f);
        check_fusion(r, &inputs, &at, f);
    }
}

fn check_thunder(b: &Board, t: &Thunder, at: &dyn Fn(&str) -> String, f: &mut Findings) {
    let Some(audio) = &b.audio else {
        f.push((at("name"), "a thunder rule needs a microphone ([audio])".into()));
        return;
    };
    let nyquist = audio.sample_rate as f32 / 2.0;
    let [lo, hi] = t.band_hz;
    if !(lo > 0.0 && lo < hi && hi <= nyquist) {
        f.push((at("band_hz"), format!("[{lo}, {hi}] must rise and lie within 0..{nyquist} Hz")));
    } else if t.window_ms > 0.0 && t.window_ms.is_finite() {
        let n = crate::audio::thunder::window_len(audio.sample_rate, t.window_ms, 0);
        let bin_hz = audio.sample_rate as f32 / n as f32;
        if (hi - lo) < 4.0 * bin_hz {
            f.push((
                at("band_hz"),
                format!(
                    "[{lo}, {hi}] spans fewer than 4 bins of {bin_hz:.1} Hz at window_ms = {}: widen it or lengthen the window",
                    t.window_ms
                ),
            ));
        }
    }
    if !(t.window_ms >= audio.chunk_ms as f32 && t.window_ms <= 1000.0) {
        f.push((
            at("window_ms"),
            format!("{} is outside audio.chunk_ms ({})..=1000", t.window_ms, audio.chunk_ms),
        ));
    }
    if !(t.min_rise_db >= 0.0 && t.min_rise_db <= 100.0) {
        f.push((at("min_rise_db"), format!("{} dB is outside 0..=100", t.min_rise_db)));
    }
    if !(t.min_band_share > 0.0 && t.min_band_share <= 1.0) {
        f.push((at("min_band_share"), format!("{} is outside (0, 1]", t.min_band_share)));
    }
    if !(t.min_flatness >= 0.0 && t.min_flatness < 1.0) {
        f.push((at("min_flatness"), format!("{} is outside [0, 1)", t.min_flatness)));
    }
    if !(t.min_level_dbfs >= -120.0 && t.min_level_dbfs <= 0.0) {
        f.push((at("min_level_dbfs"), format!("{} dBFS is outside -120..=0", t.min_level_dbfs)));
    }
    for (field, v) in [
        ("min_duration_ms", t.min_duration_ms),
        ("max_gap_ms", t.max_gap_ms),
        ("background_s", t.background_s),
        ("background_fall_s", t.background_fall_s),
    ] {
        if !(v > 0.0 && v.is_finite()) {
            f.push((at(field), format!("{v} must be > 0")));
        }
    }
}

fn check_voice(b: &Board, v: &Voice, at: &dyn Fn(&str) -> String, f: &mut Findings) {
    match &b.audio {
        None => f.push((at("name"), "a voice rule needs a microphone ([audio])".into())),
        Some(a) if a.sample_rate != crate::audio::vad::RATE => f.push((
            "audio.sample_rate".into(),
            format!(
                "{} Hz, but rules.voice (`{}`) needs {} Hz: earshot's voice model hears nothing else",
                a.sample_rate,
                v.name,
                crate::audio::vad::RATE
            ),
        )),
        Some(_) => {}
    }
    if !(v.threshold > 0.0 && v.threshold < 1.0) {
        f.push((at("threshold"), format!("{} is outside (0, 1)", v.threshold)));
    }
    if !(v.min_periodicity >= 0.0 && v.min_periodicity < 1.0) {
        f.push((at("min_periodicity"), format!("{} is outside [0, 1)", v.min_periodicity)));
    }
    if !(v.min_level_dbfs >= -120.0 && v.min_level_dbfs <= 0.0) {
        f.push((at("min_level_dbfs"), format!("{} dBFS is outside -120..=0", v.min_level_dbfs)));
    }
    for (field, ms) in [("min_speech_ms", v.min_speech_ms), ("hangover_ms", v.hangover_ms)] {
        if !(ms > 0.0 && ms <= 10_000.0) {
            f.push((at(field), format!("{ms} ms is outside (0, 10000]")));
        }
    }
    if !(v.max_segment_s >= 1.0 && v.max_segment_s <= 60.0) {
        f.push((at("max_segment_s"), format!("{} s is outside 1..=60", v.max_segment_s)));
    } else if v.min_speech_ms > 0.0 && v.max_segment_s * 1000.0 <= v.min_speech_ms {
        f.push((
            at("max_segment_s"),
            format!("{} s is not longer than min_speech_ms ({} ms)", v.max_segment_s, v.min_speech_ms),
        ));
    }
    if !(v.pre_roll_ms >= 0.0 && v.pre_roll_ms <= 2000.0) {
        f.push((at("pre_roll_ms"), format!("{} ms is outside 0..=2000", v.pre_roll_ms)));
    }
}

fn check_keyword(b: &Board, k: &Keyword, at: &dyn Fn(&str) -> String, f: &mut Findings) {
    if k.words.is_empty() {
        f.push((at("words"), "list at least one word or phrase".into()));
    }
    for (j, w) in k.words.iter().enumerate() {
        if !crate::audio::keyword::is_matchable(w) {
            f.push((at(&format!("words[{j}]")), format!("`{w}` has no letters or digits to match")));
        }
    }
    if !b.rules.voice.iter().any(|v| v.name == k.voice) {
        f.push((at("voice"), format!("no voice rule named `{}` in [[rules.voice]]", k.voice)));
    }
    if b.models.speech.is_none() {
        f.push((at("name"), "a keyword rule needs a speech-to-text model ([models.speech])".into()));
    }
    if !(k.hold_s > 0.0 && k.hold_s <= 3600.0) {
        f.push((at("hold_s"), format!("{} s is outside (0, 3600]", k.hold_s)));
    }
    if !(k.join_gap_ms >= 0.0 && k.join_gap_ms <= 10_000.0) {
        f.push((at("join_gap_ms"), format!("{} ms is outside 0..=10000", k.join_gap_ms)));
    }
}

fn check_fusion(r: &Fusion, rules: &HashSet<String>, at: &dyn Fn(&str) -> String, f: &mut Findings) {
    if r.all_of.len() < 2 {
        f.push((at("all_of"), "name at least two rules".into()));
    }
    for (j, name) in r.all_of.iter().enumerate() {
        if r.all_of[..j].contains(name) {
            f.push((at(&format!("all_of[{j}]")), format!("`{name}` is listed twice")));
        } else if !rules.contains(name) {
            f.push((
                at(&format!("all_of[{j}]")),
                format!("no rule named `{name}` (fusion rules cannot be fused)"),
            ));
        }
    }
    if !(r.within_s > 0.0 && r.within_s <= 3600.0) {
        f.push((at("within_s"), format!("{} s is outside (0, 3600]", r.within_s)));
    }
}

fn check_loop(b: &Board, outputs: &HashSet<&str>, f: &mut Findings) {
    let l = &b.frame_loop;
    let positive = |v: f32| v > 0.0 && v.is_finite();
    if let Some(ms) = l.budget_ms {
        if !positive(ms) {
            f.push(("loop.budget_ms".into(), format!("{ms} must be > 0")));
        }
    }
    let s = &l.stage_budget_ms;
    for (name, v) in [
        ("preprocess", s.preprocess),
        ("detect", s.detect),
        ("pose", s.pose),
        ("rules", s.rules),
        ("output", s.output),
    ] {
        if let Some(v) = v.filter(|&v| !positive(v)) {
            f.push((format!("loop.stage_budget_ms.{name}"), format!("{v} must be > 0")));
        }
    }
    for (field, v) in [
        ("blind_after_ms", l.blind_after_ms),
        ("stall_after_ms", l.stall_after_ms),
        ("heartbeat_ms", l.heartbeat_ms),
        ("degrade_after", l.degrade_after),
        ("window", l.window),
        ("recover_after", l.recover_after),
    ] {
        if v == 0 {
            f.push((format!("loop.{field}"), "must be at least 1".into()));
        }
    }
    if l.degrade_after > l.window {
        f.push((
            "loop.degrade_after".into(),
            format!("{} is more than window ({})", l.degrade_after, l.window),
        ));
    }
    if !(l.headroom > 0.0 && l.headroom <= 1.0) {
        f.push(("loop.headroom".into(), format!("{} is outside (0, 1]", l.headroom)));
    }
    if let Some(h) = &l.heartbeat {
        if !outputs.contains(h.as_str()) {
            f.push(("loop.heartbeat".into(), format!("no output named `{h}` in [[outputs]]")));
        }
    }
    for (i, o) in l.alarm_outputs.iter().enumerate() {
        if !outputs.contains(o.as_str()) {
            f.push((format!("loop.alarm_outputs[{i}]"), format!("no output named `{o}` in [[outputs]]")));
        }
    }
    for (i, lv) in l.ladder.iter().enumerate() {
        if lv.frame_skip == 0 {
            f.push((format!("loop.ladder[{i}].frame_skip"), "must be at least 1".into()));
        }
        if let Some(inp) = lv.pose_input {
            if b.models.pose.is_none() {
                f.push((format!("loop.ladder[{i}].pose_input"), "there is no [models.pose]".into()));
            }
            if inp.iter().any(|&v| v == 0 || v % 32 != 0) {
                f.push((
                    format!("loop.ladder[{i}].pose_input"),
                    format!("{}x{}: width and height must be non-zero multiples of 32", inp[0], inp[1]),
                ));
            }
        }
    }
    if let Some(rt) = &l.realtime {
        if !(1..=99).contains(&rt.priority) {
            f.push(("loop.realtime.priority".into(), format!("{} is outside 1..=99", rt.priority)));
        }
    }
}
