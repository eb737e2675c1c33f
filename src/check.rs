//! `sideline check`: everything a profile points to, exercised the way `run` would use it,
//! without starting the loop. A profile that passes here starts in the field.

use anyhow::Context;

use crate::config::{Backend, Board, CameraKind, OutputKind};
use crate::infer::detector::Detector;
use crate::infer::pose::PoseEstimator;
use crate::infer::Engine;

/// Runs the checks and returns a human-readable report of what was verified and what could not
/// be verified on this machine.
pub fn check(board: &Board) -> anyhow::Result<String> {
    let mut report = vec![format!("board `{}` (device {})", board.board.name, board.board.device_id)];
    let mut frame_size = None;
    for cam in &board.cameras {
        match cam.kind {
            CameraKind::Sim => {
                let src =
                    crate::capture::y4m::Y4mCamera::open(&cam.source, false, Some((cam.width, cam.height)))
                        .with_context(|| format!("camera `{}`", cam.name))?;
                use crate::capture::FrameSource;
                let info = src.info();
                report.push(format!(
                    "camera `{}`: clip {} {}x{} at {} fps",
                    cam.name,
                    cam.source.display(),
                    info.width,
                    info.height,
                    info.fps
                ));
            }
            CameraKind::V4l2 => report.push(format!(
                "camera `{}`: v4l2 {} {}x{} at {} fps ({})",
                cam.name,
                cam.source.display(),
                cam.width,
                cam.height,
                cam.fps,
                // Only whether the node is there: opening it would take it from a running device.
                if cam.source.exists() { "device present" } else { "no such device on this machine" }
            )),
        }
        frame_size.get_or_insert((cam.width, cam.height));
    }
    let (w, h) = frame_size.context("the profile has no camera")?;
    if let Some(a) = &board.audio {
        report.push(format!("audio: {:?} {} at {} Hz", a.kind, a.source.display(), a.sample_rate));
    }
    let uses_ort = board.models.detector.backend == Backend::Ort
        || board.models.pose.as_ref().is_some_and(|p| p.backend == Backend::Ort);
    #[cfg(feature = "ort")]
    if uses_ort {
        let v = crate::infer::ort_engine::runtime_version(&board.inference)?;
        report.push(format!("onnxruntime: {v}"));
    }
    #[cfg(not(feature = "ort"))]
    let _ = uses_ort;
    let det = Detector::new(&board.models.detector, w, h, &board.inference).context("models.detector")?;
    report.push(describe("detector", &board.models.detector.path, det.engine()));
    if let Some(p) = &board.models.pose {
        let pose = PoseEstimator::new(p, w, h, &board.inference).context("models.pose")?;
        report.push(describe("pose", &p.path, pose.engine()));
        // The smaller pose inputs the ladder may switch to must load too.
        for (i, level) in board.frame_loop.ladder.iter().enumerate() {
            if let Some(input) = level.pose_input {
                let cfg = crate::config::PoseModel { input, ..p.clone() };
                PoseEstimator::new(&cfg, w, h, &board.inference)
                    .with_context(|| format!("loop.ladder[{i}].pose_input {}x{}", input[0], input[1]))?;
            }
        }
    }
    crate::rules::RuleSet::new(board).context("rules")?;
    report.push(format!(
        "rules: {} zone incursion, {} player down, {} whistle, {} camera obstructed, {} crowding, {} thunder, {} fusion, {} collision, {} voice, {} keyword",
        board.rules.zone_incursion.len(),
        board.rules.player_down.len(),
        board.rules.whistle.len(),
        board.rules.camera_obstructed.len(),
        board.rules.crowding.len(),
        board.rules.thunder.len(),
        board.rules.fusion.len(),
        board.rules.collision.len(),
        board.rules.voice.len(),
        board.rules.keyword.len()
    ));
    for o in &board.outputs {
        let note = match o.kind {
            OutputKind::Log => "simulated (log line + events)".to_string(),
            OutputKind::Gpio => {
                let (chip, line) = (o.chip.as_deref().unwrap_or("?"), o.line.as_deref().unwrap_or("?"));
                // A profile for another board is checked here too: a missing chip is reported,
                // not fatal; `run` fails on it.
                match crate::alert::gpio::find_chip(chip)
                    .and_then(|path| crate::alert::gpio::find_line(&path, line).map(|off| (path, off)))
                {
                    Ok((path, off)) => format!("gpio {chip}:{line} = {} line {off}", path.display()),
                    Err(e) => format!("gpio {chip}:{line}: not on this machine ({e})"),
                }
            }
            OutputKind::Serial => {
                let port = o.port.as_deref().unwrap_or("?");
                let here =
                    if std::path::Path::new(port).exists() { "present" } else { "not on this machine" };
                format!(
                    "serial {port} at {} baud, alert protocol docs/SERIAL.md ({here})",
                    o.baud.unwrap_or(115_200)
                )
            }
        };
        report.push(format!("output `{}`: {note}", o.name));
    }
    let l = &board.frame_loop;
    let fps = board.cameras.first().map_or(30.0, |c| c.fps);
    report.push(format!(
        "loop: deadline {:.1} ms after capture; ladder of {} degraded levels; camera-blind after {} ms, \
         loop-stalled after {} ms; heartbeat {}; real-time {}",
        crate::pipeline::frame_budget(board, fps).as_secs_f64() * 1000.0,
        l.ladder.len(),
        l.blind_after_ms,
        l.stall_after_ms,
        l.heartbeat.as_deref().map_or("off".to_string(), |h| format!("on `{h}` every {} ms", l.heartbeat_ms)),
        l.realtime
            .as_ref()
            .map_or("off".to_string(), |r| format!("SCHED_FIFO {} on CPUs {:?}", r.priority, r.cpus)),
    ));
    report.push(format!("storage: {} (budget {} MB)", board.storage.path.display(), board.storage.budget_mb));
    match &board.sync {
        Some(s) => {
            crate::sync::tls::client_config(&s.ca, &s.cert, &s.key).context("sync: TLS files")?;
            report.push(format!(
                "sync: mqtts://{}:{} as `{}`, CA and client certificate load; {} rule pack key(s); \
                 the broker itself is not contacted",
                s.host,
                s.port,
                board.board.device_id,
                s.rulepack_keys.len()
            ));
        }
        None => report.push("sync: off (patterns stay in the local store)".into()),
    }
    Ok(report.join("\n"))
}

fn describe(what: &str, path: &std::path::Path, e: &dyn Engine) -> String {
    let outs: Vec<String> = e.outputs().iter().map(|o| format!("{} {:?}", o.name, o.shape)).collect();
    format!(
        "{what}: {} on {:?}; input {} {:?} {:?}; outputs {}",
        path.display(),
        e.backend(),
        e.input().name,
        e.input().dtype,
        e.input().shape,
        outs.join(", ")
    )
}
