//! The "Welcome!" dialog that asks for a name before joining. It is a real form posting to `/join`: before
//! the WASM has loaded (or without JavaScript) the server joins the browser and renders the page joined;
//! once hydrated, the join goes over the socket and the page stays.

use super::state::Chat;
use leptos::html;
use leptos::prelude::*;

#[component]
pub fn NameDialog() -> impl IntoView {
    let chat = expect_context::<Chat>();
    let input = NodeRef::<html::Input>::new();
    // `autofocus` covers the first load; this covers the dialog coming back, and hydration.
    Effect::new(move |_| {
        if let Some(input) = input.get() {
            let _ = input.focus();
        }
    });
    let on_submit = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        if let Some(input) = input.get() {
            if chat.join(&input.value()).is_err() {
                let _ = input.focus();
            }
        }
    };
    // The server's reason for refusing a posted name comes in the page, as the form's error.
    if chat.join_error.get_untracked().is_none() {
        chat.join_error.set(chat.form_error.get_untracked());
    }
    let invalid = move || chat.join_error.with(Option::is_some).to_string();

    view! {
        <div class="backdrop">
            <div class="dialog" role="dialog" aria-modal="true" aria-labelledby="welcome-title">
                <h2 id="welcome-title">"Welcome!"</h2>
                <form method="post" action="/join" on:submit=on_submit novalidate>
                    <label for="name-input">"Enter your name"</label>
                    <input
                        id="name-input"
                        name="name"
                        type="text"
                        autocomplete="nickname"
                        autofocus
                        node_ref=input
                        aria-invalid=invalid
                        aria-describedby="name-error"
                        on:input=move |_| chat.join_error.set(None)
                    />
                    <p id="name-error" class="field-error" aria-live="assertive">
                        {move || chat.join_error.get()}
                    </p>
                    <button type="submit" class="primary">"Join chat"</button>
                </form>
                <p class="hint">"Kept a name? "<a href="/login">"Sign in"</a></p>
            </div>
        </div>
    }
}
