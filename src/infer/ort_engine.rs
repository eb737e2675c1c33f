//! onnxruntime backend. The library is loaded at run time from `ORT_DYLIB_PATH` or the
//! profile's `inference.ort_library`, so the binary builds and ships without it and a machine
//! without it gets a clear error instead of a crash.
//!
//! Input and output tensors are allocated once, by onnxruntime, at load time; each run calls the
//! C API's `Run` with those tensors, so a frame costs no heap allocation on our side (the safe
//! `Session::run` allocates names and output values on every call).

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::{Environment, GlobalThreadPoolOptions};
use ort::ep::{self, ArbitrarilyConfigurableExecutionProvider, ExecutionProvider};
use ort::session::builder::SessionBuilder;
use ort::session::Session;
use ort::value::{Tensor, TensorElementType, ValueType};
use ort::AsPointer;

use super::accel::{self, EpPlan};
use super::{DType, Engine, InferError, InputMut, TensorSpec};
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
pub(crate) fn environment(settings: &Inference) -> Result<&'static Environment, InferError> {
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

enum InputTensor {
    F32(Tensor<f32>),
    I32(Tensor<i32>),
}

pub struct OrtEngine {
    session: Session,
    input_spec: TensorSpec,
    output_specs: Vec<TensorSpec>,
    input: InputTensor,
    outputs: Vec<Tensor<f32>>,
    // C strings and pointer arrays for `Run`, built once.
    _names: Vec<CString>,
    input_name: *const std::ffi::c_char,
    output_names: Vec<*const std::ffi::c_char>,
    output_ptrs: Vec<*mut ort::sys::OrtValue>,
}

// SAFETY: the raw pointers point into `_names` and `outputs`, which this struct owns and never
// moves out of; the session is used from one thread at a time (`&mut self`).
unsafe impl Send for OrtEngine {}

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
    pub fn load(
        path: &Path,
        shape: &[usize],
        dtype: DType,
        wanted: &[&str],
        settings: &Inference,
    ) -> Result<Self, InferError> {
        let env = environment(settings)?;
        let load_err =
            |message: String| InferError::Load { path: path.to_path_buf(), backend: Backend::Ort, message };
        let mismatch = |message: String| InferError::Mismatch { path: path.to_path_buf(), message };
        // Read the file ourselves: a missing file then reads as an I/O error, not an ORT one.
        let bytes = std::fs::read(path).map_err(|e| load_err(e.to_string()))?;
        let mut builder = Session::builder(env).map_err(|e| load_err(e.to_string()))?;
        let plan = accel::plan(settings, path, &bytes, shape, &accel::DeviceIdentity::probe());
        if let Some(plan) = &plan {
            builder = with_plan(builder, plan, path, settings)?;
        }
        let session = builder.commit_from_memory(&bytes).map_err(|e| match &plan {
            // With the CPU fallback off, a node no GPU provider takes fails here.
            Some(p) => InferError::Accelerator {
                path: path.to_path_buf(),
                accelerator: p.accelerator,
                message: format!("building the session: {e}"),
            },
            None => load_err(e.to_string()),
        })?;
        let inputs: Vec<TensorSpec> = session.inputs().iter().map(|o| spec(o.name(), o.dtype())).collect();
        let all: Vec<TensorSpec> = session.outputs().iter().map(|o| spec(o.name(), o.dtype())).collect();
        let [input_spec] = <[TensorSpec; 1]>::try_from(inputs)
            .map_err(|v| mismatch(format!("expected one input, the graph has {}", v.len())))?;
        let output_specs: Vec<TensorSpec> = wanted
            .iter()
            .map(|w| {
                all.iter().find(|o| o.name == *w).cloned().ok_or_else(|| {
                    let names: Vec<&str> = all.iter().map(|o| o.name.as_str()).collect();
                    super::missing_output(path, w, &names)
                })
            })
            .collect::<Result<_, _>>()?;

        let alloc = session.allocator();
        let tensor_err = |e: ort::Error| load_err(format!("allocating tensors: {e}"));
        let input = match dtype {
            DType::I32 => InputTensor::I32(Tensor::<i32>::new(alloc, shape.to_vec()).map_err(tensor_err)?),
            _ => InputTensor::F32(Tensor::<f32>::new(alloc, shape.to_vec()).map_err(tensor_err)?),
        };
        let mut outputs = Vec::with_capacity(output_specs.len());
        for o in &output_specs {
            if o.dtype != DType::F32 || o.shape.iter().any(|&d| d < 0) {
                return Err(mismatch(format!(
                    "output `{}` is {:?} {:?}; sideline needs float32 outputs of a fixed shape",
                    o.name, o.dtype, o.shape
                )));
            }
            let dims: Vec<usize> = o.shape.iter().map(|&d| d as usize).collect();
            outputs.push(Tensor::<f32>::new(alloc, dims).map_err(tensor_err)?);
        }

        let names: Vec<CString> = std::iter::once(&input_spec.name)
            .chain(output_specs.iter().map(|o| &o.name))
            .map(|n| {
                CString::new(n.as_str()).map_err(|_| mismatch(format!("tensor name `{n}` contains NUL")))
            })
            .collect::<Result<_, _>>()?;
        let input_name = names[0].as_ptr();
        let output_names = names[1..].iter().map(|n| n.as_ptr()).collect();
        let output_ptrs = outputs.iter_mut().map(|t| t.ptr_mut()).collect();
        Ok(Self {
            session,
            input_spec,
            output_specs,
            input,
            outputs,
            _names: names,
            input_name,
            output_names,
            output_ptrs,
        })
    }
}

/// Registers the plan's execution providers, each with `error_on_failure`: a GPU provider that
/// cannot start must stop the device, never leave it running on the CPU.
fn with_plan(
    mut builder: SessionBuilder,
    plan: &EpPlan,
    path: &Path,
    settings: &Inference,
) -> Result<SessionBuilder, InferError> {
    let err = |message: String| InferError::Accelerator {
        path: path.to_path_buf(),
        accelerator: plan.accelerator,
        message,
    };
    let lib = library_path(settings).map_or("?".into(), |l| l.display().to_string());
    let mut eps = Vec::with_capacity(plan.providers.len());
    for (name, options) in &plan.providers {
        let available = match *name {
            accel::TENSORRT => ep::TensorRT::is_available(),
            _ => ep::CUDA::is_available(),
        }
        .map_err(|e| err(e.to_string()))?;
        if !available {
            return Err(err(format!(
                "the onnxruntime library {lib} has no {name} (a CPU-only build?): install an \
                 onnxruntime built with CUDA and TensorRT (JetPack's) and point \
                 inference.ort_library at it, or set inference.accelerator = \"cpu\""
            )));
        }
        eps.push(match *name {
            accel::TENSORRT => options
                .iter()
                .fold(ep::TensorRT::default(), |e, (k, v)| e.with_arbitrary_config(k, v))
                .build()
                .error_on_failure(),
            _ => options
                .iter()
                .fold(ep::CUDA::default(), |e, (k, v)| e.with_arbitrary_config(k, v))
                .build()
                .error_on_failure(),
        });
    }
    if let Some(dir) = &plan.cache_dir {
        std::fs::create_dir_all(dir).map_err(|e| err(format!("engine cache {}: {e}", dir.display())))?;
    }
    builder = builder.with_execution_providers(eps).map_err(|e| err(e.to_string()))?;
    for (key, value) in &plan.session {
        builder = builder.with_config_entry(key, value).map_err(|e| err(e.to_string()))?;
    }
    Ok(builder)
}

impl Engine for OrtEngine {
    fn backend(&self) -> Backend {
        Backend::Ort
    }
    fn input(&self) -> &TensorSpec {
        &self.input_spec
    }
    fn outputs(&self) -> &[TensorSpec] {
        &self.output_specs
    }

    fn input_buffer(&mut self) -> InputMut<'_> {
        match &mut self.input {
            InputTensor::F32(t) => InputMut::F32(t.extract_tensor_mut().1),
            InputTensor::I32(t) => InputMut::I32(t.extract_tensor_mut().1),
        }
    }

    fn run(&mut self, out: &mut [Vec<f32>]) -> Result<(), InferError> {
        let input: *const ort::sys::OrtValue = match &self.input {
            InputTensor::F32(t) => t.ptr(),
            InputTensor::I32(t) => t.ptr(),
        };
        let api = ort::api();
        // SAFETY: every pointer comes from values this engine owns and keeps alive: the session,
        // the input and output tensors (allocated at their exact shapes), and NUL-terminated
        // names. onnxruntime writes results into the pre-allocated output values.
        let status = unsafe {
            (api.Run)(
                self.session.ptr_mut(),
                std::ptr::null(),
                &self.input_name,
                &input,
                1,
                self.output_names.as_ptr(),
                self.output_names.len(),
                self.output_ptrs.as_mut_ptr(),
            )
        };
        if !status.0.is_null() {
            // SAFETY: a non-null status is a live OrtStatus we own and must release.
            let message = unsafe {
                let m =
                    std::ffi::CStr::from_ptr((api.GetErrorMessage)(status.0)).to_string_lossy().into_owned();
                (api.ReleaseStatus)(status.0);
                m
            };
            return Err(InferError::Run(message));
        }
        for (t, dst) in self.outputs.iter().zip(out.iter_mut()) {
            let (_, data) = t.extract_tensor();
            dst.clear();
            dst.extend_from_slice(data);
        }
        Ok(())
    }
}
