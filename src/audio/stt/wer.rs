//! Word error rate: how far a transcript is from what was said.
//!
//! The figure the speech-to-text tests and benchmark report, so that "the model works" is a
//! number with a bound, not an impression. Both texts are normalised first (lower case;
//! punctuation other than the apostrophe inside a word becomes a word break: "Hello?" and
//! "hello" are the same word, "don't" stays one word), then compared word by word with the
//! Levenshtein distance: WER = (substitutions + deletions + insertions) / reference words.

/// Errors and reference length of one comparison; add several to pool them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WordErrors {
    /// Substitutions + deletions + insertions.
    pub errors: usize,
    /// Words in the (normalised) reference.
    pub words: usize,
}

impl WordErrors {
    /// The rate. Against an empty reference it is the number of inserted words (as if the
    /// reference had one word), so noise transcribed as words never scores 0.
    pub fn rate(&self) -> f64 {
        match (self.errors, self.words) {
            (0, _) => 0.0,
            (e, 0) => e as f64,
            (e, n) => e as f64 / n as f64,
        }
    }
}

impl std::ops::Add for WordErrors {
    type Output = Self;
    fn add(self, o: Self) -> Self {
        Self { errors: self.errors + o.errors, words: self.words + o.words }
    }
}

impl std::iter::Sum for WordErrors {
    fn sum<I: Iterator<Item = Self>>(iter: I) -> Self {
        iter.fold(Self::default(), |a, b| a + b)
    }
}

/// Word error rate of `hypothesis` against `reference` (0 is perfect; can exceed 1).
pub fn wer(reference: &str, hypothesis: &str) -> f64 {
    word_errors(reference, hypothesis).rate()
}

/// Edit distance in words, and the reference's word count.
pub fn word_errors(reference: &str, hypothesis: &str) -> WordErrors {
    let r = normalize(reference);
    let h = normalize(hypothesis);
    // One row of the Levenshtein table at a time.
    let mut row: Vec<usize> = (0..=h.len()).collect();
    for (i, rw) in r.iter().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, hw) in h.iter().enumerate() {
            let sub = diag + usize::from(rw != hw);
            diag = row[j + 1];
            row[j + 1] = sub.min(row[j] + 1).min(diag + 1);
        }
    }
    WordErrors { errors: row[h.len()], words: r.len() }
}

/// Lower-case words; apostrophes survive only between letters or digits.
pub fn normalize(text: &str) -> Vec<String> {
    let lower = text.to_lowercase().replace('\u{2019}', "'");
    let chars: Vec<char> = lower.chars().collect();
    let mut words = Vec::new();
    let mut word = String::new();
    for (i, &c) in chars.iter().enumerate() {
        let inner_apostrophe = c == '\''
            && i > 0
            && chars[i - 1].is_alphanumeric()
            && chars.get(i + 1).is_some_and(|n| n.is_alphanumeric());
        if c.is_alphanumeric() || inner_apostrophe {
            word.push(c);
        } else if !word.is_empty() {
            words.push(std::mem::take(&mut word));
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_up_to_case_and_punctuation_is_zero() {
        assert_eq!(wer("Ever tried. Ever failed.", "ever tried, ever failed"), 0.0);
        assert_eq!(wer("Hello?", "hello."), 0.0);
        assert_eq!(wer("I don't know.", "I DON'T know"), 0.0);
    }

    #[test]
    fn counts_substitutions_deletions_insertions() {
        // One substitution in four words.
        assert_eq!(wer("we need a medic", "we need a magic"), 0.25);
        // One deletion.
        assert_eq!(word_errors("stop the match now", "stop match now"), WordErrors { errors: 1, words: 4 });
        // Two insertions against two words.
        assert_eq!(wer("thunder storm", "thunder and a storm"), 1.0);
        // Everything wrong and more: can exceed 1.
        assert_eq!(wer("hi", "a b c"), 3.0);
    }

    #[test]
    fn hyphens_and_quotes_split_words() {
        assert_eq!(normalize("Under-and-lightening, 'no'"), ["under", "and", "lightening", "no"]);
        assert_eq!(normalize("it\u{2019}s"), ["it's"]);
    }

    #[test]
    fn empty_texts() {
        assert_eq!(wer("", ""), 0.0);
        assert_eq!(wer("", "noise"), 1.0);
        assert_eq!(wer("word", ""), 1.0);
    }

    #[test]
    fn pools_over_segments() {
        let total: WordErrors =
            [word_errors("a b c d", "a b c x"), word_errors("e f", "e f")].into_iter().sum();
        assert_eq!(total, WordErrors { errors: 1, words: 6 });
        assert!((total.rate() - 1.0 / 6.0).abs() < 1e-12);
    }
}
