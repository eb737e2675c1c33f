//! Alert lines on GPIO, through the Linux GPIO character device (uAPI v2, `gpiocdev`).
//!
//! A latched line is active while any alert routed to it is raised, inactive once all of them
//! have cleared, so a siren or a relay follows the hazard; a pulsed line is active for a set
//! time on each raise (a horn blast), ended by the output thread's tick. Every write is read back; a line
//! that does not hold the level it was driven to is a failure the output stage reports.
//! The chip is found by path, by name (`gpiochip0`) or by label (`tegra234-gpio`, `gpio-sim`
//! banks); the line by offset or by name.

use std::path::{Path, PathBuf};

use gpiocdev::line::{Offset, Value};
use gpiocdev::Request;

use super::{AlertError, AlertOutput, Signal};
use crate::clock::MonoTime;
use crate::config::LineMode;
use crate::rules::AlertState;

/// Alerts held raised on one line at once, allocated once.
const MAX_RAISED: usize = 64;

pub struct GpioOutput {
    name: String,
    req: Request,
    offset: Offset,
    /// (hash of the rule name, track) of every alert holding the line active.
    raised: Vec<(u64, u32)>,
    /// `Some(length)` for a pulsed line, and when the current pulse ends.
    pulse: Option<std::time::Duration>,
    pulse_until: Option<MonoTime>,
}

fn err(output: &str, message: impl std::fmt::Display) -> AlertError {
    AlertError::Drive { output: output.to_string(), message: message.to_string() }
}

/// The chip device that `chip` names: a path, a `/dev` name, or a label.
pub fn find_chip(chip: &str) -> Result<PathBuf, String> {
    if chip.starts_with('/') {
        return Ok(PathBuf::from(chip));
    }
    let dev = Path::new("/dev").join(chip);
    if dev.exists() {
        return Ok(dev);
    }
    let chips = gpiocdev::chip::chips().map_err(|e| format!("listing GPIO chips: {e}"))?;
    let mut labels = Vec::new();
    for path in chips {
        if let Ok(info) = gpiocdev::Chip::from_path(&path).and_then(|c| c.info()) {
            if info.label == chip {
                return Ok(path);
            }
            labels.push(format!("{} ({})", info.name, info.label));
        }
    }
    Err(format!("no GPIO chip named or labelled `{chip}`; chips here: {}", labels.join(", ")))
}

/// The offset of `line` on the chip: a number, or a line name.
pub fn find_line(chip: &Path, line: &str) -> Result<Offset, String> {
    if let Ok(offset) = line.parse::<Offset>() {
        return Ok(offset);
    }
    let c = gpiocdev::Chip::from_path(chip).map_err(|e| format!("{}: {e}", chip.display()))?;
    let n = c.info().map_err(|e| format!("{}: {e}", chip.display()))?.num_lines;
    (0..n)
        .find(|&o| c.line_info(o).is_ok_and(|i| i.name == line))
        .ok_or_else(|| format!("{} has no line named `{line}`", chip.display()))
}

fn name_hash(name: &str) -> u64 {
    // FNV-1a: stable, no allocation.
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

impl GpioOutput {
    /// Requests the line as an output, inactive.
    pub fn open(name: &str, chip: &str, line: &str, active_low: bool) -> Result<Self, AlertError> {
        Self::open_with(name, chip, line, active_low, LineMode::Latched, 0)
    }

    /// [`open`](Self::open) with the line's mode and, for a pulsed line, the pulse length.
    pub fn open_with(
        name: &str,
        chip: &str,
        line: &str,
        active_low: bool,
        mode: LineMode,
        pulse_ms: u32,
    ) -> Result<Self, AlertError> {
        let path = find_chip(chip).map_err(|e| err(name, e))?;
        let offset = find_line(&path, line).map_err(|e| err(name, e))?;
        let mut b = Request::builder();
        b.on_chip(&path)
            .with_consumer(format!("sideline:{name}"))
            .with_line(offset)
            .as_output(Value::Inactive);
        if active_low {
            b.as_active_low();
        }
        let req = b
            .request()
            .map_err(|e| err(name, format!("requesting line {offset} of {}: {e}", path.display())))?;
        let pulse = (mode == LineMode::Pulsed).then(|| std::time::Duration::from_millis(pulse_ms as u64));
        Ok(Self {
            name: name.to_string(),
            req,
            offset,
            raised: Vec::with_capacity(MAX_RAISED),
            pulse,
            pulse_until: None,
        })
    }

    /// Drives the line and checks it holds the level.
    fn set(&mut self, active: bool) -> Result<(), AlertError> {
        let want = if active { Value::Active } else { Value::Inactive };
        self.req.set_value(self.offset, want).map_err(|e| err(&self.name, format!("write: {e}")))?;
        let got = self.req.value(self.offset).map_err(|e| err(&self.name, format!("readback: {e}")))?;
        if got != want {
            return Err(err(&self.name, format!("readback mismatch: drove {want:?}, line reads {got:?}")));
        }
        Ok(())
    }
}

impl AlertOutput for GpioOutput {
    fn name(&self) -> &str {
        &self.name
    }

    fn drive(&mut self, s: &Signal<'_>) -> Result<(), AlertError> {
        if let Some(length) = self.pulse {
            // A pulse per raise; a clear changes nothing, the pulse ends on time.
            if s.state == AlertState::Raised {
                self.pulse_until = Some(MonoTime::now().plus(length));
                return self.set(true);
            }
            return Ok(());
        }
        let key = (name_hash(&s.rule.name), s.track);
        match s.state {
            AlertState::Raised => {
                if !self.raised.contains(&key) {
                    if self.raised.len() == MAX_RAISED {
                        // Keep the line active rather than lose track: the oldest stays counted.
                        tracing::warn!(output = %self.name, "more than {MAX_RAISED} alerts raised at once");
                    } else {
                        self.raised.push(key);
                    }
                }
            }
            AlertState::Cleared => self.raised.retain(|k| *k != key),
        }
        self.set(!self.raised.is_empty())
    }

    fn heartbeat(&mut self, level: bool) -> Result<(), AlertError> {
        self.set(level)
    }

    fn pending(&self) -> bool {
        self.pulse_until.is_some()
    }

    fn tick(&mut self, now: MonoTime) -> Result<(), AlertError> {
        match self.pulse_until {
            Some(until) if now >= until => {
                self.pulse_until = None;
                self.set(false)
            }
            _ => Ok(()),
        }
    }
}
