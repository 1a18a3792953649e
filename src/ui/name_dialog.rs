//! The "Welcome!" dialog that asks for a name before joining.

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
    let invalid = move || chat.join_error.with(Option::is_some).to_string();

    view! {
        <div class="backdrop">
            <div class="dialog" role="dialog" aria-modal="true" aria-labelledby="welcome-title">
                <h2 id="welcome-title">"Welcome!"</h2>
                <form on:submit=on_submit novalidate>
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
            </div>
        </div>
    }
}
