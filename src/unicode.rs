//! The Unicode operations the page needs: the first grapheme cluster of a word, and case mapping.
//!
//! The server uses Rust's tables (and `unicode-segmentation`). The browser already carries the same
//! Unicode data, so the WASM bundle asks it (`Intl.Segmenter`, `toUpperCase`) instead of shipping a
//! second copy: that keeps about 17 KB (brotli) of tables out of every first load.

/// The first user-perceived character of `word` ("é", "李" and "👩‍💻" are one each).
pub fn first_grapheme(word: &str) -> Option<String> {
    #[cfg(not(feature = "hydrate"))]
    {
        use unicode_segmentation::UnicodeSegmentation;
        word.graphemes(true).next().map(str::to_owned)
    }
    #[cfg(feature = "hydrate")]
    {
        browser::first_grapheme(word)
    }
}

/// `text` in upper case, by Unicode's default case mapping ("ß" becomes "SS").
pub fn to_upper(text: &str) -> String {
    #[cfg(not(feature = "hydrate"))]
    {
        text.to_uppercase()
    }
    #[cfg(feature = "hydrate")]
    {
        String::from(js_sys::JsString::from(text).to_upper_case())
    }
}

/// `text` in lower case, for ordering names without regard to case.
pub fn to_lower(text: &str) -> String {
    #[cfg(not(feature = "hydrate"))]
    {
        text.to_lowercase()
    }
    #[cfg(feature = "hydrate")]
    {
        String::from(js_sys::JsString::from(text).to_lower_case())
    }
}

#[cfg(feature = "hydrate")]
mod browser {
    use js_sys::{Array, Intl, Object, Reflect};

    thread_local! {
        /// One segmenter for the page; `None` where the browser has no `Intl.Segmenter`.
        static GRAPHEMES: Option<Intl::Segmenter> = {
            let intl = Reflect::get(&js_sys::global(), &"Intl".into()).ok();
            let supported = intl
                .and_then(|intl| Reflect::has(&intl, &"Segmenter".into()).ok())
                .unwrap_or(false);
            supported.then(|| {
                let options = Object::new();
                let _ = Reflect::set(&options, &"granularity".into(), &"grapheme".into());
                Intl::Segmenter::new(&Array::new(), &options)
            })
        };
    }

    pub fn first_grapheme(word: &str) -> Option<String> {
        let segment = GRAPHEMES.with(|segmenter| {
            segmenter
                .as_ref()
                .and_then(|s| s.segment(word).containing(0))
                .map(|data| String::from(data.segment()))
        });
        // Without a segmenter (old browsers): the first code point.
        segment.or_else(|| word.chars().next().map(String::from))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graphemes_and_case() {
        assert_eq!(first_grapheme("émile").as_deref(), Some("é"));
        assert_eq!(first_grapheme("e\u{301}mile").as_deref(), Some("e\u{301}"));
        assert_eq!(first_grapheme("👩‍💻 dev").as_deref(), Some("👩‍💻"));
        assert_eq!(first_grapheme(""), None);
        assert_eq!(to_upper("straße"), "STRASSE");
        assert_eq!(to_lower("ÉMILE"), "émile");
    }
}
