//! Components, one per file, and the page that puts them together.

mod composer;
mod message_list;
mod message_row;
mod name_dialog;
mod people;
pub mod state;
mod status;

use composer::Composer;
use leptos::prelude::*;
use message_list::MessageList;
use name_dialog::NameDialog;
use people::{People, TypingLine};
use state::{Bootstrap, Chat};
use status::{Notice, StatusBadge};

/// The chat page. The server renders it with the recent history already in it, so it reads before the
/// WASM loads, and without JavaScript at all; hydration starts from the same state, which the page
/// carries as JSON (see [`Bootstrap::current`]).
#[component]
pub fn ChatPage() -> impl IntoView {
    use leptos::either::Either;
    match Bootstrap::current() {
        Some(boot) => Either::Left(view! { <ChatView boot/> }),
        // The server answers 503 instead of rendering without a bootstrap, so only a page whose JSON
        // was tampered with gets here.
        None => Either::Right(
            view! { <p class="loading">"Confab is unavailable right now. Reload to try again."</p> },
        ),
    }
}

/// `child` while `cond` holds. Used instead of `<Show>`, whose children are type-erased views: each
/// erased view brings every rendering path (async hydration included) into the bundle.
pub(crate) fn when<V>(
    cond: impl Fn() -> bool + Send + Sync + 'static,
    child: impl Fn() -> V + Send + Sync + 'static,
) -> impl IntoView
where
    V: IntoView + 'static,
{
    let on = Memo::new(move |_| cond());
    move || on.get().then(&child)
}

#[component]
fn ChatView(boot: Bootstrap) -> impl IntoView {
    let chat = Chat::new(boot);
    provide_context(chat);
    // Effects run in the browser only, after hydration: the page must first match the server's HTML.
    #[cfg(feature = "hydrate")]
    Effect::new(move |_| crate::client::connect(chat));

    view! {
        <div class="chat">
            <header class="topbar">
                <h1>"Confab"</h1>
                <div class="topbar-end">
                    <People/>
                    <StatusBadge/>
                </div>
            </header>
            <Notice/>
            <MessageList/>
            <TypingLine/>
            <Composer/>
            {when(move || !chat.joined.get(), || view! { <NameDialog/> })}
        </div>
    }
}
