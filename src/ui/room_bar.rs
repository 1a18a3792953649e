//! The shown room's header: its name and topic, joining a public room, and its settings (notifications,
//! and for its creator or an admin: rename, topic, invite, archive).

use super::state::Chat;
use super::when;
use crate::protocol::{Notify, RoomInfo, RoomKind, GENERAL_ROOM};
use leptos::html;
use leptos::prelude::*;

/// The shown room without what changes with every message, so the header (and a form being typed
/// in) is drawn again only when the room itself changes.
fn settled(chat: Chat) -> Memo<Option<RoomInfo>> {
    Memo::new(move |_| {
        chat.shown().map(|room| RoomInfo {
            head: 0,
            last_read: 0,
            unread: 0,
            mentions: 0,
            ..room
        })
    })
}

/// A one-field form that calls `then` with what was typed.
#[component]
fn OneField(
    label: &'static str,
    button: &'static str,
    value: String,
    max: &'static str,
    then: impl Fn(String) + 'static,
) -> impl IntoView {
    let field = NodeRef::<html::Input>::new();
    let submit = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        if let Some(input) = field.get_untracked() {
            then(input.value());
        }
    };
    view! {
        <form class="one-field" on:submit=submit>
            <label>{label} <input node_ref=field value=value maxlength=max/></label>
            <button type="submit" class="link">{button}</button>
        </form>
    }
}

#[component]
fn Settings(room: RoomInfo) -> impl IntoView {
    let chat = expect_context::<Chat>();
    let slug = room.slug.clone();
    let manage = chat.may_manage(&room);
    let on_level = {
        let slug = slug.clone();
        move |ev: leptos::ev::Event| {
            let level = match event_target_value(&ev).as_str() {
                "everything" => Notify::Everything,
                "nothing" => Notify::Nothing,
                _ => Notify::Mentions,
            };
            chat.set_notify(&slug, level);
        }
    };
    let level = room.notify.as_str();
    let option = move |value: &'static str, text: &'static str| {
        view! { <option value=value selected=level == value>{text}</option> }
    };
    let managed = manage.then(|| {
        let (rename, retopic, invite, archive) = (slug.clone(), slug.clone(), slug.clone(), slug.clone());
        let archived = room.archived;
        view! {
            <OneField label="Name" button="Rename" value=room.name.clone() max="40"
                then=move |name| chat.update_room(&rename, Some(name), None, None)/>
            <OneField label="Topic" button="Set topic" value=room.topic.clone() max="200"
                then=move |topic| chat.update_room(&retopic, None, Some(topic), None)/>
            <OneField label="Invite" button="Invite" value=String::new() max="40"
                then=move |name| chat.invite(&invite, &name)/>
            <button type="button" class="link" on:click=move |_| chat.update_room(&archive, None, None, Some(!archived))>
                {if archived { "Unarchive room" } else { "Archive room" }}
            </button>
        }
    });
    let leave = (slug != GENERAL_ROOM && room.kind != RoomKind::Direct).then(|| {
        let slug = slug.clone();
        view! { <button type="button" class="link danger" on:click=move |_| chat.leave_room(&slug)>"Leave room"</button> }
    });
    view! {
        <details class="room-settings">
            <summary>"Settings"</summary>
            <div class="settings-panel">
                <label>"Notify me of "
                    <select on:change=on_level aria-label="Notifications for this room">
                        {option("everything", "every message")}
                        {option("mentions", "mentions and direct messages")}
                        {option("nothing", "nothing")}
                    </select>
                </label>
                {managed}
                {leave}
            </div>
        </details>
    }
}

#[component]
pub fn RoomBar() -> impl IntoView {
    let chat = expect_context::<Chat>();
    let room = settled(chat);
    move || {
        room.get().map(|room| {
            let label = room.label(&chat.my_name());
            let slug = room.slug.clone();
            let joinable = !room.member && room.kind == RoomKind::Public && !room.archived;
            let direct = room.kind == RoomKind::Direct;
            let settings = room.member.then(|| {
                let room = room.clone();
                when(move || chat.joined.get(), move || view! { <Settings room=room.clone()/> })
            });
            view! {
                <div class="room-bar">
                    <div class="room-title">
                        <h2>{label}</h2>
                        {(!room.topic.is_empty()).then(|| view! { <span class="topic">{room.topic.clone()}</span> })}
                        {room.archived.then(|| view! { <span class="mark" data-kind="archived">"archived"</span> })}
                        {(room.kind == RoomKind::Private).then(|| view! { <span class="mark" data-kind="private">"private"</span> })}
                    </div>
                    {joinable.then(|| view! {
                        <button type="button" class="primary join-room" on:click=move |_| chat.join_room(&slug)>"Join room"</button>
                    })}
                    {settings}
                </div>
                {direct.then(|| view! {
                    <p class="hint dm-hint">
                        "Only the people in this conversation see it. A guest is in it while their guest name lasts: once they leave the chat, a guest with that name is someone new."
                    </p>
                })}
            }
        })
    }
}

/// Whether the shown room takes messages from us: a member of it, and not archived. `general` always
/// does once joined.
pub fn may_post(chat: Chat) -> impl Fn() -> bool + Copy {
    move || {
        chat.room.with(|slug| slug == GENERAL_ROOM)
            || chat
                .shown()
                .is_some_and(|room| room.member && !room.archived)
    }
}

/// The composer's stand-in where we may not post: join the room, or it is archived.
#[component]
pub fn ReadOnly() -> impl IntoView {
    let chat = expect_context::<Chat>();
    let text = move || match chat.shown() {
        Some(room) if room.archived => "This room is archived: it is kept for reading.".to_owned(),
        Some(room) => format!("You are reading #{}. Join it to post.", room.slug),
        None => String::new(),
    };
    view! { <p class="slow read-only">{text}</p> }
}
