//! The HTML shell and the routes.

use crate::ui::ChatPage;
use leptos::prelude::*;
use leptos_meta::{provide_meta_context, HashedStylesheet, Link, Meta, MetaTags, Title};
use leptos_router::components::{Route, Router, Routes};
use leptos_router::{SsrMode, StaticSegment};

/// The document around the app, rendered on the server only.
pub fn shell(options: LeptosOptions) -> impl IntoView {
    view! {
        <!DOCTYPE html>
        <html lang="en">
            <head>
                <meta charset="utf-8"/>
                <meta name="viewport" content="width=device-width, initial-scale=1, viewport-fit=cover"/>
                <AutoReload options=options.clone()/>
                <HashedStylesheet options=options.clone() id="leptos"/>
                <HydrationScripts options/>
                <MetaTags/>
                // Without JavaScript nobody can join, but the history must stay readable.
                <noscript>
                    <style>".backdrop, .composer, .people { display: none; }"</style>
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
    provide_meta_context();
    view! {
        <Title text="Confab"/>
        <Meta name="description" content="Confab: real-time chat"/>
        <Meta name="theme-color" content="#283593"/>
        <Link rel="icon" type_="image/svg+xml" href="/favicon.svg"/>
        <Router>
            <main>
                <Routes fallback=|| view! { <p class="not-found">"Page not found."</p> }>
                    // In order: the history is in the HTML itself, so it reads without JavaScript.
                    <Route path=StaticSegment("") view=ChatPage ssr=SsrMode::InOrder/>
                </Routes>
            </main>
        </Router>
    }
}
