//! One row of the list: a chat message with its avatar, or a system line such as a join.

use super::state::{Chat, Pending};
use super::when;
use crate::avatar;
use crate::protocol::{ChatEvent, EventKind, UserKind};
use leptos::prelude::*;

/// A circle with the initials, coloured by a stable hash of the name.
#[component]
fn Avatar(name: String) -> impl IntoView {
    view! {
        <div class="avatar" style:background-color=avatar::color(&name) aria-hidden="true">
            {avatar::initials(&name)}
        </div>
    }
}

/// A stored room event. (`Either`, not `into_any`: an erased view carries every rendering path,
/// async hydration included, into the bundle.)
#[component]
pub fn EventRow(event: ChatEvent) -> impl IntoView {
    use leptos::either::Either;
    if let Some(line) = event.system_line() {
        return Either::Left(view! { <li class="system" data-seq=event.seq>{line}</li> });
    }
    let chat = expect_context::<Chat>();
    let author = event.user_id;
    // Ours when written by the user we are now: also messages written before keeping the name.
    let mine = move || {
        !author.is_nil()
            && chat
                .me
                .with(|me| me.as_ref().is_some_and(|me| me.user_id == author))
    };
    // What kind of account wrote it, as a badge: a program's messages say so (AppEngine's `fromAgent`).
    let mark = match event.user_kind {
        UserKind::Guest => None,
        UserKind::Bot => Some(("bot", "Bot: a program writes as this account", "bot")),
        UserKind::Member | UserKind::Other => Some(("member", "Member", "member")),
    };
    // Only members can be made admins.
    let member = event.user_kind == UserKind::Member;
    let admin = move || chat.me.with(|me| me.as_ref().is_some_and(|me| me.admin));
    let id = event.id;
    let author_name = event.name.clone();
    // `/me waves` reads "Ann waves", in italics.
    let is_action = event.kind == EventKind::Action;
    let action = is_action.then(|| event.name.clone());
    Either::Right(view! {
        <li class="message" class:mine=mine class:action=is_action data-seq=event.seq>
            <Avatar name=event.name.clone()/>
            <div class="body">
                <div class="meta">
                    <span class="name">{event.name}</span>
                    {mark.map(|(kind, title, label)| view! { <span class="mark" data-kind=kind title=title>{label}</span> })}
                    <LocalTime at=event.at/>
                    {when(
                        move || mine() || admin(),
                        move || view! {
                            <button type="button" class="link row-action" title="Delete this message for everyone"
                                on:click=move |_| {
                                    if confirmed("Delete this message for everyone?") {
                                        chat.delete(id);
                                    }
                                }>
                                "Delete"
                            </button>
                        },
                    )}
                    {when(
                        move || admin() && !mine(),
                        move || {
                            let author_name = author_name.clone();
                            view! { <AdminActions author member name=author_name/> }
                        },
                    )}
                </div>
                <div class="text">{action.map(|name| view! { <span class="actor">{name}" "</span> })}{event.text}</div>
            </div>
        </li>
    })
}

/// Ban the author, or make a member an admin: forms an admin's page posts (each asks first).
#[component]
fn AdminActions(author: uuid::Uuid, member: bool, name: String) -> impl IntoView {
    let ban_question = format!("Ban {name}? Their sessions end and the name stays locked.");
    let admin_question = format!("Make {name} an admin?");
    let ask = move |question: String| {
        move |ev: leptos::ev::SubmitEvent| {
            if !confirmed(&question) {
                ev.prevent_default();
            }
        }
    };
    view! {
        <form class="row-action" method="post" action=format!("/admin/users/{author}/ban") on:submit=ask(ban_question)>
            <button type="submit" class="link">"Ban"</button>
        </form>
        {member.then(|| view! {
            <form class="row-action" method="post" action=format!("/admin/users/{author}/admin") on:submit=ask(admin_question)>
                <button type="submit" class="link">"Make admin"</button>
            </form>
            <form class="row-action" method="post" action=format!("/admin/users/{author}/link")>
                <button type="submit" class="link" title="A one-time link that signs them in (a forgotten password)">"Sign-in link"</button>
            </form>
        })}
    }
}

/// Asks the reader to confirm (in the browser; the server never gets here).
fn confirmed(question: &str) -> bool {
    web_sys::window()
        .and_then(|w| w.confirm_with_message(question).ok())
        .unwrap_or(false)
}

/// One of our messages on its way, or refused with a reason and a retry button.
#[component]
pub fn PendingRow(pending: Pending, name: String) -> impl IntoView {
    let chat = expect_context::<Chat>();
    let id = pending.id;
    let failed = pending.failed;
    let is_failed = failed.is_some();
    view! {
        <li class="message pending mine" class:failed=is_failed aria-busy=(!is_failed).to_string()>
            <Avatar name=name.clone()/>
            <div class="body">
                <div class="meta">
                    <span class="name">{name}</span>
                    <span class="time">{if is_failed { "Not sent" } else { "Sending…" }}</span>
                </div>
                <div class="text">{pending.text}</div>
                {failed.map(|reason| view! {
                    <div class="delivery-error">
                        <span>{reason}</span>
                        <button type="button" class="link" on:click=move |_| chat.retry(id)>"Retry"</button>
                    </div>
                })}
            </div>
        </li>
    }
}

/// The time of an event. The server cannot know the reader's time zone, so it renders UTC; once the page
/// is hydrated an effect (which runs in the browser only) switches to the reader's local time. Both
/// renders start from the same text, so hydration matches.
#[component]
fn LocalTime(at: i64) -> impl IntoView {
    let minutes = at.div_euclid(60_000);
    let utc = format!(
        "{:02}:{:02} UTC",
        minutes.div_euclid(60).rem_euclid(24),
        minutes.rem_euclid(60)
    );
    let text = RwSignal::new(utc);
    Effect::new(move |_| {
        let date = js_sys::Date::new(&wasm_bindgen::JsValue::from_f64(at as f64));
        let options = js_sys::Object::new();
        let _ = js_sys::Reflect::set(&options, &"hour".into(), &"2-digit".into());
        let _ = js_sys::Reflect::set(&options, &"minute".into(), &"2-digit".into());
        text.set(
            date.to_locale_time_string_with_options("default", &options)
                .into(),
        );
    });
    let iso = iso_utc(at);
    view! { <time class="time" datetime=iso>{text}</time> }
}

/// RFC 3339 in UTC, for the `datetime` attribute.
pub(crate) fn iso_utc(at: i64) -> String {
    let secs = at.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn iso_dates() {
        assert_eq!(super::iso_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::iso_utc(1_795_319_238_642), "2026-11-22T03:47:18Z");
        assert_eq!(super::iso_utc(951_782_400_000), "2000-02-29T00:00:00Z");
    }
}
