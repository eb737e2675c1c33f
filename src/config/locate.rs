//! Maps between dotted field paths and places in the profile text.
//!
//! serde reports *which* field is wrong, the TOML parser *where*; validation knows only the
//! field. A flat index of every key and array element with its span answers both ways.

use std::ops::Range;

use toml::de::{DeTable, DeValue};

use super::Problem;

struct Entry {
    path: String,
    /// Span of the key (or of the element, for array items).
    key: Range<usize>,
    value: Range<usize>,
}

pub(super) struct DocIndex {
    entries: Vec<Entry>,
}

impl DocIndex {
    /// Indexes as much of the document as parses; a syntax error leaves the rest unindexed.
    pub fn parse(text: &str) -> Self {
        let (root, _errors) = DeTable::parse_recoverable(text);
        let mut entries = Vec::new();
        walk_table(root.get_ref(), "", &mut entries);
        Self { entries }
    }

    /// Where `path` is written; falls back to its nearest written parent, then the file start.
    fn offset_of(&self, path: &str) -> usize {
        let mut p = path;
        loop {
            if let Some(e) = self.entries.iter().find(|e| e.path == p) {
                return e.key.start;
            }
            match p.rfind(['.', '[']) {
                Some(i) => p = &p[..i],
                None => return 0,
            }
        }
    }

    /// The deepest field whose key or value covers `offset`, else the last key before it.
    fn path_at(&self, offset: usize) -> Option<&str> {
        let covering = self
            .entries
            .iter()
            .filter(|e| e.key.contains(&offset) || e.value.contains(&offset))
            .max_by_key(|e| e.path.len());
        covering
            .or_else(|| self.entries.iter().filter(|e| e.key.start <= offset).max_by_key(|e| e.key.start))
            .map(|e| e.path.as_str())
    }

    pub fn problem_at(&self, text: &str, field: &str, message: String) -> Problem {
        let (line, column) = line_col(text, self.offset_of(field));
        Problem { line, column, field: field.to_string(), message }
    }

    /// Turns a parser or serde error into a located problem. `field` is serde's path when known.
    pub fn problem_from_toml(&self, text: &str, err: &toml::de::Error, field: Option<String>) -> Problem {
        let offset = err.span().map(|s| s.start);
        let field = field
            .filter(|f| !f.is_empty())
            .or_else(|| offset.and_then(|o| self.path_at(o)).map(str::to_string))
            .unwrap_or_else(|| "(top level)".to_string());
        let offset = offset.unwrap_or_else(|| self.offset_of(&field));
        let (line, column) = line_col(text, offset);
        Problem { line, column, field, message: err.message().trim().to_string() }
    }
}

fn walk_table(table: &DeTable<'_>, prefix: &str, out: &mut Vec<Entry>) {
    for (key, value) in table.iter() {
        let path =
            if prefix.is_empty() { key.get_ref().to_string() } else { format!("{prefix}.{}", key.get_ref()) };
        out.push(Entry { path: path.clone(), key: key.span(), value: value.span() });
        walk_value(value.get_ref(), &path, out);
    }
}

fn walk_value(value: &DeValue<'_>, path: &str, out: &mut Vec<Entry>) {
    match value {
        DeValue::Table(t) => walk_table(t, path, out),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let p = format!("{path}[{i}]");
                out.push(Entry { path: p.clone(), key: item.span(), value: item.span() });
                walk_value(item.get_ref(), &p, out);
            }
        }
        _ => {}
    }
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text.as_bytes()[..offset];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let column = String::from_utf8_lossy(&before[line_start..]).chars().count() + 1;
    (line, column)
}

/// Formats serde_path_to_error's path as `a.b[0].c`.
pub(super) fn dotted(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for seg in path.iter() {
        match seg {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Unknown => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nested_array_fields() {
        let text =
            "[a]\nx = 1\n\n[[b.c]]\nname = \"one\"\n\n[[b.c]]\nname = \"two\"\npoly = [[1, 2], [3, 4]]\n";
        let idx = DocIndex::parse(text);
        assert_eq!(line_col(text, idx.offset_of("a.x")), (2, 1));
        assert_eq!(line_col(text, idx.offset_of("b.c[1].poly")), (9, 1));
        assert_eq!(line_col(text, idx.offset_of("b.c[1].poly[1]")), (9, 17));
        // Missing fields fall back to their table.
        assert_eq!(line_col(text, idx.offset_of("b.c[1].nope")).0, 7);
        let off = text.find("two").unwrap();
        assert_eq!(idx.path_at(off), Some("b.c[1].name"));
    }

    #[test]
    fn line_col_counts_chars() {
        assert_eq!(line_col("ab\ncé d", 7), (2, 4));
        assert_eq!(line_col("", 10), (1, 1));
    }
}
