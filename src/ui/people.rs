//! Who is here (a count that opens into the list, with who you are and what you can do about it) and
//! who is typing.

use super::state::Chat;
use super::when;
use crate::protocol::{Access, UserKind, Via};
use leptos::prelude::*;

/// How this browser is signed in, in words: "guest", "member" or "signed token".
fn signed_in_as(chat: Chat) -> &'static str {
    chat.me.with(|me| match me {
        Some(me) if me.via == Via::Token => "signed token",
        Some(me) if me.kind == UserKind::Guest => "guest",
        Some(_) => "member",
        None => "",
    })
}

/// A User-Agent in a few words: the browser and the system, as people name them.
fn short_device(agent: &str) -> String {
    let browser = ["Edg/", "Firefox/", "Chrome/", "Safari/"]
        .iter()
        .find(|b| agent.contains(*b))
        .map(|b| match *b {
            "Edg/" => "Edge",
            "Firefox/" => "Firefox",
            "Chrome/" => "Chrome",
            _ => "Safari",
        });
    let system = [
        ("Android", "Android"),
        ("iPhone", "iPhone"),
        ("iPad", "iPad"),
        ("Mac OS X", "macOS"),
        ("Windows", "Windows"),
        ("Linux", "Linux"),
    ]
    .iter()
    .find(|(needle, _)| agent.contains(needle))
    .map(|(_, name)| *name);
    match (browser, system) {
        (Some(b), Some(s)) => format!("{b} on {s}"),
        (Some(b), None) => b.to_owned(),
        (None, Some(s)) => s.to_owned(),
        (None, None) if agent.is_empty() => "Unknown device".to_owned(),
        (None, None) => agent.chars().take(40).collect(),
    }
}

/// The header's "who am I": the name, and a mark for how it is held.
#[component]
pub fn WhoAmI() -> impl IntoView {
    let chat = expect_context::<Chat>();
    view! {
        {when(
            move || chat.joined.get(),
            move || view! {
                <span class="whoami" title="You">
                    <span class="whoami-name">{move || chat.name.get().unwrap_or_default()}</span>
                    <span class="mark" data-kind=move || signed_in_as(chat)>{move || signed_in_as(chat)}</span>
                    {when(move || chat.me.with(|me| me.as_ref().is_some_and(|me| me.admin)),
                        || view! { <span class="mark" data-kind="admin">"admin"</span> })}
                </span>
            },
        )}
    }
}

/// "Keep this name": a guest makes their name a member's, with a password. A form the server handles, so
/// it works without JavaScript too; the page reloads as the member.
#[component]
fn KeepName() -> impl IntoView {
    let chat = expect_context::<Chat>();
    view! {
        <form class="keep" method="post" action="/account/claim">
            <label for="keep-password">"Keep this name: choose a password"</label>
            <input id="keep-password" name="password" type="password" autocomplete="new-password"
                minlength="8" required aria-describedby="keep-error"
                aria-invalid=move || chat.form_error.with(Option::is_some).to_string()/>
            <p id="keep-error" class="field-error" role="alert">{move || chat.form_error.get()}</p>
            <button type="submit" class="primary">"Keep this name"</button>
            <p class="hint">"Until then, the name is yours only while you are here."</p>
        </form>
    }
}

/// A link a form just made (an invite, a sign-in link): the address to copy, and its QR code.
#[component]
fn FlashLink() -> impl IntoView {
    let chat = expect_context::<Chat>();
    move || {
        chat.flash.get().map(|flash| {
            view! {
                <div class="flash" role="status">
                    <p><strong>{flash.title}</strong></p>
                    <input class="flash-url" type="text" readonly value=flash.url.clone()
                        aria-label="Link to copy" on:focus=move |ev| {
                            use wasm_bindgen::JsCast;
                            if let Some(input) = ev.target().and_then(|t| t.dyn_into::<web_sys::HtmlInputElement>().ok()) {
                                input.select();
                            }
                        }/>
                    {flash.qr.map(|qr| view! { <img class="qr" src=qr alt="QR code of the link" width="200" height="200"/> })}
                    <p class="hint">{flash.note}</p>
                </div>
            }
        })
    }
}

/// What a member can make: a sign-in link for another device; an admin of an invite-only chat, invites.
#[component]
fn MemberTools() -> impl IntoView {
    let chat = expect_context::<Chat>();
    let admin = move || chat.me.with(|me| me.as_ref().is_some_and(|me| me.admin));
    let devices = chat.devices.get_value();
    let device_list = (!devices.is_empty()).then(|| {
        view! {
            <details class="devices">
                <summary>{format!("Your sessions ({})", devices.len())}</summary>
                <ul aria-label="Your sessions">
                    {devices.into_iter().map(|d| view! {
                        <li>
                            <span class="device">{short_device(&d.device)}</span>
                            <span class="hint">
                                {if d.current { "this browser".to_owned() } else { format!("last active {}", super::message_row::iso_utc(d.last_seen_at).replace('T', " ").trim_end_matches('Z').to_owned() + " UTC") }}
                            </span>
                            {(!d.current).then(|| view! {
                                <form method="post" action=format!("/account/sessions/{}/end", d.id)>
                                    <button type="submit" class="link" title="Sign that device out">"End"</button>
                                </form>
                            })}
                        </li>
                    }).collect::<Vec<_>>()}
                </ul>
            </details>
        }
    });
    view! {
        {device_list}
        <form class="tool" method="post" action="/account/link">
            <button type="submit" class="link">"Sign in on another device"</button>
        </form>
        {when(admin, || view! { <a class="tool link" href="/admin/bots">"Bots"</a> })}
        {when(
            move || admin() && chat.access == Access::Invite,
            || view! {
                <form class="tool invite" method="post" action="/admin/invites">
                    <label>"Invite link for " <input name="uses" type="number" min="1" max="1000" value="1"/> " people, for "
                        <input name="hours" type="number" min="1" max="720" value="24"/> " hours"</label>
                    <button type="submit" class="link">"Make an invite link"</button>
                </form>
            },
        )}
    }
}

/// "3 online", which opens into the list of names and what you can do: keep your name, leave, sign out.
#[component]
pub fn People() -> impl IntoView {
    let chat = expect_context::<Chat>();
    let count = move || chat.online.with(Vec::len) + chat.online_more.get() as usize;
    // The room's people: who is online first, then (in a private room or a conversation, whose
    // members are known) everyone else.
    let people = move || {
        let online = chat.online.get();
        let mut people: Vec<(String, bool)> = online.iter().map(|n| (n.clone(), true)).collect();
        if let Some(room) = chat.shown() {
            for name in room.members {
                if !online.contains(&name) {
                    people.push((name, false));
                }
            }
        }
        people
    };
    let me = move || chat.name.get().unwrap_or_default();
    let manage = move || {
        chat.shown()
            .filter(|room| chat.may_manage(room))
            .map(|room| room.slug)
    };
    // Open when the server refused a form posted from the panel, so its reason shows.
    let open = (chat.form_error.get_untracked().is_some() || chat.flash.get_untracked().is_some())
        && chat.joined.get_untracked();
    view! {
        <details class="people" open=open>
            <summary>{move || format!("{} online", count())}</summary>
            <div class="people-panel">
                <ul aria-label="People here">
                    <For each=people key=|person| person.clone() let((name, online))>
                        <li class="person" class:offline=!online>
                            <span class="person-name">{name.clone()}</span>
                            {(!online).then(|| view! { <span class="hint">" (away)"</span> })}
                            {
                                let (dm, out) = (name.clone(), name.clone());
                                move || (chat.joined.get() && dm != me()).then(|| {
                                    let (dm, out) = (dm.clone(), out.clone());
                                    view! {
                                        <button type="button" class="link" title=format!("Write to {dm} directly")
                                            on:click=move |_| chat.direct(vec![dm.clone()])>"Message"</button>
                                        {manage().map(|room| view! {
                                            <button type="button" class="link danger" title=format!("Remove {out} from this room")
                                                on:click=move |_| chat.remove(&room, &out)>"Remove"</button>
                                        })}
                                    }
                                })
                            }
                        </li>
                    </For>
                </ul>
                {move || {
                    let more = chat.online_more.get();
                    (more > 0).then(|| view! { <p class="hint">{format!("and {more} more online")}</p> })
                }}
                {when(
                    move || chat.joined.get(),
                    move || view! {
                        <p class="me">
                            "You are " <strong>{move || chat.name.get().unwrap_or_default()}</strong>
                            " (" {move || signed_in_as(chat)} ")."
                        </p>
                        <FlashLink/>
                        {when(move || !chat.is_member(), || view! { <KeepName/> })}
                        {when(move || chat.is_member(), || view! { <MemberTools/> })}
                        {when(
                            move || !chat.is_member(),
                            move || view! {
                                <button type="button" class="link" on:click=move |_| chat.leave()>
                                    "Leave chat or change name"
                                </button>
                            },
                        )}
                        {when(
                            move || chat.is_member(),
                            || view! {
                                <form method="post" action="/logout">
                                    <button type="submit" class="link">"Sign out"</button>
                                </form>
                            },
                        )}
                    },
                )}
            </div>
        </details>
    }
}

/// "Ann is typing…" under the list.
#[component]
pub fn TypingLine() -> impl IntoView {
    let chat = expect_context::<Chat>();
    let line = move || {
        chat.typing.with(|typing| match typing.as_slice() {
            [] => String::new(),
            [(one, _)] => format!("{one} is typing…"),
            [(a, _), (b, _)] => format!("{a} and {b} are typing…"),
            many => format!("{} people are typing…", many.len()),
        })
    };
    view! { <div class="typing" aria-live="polite">{line}</div> }
}

#[cfg(test)]
mod tests {
    #[test]
    fn devices_read_as_people_name_them() {
        let chromium_linux = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0.0.0 Safari/537.36";
        assert_eq!(super::short_device(chromium_linux), "Chrome on Linux");
        let iphone = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1";
        assert_eq!(super::short_device(iphone), "Safari on iPhone");
        assert_eq!(super::short_device(""), "Unknown device");
        assert_eq!(super::short_device("curl/8.0"), "curl/8.0");
    }
}
