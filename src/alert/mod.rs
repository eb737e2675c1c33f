//! Alert outputs: where a decision becomes a signal someone acts on.
//!
//! Every output (the simulated log output now; GPIO lines and the serial protocol next) is an
//! [`AlertOutput`]. The loop drives outputs directly, since an alert must not wait behind I/O
//! of lesser importance, and records which outputs were driven and when.

pub mod gpio;
pub mod log;
pub mod serial;

use crate::clock::MonoTime;
use crate::config::{Board, OutputKind};
use crate::rules::{AlertState, RuleMeta};

/// What an output is told.
#[derive(Clone, Copy, Debug)]
pub struct Signal<'a> {
    pub rule: &'a RuleMeta,
    pub state: AlertState,
    pub track: u32,
    pub frame: u64,
    /// Capture time of what raised it, and when that reached the loop (latency runs from here).
    pub capture: MonoTime,
    pub arrived: MonoTime,
}

#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    #[error("output `{output}`: {message}")]
    Drive { output: String, message: String },
    #[error("output `{0}`: kind `{1}` is not supported by this build yet")]
    Unsupported(String, &'static str),
}

/// One alert output.
pub trait AlertOutput: Send {
    fn name(&self) -> &str;
    /// Drives the output for `signal`, returning once it has been driven.
    fn drive(&mut self, signal: &Signal<'_>) -> Result<(), AlertError>;
    /// Sets the heartbeat level, for an output configured as the heartbeat line.
    fn heartbeat(&mut self, level: bool) -> Result<(), AlertError> {
        let _ = level;
        Ok(())
    }
    /// Whether the output has timed work pending (a pulse to end): then the output thread
    /// calls [`tick`](Self::tick) every few milliseconds, else it sleeps until a message.
    fn pending(&self) -> bool {
        false
    }
    fn tick(&mut self, now: MonoTime) -> Result<(), AlertError> {
        let _ = now;
        Ok(())
    }
}

/// Opens the board's outputs, in profile order (rules refer to them by index).
pub fn open_outputs(board: &Board) -> Result<Vec<Box<dyn AlertOutput>>, AlertError> {
    board
        .outputs
        .iter()
        .map(|o| -> Result<Box<dyn AlertOutput>, AlertError> {
            match o.kind {
                OutputKind::Log => Ok(Box::new(log::LogOutput::new(&o.name))),
                OutputKind::Gpio => {
                    let missing =
                        |f: &str| AlertError::Drive { output: o.name.clone(), message: format!("no `{f}`") };
                    let chip = o.chip.as_deref().ok_or_else(|| missing("chip"))?;
                    let line = o.line.as_deref().ok_or_else(|| missing("line"))?;
                    let pulse_ms = o.pulse_ms.unwrap_or(2000);
                    Ok(Box::new(gpio::GpioOutput::open_with(
                        &o.name,
                        chip,
                        line,
                        o.active_low,
                        o.mode,
                        pulse_ms,
                    )?))
                }
                OutputKind::Serial => Ok(Box::new(serial::SerialOutput::open(o)?)),
            }
        })
        .collect()
}
