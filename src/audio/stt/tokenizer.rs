//! Moonshine's `tokenizer.bin`: token id to bytes, nothing else.
//!
//! The file is the vocabulary of a SentencePiece model with byte fallback, flattened by
//! Moonshine's C++ library (`BinTokenizer`, binary only in the wheel; its source is in
//! moonshine-ai/moonshine `core/bin-tokenizer/`). Entries follow each other with no header; an
//! entry's position is its token id. Each entry is a length, then that many bytes:
//!
//! - `0x00`: an empty entry (an unused id);
//! - `0x01..=0x7f`: the length itself;
//! - `0x80..=0xff` then one more byte `b`: length `b * 128 + (first - 128)`.
//!
//! Ids 0..2 are `<unk>`, `<s>`, `</s>`; 3..258 are the 256 raw bytes; the rest are pieces in
//! which `▁` (U+2581) stands for a space. Decoding concatenates the bytes, drops special
//! tokens (`<...>`), turns `▁` into spaces and trims. Only decoding is needed on the device:
//! the model produces ids, nobody types text into it.
//!
//! The loader never panics on a bad file: a truncated entry is an error naming the file and
//! the offset of the entry.

use std::path::{Path, PathBuf};

use super::SttError;

/// What SentencePiece writes for a space.
const SPACE: &str = "\u{2581}";

/// Id to bytes, as stored in `tokenizer.bin`.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    tokens: Vec<Vec<u8>>,
    path: PathBuf,
}

impl Tokenizer {
    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<Self, SttError> {
        let bytes =
            std::fs::read(path).map_err(|source| SttError::Io { path: path.to_path_buf(), source })?;
        Self::parse(&bytes, path)
    }

    /// Parses the bytes of a `tokenizer.bin`; `path` only names the file in errors.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self, SttError> {
        let err = |offset: usize, message: String| SttError::Tokenizer {
            path: path.to_path_buf(),
            offset,
            message,
        };
        let mut tokens = Vec::new();
        let mut pos = 0;
        while let Some(&first) = bytes.get(pos) {
            let entry = pos;
            pos += 1;
            let len = if first < 0x80 {
                first as usize
            } else {
                let &second = bytes.get(pos).ok_or_else(|| {
                    err(
                        entry,
                        format!(
                            "entry {} has a two-byte length cut off by the end of the file",
                            tokens.len()
                        ),
                    )
                })?;
                pos += 1;
                second as usize * 128 + (first as usize - 128)
            };
            let data = bytes.get(pos..pos + len).ok_or_else(|| {
                err(
                    entry,
                    format!(
                        "entry {} declares {len} bytes but only {} remain in the file",
                        tokens.len(),
                        bytes.len() - pos
                    ),
                )
            })?;
            tokens.push(data.to_vec());
            pos += len;
        }
        if tokens.is_empty() {
            return Err(err(0, "the file holds no tokens".into()));
        }
        Ok(Self { tokens, path: path.to_path_buf() })
    }

    /// Number of ids, used and unused.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The file this vocabulary came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The bytes of token `id`, if the vocabulary has it.
    pub fn token(&self, id: u32) -> Option<&[u8]> {
        self.tokens.get(id as usize).map(Vec::as_slice)
    }

    /// Text of a sequence of ids. Special tokens (`<s>`, `</s>`, `<unk>`, ...) are left out;
    /// an id outside the vocabulary, an empty entry or invalid UTF-8 comes out as U+FFFD
    /// rather than failing: a transcript with one odd character beats none.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            match self.token(id) {
                Some(t) if is_special(t) => {}
                Some(t) if !t.is_empty() => bytes.extend_from_slice(t),
                _ => bytes.extend_from_slice("\u{fffd}".as_bytes()),
            }
        }
        String::from_utf8_lossy(&bytes).replace(SPACE, " ").trim().to_string()
    }
}

/// `<s>`, `</s>`, `<unk>`, `<<ST_12>>`: control tokens, not text (as Moonshine decides it).
fn is_special(t: &[u8]) -> bool {
    t.len() > 2 && t.first() == Some(&b'<') && t.last() == Some(&b'>')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encodes entries as `tokenizer.bin` does.
    fn encode(tokens: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for t in tokens {
            if t.len() < 128 {
                out.push(t.len() as u8);
            } else {
                out.push((t.len() % 128) as u8 + 128);
                out.push((t.len() / 128) as u8);
            }
            out.extend_from_slice(t);
        }
        out
    }

    fn sample() -> Tokenizer {
        let long = vec![b'x'; 300];
        let bytes = encode(&[
            b"<unk>",
            b"<s>",
            b"</s>",
            "\u{2581}Ever".as_bytes(),
            "\u{2581}tried".as_bytes(),
            b",",
            b"",
            &long,
            &[0xc3],
            &[0xa9],
        ]);
        Tokenizer::parse(&bytes, Path::new("t.bin")).unwrap()
    }

    #[test]
    fn parses_short_long_and_empty_entries() {
        let t = sample();
        assert_eq!(t.len(), 10);
        assert_eq!(t.token(1), Some(&b"<s>"[..]));
        assert_eq!(t.token(6), Some(&b""[..]));
        assert_eq!(t.token(7).map(<[u8]>::len), Some(300));
        assert_eq!(t.token(10), None);
    }

    #[test]
    fn decodes_pieces_spaces_bytes_and_skips_specials() {
        let t = sample();
        assert_eq!(t.decode(&[1, 3, 4, 5, 2]), "Ever tried,");
        // Byte-fallback tokens join into one UTF-8 character.
        assert_eq!(t.decode(&[3, 8, 9]), "Ever\u{e9}");
        // Out of range and empty ids do not panic.
        assert_eq!(t.decode(&[3, 6, 999]), "Ever\u{fffd}\u{fffd}");
    }

    #[test]
    fn truncated_files_name_the_file_and_offset() {
        let mut bytes = encode(&[b"<unk>", b"abc"]);
        bytes.push(10); // entry 2 at offset 10 declares 10 bytes
        bytes.extend_from_slice(b"xy");
        let e = Tokenizer::parse(&bytes, Path::new("/m/tokenizer.bin")).unwrap_err().to_string();
        assert!(e.contains("/m/tokenizer.bin") && e.contains("offset 10") && e.contains("entry 2"), "{e}");

        let e = Tokenizer::parse(&[3, b'a', b'b', b'c', 0x85], Path::new("t.bin")).unwrap_err().to_string();
        assert!(e.contains("offset 4") && e.contains("two-byte length"), "{e}");

        let e = Tokenizer::parse(&[], Path::new("t.bin")).unwrap_err().to_string();
        assert!(e.contains("no tokens"), "{e}");
    }

    #[test]
    fn missing_file_names_it() {
        let e = Tokenizer::load(Path::new("/nonexistent/tokenizer.bin")).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/tokenizer.bin"), "{e}");
    }
}
