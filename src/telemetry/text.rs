//! The Prometheus text exposition format (version 0.0.4), both ways: [`Writer`] for the metrics
//! endpoint and [`parse`] for `sideline status`, which reads the endpoint back. Only what the
//! endpoint writes has to be read, but label values are user text (rule names), so escaping is
//! done by the specification on both sides.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Builds one exposition: metric families, each a `# HELP` and `# TYPE` line then its samples.
#[derive(Default)]
pub struct Writer {
    out: String,
}

/// Label pairs of one sample.
pub type Labels<'a> = &'a [(&'a str, &'a str)];

impl Writer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a family; its samples must follow before the next one starts.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.replace('\\', r"\\").replace('\n', r"\n");
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    pub fn sample(&mut self, name: &str, labels: Labels<'_>, value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"");
                escape_label(v, &mut self.out);
                self.out.push('"');
            }
            self.out.push('}');
        }
        self.out.push(' ');
        push_value(value, &mut self.out);
        self.out.push('\n');
    }

    /// A family with a single unlabelled sample.
    pub fn single(&mut self, name: &str, kind: &str, help: &str, value: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    /// The `_bucket`, `_sum` and `_count` samples of one histogram series; `cumulative[i]` counts
    /// observations at or below `bounds[i]`, and its last entry (beyond the bounds) is `+Inf`.
    pub fn histogram(
        &mut self,
        name: &str,
        labels: Labels<'_>,
        bounds: &[f64],
        cumulative: &[u64],
        sum: f64,
    ) {
        let bucket = format!("{name}_bucket");
        for (i, &count) in cumulative.iter().enumerate() {
            let le = bounds.get(i).map_or_else(|| "+Inf".to_string(), |b| format_value(*b));
            let mut with_le: Vec<(&str, &str)> = labels.to_vec();
            with_le.push(("le", &le));
            self.sample(&bucket, &with_le, count as f64);
        }
        self.sample(&format!("{name}_sum"), labels, sum);
        let count = cumulative.last().copied().unwrap_or(0);
        self.sample(&format!("{name}_count"), labels, count as f64);
    }

    pub fn finish(self) -> String {
        self.out
    }
}

fn escape_label(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str(r"\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str(r"\n"),
            c => out.push(c),
        }
    }
}

fn push_value(v: f64, out: &mut String) {
    out.push_str(&format_value(v));
}

/// Integers without a fraction; the special values as the format spells them.
fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// One sample read back.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("metrics line {line}: {message}")]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

/// Reads every sample of an exposition (comments skipped). Anything malformed is an error, not
/// skipped: `sideline status` must not report a number it misread.
pub fn parse(text: &str) -> Result<Vec<Sample>, ParseError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let err = |message: &str| ParseError { line: i + 1, message: message.into() };
        let name_end = line.find(|c: char| c == '{' || c.is_whitespace()).ok_or_else(|| err("no value"))?;
        let name = &line[..name_end];
        let mut rest = &line[name_end..];
        let mut labels = BTreeMap::new();
        if let Some(r) = rest.strip_prefix('{') {
            rest = read_labels(r, &mut labels).map_err(|m| err(&m))?;
        }
        let mut fields = rest.split_whitespace();
        let value = fields.next().ok_or_else(|| err("no value"))?;
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v.parse().map_err(|_| err(&format!("`{v}` is not a number")))?,
        };
        out.push(Sample { name: name.to_string(), labels, value });
    }
    Ok(out)
}

/// Reads `k="v",...}` into `labels`; returns what follows the closing brace.
fn read_labels<'a>(mut s: &'a str, labels: &mut BTreeMap<String, String>) -> Result<&'a str, String> {
    loop {
        s = s.trim_start_matches([' ', ',']);
        if let Some(rest) = s.strip_prefix('}') {
            return Ok(rest);
        }
        let eq = s.find('=').ok_or("label without `=`")?;
        let key = s[..eq].trim().to_string();
        let mut chars = s[eq + 1..].strip_prefix('"').ok_or("label value not quoted")?.char_indices();
        let mut value = String::new();
        let end = loop {
            match chars.next() {
                None => return Err("unterminated label value".into()),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => return Err("unterminated label value".into()),
                },
                Some((_, c)) => value.push(c),
            }
        };
        labels.insert(key, value);
        s = &s[eq + 2 + end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_and_reads_back_escaped_labels_and_histograms() {
        let mut w = Writer::new();
        w.family("x_total", "counter", "Things.\nCounted.");
        w.sample("x_total", &[("rule", r#"a "b" \c"#), ("state", "raised")], 3.0);
        w.family("h_seconds", "histogram", "Latency.");
        w.histogram("h_seconds", &[("stage", "detect")], &[0.001, 0.5], &[1, 4, 5], 0.75);
        let text = w.finish();
        assert!(text.contains("# HELP x_total Things.\\nCounted.\n"), "{text}");
        assert!(text.contains(r#"h_seconds_bucket{stage="detect",le="+Inf"} 5"#), "{text}");
        assert!(text.contains(r#"h_seconds_bucket{stage="detect",le="0.001"} 1"#), "{text}");
        let samples = parse(&text).unwrap();
        assert_eq!(samples.len(), 6);
        assert_eq!(samples[0].labels["rule"], r#"a "b" \c"#);
        assert_eq!(samples[0].value, 3.0);
        let sum = samples.iter().find(|s| s.name == "h_seconds_sum").unwrap();
        assert_eq!(sum.value, 0.75);
    }

    #[test]
    fn malformed_lines_are_errors_with_their_line() {
        assert_eq!(parse("# c\nok 1\nbad{x=\"1} 2\n").unwrap_err().line, 3);
        assert_eq!(parse("a 1\nb\n").unwrap_err().line, 2);
        assert!(parse("a{x=1} 2").is_err(), "unquoted label value");
        assert!(parse("a one").is_err());
    }
}
