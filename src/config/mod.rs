//! Board profiles: what a device has (cameras, microphone, models, outputs) and what it must watch
//! for (rules), in one TOML file per board.
//!
//! Loading never panics: a malformed or inconsistent profile becomes a [`ConfigError`] listing
//! every problem with file, line, column and the dotted field path, so a person editing the file
//! at the field can fix all of them in one go.

mod locate;
pub mod rulepack;
mod schema;
mod validate;

use std::path::{Path, PathBuf};

pub use schema::*;

use locate::DocIndex;

/// One thing wrong with a profile, located in its file.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub line: usize,
    pub column: usize,
    /// Dotted path of the field, e.g. `rules.zone_incursion[0].polygon`.
    pub field: String,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read board profile: {source}", file.display())]
    Read { file: PathBuf, source: std::io::Error },
    #[error("{}", render(file, problems))]
    Invalid { file: PathBuf, problems: Vec<Problem> },
}

fn render(file: &Path, problems: &[Problem]) -> String {
    let mut out = format!(
        "{}: invalid board profile ({} problem{})",
        file.display(),
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    for p in problems {
        out.push_str(&format!("\n  {}:{}:{}: {}: {}", file.display(), p.line, p.column, p.field, p.message));
    }
    out
}

impl Board {
    /// Reads, parses and validates a profile. Relative paths inside it are resolved against the
    /// profile's own directory, so a profile works from any working directory.
    pub fn load(file: &Path) -> Result<Board, ConfigError> {
        let text = std::fs::read_to_string(file)
            .map_err(|source| ConfigError::Read { file: file.to_path_buf(), source })?;
        Board::from_toml(&text, file)
    }

    /// Parses and validates profile text; `file` names it in errors and anchors relative paths.
    pub fn from_toml(text: &str, file: &Path) -> Result<Board, ConfigError> {
        let invalid = |problems| ConfigError::Invalid { file: file.to_path_buf(), problems };
        let index = DocIndex::parse(text);
        let de = toml::Deserializer::parse(text)
            .map_err(|e| invalid(vec![index.problem_from_toml(text, &e, None)]))?;
        let mut board: Board = serde_path_to_error::deserialize(de).map_err(|e| {
            let field = locate::dotted(e.path());
            invalid(vec![index.problem_from_toml(text, e.inner(), Some(field))])
        })?;
        let base = file.parent().unwrap_or(Path::new("."));
        board.resolve_paths(base);
        let problems: Vec<Problem> = validate::check(&board)
            .into_iter()
            .map(|(field, message)| index.problem_at(text, &field, message))
            .collect();
        if problems.is_empty() {
            Ok(board)
        } else {
            Err(invalid(problems))
        }
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() && !p.as_os_str().is_empty() {
                *p = base.join(&*p);
            }
        };
        for cam in &mut self.cameras {
            if cam.kind == CameraKind::Sim {
                fix(&mut cam.source);
            }
        }
        if let Some(audio) = &mut self.audio {
            if audio.kind == AudioKind::Wav {
                fix(&mut audio.source);
            }
        }
        if let Some(lib) = &mut self.inference.ort_library {
            fix(lib);
        }
        fix(&mut self.inference.tensorrt.cache_dir);
        fix(&mut self.models.detector.path);
        for v in &mut self.models.detector.variants {
            fix(&mut v.path);
        }
        if let Some(pose) = &mut self.models.pose {
            fix(&mut pose.path);
        }
        if let Some(speech) = &mut self.models.speech {
            fix(&mut speech.path);
        }
        fix(&mut self.storage.path);
        if let Some(log) = self.telemetry.as_mut().and_then(|t| t.audit_log.as_mut()) {
            fix(log);
        }
        if let Some(update) = &mut self.update {
            fix(&mut update.dir);
        }
        if let Some(sync) = &mut self.sync {
            fix(&mut sync.ca);
            fix(&mut sync.cert);
            fix(&mut sync.key);
        }
    }
}
