//! `sideline models build`: builds a board's TensorRT engines ahead of time, on the device, so
//! that the first start after an install or a model update does not spend minutes building
//! them while the field goes unwatched; and reports how long a start then takes to load them.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::config::{Accelerator, Board};
use crate::infer::accel::DeviceIdentity;
use crate::pipeline::{frame_budget, ladder::Ladder, perception::Models};

/// Start-up budget for loading every engine from the cache (the seed's target).
const LOAD_TARGET: Duration = Duration::from_millis(500);

pub fn build(board: &Board) -> anyhow::Result<String> {
    let accel = board.inference.accelerator;
    if accel == Accelerator::Cpu {
        bail!(
            "board `{}` runs its models on the CPU (inference.accelerator = \"cpu\"): there are no \
             engines to build",
            board.board.name
        );
    }
    let id = DeviceIdentity::probe();
    let cam = board.cameras.first().context("the profile has no camera")?;
    let mut ladder = Ladder::new(&board.frame_loop, frame_budget(board, cam.fps));
    crate::pipeline::choose_detector(board, &mut ladder);
    let load = || Models::load(board, cam.width, cam.height, &ladder);

    // The first load builds what the cache lacks; the second is what every start will cost.
    let t0 = Instant::now();
    drop(load().context("building engines")?);
    let first = t0.elapsed();
    let t1 = Instant::now();
    drop(load().context("loading the built engines")?);
    let cached = t1.elapsed();

    let mut report = format!(
        "accelerator {accel}\nGPU         {}\nTensorRT    {}\n",
        id.gpu,
        id.tensorrt.as_deref().unwrap_or("library not found")
    );
    report += &format!("first load  {:.1} s (builds engines missing from the cache)\n", first.as_secs_f64());
    report += &format!(
        "cached load {:.0} ms ({} the {} ms target)\n",
        cached.as_secs_f64() * 1e3,
        if cached <= LOAD_TARGET { "within" } else { "OVER" },
        LOAD_TARGET.as_millis()
    );
    if accel == Accelerator::Tensorrt {
        report += &cache_listing(&board.inference.tensorrt.cache_dir)?;
    }
    Ok(report)
}

/// One line per engine directory: its key and the bytes in it.
fn cache_listing(dir: &Path) -> anyhow::Result<String> {
    let mut out = format!("cache       {}\n", dir.display());
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading the engine cache {}", dir.display()))?
        .flatten()
        .filter(|e| e.path().is_dir())
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let bytes: u64 = std::fs::read_dir(e.path())
            .map(|d| d.flatten().filter_map(|f| f.metadata().ok()).map(|m| m.len()).sum())
            .unwrap_or(0);
        out += &format!("  {:<72} {:>8.1} MB\n", e.file_name().to_string_lossy(), bytes as f64 / 1e6);
    }
    Ok(out)
}
