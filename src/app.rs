//! The HTML shell and the page.
//!
//! Confab is one page: no client-side router ships in the bundle. The server routes `/` to the page and
//! everything else to static files or a 404 (`crate::server::router`).

use crate::ui::ChatPage;
use leptos::prelude::*;

/// The document around the app, rendered on the server only.
pub fn shell(options: LeptosOptions) -> impl IntoView {
    // The state hydration starts from, beside the HTML rendered from it (see `Bootstrap::current`).
    let boot = crate::ui::state::Bootstrap::current().map(|boot| boot.to_script_json());
    view! {
        <!DOCTYPE html>
        <html lang="en">
            <head>
                <meta charset="utf-8"/>
                <meta name="viewport" content="width=device-width, initial-scale=1, viewport-fit=cover"/>
                <title>"Confab"</title>
                <meta name="description" content="Confab: real-time chat"/>
                <meta name="theme-color" content="#283593"/>
                <link rel="icon" type="image/svg+xml" href="/favicon.svg"/>
                <AutoReload options=options.clone()/>
                <leptos_meta::HashedStylesheet options=options.clone() id="leptos"/>
                <HydrationScripts options/>
                {boot.map(|json| view! {
                    <script type="application/json" id=crate::ui::state::BOOTSTRAP_ID inner_html=json></script>
                })}
                // Without JavaScript the forms still work (the server handles them); only the live
                // connection's status means nothing.
                <noscript>
                    <style>".status, .load-older, .typing, .menu-toggle, .sidebar-tools, .room-settings { display: none; }
                        @media (max-width: 700px) { .layout { flex-direction: column; }
                        .sidebar { position: static; transform: none; visibility: visible; width: auto; max-height: 30vh; } }"</style>
                </noscript>
            </head>
            <body>
                <App/>
            </body>
        </html>
    }
}

#[component]
pub fn App() -> impl IntoView {
    view! {
        <main>
            <ChatPage/>
        </main>
    }
}
