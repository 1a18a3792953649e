//! The scrolling list of rows. It follows new messages while the reader is at the bottom, and otherwise
//! keeps their place and offers a "New messages" button. Scrolling to the top loads older pages.

use super::message_row::{EventRow, PendingRow};
use super::state::Chat;
use super::when;
use crate::protocol::ChatEvent;
use leptos::html;
use leptos::prelude::*;

/// How close to the bottom (in CSS pixels) still counts as "at the bottom".
const STICK_DISTANCE: i32 = 80;
/// How close to the top starts loading the page before.
const LOAD_OLDER_DISTANCE: i32 = 120;

/// Scrolls the "New messages" divider to the top of the list if there is one, and to the end otherwise.
fn open_at_divider(list: NodeRef<html::Div>, to_bottom: impl Fn(bool)) {
    let divider = list
        .get_untracked()
        .and_then(|el| el.query_selector(".unread-divider").ok().flatten());
    match divider {
        Some(divider) => divider.scroll_into_view(),
        None => to_bottom(false),
    }
}

#[component]
pub fn MessageList() -> impl IntoView {
    let chat = expect_context::<Chat>();
    let list = NodeRef::<html::Div>::new();
    // Whether to follow new rows. Only the reader scrolling *up* unsticks it, so a smooth scroll still
    // under way when more rows arrive does not count as the reader leaving the bottom.
    let stick = StoredValue::new(true);
    let last_top = StoredValue::new(0);
    // Distance from the bottom when an older page was asked for; the view is put back there once it lands.
    let anchor = StoredValue::new(None::<i32>);
    let unseen = RwSignal::new(false);
    // The first message by someone else after the read mark the room opened with.
    let first_unread = Memo::new(move |_| {
        let after = chat.divider.get()?;
        let me = chat.me.with(|me| me.as_ref().map(|me| me.user_id));
        chat.events.with(|events| {
            events
                .iter()
                .find(|e| e.seq > after && e.is_message() && Some(e.user_id) != me)
                .map(|e| e.seq)
        })
    });
    // The reader sees the end of the list: what is there is read (in every tab, once the mark is in).
    let read_if_seen = move || {
        if stick.get_value() && chat.visible.get_untracked() {
            chat.mark_read();
        }
    };

    let scroll_to_bottom = move |smooth: bool| {
        if let Some(el) = list.get_untracked() {
            let options = web_sys::ScrollToOptions::new();
            options.set_top(f64::from(el.scroll_height()));
            options.set_behavior(if smooth {
                web_sys::ScrollBehavior::Smooth
            } else {
                web_sys::ScrollBehavior::Instant
            });
            el.scroll_to_with_scroll_to_options(&options);
        }
        stick.set_value(true);
        unseen.set(false);
    };

    let on_scroll = move |_| {
        let Some(el) = list.get_untracked() else {
            return;
        };
        let top = el.scroll_top();
        let distance = el.scroll_height() - top - el.client_height();
        if distance <= STICK_DISTANCE {
            stick.set_value(true);
            unseen.set(false);
            read_if_seen();
        } else if top < last_top.get_value() {
            stick.set_value(false);
        }
        last_top.set_value(top);
        if top <= LOAD_OLDER_DISTANCE
            && !chat.history_complete.get_untracked()
            && !chat.loading_older.get_untracked()
        {
            anchor.set_value(Some(el.scroll_height() - top));
            chat.load_older();
        }
    };

    // Runs after rows render. New rows at the bottom: follow them, or note there is something new below.
    Effect::new(move |previous: Option<(String, u64, usize)>| {
        let newest = (
            chat.room.get(),
            chat.events.with(|e| e.last().map_or(0, |e| e.seq)),
            chat.pending.with(Vec::len),
        );
        // Coming back to the tab reads what came meanwhile.
        let _ = chat.visible.get();
        // A room opens (the page, a switch, its first history) at its first unread message, under the
        // divider, or at the end.
        let opened = previous
            .as_ref()
            .is_none_or(|before| before.0 != newest.0 || before.1 == 0);
        match previous {
            _ if opened => request_animation_frame(move || {
                open_at_divider(list, scroll_to_bottom);
                read_if_seen();
            }),
            Some(ref before) if *before != newest => {
                let ours = newest.2 > before.2;
                if stick.get_value() || ours {
                    // Wait a frame so the new row has its height before scrolling to it.
                    request_animation_frame(move || {
                        scroll_to_bottom(true);
                        read_if_seen();
                    });
                } else {
                    unseen.set(true);
                }
            }
            _ => read_if_seen(),
        }
        newest
    });

    // New rows at the top (an older page): keep the rows the reader was looking at where they were.
    Effect::new(move |previous: Option<u64>| {
        let oldest = chat.events.with(|e| e.first().map_or(0, |e| e.seq));
        if previous.is_some_and(|p| p != oldest) {
            if let (Some(from_bottom), Some(el)) = (anchor.get_value(), list.get_untracked()) {
                anchor.set_value(None);
                request_animation_frame(move || {
                    el.set_scroll_top(el.scroll_height() - from_bottom)
                });
            }
        }
        oldest
    });

    let my_name = move || chat.name.get().unwrap_or_default();
    let shown_pending = move || {
        let room = chat.room.get();
        chat.pending
            .get()
            .into_iter()
            .filter(|p| p.room == room)
            .collect::<Vec<_>>()
    };
    let empty = move || chat.events.with(Vec::is_empty) && shown_pending().is_empty();
    view! {
        <div class="messages" node_ref=list on:scroll=on_scroll>
            {when(
                move || chat.history_complete.get() && !empty(),
                || view! { <p class="beginning">"This is the beginning of the chat."</p> },
            )}
            {when(
                move || chat.loading_older.get(),
                || view! { <p class="beginning">"Loading older messages…"</p> },
            )}
            {when(empty, || view! { <p class="empty">"No messages yet. Send your first message!"</p> })}
            <ol class="rows" aria-label="Messages">
                <For each=move || chat.events.get().into_iter().filter(ChatEvent::is_shown) key=|event| event.seq let(event)>
                    {
                        let seq = event.seq;
                        move || (first_unread.get() == Some(seq)).then(|| view! {
                            <li class="unread-divider" role="separator"><span>"New messages"</span></li>
                        })
                    }
                    <EventRow event/>
                </For>
                <For each=shown_pending key=|p| (p.id, p.failed.clone()) let(pending)>
                    <PendingRow pending name=my_name()/>
                </For>
            </ol>
        </div>
        {when(
            move || unseen.get(),
            move || view! {
                <button type="button" class="new-messages" on:click=move |_| scroll_to_bottom(true)>
                    "New messages ↓"
                </button>
            },
        )}
    }
}
