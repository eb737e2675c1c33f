//! Moonshine tiny-en on onnxruntime: the encoder once per segment, then greedy decoding with
//! the merged decoder and its key/value cache.
//!
//! Why by hand: Moonshine's own runtime is a C++ library shipped only as a binary; the two
//! graphs are ordinary (ORT-format) onnxruntime models, so sideline drives them through the
//! same `ort` crate and process-wide environment as the vision models
//! ([`crate::infer::ort_engine`]), with nothing else to install. The loop follows Moonshine's
//! `MoonshineModel::transcribe` (moonshine-ai/moonshine `core/moonshine-model.cpp`):
//!
//! - encoder: `input_values` f32 `[1, n]` (the samples) and `attention_mask` i64 `[1, n]` (all
//!   ones) give `last_hidden_state` f32 `[1, T, 288]`, T about 41 frames per second;
//! - decoder, step 0: `input_ids` = `[[1]]` (start of text), `encoder_hidden_states`,
//!   `encoder_attention_mask` (the encoder's mask, length n, not T), `use_cache_branch` =
//!   false and, per layer `l` of 6, `past_key_values.l.{decoder,encoder}.{key,value}` as
//!   zeros `[1, 8, 1, 36]` (that branch ignores them); it returns `logits` `[1, 1, 32768]` and
//!   `present.l.*`, the self-attention cache for the first token and the cross-attention
//!   keys and values of the whole segment;
//! - step k > 0: `input_ids` = `[[previous token]]`, `use_cache_branch` = true, the
//!   decoder caches from step k-1 and the encoder caches from step 0 (later steps return empty
//!   `[0, 8, 1, 36]` placeholders in their place);
//! - the next token is the argmax of the logits; decoding ends at token 2 (end of text) or at
//!   the segment's token budget.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use ort::session::{Session, SessionInputValue, SessionOutputs};
use ort::value::{DynValue, Tensor, TensorElementType, TensorRef, ValueType};

use super::{SttError, DECODER_FILE, ENCODER_FILE};
use crate::config::Inference;
use crate::infer::ort_engine;

const START_TOKEN: i64 = 1;
const END_TOKEN: u32 = 2;

/// The two sessions and what is reused from segment to segment.
pub(super) struct Moonshine {
    encoder: Session,
    decoder: Session,
    encoder_path: PathBuf,
    decoder_path: PathBuf,
    /// Whether the encoder takes `attention_mask` (newer exports do).
    encoder_mask: bool,
    /// Whether the decoder takes `encoder_attention_mask`.
    decoder_mask: bool,
    /// `past_key_values.{l}.{decoder,encoder}.{key,value}` for every layer, and the matching
    /// `present.*` outputs, in the same order.
    past_names: Vec<String>,
    present_names: Vec<String>,
    /// Which caches are the decoder's own (renewed every step) rather than cross-attention.
    self_attention: Vec<bool>,
    /// Zeros for step 0, one per cache.
    empty_past: Vec<DynValue>,
    /// `use_cache_branch` = false, true.
    branch: [Tensor<bool>; 2],
    vocab: usize,
}

impl Moonshine {
    /// Opens the encoder and decoder in `dir` and checks their interface; `vocab` is the
    /// tokenizer's size, which the logits must match.
    pub(super) fn open(dir: &Path, settings: &Inference, vocab: usize) -> Result<Self, SttError> {
        let env = ort_engine::environment(settings).map_err(|e| SttError::Runtime(e.to_string()))?;
        let encoder_path = dir.join(ENCODER_FILE);
        let decoder_path = dir.join(DECODER_FILE);
        let threads = crate::infer::thread_count(settings);
        let encoder = session(env, &encoder_path, threads)?;
        let decoder = session(env, &decoder_path, threads)?;

        let mismatch =
            |path: &Path, message: String| SttError::Mismatch { path: path.to_path_buf(), message };
        let enc_inputs = names(encoder.inputs());
        require(&encoder_path, &enc_inputs, "input", &["input_values"])?;
        require(&encoder_path, &names(encoder.outputs()), "output", &["last_hidden_state"])?;
        if let Some(other) = enc_inputs.iter().find(|n| !["input_values", "attention_mask"].contains(n)) {
            return Err(mismatch(&encoder_path, format!("unexpected input `{other}`")));
        }

        let dec_inputs = names(decoder.inputs());
        let dec_outputs = names(decoder.outputs());
        require(
            &decoder_path,
            &dec_inputs,
            "input",
            &["input_ids", "encoder_hidden_states", "use_cache_branch"],
        )?;
        require(&decoder_path, &dec_outputs, "output", &["logits"])?;
        let layers = (0..)
            .take_while(|l| dec_inputs.contains(&format!("past_key_values.{l}.decoder.key").as_str()))
            .count();
        if layers == 0 {
            return Err(mismatch(
                &decoder_path,
                "no `past_key_values.0.decoder.key` input: not a merged decoder with a cache".into(),
            ));
        }
        let mut past_names = Vec::new();
        let mut present_names = Vec::new();
        let mut self_attention = Vec::new();
        for l in 0..layers {
            for kind in ["decoder", "encoder"] {
                for kv in ["key", "value"] {
                    past_names.push(format!("past_key_values.{l}.{kind}.{kv}"));
                    present_names.push(format!("present.{l}.{kind}.{kv}"));
                    self_attention.push(kind == "decoder");
                }
            }
        }
        let past_refs: Vec<&str> = past_names.iter().map(String::as_str).collect();
        let present_refs: Vec<&str> = present_names.iter().map(String::as_str).collect();
        require(&decoder_path, &dec_inputs, "input", &past_refs)?;
        require(&decoder_path, &dec_outputs, "output", &present_refs)?;
        let known = |n: &&str| {
            ["input_ids", "encoder_hidden_states", "use_cache_branch", "encoder_attention_mask"].contains(n)
                || past_refs.contains(n)
        };
        if let Some(other) = dec_inputs.iter().find(|n| !known(n)) {
            return Err(mismatch(&decoder_path, format!("unexpected input `{other}`")));
        }

        // Cache layout [batch, heads, positions, head size] and the vocabulary.
        let cache_shape = shape_of(&decoder, true, "past_key_values.0.decoder.key");
        let (heads, head_dim) = match cache_shape.as_deref() {
            Some(&[_, h, _, d]) if h > 0 && d > 0 => (h as usize, d as usize),
            other => {
                return Err(mismatch(
                    &decoder_path,
                    format!("`past_key_values.0.decoder.key` has shape {other:?}; expected [batch, heads, positions, head size]"),
                ))
            }
        };
        match shape_of(&decoder, false, "logits").as_deref().and_then(<[i64]>::last) {
            Some(&v) if v == vocab as i64 => {}
            other => {
                return Err(mismatch(
                    &decoder_path,
                    format!("`logits` end in {other:?} entries, but tokenizer.bin has {vocab} tokens"),
                ))
            }
        }
        let enc_width = shape_of(&encoder, false, "last_hidden_state").and_then(|s| s.last().copied());
        let dec_width = shape_of(&decoder, true, "encoder_hidden_states").and_then(|s| s.last().copied());
        if enc_width != dec_width {
            return Err(mismatch(
                &decoder_path,
                format!(
                    "takes encoder states {dec_width:?} wide, {} gives {enc_width:?}",
                    encoder_path.display()
                ),
            ));
        }

        let alloc_err = |e: ort::Error| SttError::Load {
            path: decoder_path.clone(),
            message: format!("allocating tensors: {e}"),
        };
        let empty_past = past_names
            .iter()
            .map(|_| {
                Tensor::from_array(([1, heads, 1, head_dim], vec![0f32; heads * head_dim]))
                    .map(Tensor::into_dyn)
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(alloc_err)?;
        let branch = [
            Tensor::from_array(([1usize], vec![false])).map_err(alloc_err)?,
            Tensor::from_array(([1usize], vec![true])).map_err(alloc_err)?,
        ];
        Ok(Self {
            encoder_mask: enc_inputs.contains(&"attention_mask"),
            decoder_mask: dec_inputs.contains(&"encoder_attention_mask"),
            encoder,
            decoder,
            encoder_path,
            decoder_path,
            past_names,
            present_names,
            self_attention,
            empty_past,
            branch,
            vocab,
        })
    }

    /// Token ids for one checked segment, without the start and end tokens; at most
    /// `max_tokens` steps.
    pub(super) fn generate(&mut self, samples: &[f32], max_tokens: usize) -> Result<Vec<u32>, SttError> {
        let n = samples.len();
        let enc_err = run_err(&self.encoder_path);
        let dec_err = run_err(&self.decoder_path);
        let mask = Tensor::from_array(([1, n], vec![1i64; n])).map_err(enc_err)?;

        let audio = TensorRef::from_array_view(([1, n], samples)).map_err(enc_err)?;
        let mut inputs: Vec<(Cow<'_, str>, SessionInputValue<'_>)> =
            vec![("input_values".into(), audio.into())];
        if self.encoder_mask {
            inputs.push(("attention_mask".into(), (&mask).into()));
        }
        let hidden =
            take(self.encoder.run(inputs).map_err(enc_err)?, "last_hidden_state", &self.encoder_path)?;

        let mut past: Vec<Option<DynValue>> = self.past_names.iter().map(|_| None).collect();
        let mut ids = Vec::new();
        let mut token = START_TOKEN;
        for step in 0..max_tokens {
            let input_ids = Tensor::from_array(([1usize, 1], vec![token])).map_err(dec_err)?;
            let mut inputs: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = Vec::with_capacity(4 + past.len());
            inputs.push(("input_ids".into(), input_ids.into()));
            inputs.push(("encoder_hidden_states".into(), (&hidden).into()));
            if self.decoder_mask {
                inputs.push(("encoder_attention_mask".into(), (&mask).into()));
            }
            inputs.push(("use_cache_branch".into(), (&self.branch[usize::from(step > 0)]).into()));
            for ((name, cache), empty) in self.past_names.iter().zip(&past).zip(&self.empty_past) {
                inputs.push((name.as_str().into(), cache.as_ref().unwrap_or(empty).into()));
            }
            let mut out = self.decoder.run(inputs).map_err(dec_err)?;
            let next = argmax_last(&out, self.vocab, &self.decoder_path)?;
            for (i, name) in self.present_names.iter().enumerate() {
                // Cross-attention caches are computed once, at step 0; later steps return
                // empty placeholders for them.
                if step == 0 || self.self_attention[i] {
                    past[i] = Some(out.remove(name).ok_or_else(|| missing(&self.decoder_path, name))?);
                }
            }
            if next == END_TOKEN {
                break;
            }
            ids.push(next);
            token = i64::from(next);
        }
        Ok(ids)
    }
}

/// Reads `path` and opens it in the shared environment (ORT-format files are recognised by
/// onnxruntime from their bytes), on a thread pool of its own that does not spin.
///
/// Why not the shared pool: it spins between kernels, which suits the vision loop's steady
/// stream of large convolutions, but speech arrives in bursts and the decoder runs a few dozen
/// small steps per utterance while the vision loop keeps the cores busy. Spinning threads then
/// fight the loop, and each other, for the CPU: on this project's busy 2-core VM the same
/// transcriptions took 2.5 to 4 times longer on the shared pool (BENCHMARKS.md, "Speech-to-text").
fn session(env: &ort::environment::Environment, path: &Path, threads: usize) -> Result<Session, SttError> {
    let load_err = |message: String| SttError::Load { path: path.to_path_buf(), message };
    // Read it ourselves: a missing file is then an I/O error naming it, not an onnxruntime one.
    let bytes = std::fs::read(path).map_err(|source| SttError::Io { path: path.to_path_buf(), source })?;
    let mut builder = Session::builder(env)
        .and_then(|b| b.with_independent_thread_pool().map_err(ort::Error::from))
        .and_then(|b| b.with_intra_threads(threads).map_err(ort::Error::from))
        .and_then(|b| b.with_config_entry("session.intra_op.allow_spinning", "0").map_err(ort::Error::from))
        .map_err(|e| load_err(e.to_string()))?;
    builder.commit_from_memory(&bytes).map_err(|e| load_err(e.to_string()))
}

fn names(outlets: &[ort::value::Outlet]) -> Vec<&str> {
    outlets.iter().map(|o| o.name()).collect()
}

/// Every name in `wanted` must be among `have`; the error lists what is missing.
fn require(path: &Path, have: &[&str], what: &str, wanted: &[&str]) -> Result<(), SttError> {
    let missing: Vec<&str> = wanted.iter().copied().filter(|w| !have.contains(w)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(SttError::Mismatch {
        path: path.to_path_buf(),
        message: format!("no {what} named {} (the graph has: {})", missing.join(", "), have.join(", ")),
    })
}

/// Declared shape of a float tensor input or output (`-1` where dynamic).
fn shape_of(session: &Session, input: bool, name: &str) -> Option<Vec<i64>> {
    let outlets = if input { session.inputs() } else { session.outputs() };
    match outlets.iter().find(|o| o.name() == name)?.dtype() {
        ValueType::Tensor { ty: TensorElementType::Float32, shape, .. } => {
            Some(shape.iter().copied().collect())
        }
        _ => None,
    }
}

fn run_err(path: &Path) -> impl Fn(ort::Error) -> SttError + Copy + '_ {
    move |e| SttError::Run { path: path.to_path_buf(), message: e.to_string() }
}

fn missing(path: &Path, name: &str) -> SttError {
    SttError::Run { path: path.to_path_buf(), message: format!("the run returned no `{name}`") }
}

/// Takes one named output out of a run's results.
fn take(mut out: SessionOutputs<'_>, name: &str, path: &Path) -> Result<DynValue, SttError> {
    out.remove(name).ok_or_else(|| missing(path, name))
}

/// The most likely next token: argmax over the last position's logits.
fn argmax_last(out: &SessionOutputs<'_>, vocab: usize, path: &Path) -> Result<u32, SttError> {
    let logits = out.get("logits").ok_or_else(|| missing(path, "logits"))?;
    let (_, data) = logits.try_extract_tensor::<f32>().map_err(run_err(path))?;
    let last = data.len().checked_sub(vocab).map(|start| &data[start..]).ok_or_else(|| SttError::Run {
        path: path.to_path_buf(),
        message: format!("`logits` hold {} values, fewer than the {vocab}-token vocabulary", data.len()),
    })?;
    let best = last
        .iter()
        .enumerate()
        .filter(|(_, v)| !v.is_nan())
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i)
        .ok_or_else(|| SttError::Run { path: path.to_path_buf(), message: "`logits` are all NaN".into() })?;
    Ok(best as u32)
}
