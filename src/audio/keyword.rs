//! Spoken keywords: does a transcript say one of the configured words or phrases?
//!
//! The speech-to-text model writes what it heard with its own casing and punctuation ("Medic!",
//! "we need a medic."), so both sides are reduced to lowercase words before comparing, and a
//! keyword matches only as whole words in order: "help" is found in "Help, help me" but not in
//! "helpful", and "call an ambulance" only as those three words together.

/// The keywords of one rule, normalised once.
#[derive(Clone, Debug)]
pub struct KeywordSpotter {
    /// Each keyword as written in the profile, and as its words.
    keywords: Vec<(String, Vec<String>)>,
}

impl KeywordSpotter {
    /// Keywords that normalise to no words at all (punctuation only) are ignored; the profile
    /// validation refuses them first.
    pub fn new<S: AsRef<str>>(keywords: &[S]) -> Self {
        let keywords = keywords
            .iter()
            .map(|k| (k.as_ref().to_string(), words(k.as_ref()).collect::<Vec<_>>()))
            .filter(|(_, w)| !w.is_empty())
            .collect();
        Self { keywords }
    }

    /// The first keyword (in profile order) the transcript says, as the profile wrote it.
    pub fn find(&self, transcript: &str) -> Option<&str> {
        let said: Vec<String> = words(transcript).collect();
        self.keywords
            .iter()
            .find(|(_, want)| said.windows(want.len()).any(|w| w == want.as_slice()))
            .map(|(k, _)| k.as_str())
    }
}

/// Lowercase words: runs of letters, digits and apostrophes inside words ("don't").
pub fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !(c.is_alphanumeric() || c == '\''))
        .map(|w| w.trim_matches('\'').to_lowercase())
        .filter(|w| !w.is_empty())
}

/// Whether a profile keyword has any words to match.
pub fn is_matchable(keyword: &str) -> bool {
    words(keyword).next().is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_words_any_case_any_punctuation() {
        let k = KeywordSpotter::new(&["help", "medic"]);
        assert_eq!(k.find("Help, help me!"), Some("help"));
        assert_eq!(k.find("We need a MEDIC."), Some("medic"));
        assert_eq!(k.find("That was helpful"), None);
        assert_eq!(k.find("medical staff"), None);
        assert_eq!(k.find(""), None);
    }

    #[test]
    fn profile_order_decides_between_two() {
        let k = KeywordSpotter::new(&["medic", "help"]);
        assert_eq!(k.find("help, we need a medic"), Some("medic"));
    }

    #[test]
    fn phrases_match_only_as_consecutive_words() {
        let k = KeywordSpotter::new(&["call an ambulance"]);
        assert_eq!(k.find("Somebody call an ambulance!"), Some("call an ambulance"));
        assert_eq!(k.find("call him, an ambulance is here"), None);
        assert_eq!(k.find("call an"), None);
    }

    #[test]
    fn apostrophes_stay_inside_words_and_quotes_go() {
        let k = KeywordSpotter::new(&["don't move"]);
        assert_eq!(k.find("'Don't move,' he said"), Some("don't move"));
        assert!(!is_matchable("?!"));
        assert!(KeywordSpotter::new(&["?!"]).find("?!").is_none());
    }
}
