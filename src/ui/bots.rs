//! The admin's bots page at `/admin/bots`: plain forms the server handles, like the sign-in page, so it
//! works the same with JavaScript and without.

use super::state::{BotDraft, BotEntry, BotSecrets};
use leptos::prelude::*;

#[component]
pub fn BotsPage(
    bots: Vec<BotEntry>,
    made: Option<BotSecrets>,
    error: Option<String>,
    draft: BotDraft,
) -> impl IntoView {
    let made = made.map(|made| {
        view! {
            <section class="secrets" aria-labelledby="secrets-title">
                <h3 id="secrets-title">{format!("{}'s token and webhook secret", made.name)}</h3>
                <p class="hint">"Copy them now: they are shown only this once. The token goes in "
                    <code>"Authorization: Bearer …"</code>"; the secret checks the webhook's signature."</p>
                <label>"Token" <input readonly class="secret" value=made.token/></label>
                <label>"Webhook secret" <input readonly class="secret" value=made.secret/></label>
            </section>
        }
    });
    let empty = bots.is_empty();
    let rows = bots
        .into_iter()
        .map(|bot| view! { <BotRow bot/> })
        .collect::<Vec<_>>();
    view! {
        <div class="admin-page">
            <h2>"Bots"</h2>
            <p class="hint"><a href="/">"Back to the chat"</a>
                " · Bots post through the API at /api/v1 with their token; see the README's bot section."</p>
            <p class="field-error" role="alert">{error}</p>
            {made}
            <form class="dialog new-bot" method="post" action="/admin/bots">
                <h3>"New bot"</h3>
                <label for="bot-name">"Name"</label>
                <input id="bot-name" name="name" type="text" required maxlength="32" value=draft.name/>
                <label for="bot-webhook">"Webhook URL (optional)"</label>
                <input id="bot-webhook" name="webhook" type="url" placeholder="https://…" value=draft.webhook/>
                <label for="bot-rooms">"Rooms (optional)"</label>
                <input id="bot-rooms" name="rooms" type="text" placeholder="ops, support" value=draft.rooms/>
                <p class="hint">"Room slugs, separated by commas: it joins #general and those. Left empty, it joins every public room. Mentions and direct messages call the webhook."</p>
                <button type="submit" class="primary">"Create bot"</button>
            </form>
            {empty.then(|| view! { <p class="hint">"No bots yet."</p> })}
            <ul class="bots" aria-label="Bots">{rows}</ul>
        </div>
    }
}

#[component]
fn BotRow(bot: BotEntry) -> impl IntoView {
    let id = bot.id;
    let state = if bot.active { "active" } else { "revoked" };
    let failures = (bot.failed > 0).then(|| {
        view! {
            <p class="field-error">{format!("{} webhook call(s) failed; the last: {}", bot.failed, bot.last_error)}</p>
        }
    });
    view! {
        <li class="bot">
            <div class="meta">
                <span class="name">{bot.name}</span>
                <span class="mark" data-kind="bot">"bot"</span>
                <span class="mark">{state}</span>
            </div>
            {failures}
            <form method="post" action=format!("/admin/bots/{id}/webhook")>
                <label>"Webhook " <input name="webhook" type="url" value=bot.webhook placeholder="none"/></label>
                <button type="submit" class="link">"Save"</button>
            </form>
            <form method="post" action=format!("/admin/bots/{id}/rotate")>
                <button type="submit" class="link" title="A new token and secret; the old ones stop working">"New token"</button>
            </form>
            {bot.active.then(|| view! {
                <form method="post" action=format!("/admin/bots/{id}/revoke")>
                    <button type="submit" class="link" title="The token stops working and its sockets close">"Revoke"</button>
                </form>
            })}
        </li>
    }
}
