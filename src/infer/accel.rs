//! GPU execution for `ort` models: which onnxruntime execution provider runs them, with which
//! options, and where TensorRT keeps the engines it builds.
//!
//! This is a plan, plain data, so that everything short of a GPU is testable: the options
//! handed to onnxruntime, the refusal to let a model drift onto the CPU, and the engine cache
//! key. Building an INT8 engine takes minutes on an Orin; the cache makes a restart take
//! milliseconds, and a key over the model bytes, the TensorRT version and the GPU makes sure an
//! engine is never reused where it was not built (engines are specific to all three).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::config::{Accelerator, Inference, Precision};

/// The NVIDIA stack this machine has, as far as engine compatibility goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceIdentity {
    /// GPU or module name, e.g. `NVIDIA Jetson Orin Nano Developer Kit` or `NVIDIA H100`.
    pub gpu: String,
    /// TensorRT library version, from the installed `libnvinfer.so.X.Y.Z`.
    pub tensorrt: Option<String>,
}

/// Directories where `libnvinfer` is looked for: JetPack's, Debian/Ubuntu multiarch, CUDA's, and
/// `LD_LIBRARY_PATH`.
fn library_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> =
        std::env::var_os("LD_LIBRARY_PATH").map(|v| std::env::split_paths(&v).collect()).unwrap_or_default();
    for d in [
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu/nvidia",
        "/usr/lib/x86_64-linux-gnu",
        "/usr/local/cuda/lib64",
        "/usr/local/cuda/targets/aarch64-linux/lib",
        "/usr/lib",
    ] {
        dirs.push(PathBuf::from(d));
    }
    dirs
}

impl DeviceIdentity {
    /// Reads the machine: the Jetson's device-tree model or the desktop driver's GPU model, and
    /// the TensorRT library version. Never fails: what cannot be read is `unknown` / `None`.
    pub fn probe() -> Self {
        Self::probe_in(Path::new("/"), &library_dirs())
    }

    /// [`probe`](Self::probe) with the file system rooted at `root` (tests use a fake tree).
    pub fn probe_in(root: &Path, lib_dirs: &[PathBuf]) -> Self {
        let read = |rel: &str| std::fs::read_to_string(root.join(rel)).ok();
        let jetson = read("proc/device-tree/model").map(|m| m.trim_matches(['\0', '\n', ' ']).to_string());
        let desktop = || {
            let dir = root.join("proc/driver/nvidia/gpus");
            let mut gpus: Vec<_> = std::fs::read_dir(dir).ok()?.flatten().map(|e| e.path()).collect();
            gpus.sort();
            let info = std::fs::read_to_string(gpus.first()?.join("information")).ok()?;
            info.lines().find_map(|l| l.strip_prefix("Model:")).map(|m| m.trim().to_string())
        };
        let gpu = jetson.filter(|m| !m.is_empty()).or_else(desktop).unwrap_or_else(|| "unknown".into());
        let tensorrt =
            lib_dirs.iter().find_map(|d| tensorrt_version_in(&root.join(d.strip_prefix("/").unwrap_or(d))));
        Self { gpu, tensorrt }
    }
}

/// The highest `libnvinfer.so.X.Y.Z` in `dir`.
fn tensorrt_version_in(dir: &Path) -> Option<String> {
    let mut best: Option<Vec<u32>> = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let name = entry.file_name();
        let Some(v) = name.to_str().and_then(|n| n.strip_prefix("libnvinfer.so.")) else { continue };
        let Ok(parts) = v.split('.').map(str::parse::<u32>).collect::<Result<Vec<_>, _>>() else { continue };
        if best.as_ref().is_none_or(|b| parts > *b) {
            best = Some(parts);
        }
    }
    best.map(|v| v.iter().map(u32::to_string).collect::<Vec<_>>().join("."))
}

/// What a built engine depends on; its directory name is the cache key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheKey {
    pub model: String,
    /// First 16 hex digits of the model file's SHA-256.
    pub model_sha: String,
    pub tensorrt: String,
    pub gpu: String,
    pub precision: Precision,
    pub input: Vec<usize>,
}

impl CacheKey {
    pub fn new(
        model: &Path,
        bytes: &[u8],
        input: &[usize],
        precision: Precision,
        id: &DeviceIdentity,
    ) -> Self {
        let digest = Sha256::digest(bytes);
        let mut model_sha = String::with_capacity(16);
        for b in &digest[..8] {
            let _ = write!(model_sha, "{b:02x}");
        }
        Self {
            model: model.file_stem().map_or("model".into(), |s| s.to_string_lossy().into_owned()),
            model_sha,
            tensorrt: id.tensorrt.clone().unwrap_or_else(|| "unknown".into()),
            gpu: id.gpu.clone(),
            precision,
            input: input.to_vec(),
        }
    }

    /// A file-name-safe directory name holding every part of the key.
    pub fn dir_name(&self) -> String {
        let slug = |s: &str| -> String {
            let mut out = String::with_capacity(s.len());
            for c in s.chars() {
                if c.is_ascii_alphanumeric() || c == '.' {
                    out.push(c.to_ascii_lowercase());
                } else if !out.ends_with('-') {
                    out.push('-');
                }
            }
            out.trim_matches('-').to_string()
        };
        let shape = self.input.iter().map(usize::to_string).collect::<Vec<_>>().join("x");
        format!(
            "{}-{}-trt{}-{}-{}-{}",
            slug(&self.model),
            self.model_sha,
            slug(&self.tensorrt),
            slug(&self.gpu),
            format!("{:?}", self.precision).to_lowercase(),
            shape
        )
    }
}

/// The execution providers for one model, in registration order, and session settings.
#[derive(Clone, Debug, PartialEq)]
pub struct EpPlan {
    pub accelerator: Accelerator,
    /// `(onnxruntime provider name, options)`, first one preferred for every node.
    pub providers: Vec<(&'static str, Vec<(String, String)>)>,
    /// Session configuration entries.
    pub session: Vec<(&'static str, String)>,
    /// The model's engine cache directory (TensorRT only).
    pub cache_dir: Option<PathBuf>,
}

pub const TENSORRT: &str = "TensorrtExecutionProvider";
pub const CUDA: &str = "CUDAExecutionProvider";

/// The plan for `model` (its bytes already read) at input `shape`, or `None` on the CPU.
pub fn plan(
    settings: &Inference,
    model: &Path,
    bytes: &[u8],
    shape: &[usize],
    id: &DeviceIdentity,
) -> Option<EpPlan> {
    let cuda = (CUDA, vec![("device_id".to_string(), "0".to_string())]);
    let mut session = Vec::new();
    match settings.accelerator {
        Accelerator::Cpu => None,
        Accelerator::Cuda => {
            session.push(("session.disable_cpu_ep_fallback", "1".to_string()));
            Some(EpPlan { accelerator: Accelerator::Cuda, providers: vec![cuda], session, cache_dir: None })
        }
        Accelerator::Tensorrt => {
            let t = &settings.tensorrt;
            let key = CacheKey::new(model, bytes, shape, t.precision, id);
            let dir = t.cache_dir.join(key.dir_name());
            let dir_s = dir.to_string_lossy().into_owned();
            let on = |b: bool| if b { "1" } else { "0" }.to_string();
            let mut o: Vec<(String, String)> = vec![
                ("device_id".into(), "0".into()),
                ("trt_fp16_enable".into(), on(t.precision != Precision::Fp32)),
                ("trt_int8_enable".into(), on(t.precision == Precision::Int8)),
                ("trt_engine_cache_enable".into(), "1".into()),
                ("trt_engine_cache_path".into(), dir_s.clone()),
                ("trt_timing_cache_enable".into(), "1".into()),
                ("trt_timing_cache_path".into(), dir_s),
                ("trt_max_workspace_size".into(), (t.workspace_mb as u64 * 1024 * 1024).to_string()),
            ];
            if let (Precision::Int8, Some(table)) = (t.precision, &t.calibration_table) {
                o.push(("trt_int8_calibration_table_name".into(), table.clone()));
            }
            if let Some(core) = t.dla_core {
                o.push(("trt_dla_enable".into(), "1".into()));
                o.push(("trt_dla_core".into(), core.to_string()));
            }
            if !t.allow_cpu_nodes {
                session.push(("session.disable_cpu_ep_fallback", "1".to_string()));
            }
            // Nodes TensorRT rejects run on CUDA, not on the CPU.
            Some(EpPlan {
                accelerator: Accelerator::Tensorrt,
                providers: vec![(TENSORRT, o), cuda],
                session,
                cache_dir: Some(dir),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TensorRt;

    fn orin() -> DeviceIdentity {
        DeviceIdentity {
            gpu: "NVIDIA Jetson Orin Nano Developer Kit".into(),
            tensorrt: Some("10.3.0".into()),
        }
    }

    fn settings(accelerator: Accelerator, precision: Precision) -> Inference {
        Inference {
            accelerator,
            tensorrt: TensorRt { precision, cache_dir: "/var/cache/e".into(), ..TensorRt::default() },
            ..Inference::default()
        }
    }

    fn opt<'a>(p: &'a EpPlan, key: &str) -> Option<&'a str> {
        p.providers[0].1.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    #[test]
    fn cpu_has_no_plan() {
        let s = settings(Accelerator::Cpu, Precision::Int8);
        assert!(plan(&s, Path::new("m.onnx"), b"x", &[1, 3], &orin()).is_none());
    }

    #[test]
    fn tensorrt_int8_caches_engines_and_refuses_cpu_nodes() {
        let s = settings(Accelerator::Tensorrt, Precision::Int8);
        let p = plan(&s, Path::new("/m/centernet.onnx"), b"weights", &[1, 512, 512, 3], &orin()).unwrap();
        assert_eq!(p.providers.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [TENSORRT, CUDA]);
        assert_eq!(opt(&p, "trt_int8_enable"), Some("1"));
        assert_eq!(opt(&p, "trt_fp16_enable"), Some("1"), "FP16 for layers INT8 cannot take");
        assert_eq!(opt(&p, "trt_engine_cache_enable"), Some("1"));
        assert_eq!(opt(&p, "trt_timing_cache_enable"), Some("1"));
        let dir = p.cache_dir.clone().unwrap();
        assert_eq!(opt(&p, "trt_engine_cache_path"), Some(dir.to_str().unwrap()));
        assert!(dir.starts_with("/var/cache/e"));
        assert_eq!(opt(&p, "trt_max_workspace_size"), Some("1073741824"));
        assert!(p.session.contains(&("session.disable_cpu_ep_fallback", "1".to_string())));
        assert_eq!(opt(&p, "trt_dla_enable"), None);
    }

    #[test]
    fn precision_dla_calibration_and_cpu_nodes_follow_the_profile() {
        let mut s = settings(Accelerator::Tensorrt, Precision::Fp16);
        s.tensorrt.dla_core = Some(1);
        s.tensorrt.calibration_table = Some("calib.flatbuffers".into());
        s.tensorrt.allow_cpu_nodes = true;
        let p = plan(&s, Path::new("m.onnx"), b"w", &[1, 3], &orin()).unwrap();
        assert_eq!(opt(&p, "trt_int8_enable"), Some("0"));
        assert_eq!(opt(&p, "trt_fp16_enable"), Some("1"));
        assert_eq!(opt(&p, "trt_int8_calibration_table_name"), None, "no table without INT8");
        assert_eq!((opt(&p, "trt_dla_enable"), opt(&p, "trt_dla_core")), (Some("1"), Some("1")));
        assert!(p.session.is_empty());
        s.tensorrt.precision = Precision::Int8;
        let p = plan(&s, Path::new("m.onnx"), b"w", &[1, 3], &orin()).unwrap();
        assert_eq!(opt(&p, "trt_int8_calibration_table_name"), Some("calib.flatbuffers"));
        s.tensorrt.precision = Precision::Fp32;
        let p = plan(&s, Path::new("m.onnx"), b"w", &[1, 3], &orin()).unwrap();
        assert_eq!((opt(&p, "trt_int8_enable"), opt(&p, "trt_fp16_enable")), (Some("0"), Some("0")));
    }

    #[test]
    fn cuda_runs_everything_on_the_gpu_or_fails() {
        let s = settings(Accelerator::Cuda, Precision::Int8);
        let p = plan(&s, Path::new("m.onnx"), b"w", &[1, 3], &orin()).unwrap();
        assert_eq!(p.providers.len(), 1);
        assert_eq!(p.providers[0].0, CUDA);
        assert!(p.cache_dir.is_none());
        assert!(p.session.contains(&("session.disable_cpu_ep_fallback", "1".to_string())));
    }

    #[test]
    fn the_cache_key_changes_with_everything_an_engine_depends_on() {
        let id = orin();
        let base = CacheKey::new(
            Path::new("/a/centernet.onnx"),
            b"weights",
            &[1, 512, 512, 3],
            Precision::Int8,
            &id,
        );
        let name = base.dir_name();
        assert!(name.starts_with("centernet-"), "{name}");
        assert!(
            name.contains("trt10.3.0")
                && name.contains("jetson-orin-nano")
                && name.ends_with("int8-1x512x512x3")
        );
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'), "{name}");
        // Same inputs, same key; the model's directory does not matter, its bytes do.
        let again = CacheKey::new(
            Path::new("/b/centernet.onnx"),
            b"weights",
            &[1, 512, 512, 3],
            Precision::Int8,
            &id,
        );
        assert_eq!(again.dir_name(), name);
        let other_trt = DeviceIdentity { tensorrt: Some("10.4.0".into()), ..id.clone() };
        let other_gpu = DeviceIdentity { gpu: "NVIDIA Jetson AGX Orin".into(), ..id.clone() };
        let variants = [
            CacheKey::new(Path::new("centernet.onnx"), b"weights2", &[1, 512, 512, 3], Precision::Int8, &id),
            CacheKey::new(Path::new("centernet.onnx"), b"weights", &[1, 384, 384, 3], Precision::Int8, &id),
            CacheKey::new(Path::new("centernet.onnx"), b"weights", &[1, 512, 512, 3], Precision::Fp16, &id),
            CacheKey::new(
                Path::new("centernet.onnx"),
                b"weights",
                &[1, 512, 512, 3],
                Precision::Int8,
                &other_trt,
            ),
            CacheKey::new(
                Path::new("centernet.onnx"),
                b"weights",
                &[1, 512, 512, 3],
                Precision::Int8,
                &other_gpu,
            ),
        ];
        for v in variants {
            assert_ne!(v.dir_name(), name);
        }
    }

    #[test]
    fn probe_reads_the_jetson_model_the_driver_and_the_tensorrt_library() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("proc/device-tree")).unwrap();
        std::fs::write(r.join("proc/device-tree/model"), "NVIDIA Jetson AGX Orin Developer Kit\0").unwrap();
        let lib = r.join("usr/lib/aarch64-linux-gnu");
        std::fs::create_dir_all(&lib).unwrap();
        for f in
            ["libnvinfer.so.10", "libnvinfer.so.10.3.0", "libnvinfer.so.8.6.2", "libnvinfer.so.10.3.0.bak"]
        {
            std::fs::write(lib.join(f), "").unwrap();
        }
        let id = DeviceIdentity::probe_in(r, &[PathBuf::from("/usr/lib/aarch64-linux-gnu")]);
        assert_eq!(id.gpu, "NVIDIA Jetson AGX Orin Developer Kit");
        assert_eq!(id.tensorrt.as_deref(), Some("10.3.0"));

        let desk = tempfile::tempdir().unwrap();
        let g = desk.path().join("proc/driver/nvidia/gpus/0000:01:00.0");
        std::fs::create_dir_all(&g).unwrap();
        std::fs::write(g.join("information"), "Model: \t\t NVIDIA H100 80GB HBM3\nIRQ: 1\n").unwrap();
        let id = DeviceIdentity::probe_in(desk.path(), &[PathBuf::from("/nowhere")]);
        assert_eq!(id, DeviceIdentity { gpu: "NVIDIA H100 80GB HBM3".into(), tensorrt: None });
    }
}
