//! Who is here (a count that opens into the list, with a way to leave) and who is typing.

use super::state::Chat;
use super::when;
use leptos::prelude::*;

/// "3 online", which opens into the list of names and the "Leave chat" button.
#[component]
pub fn People() -> impl IntoView {
    let chat = expect_context::<Chat>();
    let count = move || chat.online.with(Vec::len);
    view! {
        <details class="people">
            <summary>{move || format!("{} online", count())}</summary>
            <div class="people-panel">
                <ul aria-label="Online now">
                    <For each=move || chat.online.get() key=|name| name.clone() let(name)>
                        <li>{name}</li>
                    </For>
                </ul>
                {when(
                    move || chat.joined.get(),
                    move || view! {
                        <p class="me">
                            "You are " <strong>{move || chat.name.get().unwrap_or_default()}</strong> "."
                        </p>
                        <button type="button" class="link" on:click=move |_| chat.leave()>
                            "Leave chat or change name"
                        </button>
                    },
                )}
            </div>
        </details>
    }
}

/// "Ann is typing…" under the list.
#[component]
pub fn TypingLine() -> impl IntoView {
    let chat = expect_context::<Chat>();
    let line = move || {
        chat.typing.with(|typing| match typing.as_slice() {
            [] => String::new(),
            [(one, _)] => format!("{one} is typing…"),
            [(a, _), (b, _)] => format!("{a} and {b} are typing…"),
            many => format!("{} people are typing…", many.len()),
        })
    };
    view! { <div class="typing" aria-live="polite">{line}</div> }
}
