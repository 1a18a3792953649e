//! Components, one per file, and the page that puts them together.

mod bots;
mod composer;
mod message_list;
pub(crate) mod message_row;
mod name_dialog;
mod people;
mod room_bar;
mod sidebar;
mod sign_in;
pub mod state;
mod status;

use composer::Composer;
use leptos::prelude::*;
use message_list::MessageList;
use name_dialog::NameDialog;
use people::{People, TypingLine, WhoAmI};
use room_bar::{may_post, ReadOnly, RoomBar};
use sidebar::Sidebar;
use sign_in::SignInPage;
use state::{Bootstrap, Chat, Page};
use status::{Notice, StatusBadge};

/// The chat page. The server renders it with the recent history already in it, so it reads before the
/// WASM loads, and without JavaScript at all; hydration starts from the same state, which the page
/// carries as JSON (see [`Bootstrap::current`]).
#[component]
pub fn ChatPage() -> impl IntoView {
    use leptos::either::EitherOf4;
    match Bootstrap::current() {
        Some(Bootstrap {
            page: Page::SignIn { name, error },
            ..
        }) => EitherOf4::A(view! { <SignInPage name error/> }),
        Some(Bootstrap {
            page:
                Page::Bots {
                    bots,
                    made,
                    error,
                    draft,
                },
            ..
        }) => EitherOf4::D(view! { <bots::BotsPage bots made error draft/> }),
        Some(boot) => EitherOf4::B(view! { <ChatView boot/> }),
        // The server answers 503 instead of rendering without a bootstrap, so only a page whose JSON
        // was tampered with gets here.
        None => EitherOf4::C(
            view! { <p class="loading">"Confab is unavailable right now. Reload to try again."</p> },
        ),
    }
}

/// How the page connects its [`Chat`] to the server; provided by the browser's entry point.
#[derive(Clone, Copy)]
pub struct Connector(pub fn(Chat));

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
    // The connection comes from whoever mounted the page (`crate::hydrate`), so the UI does not depend
    // on the browser-only client module.
    if let Some(Connector(connect)) = use_context::<Connector>() {
        Effect::new(move |_| connect(chat));
    }

    // The title counts what is unread everywhere: "(3) Confab".
    Effect::new(move |_| {
        let unread = chat.unread_total();
        if let Some(document) = web_sys::window().and_then(|w| w.document()) {
            document.set_title(&if unread > 0 {
                format!("({unread}) Confab")
            } else {
                "Confab".to_owned()
            });
        }
    });

    // While the name dialog shows, the chat behind it is inert: no focus, no typing into the composer.
    let inert = move || (!chat.joined.get()).then_some("");
    let may_post = may_post(chat);
    view! {
        <div class="chat">
            <div class="chat-main" inert=inert>
                <header class="topbar">
                    <button type="button" class="menu-toggle" aria-controls="sidebar"
                        aria-expanded=move || chat.menu_open.get().to_string()
                        aria-label="Rooms" on:click=move |_| chat.menu_open.update(|open| *open = !*open)>
                        "☰"
                        {move || (chat.unread_total() > 0).then(|| view! { <span class="badge">{chat.unread_total()}</span> })}
                    </button>
                    <h1>"Confab"</h1>
                    <div class="topbar-end">
                        <WhoAmI/>
                        <People/>
                        <StatusBadge/>
                    </div>
                </header>
                <div class="layout">
                <Sidebar/>
                {when(move || chat.menu_open.get(), move || view! {
                    <div class="menu-backdrop" on:click=move |_| chat.menu_open.set(false)></div>
                })}
                <section class="room" aria-label="Conversation">
                <RoomBar/>
                <Notice/>
                <MessageList/>
                <TypingLine/>
                {when(
                    move || chat.access == crate::protocol::Access::Members && chat.joined.get() && !chat.is_member(),
                    || view! {
                        <p class="slow">"Only members post here: keep your name (in the people list) or sign in."</p>
                    },
                )}
                {when(
                    move || chat.sending_slowly.get(),
                    || view! {
                        <p class="slow" role="status">"Sending slowly: your messages go out in order as the chat allows."</p>
                    },
                )}
                {move || if may_post() {
                    leptos::either::Either::Left(view! { <Composer/> })
                } else {
                    leptos::either::Either::Right(view! { <ReadOnly/> })
                }}
                </section>
                </div>
            </div>
            {when(move || !chat.joined.get(), || view! { <NameDialog/> })}
        </div>
    }
}
