//! sideline: field safety appliance firmware.
//!
//! Data path, one module each: [`capture`] and [`audio`] (sources) -> [`infer`] (models) ->
//! [`track`] -> [`rules`] -> [`alert`] (outputs), with [`recorder`], [`store`] and [`sync`]
//! taking events off the hot path and [`telemetry`] measuring it. [`pipeline`] is the per-frame
//! loop that ties them together; [`config`] is the board profile that describes a device.

pub mod alert;
pub mod audio;
pub mod audit;
pub mod bench;
pub mod capture;
pub mod check;
pub mod clock;
pub mod config;
pub mod event;
pub mod geometry;
pub mod handoff;
pub mod infer;
pub mod models_cmd;
pub mod pipeline;
pub mod recorder;
pub mod rulepack_cmd;
pub mod rules;
pub mod scenarios;
pub mod signing;
pub mod store;
pub mod sync;
pub mod telemetry;
pub mod track;
pub mod update;
