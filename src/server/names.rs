//! Names compared as people read them. Two names are one when their keys are equal: "Ann", "ann", " ANN "
//! and "Ａnn" (full-width) all hold the same place. The name shown stays as its holder typed it.

use unicode_normalization::UnicodeNormalization;

/// The comparison key of a (validated) name: NFKC-normalised, case-folded, normalised again (folding can
/// undo normalisation), with runs of white space read as one space and the ends trimmed.
pub fn name_key(name: &str) -> String {
    let folded: String = caseless::default_case_fold_str(&name.nfkc().collect::<String>())
        .nfkc()
        .collect();
    folded.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::name_key;

    #[test]
    fn names_that_read_alike_have_one_key() {
        let ann = name_key("Ann");
        for alike in ["ann", "ANN", " Ann ", "Ａｎｎ", "Ａnn", "ａＮＮ"] {
            assert_eq!(name_key(alike), ann, "{alike:?}");
        }
        assert_eq!(name_key("Ann  Lee"), name_key("ann lee"));
        // Full case folding, not just lower-casing: ß folds to ss, and a final sigma to σ.
        assert_eq!(name_key("Straße"), name_key("STRASSE"));
        assert_eq!(name_key("ΟΔΟΣ"), name_key("οδος"));
        // Composed and decomposed accents are one name; a different letter is not.
        assert_eq!(name_key("Zo\u{00EB}"), name_key("Zoe\u{0308}"));
        assert_ne!(name_key("Zoë"), name_key("Zoe"));
        assert_ne!(name_key("Ann"), name_key("Anne"));
    }
}
