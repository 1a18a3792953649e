//! The sign-in page at `/login`: a plain form the server handles, so it works the same with JavaScript,
//! without it, and before the WASM has loaded.

use leptos::prelude::*;

#[component]
pub fn SignInPage(name: String, error: Option<String>) -> impl IntoView {
    let invalid = error.is_some().to_string();
    view! {
        <div class="sign-in">
            <form class="dialog" method="post" action="/login" aria-labelledby="sign-in-title">
                <h2 id="sign-in-title">"Sign in"</h2>
                <p class="hint">"Sign in with the name you kept and its password."</p>
                <label for="sign-in-name">"Name"</label>
                <input id="sign-in-name" name="name" type="text" autocomplete="username" required
                    value=name aria-invalid=invalid.clone() aria-describedby="sign-in-error"/>
                <label for="sign-in-password">"Password"</label>
                <input id="sign-in-password" name="password" type="password" autocomplete="current-password"
                    required aria-invalid=invalid aria-describedby="sign-in-error"/>
                <p id="sign-in-error" class="field-error" role="alert">{error}</p>
                <button type="submit" class="primary">"Sign in"</button>
                <p class="hint"><a href="/">"Back to the chat"</a>" (as a guest, with any free name)"</p>
            </form>
        </div>
    }
}
