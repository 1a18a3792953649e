//! The message field and send button.

use super::state::Chat;
use leptos::html;
use leptos::prelude::*;

/// Lines the field grows to before it scrolls.
const MAX_LINES: f64 = 5.0;
/// Milliseconds between typing signals while the user keeps typing.
const TYPING_EVERY_MS: f64 = 2_000.0;

#[component]
pub fn Composer() -> impl IntoView {
    let chat = expect_context::<Chat>();
    let field = NodeRef::<html::Textarea>::new();

    // Grow with the text from one line to MAX_LINES, then scroll (CSS caps the height).
    let fit = move || {
        let Some(el) = field.get_untracked() else {
            return;
        };
        let style = web_sys::HtmlElement::style(&el);
        let _ = style.set_property("height", "auto");
        let line = window()
            .get_computed_style(&el)
            .ok()
            .flatten()
            .and_then(|s| s.get_property_value("line-height").ok())
            // JavaScript's parseFloat, and whole pixels below: Rust's float parsing and formatting
            // would add about 20 KB to the bundle for this one line.
            .map(|v| js_sys::parse_float(&v))
            .filter(|line| line.is_finite())
            .unwrap_or(20.0);
        let padding = f64::from(el.offset_height() - el.client_height()) + 16.0;
        let height = f64::from(el.scroll_height()).min(line * MAX_LINES + padding);
        let _ = style.set_property("height", &format!("{}px", height.ceil() as i32));
    };

    // Typing signals go out at most this often; others show the line for a few seconds after each.
    let last_typing = StoredValue::new(0.0_f64);
    let on_input = move |_| {
        fit();
        let now = js_sys::Date::now();
        if now - last_typing.get_value() > TYPING_EVERY_MS {
            last_typing.set_value(now);
            chat.typing();
        }
    };

    let submit = move || {
        let Some(el) = field.get_untracked() else {
            return;
        };
        if chat.send(&el.value()) {
            last_typing.set_value(0.0);
            el.set_value("");
            fit();
        }
        let _ = el.focus();
    };

    // Focus the field once the user has joined.
    Effect::new(move |_| {
        if chat.joined.get() {
            request_animation_frame(move || {
                if let Some(el) = field.get_untracked() {
                    let _ = el.focus();
                }
            });
        }
    });

    let on_keydown = move |ev: leptos::ev::KeyboardEvent| {
        // Enter sends; Shift+Enter is a newline; Enter that confirms an IME composition does neither.
        if ev.key() == "Enter" && !ev.shift_key() && !ev.is_composing() && ev.key_code() != 229 {
            ev.prevent_default();
            submit();
        }
    };

    view! {
        // A real form: without JavaScript (or before the WASM), the server stores the message and renders
        // the page again; hydrated, the message goes over the socket.
        <form class="composer" method="post" action="/messages" on:submit=move |ev| { ev.prevent_default(); submit(); }>
            <input type="hidden" name="room" value=move || chat.room.get()/>
            <textarea
                node_ref=field
                name="text"
                rows="1"
                placeholder="Write a message..."
                aria-label="Message"
                enterkeyhint="send"
                on:keydown=on_keydown
                on:input=on_input
            ></textarea>
            <button type="submit" class="send" title="Send message" aria-label="Send message">
                <svg viewBox="0 0 24 24" width="22" height="22" aria-hidden="true" focusable="false">
                    <path fill="currentColor" d="M2.01 21 23 12 2.01 3 2 10l15 2-15 2z"></path>
                </svg>
            </button>
        </form>
    }
}
