//! tract backend: pure Rust, nothing to install, same ONNX file. The input shape is fixed at
//! load time so tract can optimise the whole graph for it.

use std::path::Path;

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

use super::{DType, Engine, InferError, InputMut, TensorSpec};
use crate::config::Backend;

pub struct TractEngine {
    state: TypedSimpleState,
    input: TensorSpec,
    outputs: Vec<TensorSpec>,
    shape: Vec<usize>,
    buffer: Buffer,
}

/// tract takes ownership of its input tensors, so the input lives here between runs.
enum Buffer {
    F32(Vec<f32>),
    I32(Vec<i32>),
}

fn to_dtype(dt: DatumType) -> DType {
    match dt {
        DatumType::F32 => DType::F32,
        DatumType::I32 => DType::I32,
        _ => DType::Other,
    }
}

impl TractEngine {
    pub fn load(path: &Path, shape: &[usize], dtype: DType, wanted: &[&str]) -> Result<Self, InferError> {
        let err = |e: TractError| InferError::Load {
            path: path.to_path_buf(),
            backend: Backend::Tract,
            message: format!("{e:#}"),
        };
        let mut model = tract_onnx::onnx().model_for_path(path).map_err(err)?;
        let declared = model.input_fact(0).map_err(err)?.clone();
        let input_name = model.node(model.input_outlets().map_err(err)?[0].node).name.clone();
        // Report the input as declared, before we pin it, so shape checks see the real graph.
        let declared_shape: Vec<i64> = declared
            .shape
            .dims()
            .map(|d| d.concretize().and_then(|d| d.to_i64().ok()).unwrap_or(-1))
            .collect();
        let input = TensorSpec {
            name: input_name,
            dtype: declared.datum_type.concretize().map_or(DType::Other, to_dtype),
            shape: declared_shape,
        };
        if input.dtype != dtype || input.shape.len() != shape.len() {
            // Let `infer::load` report the mismatch with the declared spec.
            return Err(InferError::Mismatch {
                path: path.to_path_buf(),
                message: format!(
                    "input `{}` is {:?} {:?}, expected {:?} of rank {}",
                    input.name,
                    input.dtype,
                    input.shape,
                    dtype,
                    shape.len()
                ),
            });
        }
        let dt = match dtype {
            DType::I32 => i32::datum_type(),
            _ => f32::datum_type(),
        };
        model = model.with_input_fact(0, InferenceFact::dt_shape(dt, shape)).map_err(err)?;
        let labels: Vec<String> = model
            .output_outlets()
            .map_err(err)?
            .iter()
            .map(|o| model.outlet_label(*o).map_or_else(|| model.node(o.node).name.clone(), str::to_string))
            .collect();
        for w in wanted {
            if !labels.iter().any(|l| l == w) {
                let names: Vec<&str> = labels.iter().map(String::as_str).collect();
                return Err(super::missing_output(path, w, &names));
            }
        }
        // Only what is asked for is kept; tract prunes the rest of the graph.
        model.select_outputs_by_name(wanted).map_err(err)?;
        let typed = model.into_optimized().map_err(err)?;
        let outputs = typed
            .output_outlets()
            .map_err(err)?
            .iter()
            .zip(wanted)
            .map(|(o, name)| {
                let fact = typed.outlet_fact(*o)?;
                Ok(TensorSpec {
                    name: name.to_string(),
                    dtype: to_dtype(fact.datum_type),
                    shape: fact.shape.as_concrete().map_or(vec![], |s| s.iter().map(|&d| d as i64).collect()),
                })
            })
            .collect::<TractResult<Vec<_>>>()
            .map_err(err)?;
        let plan = typed.into_runnable().map_err(err)?;
        let state = TypedSimpleState::new(&plan).map_err(err)?;
        let len = shape.iter().product();
        let buffer = match dtype {
            DType::I32 => Buffer::I32(vec![0; len]),
            _ => Buffer::F32(vec![0.0; len]),
        };
        Ok(Self { state, input, outputs, shape: shape.to_vec(), buffer })
    }
}

impl Engine for TractEngine {
    fn backend(&self) -> Backend {
        Backend::Tract
    }
    fn input(&self) -> &TensorSpec {
        &self.input
    }
    fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }

    fn input_buffer(&mut self) -> InputMut<'_> {
        match &mut self.buffer {
            Buffer::F32(v) => InputMut::F32(v),
            Buffer::I32(v) => InputMut::I32(v),
        }
    }

    fn run(&mut self, out: &mut [Vec<f32>]) -> Result<(), InferError> {
        let run_err = |e: TractError| InferError::Run(format!("{e:#}"));
        let tensor = match &self.buffer {
            Buffer::F32(d) => Tensor::from_shape(&self.shape, d),
            Buffer::I32(d) => Tensor::from_shape(&self.shape, d),
        }
        .map_err(run_err)?;
        let result = self.state.run(tvec!(tensor.into())).map_err(run_err)?;
        for (dst, value) in out.iter_mut().zip(result.iter()) {
            let view = value.cast_to::<f32>().map_err(run_err)?;
            let plain = view.try_as_plain_ram().map_err(run_err)?;
            let data = plain.as_slice::<f32>().map_err(run_err)?;
            dst.clear();
            dst.extend_from_slice(data);
        }
        Ok(())
    }
}
