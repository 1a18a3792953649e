//! Managing bots from the server binary's command line, for operators without a browser session:
//! `fly ssh console -C "confab bot create helper"`.
//!
//! ```text
//! confab bot create <name> [--webhook URL]
//! confab bot list
//! confab bot rotate <name>
//! confab bot revoke <name>
//! confab bot webhook <name> [URL]
//! ```

use super::{BotError, Bots, Credentials};
use crate::protocol::UserKind;
use crate::server::config::Config;
use crate::server::store::{IdentityStore, User};
use std::sync::Arc;

/// What `confab bot` prints when asked nothing it knows.
pub const USAGE: &str = "the bot commands are: `bot create <name> [--webhook URL]`, `bot list`, \
    `bot rotate <name>`, `bot revoke <name>`, `bot webhook <name> [URL]`";

/// Runs `confab bot …` against the configured store.
pub async fn command(args: &[String]) -> Result<(), String> {
    let config = Config::from_env()?;
    let stores = crate::server::open_store(&config).await?;
    let events = stores.events.clone();
    // A hub for this process alone: the command only writes the store, and a server on PostgreSQL hears
    // of revocations through its own checks.
    let hub = crate::server::hub::Hub::new(
        stores.events,
        Arc::new(crate::server::backplane::Local),
        crate::server::hub::HubConfig::default(),
    );
    let bots = Bots::new(stores.bots, stores.rooms, hub, config.bots.clone());
    let done = run(&bots, stores.identity.as_ref(), args).await;
    events.close().await;
    done
}

async fn run(bots: &Bots, people: &dyn IdentityStore, args: &[String]) -> Result<(), String> {
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["create", name, rest @ ..] => {
            let webhook = match rest {
                [] => "",
                ["--webhook", url] => url,
                _ => return Err(USAGE.into()),
            };
            let made = bots
                .create(name, webhook, uuid::Uuid::nil())
                .await
                .map_err(say)?;
            print_credentials(&made);
            Ok(())
        }
        ["list"] => {
            let list = bots.store.bots().await.map_err(|e| e.to_string())?;
            if list.is_empty() {
                eprintln!("There are no bots yet: `confab bot create <name>` makes one.");
            }
            for bot in list {
                let state = if bot.active { "active" } else { "revoked" };
                let webhook = if bot.webhook.is_empty() {
                    "no webhook"
                } else {
                    &bot.webhook
                };
                println!(
                    "{}\t{}\t{state}\t{webhook}\t{} failed calls",
                    bot.user.name, bot.user.id, bot.failed
                );
            }
            Ok(())
        }
        ["rotate", name] => {
            let bot = find(people, name).await?;
            let (token, secret) = bots.rotate(bot.id).await.map_err(say)?;
            print_credentials(&Credentials {
                user: bot,
                token,
                secret,
            });
            Ok(())
        }
        ["revoke", name] => {
            let bot = find(people, name).await?;
            bots.revoke(bot.id).await.map_err(say)?;
            eprintln!(
                "{}'s token is revoked: the API refuses it from now on.",
                bot.name
            );
            Ok(())
        }
        ["webhook", name, rest @ ..] => {
            let url = match rest {
                [] => "",
                [url] => url,
                _ => return Err(USAGE.into()),
            };
            let bot = find(people, name).await?;
            bots.set_webhook(bot.id, url).await.map_err(say)?;
            if url.is_empty() {
                eprintln!("{} is called by nobody now.", bot.name);
            } else {
                eprintln!("{} is called at {url} now.", bot.name);
            }
            Ok(())
        }
        _ => Err(USAGE.into()),
    }
}

fn print_credentials(made: &Credentials) {
    println!("name: {}", made.user.name);
    println!("token: {}", made.token);
    println!("webhook secret: {}", made.secret);
    eprintln!("Keep these now: they are stored only hashed (the token) and are never shown again.");
}

/// The bot called `name`.
async fn find(people: &dyn IdentityStore, name: &str) -> Result<User, String> {
    let key = crate::server::names::name_key(name);
    match people.owner_of(&key).await.map_err(|e| e.to_string())? {
        Some(user) if user.kind == UserKind::Bot => Ok(user),
        _ => Err(format!("there is no bot called {name:?}")),
    }
}

fn say(err: BotError) -> String {
    match err {
        BotError::Name(err) => format!("that name cannot be a bot's: {}", err.message()),
        BotError::NameOwned => "that name belongs to a member or another bot".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::store::MemoryStore;

    fn args(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[tokio::test]
    async fn the_bot_commands_make_list_rotate_and_revoke_bots() {
        let store = Arc::new(MemoryStore::new(10));
        let hub = crate::server::hub::Hub::new(
            store.clone(),
            Arc::new(crate::server::backplane::Local),
            crate::server::hub::HubConfig::default(),
        );
        let config = crate::server::bots::BotConfig {
            allow_private: true,
            ..Default::default()
        };
        let bots = Bots::new(store.clone(), store.clone(), hub, config);
        let people = store.as_ref();
        run(
            &bots,
            people,
            &args(&["create", "helper", "--webhook", "http://127.0.0.1:9/hook"]),
        )
        .await
        .unwrap();
        let helper = find(people, "HELPER").await.unwrap();
        assert_eq!(helper.kind, UserKind::Bot);
        run(&bots, people, &args(&["list"])).await.unwrap();
        run(&bots, people, &args(&["webhook", "helper"]))
            .await
            .unwrap();
        assert!(bots.store.callable_bots().await.unwrap().is_empty());
        run(&bots, people, &args(&["rotate", "helper"]))
            .await
            .unwrap();
        run(&bots, people, &args(&["revoke", "helper"]))
            .await
            .unwrap();
        assert!(!bots.store.bots().await.unwrap()[0].active);

        // Mistakes are said plainly, and change nothing.
        let taken = run(&bots, people, &args(&["create", "Helper"]))
            .await
            .unwrap_err();
        assert!(taken.contains("belongs to"), "{taken}");
        let nobody = run(&bots, people, &args(&["revoke", "nobody"]))
            .await
            .unwrap_err();
        assert!(nobody.contains("no bot called"), "{nobody}");
        for wrong in [
            &["create"][..],
            &["delete", "helper"],
            &["create", "x", "--hook", "u"],
            &[],
        ] {
            assert_eq!(run(&bots, people, &args(wrong)).await.unwrap_err(), USAGE);
        }
        let refused = run(
            &bots,
            people,
            &args(&["create", "ftp", "--webhook", "ftp://x/"]),
        )
        .await
        .unwrap_err();
        assert!(refused.contains("http"), "{refused}");
        assert_eq!(bots.store.bots().await.unwrap().len(), 1);
    }
}
