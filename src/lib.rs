//! Confab: a real-time web chat. Server-rendered with Leptos, hydrated by a small WASM bundle.
//!
//! - [`protocol`] and [`avatar`]: shared by the server and the browser, no `cfg`; [`unicode`] asks the
//!   browser for Unicode data it already has, so the bundle does not carry it twice.
//! - [`app`] and [`ui`]: the page and its components, rendered on the server and hydrated in the browser.
//! - `client` (hydrate only): the browser's WebSocket connection.
//! - `server` (ssr only): configuration, the hub, WebSocket sessions and storage.

// The page's view types nest deeply; the release WASM build needs more room to lay them out.
#![recursion_limit = "256"]

pub mod app;
pub mod avatar;
pub mod protocol;
pub mod ui;
pub mod unicode;

#[cfg(feature = "hydrate")]
mod client;
#[cfg(feature = "ssr")]
pub mod server;

/// The WASM entry point: hydrates the server-rendered page.
#[cfg(feature = "hydrate")]
#[wasm_bindgen::prelude::wasm_bindgen]
pub fn hydrate() {
    console_error_panic_hook::set_once();
    leptos::mount::hydrate_body(|| {
        leptos::prelude::provide_context(ui::Connector(client::connect));
        app::App()
    });
}
