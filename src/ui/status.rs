//! The connection indicator and the passing-error banner.

use super::state::Chat;
use super::when;
use leptos::prelude::*;
use std::time::Duration;

/// A dot and a word: connected, reconnecting or offline.
#[component]
pub fn StatusBadge() -> impl IntoView {
    let chat = expect_context::<Chat>();
    view! {
        <div class="status" data-status=move || chat.status.get().as_str() role="status" aria-live="polite">
            <span class="dot" aria-hidden="true"></span>
            <span class="label">{move || chat.status.get().label()}</span>
        </div>
    }
}

/// An error that belongs to no message (a refused frame, a message too long); it fades after a few seconds.
#[component]
pub fn Notice() -> impl IntoView {
    let chat = expect_context::<Chat>();
    Effect::new(move |_| {
        if let Some(shown) = chat.notice.get() {
            set_timeout(
                move || {
                    // Clear only if no newer notice replaced this one meanwhile.
                    if chat.notice.get_untracked().as_deref() == Some(shown.as_str()) {
                        chat.notice.set(None);
                    }
                },
                Duration::from_secs(6),
            );
        }
    });
    view! {
        {when(
            move || chat.notice.with(Option::is_some),
            move || view! {
                <div class="notice" role="alert">
                    <span>{move || chat.notice.get().unwrap_or_default()}</span>
                    <button type="button" class="dismiss" aria-label="Dismiss" on:click=move |_| chat.notice.set(None)>
                        "×"
                    </button>
                </div>
            },
        )}
    }
}
