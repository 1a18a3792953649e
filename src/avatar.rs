//! Avatars: initials and a stable colour from a name. Pure functions, used by the server and the browser alike.

/// Background colours for avatars. Each keeps white text at a WCAG contrast of at least 4.5:1.
pub const PALETTE: [&str; 13] = [
    "#C62828", "#AD1457", "#6A1B9A", "#4527A0", "#283593", "#1565C0", "#00695C", "#2E7D32",
    "#33691E", "#BF360C", "#4E342E", "#37474F", "#8A5300",
];

/// The first letters of up to two words, uppercased. Letters are whole grapheme clusters, so "é", "李"
/// and "👩‍💻" each count as one.
///
/// Leading ASCII punctuation is skipped ("@bob" is "B", "(Ann) Lee" is "AL"): a person reads the letters,
/// not the quote or the handle's sigil. A name of punctuation alone keeps its first character.
pub fn initials(name: &str) -> String {
    let letters: String = name
        .split_whitespace()
        .map(|word| word.trim_start_matches(|c: char| c.is_ascii_punctuation()))
        .filter_map(crate::unicode::first_grapheme)
        .take(2)
        .map(|g| crate::unicode::to_upper(&g))
        .collect();
    if letters.is_empty() {
        name.split_whitespace()
            .find_map(crate::unicode::first_grapheme)
            .unwrap_or_default()
    } else {
        letters
    }
}

/// 32-bit FNV-1a: tiny, fast, and the same on every platform and in every run, unlike a seeded hasher.
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |hash, &b| {
        (hash ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// Index into [`PALETTE`] for a name: stable across tabs, restarts, server and browser.
pub fn color_index(name: &str) -> usize {
    (fnv1a(name.as_bytes()) % PALETTE.len() as u32) as usize
}

/// The avatar colour for a name, as a CSS hex colour.
pub fn color(name: &str) -> &'static str {
    PALETTE[color_index(name)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initials_of_latin_names() {
        assert_eq!(initials("ada lovelace"), "AL");
        assert_eq!(initials("Bob"), "B");
        assert_eq!(initials("  jean  luc  picard "), "JL");
        assert_eq!(initials("élodie ßchen"), "ÉSS");
        assert_eq!(initials(""), "");
    }

    #[test]
    fn initials_of_non_latin_and_emoji_names() {
        assert_eq!(initials("李小龍"), "李");
        assert_eq!(initials("Дмитрий Иванов"), "ДИ");
        assert_eq!(initials("محمد علي"), "مع");
        // A precomposed-free "é" (e + combining acute) stays one letter.
        assert_eq!(initials("e\u{301}mile zola"), "E\u{301}Z");
        assert_eq!(initials("👩‍💻 coder"), "👩‍💻C");
        assert_eq!(initials("🇫🇷 fan"), "🇫🇷F");
        assert_eq!(initials("🦀"), "🦀");
    }

    #[test]
    fn initials_skip_leading_punctuation() {
        assert_eq!(initials("@bob"), "B");
        assert_eq!(initials("(Ann) Lee"), "AL");
        assert_eq!(initials("\"kit\" o'hara"), "KO");
        assert_eq!(initials("<b>Grace</b> Hopper"), "BH");
        assert_eq!(
            initials("-- mia"),
            "M",
            "a word of punctuation alone is skipped"
        );
        assert_eq!(
            initials("?!"),
            "?",
            "a name of punctuation alone keeps its first character"
        );
        assert_eq!(initials("... ???"), ".");
    }

    #[test]
    fn colours_are_stable_known_values() {
        // Fixed expectations computed independently: FNV-1a 32 of the UTF-8 bytes, mod 13.
        assert_eq!(fnv1a(b"Alice"), 752_715_143);
        assert_eq!(color_index("Alice"), 11);
        assert_eq!(color_index("Bob"), 4);
        assert_eq!(color_index("Ana María"), 7);
        assert_eq!(color_index("李小龍"), 2);
        assert_eq!(color_index("🦀 Crab"), 2);
        assert_eq!(color("Alice"), "#37474F");
    }

    fn luminance(hex: &str) -> f64 {
        let channel = |i: usize| {
            let c = f64::from(u8::from_str_radix(&hex[i..i + 2], 16).unwrap()) / 255.0;
            if c <= 0.03928 {
                c / 12.92
            } else {
                ((c + 0.055) / 1.055).powf(2.4)
            }
        };
        0.2126 * channel(1) + 0.7152 * channel(3) + 0.0722 * channel(5)
    }

    #[test]
    fn white_text_is_readable_on_every_colour() {
        for hex in PALETTE {
            let contrast = 1.05 / (luminance(hex) + 0.05);
            assert!(
                contrast >= 4.5,
                "{hex} has contrast {contrast:.2} with white"
            );
        }
        let mut unique = PALETTE.to_vec();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 13);
    }
}
