//! Inference: the same ONNX file on either backend, behind one small [`Engine`] trait.
//!
//! `ort` (onnxruntime, loaded at run time) is the fast path and the road to TensorRT on the
//! Jetson; `tract` is pure Rust and needs nothing installed. The model adapters
//! ([`detector`], [`pose`]) own preprocessing and decoding and do not know which backend runs.

pub mod accel;
pub mod coco;
#[cfg(feature = "cuda")]
pub mod cuda_pre;
pub mod detector;
pub mod letterbox;
#[cfg(feature = "ort")]
pub mod ort_engine;
pub mod pose;
pub mod preprocess;
pub mod select;
#[cfg(feature = "tract")]
pub mod tract_engine;

use std::path::{Path, PathBuf};

use crate::config::{Backend, Inference};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    I32,
    Other,
}

/// A model input or output as the graph declares it; `-1` marks a dynamic dimension.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<i64>,
}

/// The engine's input buffer, to be filled before [`Engine::run`].
pub enum InputMut<'a> {
    F32(&'a mut [f32]),
    I32(&'a mut [i32]),
}

#[derive(Debug, thiserror::Error)]
pub enum InferError {
    #[error("{}: cannot load model ({backend:?}): {message}", path.display())]
    Load { path: PathBuf, backend: Backend, message: String },
    #[error("{}: model does not match what sideline expects: {message}", path.display())]
    Mismatch { path: PathBuf, message: String },
    #[error("onnxruntime library: {0}")]
    Runtime(String),
    #[error("inference failed: {0}")]
    Run(String),
    #[error("{}: accelerator {accelerator}: {message}", path.display())]
    Accelerator { path: PathBuf, accelerator: crate::config::Accelerator, message: String },
    #[error("backend `{0:?}` is not compiled into this build (cargo feature `{1}`)")]
    NotBuilt(Backend, &'static str),
}

/// A loaded model ready to run: one input, the outputs its adapter asked for, as f32.
pub trait Engine: Send {
    fn backend(&self) -> Backend;
    fn input(&self) -> &TensorSpec;
    /// The selected outputs, in the order they were asked for.
    fn outputs(&self) -> &[TensorSpec];
    /// The input, laid out as the model wants it at the shape it was loaded with. Filled in
    /// place: no copy and no allocation between preprocessing and inference.
    fn input_buffer(&mut self) -> InputMut<'_>;
    /// Runs the model on the input buffer and copies the selected outputs, in order, into `out`,
    /// reusing its buffers.
    fn run(&mut self, out: &mut [Vec<f32>]) -> Result<(), InferError>;
}

/// Loads `path` on `backend`, fixing the input to `shape` where the graph leaves it open and
/// selecting the named `outputs` (the rest of the graph's outputs are neither copied nor, where
/// the backend can prune, computed).
pub fn load(
    path: &Path,
    backend: Backend,
    shape: &[usize],
    dtype: DType,
    outputs: &[&str],
    settings: &Inference,
) -> Result<Box<dyn Engine>, InferError> {
    let engine: Box<dyn Engine> = match backend {
        #[cfg(feature = "ort")]
        Backend::Ort => Box::new(ort_engine::OrtEngine::load(path, shape, dtype, outputs, settings)?),
        #[cfg(not(feature = "ort"))]
        Backend::Ort => return Err(InferError::NotBuilt(backend, "ort")),
        #[cfg(feature = "tract")]
        Backend::Tract => Box::new(tract_engine::TractEngine::load(path, shape, dtype, outputs)?),
        #[cfg(not(feature = "tract"))]
        Backend::Tract => return Err(InferError::NotBuilt(backend, "tract")),
    };
    check_input(path, engine.input(), shape, dtype)?;
    Ok(engine)
}

/// The graph's declared input must accept what the adapter will feed it.
fn check_input(path: &Path, spec: &TensorSpec, shape: &[usize], dtype: DType) -> Result<(), InferError> {
    let mismatch = |message| InferError::Mismatch { path: path.to_path_buf(), message };
    if spec.dtype != dtype {
        return Err(mismatch(format!("input `{}` is {:?}, expected {:?}", spec.name, spec.dtype, dtype)));
    }
    let fits = spec.shape.len() == shape.len()
        && spec.shape.iter().zip(shape).all(|(&d, &s)| d < 0 || d as usize == s);
    if !fits {
        return Err(mismatch(format!(
            "input `{}` has shape {:?}, but the profile's input size gives {:?}",
            spec.name, spec.shape, shape
        )));
    }
    Ok(())
}

/// The error for a requested output the graph does not have.
fn missing_output(path: &Path, name: &str, available: &[&str]) -> InferError {
    InferError::Mismatch {
        path: path.to_path_buf(),
        message: format!("no output named `{name}` (the graph has: {})", available.join(", ")),
    }
}

/// Threads for inference: the profile's choice, else one per core.
pub fn thread_count(settings: &Inference) -> usize {
    if settings.threads > 0 {
        settings.threads
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}
