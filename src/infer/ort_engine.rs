//! onnxruntime backend. The library is loaded at run time from `ORT_DYLIB_PATH` or the
//! profile's `inference.ort_library`, so the binary builds and ships without it and a machine
//! without it gets a clear error instead of a crash.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::{Environment, GlobalThreadPoolOptions};
use ort::session::Session;
use ort::value::{TensorElementType, TensorRef, ValueType};

use super::{DType, Engine, InferError, Input, TensorSpec};
use crate::config::{Backend, Inference};

static ENV: OnceLock<Result<Environment, String>> = OnceLock::new();

/// Where the library is looked for, in order.
pub fn library_path(settings: &Inference) -> Option<PathBuf> {
    match std::env::var_os("ORT_DYLIB_PATH") {
        Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ => settings.ort_library.clone(),
    }
}

/// The process-wide environment: one library, one shared thread pool for all sessions (two
/// sessions with pools of their own fight over two cores and lose 40% throughput).
fn environment(settings: &Inference) -> Result<&'static Environment, InferError> {
    ENV.get_or_init(|| {
        let lib = library_path(settings).ok_or_else(|| {
            "not configured: set ORT_DYLIB_PATH or inference.ort_library (scripts/setup fetches it)"
                .to_string()
        })?;
        if !lib.is_file() {
            return Err(format!(
                "{} does not exist (run scripts/setup, or point ORT_DYLIB_PATH at libonnxruntime.so)",
                lib.display()
            ));
        }
        // Load the library before anything else touches the ort API: ort panics otherwise.
        let builder = ort::init_from(&lib).map_err(|e| e.to_string())?;
        let pool = GlobalThreadPoolOptions::default()
            .with_intra_threads(super::thread_count(settings))
            .and_then(|p| p.with_spin_control(true))
            .map_err(|e| e.to_string())?;
        builder
            .with_name("sideline")
            .with_telemetry(false)
            .with_global_thread_pool(pool)
            .build()
            .map_err(|e| format!("{}: {e}", lib.display()))
    })
    .as_ref()
    .map_err(|e| InferError::Runtime(e.clone()))
}

/// Loads the library and says which file it is (its versioned name, through symlinks).
pub fn runtime_version(settings: &Inference) -> Result<String, InferError> {
    environment(settings)?;
    let lib = library_path(settings).unwrap_or_default();
    Ok(std::fs::canonicalize(&lib).unwrap_or(lib).display().to_string())
}

pub struct OrtEngine {
    session: Session,
    input: TensorSpec,
    outputs: Vec<TensorSpec>,
}

fn spec(name: &str, ty: &ValueType) -> TensorSpec {
    let (dtype, shape) = match ty {
        ValueType::Tensor { ty, shape, .. } => (
            match ty {
                TensorElementType::Float32 => DType::F32,
                TensorElementType::Int32 => DType::I32,
                _ => DType::Other,
            },
            shape.iter().copied().collect(),
        ),
        _ => (DType::Other, vec![]),
    };
    TensorSpec { name: name.to_string(), dtype, shape }
}

impl OrtEngine {
    pub fn load(path: &Path, wanted: &[&str], settings: &Inference) -> Result<Self, InferError> {
        let env = environment(settings)?;
        let load_err = |e: ort::Error| InferError::Load {
            path: path.to_path_buf(),
            backend: Backend::Ort,
            message: e.to_string(),
        };
        // Read the file ourselves: a missing file then reads as an I/O error, not an ORT one.
        let bytes = std::fs::read(path).map_err(|e| InferError::Load {
            path: path.to_path_buf(),
            backend: Backend::Ort,
            message: e.to_string(),
        })?;
        let session =
            Session::builder(env).map_err(load_err)?.commit_from_memory(&bytes).map_err(load_err)?;
        let inputs: Vec<TensorSpec> = session.inputs().iter().map(|o| spec(o.name(), o.dtype())).collect();
        let all: Vec<TensorSpec> = session.outputs().iter().map(|o| spec(o.name(), o.dtype())).collect();
        let outputs = wanted
            .iter()
            .map(|w| {
                all.iter().find(|o| o.name == *w).cloned().ok_or_else(|| {
                    let names: Vec<&str> = all.iter().map(|o| o.name.as_str()).collect();
                    super::missing_output(path, w, &names)
                })
            })
            .collect::<Result<_, _>>()?;
        let [input] = <[TensorSpec; 1]>::try_from(inputs).map_err(|v| InferError::Mismatch {
            path: path.to_path_buf(),
            message: format!("expected one input, the graph has {}", v.len()),
        })?;
        Ok(Self { session, input, outputs })
    }
}

impl Engine for OrtEngine {
    fn backend(&self) -> Backend {
        Backend::Ort
    }
    fn input(&self) -> &TensorSpec {
        &self.input
    }
    fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }

    fn run(&mut self, shape: &[usize], input: Input<'_>, out: &mut [Vec<f32>]) -> Result<(), InferError> {
        let run_err = |e: ort::Error| InferError::Run(e.to_string());
        let outputs = match input {
            Input::F32(d) => {
                let t = TensorRef::from_array_view((shape, d)).map_err(run_err)?;
                self.session.run(ort::inputs![t]).map_err(run_err)?
            }
            Input::I32(d) => {
                let t = TensorRef::from_array_view((shape, d)).map_err(run_err)?;
                self.session.run(ort::inputs![t]).map_err(run_err)?
            }
        };
        for (spec, dst) in self.outputs.iter().zip(out.iter_mut()) {
            let value = outputs
                .get(&spec.name)
                .ok_or_else(|| InferError::Run(format!("output `{}` missing from the result", spec.name)))?;
            let (_, data) = value.try_extract_tensor::<f32>().map_err(run_err)?;
            dst.clear();
            dst.extend_from_slice(data);
        }
        Ok(())
    }
}
