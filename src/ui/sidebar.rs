//! The sidebar: `#general`, the user's rooms, then their direct messages, each with what is unread;
//! making a room and browsing the public ones. At phone width it is a menu the header opens.

use super::state::Chat;
use super::when;
use crate::protocol::{RoomInfo, RoomKind, GENERAL_ROOM};
use leptos::html;
use leptos::prelude::*;

/// A link to one room: a plain link (which the server renders) that opens the room in place once the
/// page is live. Bold while something is unread; a count, and an `@` count for mentions.
#[component]
fn RoomLink(room: RoomInfo) -> impl IntoView {
    let chat = expect_context::<Chat>();
    let slug = room.slug.clone();
    let href = room.path(&chat.my_name());
    let label = room.label(&chat.my_name());
    let entry = {
        let slug = slug.clone();
        move || {
            chat.rooms.with(|rooms| {
                rooms
                    .iter()
                    .find(|r| r.slug == slug)
                    .map(|r| (r.unread, r.mentions))
            })
        }
    };
    let unread = {
        let entry = entry.clone();
        move || entry().map_or(0, |(unread, _)| unread)
    };
    let mentions = move || entry().map_or(0, |(_, mentions)| mentions);
    let current = {
        let slug = slug.clone();
        move || chat.room.with(|shown| *shown == slug)
    };
    let open = move |ev: leptos::ev::MouseEvent| {
        // A new tab or window still gets the server's page.
        if ev.ctrl_key() || ev.meta_key() || ev.shift_key() || ev.button() != 0 {
            return;
        }
        ev.prevent_default();
        chat.open_room(&slug, true);
    };
    let count = unread.clone();
    view! {
        <li>
            <a href=href class="room-link" class:unread={move || unread() > 0} class:current=current.clone()
                aria-current=move || current().then_some("page") on:click=open>
                <span class="room-name">{label}</span>
                {move || (mentions() > 0).then(|| view! {
                    <span class="badge mention" title="Mentions of you">{format!("@{}", mentions())}</span>
                })}
                {move || (count() > 0).then(|| view! {
                    <span class="badge" title="Unread messages">{count()}</span>
                })}
            </a>
        </li>
    }
}

/// "New room": a name, an optional topic, public or private.
#[component]
fn NewRoom(open: RwSignal<bool>) -> impl IntoView {
    let chat = expect_context::<Chat>();
    let name = NodeRef::<html::Input>::new();
    let topic = NodeRef::<html::Input>::new();
    let private = NodeRef::<html::Input>::new();
    let submit = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let (Some(name), Some(topic), Some(private)) = (
            name.get_untracked(),
            topic.get_untracked(),
            private.get_untracked(),
        ) else {
            return;
        };
        if chat.create_room(&name.value(), &topic.value(), private.checked()) {
            name.set_value("");
            topic.set_value("");
            private.set_checked(false);
            open.set(false);
        }
    };
    view! {
        <form class="new-room" on:submit=submit>
            <label>"Room name" <input node_ref=name name="name" required maxlength="40" placeholder="design"/></label>
            <label>"Topic (optional)" <input node_ref=topic name="topic" maxlength="200"/></label>
            <label class="check"><input node_ref=private type="checkbox" name="private"/>
                " Private: only people you invite can see it"</label>
            <button type="submit" class="primary">"Create room"</button>
        </form>
    }
}

/// "Write to": a conversation with one person or a group of up to seven others, by name.
#[component]
fn WriteTo() -> impl IntoView {
    let chat = expect_context::<Chat>();
    let field = NodeRef::<html::Input>::new();
    let submit = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let Some(input) = field.get_untracked() else {
            return;
        };
        let names: Vec<String> = input
            .value()
            .split(',')
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty())
            .collect();
        if !names.is_empty() {
            chat.direct(names);
            input.set_value("");
        }
    };
    view! {
        <form class="new-room write-to" on:submit=submit>
            <label>"Write to" <input node_ref=field name="with" placeholder="Ann, Bo" aria-describedby="write-to-hint"/></label>
            <p id="write-to-hint" class="hint">"One name, or up to seven separated by commas."</p>
            <button type="submit" class="link">"Start conversation"</button>
        </form>
    }
}

/// "Browse rooms": the public rooms, to read or join.
#[component]
fn Directory() -> impl IntoView {
    let chat = expect_context::<Chat>();
    move || {
        chat.directory.get().map(|rooms| {
            let rooms: Vec<RoomInfo> = rooms.into_iter().filter(|r| r.slug != GENERAL_ROOM).collect();
            let empty = rooms.is_empty();
            view! {
                <div class="directory" role="region" aria-label="Public rooms">
                    <div class="directory-head">
                        <strong>"Public rooms"</strong>
                        <button type="button" class="link" on:click=move |_| chat.directory.set(None)>"Close"</button>
                    </div>
                    {empty.then(|| view! { <p class="hint">"No public rooms yet. Make the first one."</p> })}
                    <ul>
                        {rooms.into_iter().map(|room| {
                            let slug = room.slug.clone();
                            let peek = slug.clone();
                            let member = room.member;
                            view! {
                                <li>
                                    <button type="button" class="link" on:click=move |_| chat.peek_room(&peek)>{format!("#{}", room.slug)}</button>
                                    {(!room.topic.is_empty()).then(|| view! { <span class="hint">{room.topic.clone()}</span> })}
                                    {if member {
                                        leptos::either::Either::Left(view! { <span class="hint">"joined"</span> })
                                    } else {
                                        leptos::either::Either::Right(view! {
                                            <button type="button" class="link" on:click=move |_| chat.join_room(&slug)>"Join"</button>
                                        })
                                    }}
                                </li>
                            }
                        }).collect::<Vec<_>>()}
                    </ul>
                </div>
            }
        })
    }
}

/// Turns on browser notifications: asked only when the user clicks, never on load.
#[component]
fn NotificationsButton() -> impl IntoView {
    // Known only in the browser: the server renders nothing here.
    let state = RwSignal::new(None::<web_sys::NotificationPermission>);
    Effect::new(move |_| state.set(Some(web_sys::Notification::permission())));
    let ask = move |_| {
        if let Ok(promise) = web_sys::Notification::request_permission() {
            let done = wasm_bindgen::closure::Closure::once(move |_: wasm_bindgen::JsValue| {
                state.set(Some(web_sys::Notification::permission()));
            });
            let _ = promise.then(&done);
            done.forget();
        }
    };
    move || match state.get() {
        Some(web_sys::NotificationPermission::Default) => {
            Some(leptos::either::Either::Left(view! {
                <button type="button" class="link" on:click=ask>"Turn on notifications"</button>
            }))
        }
        Some(web_sys::NotificationPermission::Denied) => {
            Some(leptos::either::Either::Right(view! {
                <p class="hint">"Notifications are blocked in this browser's settings."</p>
            }))
        }
        _ => None,
    }
}

/// The rooms, or the direct conversations, of the sidebar.
#[component]
fn RoomList(label: &'static str, direct: bool) -> impl IntoView {
    let chat = expect_context::<Chat>();
    let rooms = move || {
        chat.rooms
            .get()
            .into_iter()
            .filter(|r| (r.kind == RoomKind::Direct) == direct)
            .collect::<Vec<_>>()
    };
    let key = |room: &RoomInfo| (room.slug.clone(), room.name.clone(), room.members.clone());
    view! {
        <ul class="room-list" aria-label=label>
            <For each=rooms key=key let(room)>
                <RoomLink room/>
            </For>
        </ul>
    }
}

#[component]
pub fn Sidebar() -> impl IntoView {
    let chat = expect_context::<Chat>();
    let creating = RwSignal::new(false);
    view! {
        <nav class="sidebar" class:open=move || chat.menu_open.get() aria-label="Rooms" id="sidebar">
            <h2>"Rooms"</h2>
            <RoomList label="Your rooms" direct=false/>
            {when(
                move || chat.joined.get(),
                move || view! {
                    <div class="sidebar-tools">
                        <button type="button" class="link" aria-expanded=move || creating.get().to_string()
                            on:click=move |_| creating.update(|c| *c = !*c)>"+ New room"</button>
                        <button type="button" class="link" on:click=move |_| chat.browse()>"Browse rooms"</button>
                    </div>
                    {when(move || creating.get(), move || view! { <NewRoom open=creating/> })}
                },
            )}
            <Directory/>
            <h2>"Direct messages"</h2>
            <RoomList label="Direct messages" direct=true/>
            {when(move || chat.joined.get(), || view! { <WriteTo/> })}
            <NotificationsButton/>
        </nav>
    }
}
