//! The browser's WebSocket connection: opens `/ws`, feeds frames to [`Chat`], and reconnects with capped
//! exponential backoff plus jitter, resuming after the last sequence number it has shown. It reconnects at
//! once when the browser comes back online or the tab becomes visible, and keeps the outbox in
//! `localStorage` so messages written offline survive a reload.

use crate::protocol::{ClientFrame, ServerFrame};
use crate::ui::state::{Chat, Link, Pending};
use leptos::prelude::{Effect, Get, GetUntracked, Set, Update, WithUntracked};
use std::cell::{Cell, RefCell};
use std::time::Duration;
use wasm_bindgen::prelude::*;
use web_sys::{CloseEvent, MessageEvent, WebSocket};

/// The open socket with the callbacks it owns; dropping it detaches them.
struct Connection {
    socket: WebSocket,
    _on_open: Closure<dyn FnMut()>,
    _on_message: Closure<dyn FnMut(MessageEvent)>,
    _on_close: Closure<dyn FnMut(CloseEvent)>,
}

thread_local! {
    // The browser runs this on one thread, and the callbacks must reach the socket: a thread-local is the
    // natural home, and `Chat` (shared with the server build) stays free of browser types.
    static CONNECTION: RefCell<Option<Connection>> = const { RefCell::new(None) };
    static FAILURES: Cell<u32> = const { Cell::new(0) };
    static RETRY_SCHEDULED: Cell<bool> = const { Cell::new(false) };
}

const FIRST_RETRY: Duration = Duration::from_millis(500);
const MAX_RETRY: Duration = Duration::from_secs(15);

const OUTBOX_KEY: &str = "confab.outbox";

/// The close code of a socket whose browser session ended (see `server::session::CLOSE_SIGNED_OUT`).
const CLOSE_SIGNED_OUT: u16 = 4001;
/// The close codes after a refused sign-in token (expired, invalid): the error frame before said why.
const CLOSE_TOKEN_EXPIRED: u16 = 4002;
const CLOSE_TOKEN_INVALID: u16 = 4003;
/// The close code of an invite-only chat to a stranger: nothing to reconnect to until an invite is used.
const CLOSE_INVITE_REQUIRED: u16 = 4004;

/// This page's connection as the chat state sees it.
struct Browser;

impl Link for Browser {
    fn transmit(&self, frame: &ClientFrame) -> bool {
        transmit(frame)
    }

    fn healthy(&self) {
        FAILURES.set(0);
    }

    fn retry_later(&self, chat: Chat) {
        retry_later(chat);
    }

    fn after(&self, delay: Duration, then: Box<dyn FnOnce() + 'static>) {
        leptos::prelude::set_timeout(then, delay);
    }

    fn navigate(&self, path: &str) {
        let Some(window) = web_sys::window() else {
            return;
        };
        let here = window.location().pathname().ok();
        if here.as_deref() == Some(path) {
            return;
        }
        if let Ok(history) = window.history() {
            let _ = history.push_state_with_url(&JsValue::NULL, "", Some(path));
        }
    }

    fn notify(&self, chat: Chat, title: &str, body: &str, room: &str) {
        if web_sys::Notification::permission() != web_sys::NotificationPermission::Granted {
            return;
        }
        let options = web_sys::NotificationOptions::new();
        options.set_body(body);
        // One notification per room: a newer one replaces the last instead of piling up.
        options.set_tag(room);
        let Ok(shown) = web_sys::Notification::new_with_options(title, &options) else {
            return;
        };
        let room = room.to_owned();
        let on_click = Closure::<dyn FnMut()>::new(move || {
            if let Some(window) = web_sys::window() {
                let _ = window.focus();
            }
            chat.open_room(&room, true);
        });
        shown.set_onclick(Some(on_click.as_ref().unchecked_ref()));
        // It lives as long as the notification may be clicked, which the page cannot know.
        on_click.forget();
    }
}

/// Starts the page's connection: restores the outbox, opens the socket and watches the network.
pub fn connect(chat: Chat) {
    chat.attach(&Browser);
    restore_outbox(chat);
    Effect::new(move |_| save_outbox(&chat.pending.get()));
    watch_network(chat);
    watch_history(chat);
    open(chat);
}

/// Back and forward between rooms: the address names the room, which opens without a reload.
fn watch_history(chat: Chat) {
    let Some(window) = web_sys::window() else {
        return;
    };
    let on_pop = Closure::<dyn FnMut()>::new(move || {
        let Some(path) = web_sys::window().and_then(|w| w.location().pathname().ok()) else {
            return;
        };
        let mut parts = path.trim_start_matches('/').splitn(2, '/');
        let (prefix, value) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let value = js_sys::decode_uri_component(value)
            .ok()
            .and_then(|v| v.as_string())
            .unwrap_or_default();
        match chat.room_at(prefix, &value) {
            Some(slug) => chat.open_room(&slug, false),
            // A room this tab does not know (any more): the server's page says what it is.
            None => {
                let _ = web_sys::window().map(|w| w.location().reload());
            }
        }
    });
    let _ = window.add_event_listener_with_callback("popstate", on_pop.as_ref().unchecked_ref());
    on_pop.forget();
}

fn storage() -> Option<web_sys::Storage> {
    web_sys::window()?.local_storage().ok()?
}

fn restore_outbox(chat: Chat) {
    let Some(saved) = storage().and_then(|s| s.get_item(OUTBOX_KEY).ok().flatten()) else {
        return;
    };
    let Ok(saved) = serde_json::from_str::<Vec<Pending>>(&saved) else {
        return;
    };
    // Only messages of a browser that is still joined can be sent; a stale outbox is dropped.
    if chat.joined.with_untracked(|joined| *joined) && !saved.is_empty() {
        chat.pending.update(|pending| pending.extend(saved));
    }
}

fn save_outbox(pending: &[Pending]) {
    let Some(storage) = storage() else { return };
    if pending.is_empty() {
        let _ = storage.remove_item(OUTBOX_KEY);
    } else if let Ok(json) = serde_json::to_string(pending) {
        let _ = storage.set_item(OUTBOX_KEY, &json);
    }
}

/// Reconnects at once when the network returns or the tab is shown again, instead of waiting out the
/// backoff; shows "offline" as soon as the browser knows it is.
fn watch_network(chat: Chat) {
    let Some(window) = web_sys::window() else {
        return;
    };
    let on_online = Closure::<dyn FnMut()>::new(move || reconnect_now(chat));
    // Offline, the socket cannot be trusted (it may stay "open" for minutes with nothing getting through):
    // drop it, so messages go to the outbox and the status says so, and connect again when back online.
    let on_offline = Closure::<dyn FnMut()>::new(move || {
        if let Some(conn) = CONNECTION.take() {
            detach_and_close(&conn.socket);
        }
        chat.on_close(false);
        schedule_reconnect(chat);
    });
    let is_visible = || {
        web_sys::window()
            .and_then(|w| w.document())
            .is_some_and(|d| d.visibility_state() == web_sys::VisibilityState::Visible)
    };
    // A page opened in a background tab starts hidden.
    chat.visible.set(is_visible());
    let on_visible = Closure::<dyn FnMut()>::new(move || {
        let visible = is_visible();
        if visible {
            reconnect_now(chat);
        }
        chat.visible.set(visible);
    });
    let _ = window.add_event_listener_with_callback("online", on_online.as_ref().unchecked_ref());
    let _ = window.add_event_listener_with_callback("offline", on_offline.as_ref().unchecked_ref());
    if let Some(document) = window.document() {
        let _ = document.add_event_listener_with_callback(
            "visibilitychange",
            on_visible.as_ref().unchecked_ref(),
        );
    }
    // These listen for the life of the page.
    on_online.forget();
    on_offline.forget();
    on_visible.forget();
}

fn is_connected() -> bool {
    CONNECTION.with_borrow(|conn| {
        conn.as_ref().is_some_and(|c| {
            let state = c.socket.ready_state();
            state == WebSocket::OPEN || state == WebSocket::CONNECTING
        })
    })
}

fn reconnect_now(chat: Chat) {
    if is_connected() {
        return;
    }
    FAILURES.set(0);
    // A pending backoff timer finds the socket open and does nothing.
    open(chat);
}

/// Sends a frame if the socket is open.
fn transmit(frame: &ClientFrame) -> bool {
    let Ok(json) = serde_json::to_string(frame) else {
        return false;
    };
    CONNECTION.with_borrow(|conn| {
        conn.as_ref()
            .filter(|c| c.socket.ready_state() == WebSocket::OPEN)
            .is_some_and(|c| c.socket.send_with_str(&json).is_ok())
    })
}

fn endpoint(room: &str, after: u64) -> Option<String> {
    let location = web_sys::window()?.location();
    let scheme = if location.protocol().ok()? == "https:" {
        "wss"
    } else {
        "ws"
    };
    let host = location.host().ok()?;
    let mut url = format!("{scheme}://{host}/ws");
    let mut sep = '?';
    if room != crate::protocol::GENERAL_ROOM {
        url.push_str(&format!("?room={}", crate::protocol::path_segment(room)));
        sep = '&';
    }
    if after > 0 {
        url.push_str(&format!("{sep}after={after}"));
    }
    Some(url)
}

fn open(chat: Chat) {
    let room = chat.room.get_untracked();
    let Some(url) = endpoint(&room, chat.last_seq()) else {
        return;
    };
    let socket = match WebSocket::new(&url) {
        Ok(socket) => socket,
        Err(_) => {
            schedule_reconnect(chat);
            return;
        }
    };

    // The backoff is reset by `healthy`, not here: a server that accepts sockets but cannot reach its
    // storage must not be retried in a tight loop.
    let on_open = Closure::<dyn FnMut()>::new(move || chat.on_open());
    let on_message = Closure::<dyn FnMut(MessageEvent)>::new(move |ev: MessageEvent| {
        let Some(text) = ev.data().as_string() else {
            return;
        };
        match serde_json::from_str::<ServerFrame>(&text) {
            Ok(frame) => chat.apply(frame),
            Err(err) => {
                leptos::logging::warn!("ignoring a frame this page does not understand: {err}")
            }
        }
    });
    let on_close = Closure::<dyn FnMut(CloseEvent)>::new(move |ev: CloseEvent| {
        // Only the current socket's close matters; an older one may close late.
        if !CONNECTION.with_borrow(|c| {
            c.as_ref()
                .is_some_and(|c| c.socket.ready_state() == WebSocket::CLOSED)
        }) {
            return;
        }
        CONNECTION.set(None);
        if ev.code() == CLOSE_INVITE_REQUIRED {
            chat.forget_identity();
            chat.on_close(is_online());
            return;
        }
        if matches!(
            ev.code(),
            CLOSE_SIGNED_OUT | CLOSE_TOKEN_EXPIRED | CLOSE_TOKEN_INVALID
        ) {
            // Signed out (here, in another tab, or from another device): this tab is nobody now, and
            // reconnects as a reader, with the name dialog.
            chat.forget_identity();
            FAILURES.set(0);
        }
        chat.on_close(is_online());
        schedule_reconnect(chat);
    });
    socket.set_onopen(Some(on_open.as_ref().unchecked_ref()));
    socket.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
    socket.set_onclose(Some(on_close.as_ref().unchecked_ref()));
    CONNECTION.set(Some(Connection {
        socket,
        _on_open: on_open,
        _on_message: on_message,
        _on_close: on_close,
    }));
}

/// The server cannot store messages right now: drop this socket and reconnect after the backoff, which
/// resends the outbox.
fn retry_later(chat: Chat) {
    if let Some(conn) = CONNECTION.take() {
        detach_and_close(&conn.socket);
    }
    chat.on_close(is_online());
    schedule_reconnect(chat);
}

fn detach_and_close(socket: &WebSocket) {
    socket.set_onopen(None);
    socket.set_onmessage(None);
    socket.set_onclose(None);
    let _ = socket.close();
}

fn is_online() -> bool {
    web_sys::window().is_none_or(|w| w.navigator().on_line())
}

/// Tries again after a delay that doubles with each failure up to [`MAX_RETRY`], randomised so that many
/// clients dropped together do not all return in the same instant.
fn schedule_reconnect(chat: Chat) {
    if RETRY_SCHEDULED.replace(true) {
        return;
    }
    let failures = FAILURES.get();
    FAILURES.set(failures.saturating_add(1));
    let ceiling = FIRST_RETRY
        .saturating_mul(1 << failures.min(8))
        .min(MAX_RETRY);
    let delay = ceiling.mul_f64(0.5 + js_sys::Math::random() / 2.0);
    leptos::prelude::set_timeout(
        move || {
            RETRY_SCHEDULED.set(false);
            if !is_connected() {
                open(chat);
            }
        },
        delay,
    );
}
